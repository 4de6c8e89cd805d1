#!/usr/bin/env python3
"""Benchmark `se` against nginx (WebDAV) on this machine; see bench/README.md.

Usage: python bench/run.py [--quick] [--workers N] [--dir DIR] [--peer-only]

Both servers serve the same data dir on 127.0.0.1 and are measured alternately in one run.
The result is a report: the exit status is 0 even when targets are missed, and non-zero only
when a server fails to start (2) or the run is interrupted (130).
"""

import argparse
import contextlib
import http.client
import json
import os
import queue
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
NGINX_TEMPLATE = BENCH_DIR / "nginx.conf.in"
GET_LUA = BENCH_DIR / "get.lua"
PROPFIND_LUA = BENCH_DIR / "propfind.lua"
DAV_EXT_MODULE = Path("/usr/lib/nginx/modules/ngx_http_dav_ext_module.so")

HOST = "127.0.0.1"
MIB = 1 << 20
BIG_SIZE = 1 << 30
SMALL_SIZE = 4096
DIR_ENTRIES = 1000
BIG_NAME = "big.bin"
SMALL_NAME = "small.bin"
DIR_NAME = "dir1000"
PUT_PREFIX = "put-"

SE_START_TIMEOUT = 20.0
NGINX_START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
BIG_TIMEOUT = 300.0  # per curl transfer of 1 GiB (or 4 GiB in total)
WRK_SLACK = 30.0  # extra seconds a wrk process may take beyond its -d duration
PROPFIND_DURATION = 5  # seconds of back-to-back PROPFINDs on one connection

SE_READY_RE = re.compile(
    r"se: serving (?P<root>.+?) at (?P<url>https?://127\.0\.0\.1:(?P<port>\d+))"
)
RESPONSE_RE = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?response[\s>]")


class StartError(Exception):
    """A server did not come up."""


@dataclass
class Server:
    name: str
    port: int
    proc: "subprocess.Popen[bytes]"
    logs: list[Path]
    errors: list[str] = field(default_factory=list)
    dead_reported: bool = False

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def error(self, msg: str) -> None:
        self.errors.append(msg)
        print(f"    !! {self.name}: {msg}", flush=True)

    def alive(self) -> bool:
        if self.proc.poll() is None:
            return True
        if not self.dead_reported:
            self.dead_reported = True
            self.error(f"server process exited with status {self.proc.returncode}")
        return False


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str
    target: float  # se/nginx ratio that meets the target
    higher_is_better: bool = True
    digits: int = 0

    def target_text(self) -> str:
        return f">= {self.target:.2f}x" if self.higher_is_better else f"<= {self.target:.2f}x"


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    latency_ms: float
    socket_errors: int
    non_2xx: int
    bad_status: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


Values = dict[str, float]
Measure = Callable[[Server], Values]


# --------------------------------------------------------------------------- setup


def log(msg: str) -> None:
    print(msg, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def write_big_file(path: Path) -> None:
    if path.is_file() and path.stat().st_size == BIG_SIZE:
        log(f"reusing {path}")
        return
    log(f"writing {path} ({BIG_SIZE // MIB} MiB of random data) ...")
    tmp = path.with_suffix(".tmp")
    chunk = 16 * MIB
    with tmp.open("wb") as f:
        for _ in range(BIG_SIZE // chunk):
            f.write(os.urandom(chunk))
    tmp.replace(path)


def make_data(data: Path) -> None:
    data.mkdir(parents=True, exist_ok=True)
    for stale in data.glob(f"{PUT_PREFIX}*"):
        if stale.is_file():
            stale.unlink()
    write_big_file(data / BIG_NAME)
    small = data / SMALL_NAME
    if not (small.is_file() and small.stat().st_size == SMALL_SIZE):
        small.write_bytes(os.urandom(SMALL_SIZE))
    d = data / DIR_NAME
    d.mkdir(exist_ok=True)
    for i in range(DIR_ENTRIES):
        f = d / f"f{i:04d}.txt"
        if not f.exists():
            f.write_bytes(f"small file number {i}\n".encode())


def warm_page_cache(path: Path) -> None:
    with path.open("rb") as f:
        while f.read(16 * MIB):
            pass


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def start_nginx(base: Path, data: Path, workers: str) -> Server:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        raise StartError("nginx not found (apt-get install -y nginx-extras)")
    if not DAV_EXT_MODULE.exists():
        raise StartError(f"{DAV_EXT_MODULE} missing (apt-get install -y nginx-extras)")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    prefix = base / "nginx"
    if prefix.exists():
        shutil.rmtree(prefix)
    prefix.mkdir(parents=True)
    port = free_port()
    conf = NGINX_TEMPLATE.read_text()
    for name, value in {
        "DAV_EXT_MODULE": str(DAV_EXT_MODULE),
        "WORKERS": workers,
        "PREFIX": str(prefix),
        "PORT": str(port),
        "DATA": str(data),
    }.items():
        conf = conf.replace(f"@{name}@", value)
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(conf)
    error_log = prefix / "error.log"
    out_log = prefix / "stdout.log"
    with out_log.open("wb") as out:
        proc = subprocess.Popen(
            [nginx, "-p", str(prefix), "-c", str(conf_path), "-e", str(error_log)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server("nginx", port, proc, [error_log, out_log])
    deadline = time.monotonic() + NGINX_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if port_open(port):
            return server
        time.sleep(0.1)
    stop_server(server)
    raise StartError(
        f"nginx did not start on port {port}\n{tail(out_log)}\n{tail(error_log)}".rstrip()
    )


def _pump(stream: IO[bytes], sink: Path, lines: "queue.Queue[str]") -> None:
    with sink.open("wb") as out:
        for raw in iter(stream.readline, b""):
            out.write(raw)
            out.flush()
            lines.put(raw.decode(errors="replace"))


def start_se(
    base: Path,
    data: Path,
    workers: int,
    python: str,
    config: Path | None = None,
    *,
    config_text: str | None = None,
    tree: Path = REPO_ROOT,
) -> Server:
    """Start ``python -m se serve`` from the source ``tree``; its files go to ``base/se``.

    The configuration is ``config_text`` if given ("" = no ``--config`` at all, the shipped
    defaults), else the file ``config``, else ``[logging] access_log = false``."""
    sedir = base / "se"
    sedir.mkdir(parents=True, exist_ok=True)
    if config_text is None:
        config_text = config.read_text() if config else "[logging]\naccess_log = false\n"
    out_log = sedir / "stdout.log"
    err_log = sedir / "stderr.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), env.get("PYTHONPATH", "")) if p)
    cmd = [
        python, "-m", "se", "serve",
        "--root", str(data),
        "--host", HOST,
        "--port", "0",
        "--workers", str(workers),
    ]  # fmt: skip
    if config_text:
        cfg = sedir / "config.toml"
        cfg.write_text(config_text)
        cmd += ["--config", str(cfg)]
    log("starting se: " + " ".join(cmd))
    with err_log.open("wb") as err:
        proc = subprocess.Popen(
            cmd,
            cwd=tree,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, out_log, lines), daemon=True).start()
    server = Server("se", 0, proc, [err_log, out_log])
    deadline = time.monotonic() + SE_START_TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=min(left, 0.5))
        except queue.Empty:
            if proc.poll() is not None and lines.empty():
                break
            continue
        m = SE_READY_RE.search(line)
        if m:
            server.port = int(m.group("port"))
            if Path(m.group("root")).resolve() != data.resolve():
                server.error(f"se reports root {m.group('root')!r}, expected {str(data)!r}")
            # the line should only be printed once the socket is listening
            if not port_open(server.port):
                server.error("se printed its URL before accepting connections")
            return server
    stop_server(server)
    raise StartError(
        f"se did not print its URL (waited up to {SE_START_TIMEOUT:.0f}s; "
        f"exit status {proc.poll()})\n{tail(out_log)}\n{tail(err_log)}".rstrip()
    )


def stop_server(server: Server) -> None:
    """Stop a server we started and everything in its process group."""
    proc = server.proc
    pgid = proc.pid  # start_new_session: the server leads its own process group
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT)
    # leftover workers in the group (if the master died first)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


# --------------------------------------------------------------------------- HTTP helpers


def request(
    server: Server,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def sanity_check(server: Server, data: Path) -> None:
    """A few functional checks; problems are recorded as server errors."""

    def small_get() -> str | None:
        status, _, body = request(server, "GET", f"/{SMALL_NAME}")
        if status != 200:
            return f"status {status}"
        if body != (data / SMALL_NAME).read_bytes():
            return f"body differs ({len(body)} bytes)"
        return None

    def big_head() -> str | None:
        status, headers, _ = request(server, "HEAD", f"/{BIG_NAME}")
        length = headers.get("content-length")
        if status != 200 or length != str(BIG_SIZE):
            return f"status {status}, Content-Length {length}"
        return None

    def big_range() -> str | None:
        status, _, body = request(server, "GET", f"/{BIG_NAME}", {"Range": "bytes=1000-1999"})
        with (data / BIG_NAME).open("rb") as f:
            f.seek(1000)
            want = f.read(1000)
        if status != 206 or body != want:
            return f"status {status}, {len(body)} bytes"
        return None

    def propfind() -> str | None:
        status, _, body = request(server, "PROPFIND", f"/{DIR_NAME}/", {"Depth": "1"}, b"")
        n = len(RESPONSE_RE.findall(body))
        if status != 207 or n != DIR_ENTRIES + 1:
            return f"status {status}, {n} <response> elements (want {DIR_ENTRIES + 1})"
        return None

    def options() -> str | None:
        status, headers, _ = request(server, "OPTIONS", "/")
        if status >= 300:
            return f"status {status}"
        if "dav" not in headers:
            return "no DAV header"
        return None

    checks: list[tuple[str, Callable[[], str | None]]] = [
        ("GET 4 KiB", small_get),
        ("HEAD 1 GiB", big_head),
        ("GET Range", big_range),
        ("PROPFIND Depth 1", propfind),
        ("OPTIONS", options),
    ]
    for name, check in checks:
        try:
            problem = check()
        except (OSError, http.client.HTTPException) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            server.error(f"check {name}: {problem}")


# --------------------------------------------------------------------------- measurements


def run_parallel(cmds: Sequence[Sequence[str]], timeout: float) -> tuple[list[str], float]:
    """Start all commands at once; return their stdout and the wall time until all ended."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        for cmd in cmds
    ]  # fmt: skip
    outs: list[str] = []
    deadline = start + timeout
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(0.1, deadline - time.perf_counter()))
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return outs, time.perf_counter() - start


def big_get(clients: int) -> Measure:
    def measure(server: Server) -> Values:
        cmd = [
            "curl", "-s", "-o", "/dev/null", "--max-time", str(int(BIG_TIMEOUT)),
            "-w", "%{http_code} %{size_download}", f"{server.url}/{BIG_NAME}",
        ]  # fmt: skip
        try:
            outs, wall = run_parallel([cmd] * clients, BIG_TIMEOUT + 10)
        except subprocess.TimeoutExpired:
            server.error(f"GET 1 GiB x{clients}: timed out")
            return {}
        total = 0
        for out in outs:
            code, _, size = out.partition(" ")
            if code != "200" or size.strip() != str(BIG_SIZE):
                server.error(f"GET 1 GiB x{clients}: status {code}, {size.strip()} bytes")
                return {}
            total += BIG_SIZE
        return {f"get{clients}": total / wall / MIB}

    return measure


def same_samples(a: Path, b: Path) -> bool:
    """Compare sizes and a few 1 MiB samples (cheap, both are in the page cache)."""
    if a.stat().st_size != b.stat().st_size:
        return False
    size = a.stat().st_size
    with a.open("rb") as fa, b.open("rb") as fb:
        for off in (0, size // 3, size // 2, max(0, size - MIB)):
            fa.seek(off)
            fb.seek(off)
            if fa.read(MIB) != fb.read(MIB):
                return False
    return True


def big_put(data: Path) -> Measure:
    def measure(server: Server) -> Values:
        src = data / BIG_NAME
        name = f"{PUT_PREFIX}{server.name}-{uuid.uuid4().hex[:12]}.bin"
        dest = data / name
        os.sync()  # start each upload without someone else's dirty pages pending
        cmd = [
            "curl", "-s", "-o", "/dev/null", "--max-time", str(int(BIG_TIMEOUT)),
            "-w", "%{http_code} %{size_upload}", "-T", str(src), f"{server.url}/{name}",
        ]  # fmt: skip
        result: Values = {}
        try:
            try:
                outs, wall = run_parallel([cmd], BIG_TIMEOUT + 10)
            except subprocess.TimeoutExpired:
                server.error("PUT 1 GiB: timed out")
                return {}
            code, _, size = outs[0].partition(" ")
            if code not in ("200", "201", "204") or size.strip() != str(BIG_SIZE):
                server.error(f"PUT 1 GiB: status {code}, {size.strip()} bytes sent")
            elif not dest.is_file() or not same_samples(src, dest):
                server.error("PUT 1 GiB: stored file missing or differs from the upload")
            else:
                result = {"put": BIG_SIZE / wall / MIB}
        finally:
            try:
                status, _, _ = request(server, "DELETE", f"/{name}")
                if status not in (200, 204) and dest.exists():
                    server.error(f"DELETE after PUT: status {status}")
            except (OSError, http.client.HTTPException) as exc:
                server.error(f"DELETE after PUT: {type(exc).__name__}: {exc}")
            if dest.exists():
                dest.unlink()
        return result

    return measure


def run_wrk(
    server: Server,
    path: str,
    script: Path,
    threads: int,
    conns: int,
    seconds: int,
    headers: Sequence[str] = (),
) -> WrkResult | None:
    cmd = [
        "wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s",
        "-s", str(script), *(a for h in headers for a in ("-H", h)), f"{server.url}{path}",
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=seconds + WRK_SLACK, check=False
        )
    except subprocess.TimeoutExpired:
        server.error(f"wrk {path}: timed out")
        return None
    result = parse_wrk(proc.stdout)
    if result is None:
        server.error(f"wrk {path}: no result (exit {proc.returncode}): {proc.stderr.strip()[:300]}")
    return result


def parse_wrk(stdout: str) -> WrkResult | None:
    """The result line our Lua scripts print (``BENCH {json}``), or None."""
    for line in stdout.splitlines():
        if line.startswith("BENCH "):
            d = json.loads(line[len("BENCH ") :])
            return WrkResult(
                requests=int(d["requests"]),
                seconds=d["duration_us"] / 1e6,
                latency_ms=d["latency_mean_us"] / 1e3,
                socket_errors=int(d["connect"] + d["read"] + d["write"] + d["timeout"]),
                non_2xx=int(d["status"]),
                bad_status=int(d["bad_status"]),
            )
    return None


def small_get(seconds: int) -> Measure:
    def measure(server: Server) -> Values:
        r = run_wrk(server, f"/{SMALL_NAME}", GET_LUA, threads=2, conns=64, seconds=seconds)
        if r is None:
            return {}
        if r.non_2xx or r.socket_errors:
            server.error(
                f"GET 4 KiB: {r.non_2xx} non-2xx/3xx responses, {r.socket_errors} socket errors "
                f"of {r.requests} requests"
            )
        if r.non_2xx or not r.requests:
            return {}  # error responses are not a throughput
        return {"small": r.rps}

    return measure


def propfind(server: Server) -> Values:
    r = run_wrk(
        server, f"/{DIR_NAME}/", PROPFIND_LUA, threads=1, conns=1, seconds=PROPFIND_DURATION
    )
    if r is None:
        return {}
    if r.bad_status or r.non_2xx or r.socket_errors:
        server.error(
            f"PROPFIND: {r.bad_status} non-207, {r.non_2xx} non-2xx/3xx, "
            f"{r.socket_errors} socket errors of {r.requests} requests"
        )
    if r.bad_status or r.non_2xx or not r.requests:
        return {}
    return {"propfind": r.rps, "propfind_ms": r.latency_ms}


# --------------------------------------------------------------------------- report


ROWS = [
    Row("get1", "GET 1 GiB, 1 client (MiB/s)", "MiB/s", 0.9),
    Row("get4", "GET 1 GiB, 4 clients (MiB/s, total)", "MiB/s", 0.9),
    Row("put", "PUT 1 GiB (MiB/s)", "MiB/s", 0.8),
    Row("small", "GET 4 KiB, wrk -t2 -c64 (req/s)", "req/s", 0.3),
    Row("propfind", "PROPFIND Depth 1, 1000 entries (req/s)", "req/s", 0.67),
    Row("propfind_ms", "PROPFIND Depth 1 mean latency (ms)", "ms", 1.5, False, 2),
]


@dataclass
class Results:
    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (key, server)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, key: str, server: str, value: float) -> None:
        self.values.setdefault((key, server), []).append(value)

    def fail(self, key: str, server: str) -> None:
        self.failures[(key, server)] = self.failures.get((key, server), 0) + 1

    def median(self, key: str, server: str) -> float | None:
        values = self.values.get((key, server), [])
        return statistics.median(values) if values else None

    def cell(self, row: Row, server: str) -> str:
        value = self.median(row.key, server)
        failed = self.failures.get((row.key, server), 0)
        if value is None:
            return "fail" if failed else "-"
        return f"{value:,.{row.digits}f}" + ("*" if failed else "")


def table_rows(results: Results) -> list[list[str]]:
    rows = []
    for row in ROWS:
        se = results.median(row.key, "se")
        ng = results.median(row.key, "nginx")
        ratio = se / ng if se is not None and ng else None
        if ratio is None:
            met = "n/a"
        elif row.higher_is_better:
            met = "yes" if ratio >= row.target else "NO"
        else:
            met = "yes" if ratio <= row.target else "NO"
        rows.append(
            [
                row.label,
                results.cell(row, "se"),
                results.cell(row, "nginx"),
                "-" if ratio is None else f"{ratio:.2f}x",
                row.target_text(),
                met,
            ]
        )
    return rows


HEADER = ["test", "se", "nginx", "ratio se/nginx", "target", "met"]


def format_text(rows: list[list[str]], header: list[str] = HEADER) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells)

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def format_markdown(rows: list[list[str]], header: list[str] = HEADER) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def tool_version(cmd: Sequence[str]) -> str:
    try:
        p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (p.stdout + p.stderr).strip().splitlines()
    return text[0] if text else "?"


def log_errors(errors: list[str], findings: list[str]) -> None:
    """The errors of a run and the error lines of the servers' logs, or "no errors"."""
    if errors or findings:
        log(f"\n{len(errors)} error(s):")
        for e in errors:
            log(f"  - {e}")
        for f in findings:
            log(f"  - log: {f}")
    else:
        log("\nno errors")


def error_lines(logs: list[Path]) -> list[str]:
    """Lines from server logs that look like errors, one summary per log file."""
    found = []
    pattern = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|\[(?:error|crit|alert|emerg)\]")
    for path in logs:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        hits = [line for line in text.splitlines() if pattern.search(line)]
        if hits:
            found.append(f"{path}: {len(hits)} error-looking lines, e.g. {hits[0][:200]!r}")
    return found


def log_findings(server: Server) -> list[str]:
    """Lines from the server's own logs that look like errors."""
    return error_lines(server.logs)


def report(results: Results, servers: list[Server], reps: int, args: argparse.Namespace) -> None:
    rows = table_rows(results)
    log("")
    log(
        f"# results: median of {reps} run(s); se --workers {args.workers}, "
        f"nginx worker_processes {args.nginx_workers}, {os.cpu_count()} CPUs"
    )
    log(format_text(rows))
    if results.failures:
        log("fail = every run failed, * = some runs failed (median of the others); see errors")
    for server in servers:
        findings = log_findings(server)
        if server.errors or findings:
            log(f"\n{server.name}: {len(server.errors)} error(s)")
            for e in server.errors:
                log(f"  - {e}")
            for f in findings:
                log(f"  - log: {f}")
        else:
            log(f"\n{server.name}: no errors")
    log("\n<!-- markdown -->")
    log(
        f"Median of {reps} run(s) on {os.cpu_count()} CPUs, se `--workers {args.workers}`, "
        f"nginx `worker_processes {args.nginx_workers}`; "
        f"{tool_version(['nginx', '-v'])}, {tool_version(['wrk', '--version'])}.\n"
    )
    log(format_markdown(rows))


# --------------------------------------------------------------------------- main


def add_se_arguments(p: argparse.ArgumentParser) -> None:
    """--python and --tree: which se runs (bench/compare.py has them too)."""
    p.add_argument("--python", default=sys.executable, help="interpreter that runs se")
    p.add_argument(
        "--tree",
        type=Path,
        default=REPO_ROOT,
        help="source tree whose se runs (e.g. a git worktree of an older commit)",
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark se against nginx WebDAV.")
    p.add_argument("--quick", action="store_true", help="1 repetition instead of 3")
    p.add_argument("--workers", type=int, default=2, help="se --workers (default 2)")
    p.add_argument("--nginx-workers", default="2", help="nginx worker_processes (default 2)")
    p.add_argument("--dir", type=Path, help="work dir (kept; the data in it is reused)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    p.add_argument("--peer-only", action="store_true", help="only run nginx (no se)")
    p.add_argument("--duration", type=int, default=10, help="wrk seconds for 4 KiB GET")
    p.add_argument(
        "--se-config",
        type=Path,
        help="TOML file for se instead of the default '[logging] access_log = false'",
    )
    add_se_arguments(p)
    args = p.parse_args(argv)
    args.tree = args.tree.resolve()
    return args


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: clean up like Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    reps = 1 if args.quick else 3
    for tool in ("curl", "wrk"):
        if shutil.which(tool) is None:
            log(f"{tool} not found (apt-get install -y {tool})")
            return 2
    if args.dir is not None:
        base = args.dir.resolve()
        base.mkdir(parents=True, exist_ok=True)
        remove_base = False
    else:
        base = Path(tempfile.mkdtemp(prefix="se-bench-", dir="/tmp"))
        remove_base = not args.keep
    data = base / "data"
    servers: list[Server] = []
    results = Results()
    status = 0
    try:
        make_data(data)
        log("warming the page cache ...")
        warm_page_cache(data / BIG_NAME)

        servers.append(start_nginx(base, data, args.nginx_workers))
        log(f"nginx at {servers[-1].url}")
        if not args.peer_only:
            servers.append(
                start_se(base, data, args.workers, args.python, args.se_config, tree=args.tree)
            )
            log(f"se at {servers[-1].url}")
        for server in servers:
            sanity_check(server, data)
        warm_page_cache(data / BIG_NAME)

        # (title, result keys, measurement, untimed warm-up run first)
        steps: list[tuple[str, list[str], Measure, bool]] = [
            ("GET 1 GiB, 1 client", ["get1"], big_get(1), False),
            ("GET 1 GiB, 4 clients", ["get4"], big_get(4), False),
            # the first 1 GiB PUT of a run was much slower (seen with nginx alone)
            ("PUT 1 GiB", ["put"], big_put(data), True),
            ("GET 4 KiB (wrk)", ["small"], small_get(args.duration), False),
            ("PROPFIND Depth 1 (wrk)", ["propfind", "propfind_ms"], propfind, False),
        ]
        for title, keys, measure, warmup in steps:
            for server in servers if warmup else []:
                if server.alive():
                    shown = ", ".join(f"{k} {v:,.2f}" for k, v in measure(server).items())
                    log(f"  {title} [warm-up] {server.name}: {shown or 'failed'}")
            for rep in range(reps):
                order = servers if rep % 2 == 0 else servers[::-1]
                for server in order:
                    values = measure(server) if server.alive() else {}
                    for key in keys:
                        if key in values:
                            results.add(key, server.name, values[key])
                        else:
                            results.fail(key, server.name)
                    shown = ", ".join(f"{k} {v:,.2f}" for k, v in values.items()) or "failed"
                    log(f"  {title} [{rep + 1}/{reps}] {server.name}: {shown}")
        report(results, servers, reps, args)
    except StartError as exc:
        log(f"error: {exc}")
        status = 2
    except KeyboardInterrupt:
        log("\ninterrupted; partial results:")
        report(results, servers, reps, args)
        status = 130
    finally:
        for server in servers:
            stop_server(server)
        if remove_base:
            shutil.rmtree(base, ignore_errors=True)
        elif status != 2:
            log(f"\nwork dir kept: {base}")
    return status


if __name__ == "__main__":
    sys.exit(main())
