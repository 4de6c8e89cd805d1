#!/usr/bin/env python3
"""Benchmark se with X.509 proxy clients, against XRootD's HTTPS; see bench/README.md.

Usage: python bench/x509.py [--size 1GiB] [--repeat 3] [--conn-seconds 5] [--wrk-seconds 10]

One loopback-only network namespace (tests/xrootd.py) holds one se (``--workers 2``, its
shipped defaults: access log on; ``tls.client_certs = "optional"``, the test PKI's CA
directory and vomsdir, an ``[[auth.x509]]`` read rule for /dteam and a token issuer), one
XRootD 5.5 (XrdHttp over https, proxies verified against the same CA directory, VOMS through
libXrdVoms, ``ofs.authorize`` with the dteam VO allowed below /dteam: tests.xrootd.grid_site)
serving the same data directory, and one haproxy.  Every client runs in the namespace too.
Measured in interleaved rounds (the order flips every round), medians of ``--repeat``:

1. GET of a ``--size`` file with a VOMS proxy: ``curl --cert P --key P --cacert CA``, MiB/s,
   se vs XRootD;
2. new TLS connections per second with the proxy, each a full handshake (no session reuse)
   plus one GET of a 4 KiB file: ``--conn-procs`` Python client processes (``openssl
   s_time`` cannot send the proxy's chain, so the server could not verify it), se vs XRootD,
   and vs a second XRootD that authorizes the DN instead of extracting VOMS attributes;
3. GET of the 4 KiB file with keep-alive, ``wrk -t2 -c64`` (wrk has no client
   certificates): wrk -> plain http -> haproxy -> https -> se.  haproxy's backend presents
   the proxy (``ssl crt P ca-file CA verify required``, ``http-reuse always``); the token run
   goes through the same haproxy, a backend without a client certificate, and wrk adds
   ``Authorization: Bearer``.  se with a proxy vs se with a token (target: the proxy costs at
   most 10% more).

Under each row, the CPU seconds the server's process tree used during it (from /proc), per
GiB, per connection or per request: less sensitive than rates to the other jobs sharing the
two CPUs.

The result is a report: exit status 0 even when targets are missed, 1 when a sanity check
fails, 2 when a prerequisite is missing or a server does not start, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.run import (  # noqa: E402
    GET_LUA,
    WrkResult,
    error_lines,
    format_markdown,
    format_text,
    log,
    log_errors,
    parse_wrk,
    tool_version,
    warm_page_cache,
)
from bench.tpc import GIB, MIB, human, parse_size, process_tree, write_random  # noqa: E402
from se.auth import issuer  # noqa: E402
from tests.pki import Pki, build_pki  # noqa: E402
from tests.support import SEProcess  # noqa: E402
from tests.xrootd import (  # noqa: E402
    Netns,
    XRootD,
    find_plugin,
    give_to_xrootd,
    grid_site,
    scratch_dir,
    start_se_in,
    start_xrootd,
    xrootd_available,
)

XRD_PORT = 1094
XRD_DN_PORT = 1095  # the same XRootD without VOMS extraction, a DN rule instead
HAPROXY_PROXY_PORT = 18080  # backend with the client proxy
HAPROXY_TOKEN_PORT = 18081  # backend without a client certificate
HOST = "localhost"  # the host certificate's name; resolves to 127.0.0.1 in the namespace
BIG_NAME = "/dteam/big.bin"
SMALL_NAME = "/dteam/small.bin"
SMALL_SIZE = 4096
ISSUER = "https://bench-issuer.example/"
FQANS = ("/dteam",)
START_TIMEOUT = 20.0
WRK_SLACK = 30.0
MAX_CONNECTIONS = 1_000_000  # per client process and run, whatever the time limit
LOAD_NOTE = "/proc/loadavg"


# --------------------------------------------------------------------------- results


@dataclass
class Results:
    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, key: str, side: str, value: float) -> None:
        self.values.setdefault((key, side), []).append(value)

    def runs(self, key: str, side: str) -> list[float]:
        return self.values.get((key, side), [])

    def median(self, key: str, side: str) -> float | None:
        runs = self.runs(key, side)
        return statistics.median(runs) if runs else None

    def error(self, msg: str) -> None:
        self.errors.append(msg)
        log(f"    !! {msg}")


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    sides: tuple[str, str]  # (measured, reference)
    target: str
    met: Callable[[float], bool] | None  # judged on the ratio measured/reference
    digits: int = 0


@dataclass
class Setup:
    ns: Netns
    base: Path
    pki: Pki
    proxy: Path
    token: str
    se: SEProcess
    xrd: XRootD
    xrd_dn: XRootD
    haproxy: subprocess.Popen[bytes]
    haproxy_log: Path

    def pid(self, side: str) -> int:
        pids = {
            "se": self.se.proc.pid,
            "xrootd": self.xrd.proc.pid,
            "xrootd-dn": self.xrd_dn.proc.pid,
        }
        return pids[side]

    def port(self, side: str) -> int:
        return {"se": self.se.port, "xrootd": self.xrd.port, "xrootd-dn": self.xrd_dn.port}[side]

    def url(self, side: str, path: str) -> str:
        return f"https://{HOST}:{self.port(side)}{path}"


# --------------------------------------------------------------------------- the servers


def se_config(pki: Pki, jwks: Path) -> str:
    q = json.dumps
    rules = f"""
[[auth.x509]]
fqan = "/dteam"
path = "/dteam"
allow = ["read"]

[[auth.issuers]]
issuer = {q(ISSUER)}
jwks_file = {q(str(jwks))}
"""
    return pki.se_config(rules)


def haproxy_config(se_port: int, pki: Pki, proxy: Path) -> str:
    """Two plain-http frontends bridging to se over TLS, with and without the proxy."""
    common = f"ssl ca-file {pki.ca_cert} verify required verifyhost {HOST} sni str({HOST})"
    return f"""
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always

frontend with_proxy
    bind 127.0.0.1:{HAPROXY_PROXY_PORT}
    default_backend se_proxy

frontend with_token
    bind 127.0.0.1:{HAPROXY_TOKEN_PORT}
    default_backend se_token

backend se_proxy
    server se 127.0.0.1:{se_port} {common} crt {proxy}

backend se_token
    server se 127.0.0.1:{se_port} {common}
"""


def start_haproxy(ns: Netns, base: Path, config: str) -> tuple[subprocess.Popen[bytes], Path]:
    cfg = base / "haproxy.cfg"
    cfg.write_text(config)
    log_path = base / "haproxy.log"
    with open(log_path, "wb") as out:
        proc: subprocess.Popen[bytes] = ns.popen(
            ["haproxy", "-db", "-f", cfg], stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        probe = ns.curl(
            ["-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{HAPROXY_TOKEN_PORT}/"],
            timeout=5,
        )
        if probe.stdout.strip() not in ("", "000"):
            return proc, log_path
        time.sleep(0.1)
    raise RuntimeError(f"haproxy did not start:\n{log_path.read_text(errors='replace')[-2000:]}")


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# --------------------------------------------------------------------------- clients


def curl_get(
    setup: Setup, url: str, *, cert: bool = True, timeout: float = 600.0
) -> tuple[str, int, float]:
    """(status, bytes, seconds) of one curl GET to /dev/null inside the namespace."""
    args: list[str | Path] = [
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download} %{time_total}",
    ]
    args += ["--cacert", setup.pki.ca_cert]
    if cert:
        args += ["--cert", setup.proxy, "--key", setup.proxy]
    res = setup.ns.curl([*args, url], timeout=timeout)
    parts = res.stdout.split()
    if res.returncode != 0 or len(parts) != 3:
        return f"curl exit {res.returncode}: {res.stderr.strip()[-300:]}", 0, 0.0
    return parts[0], int(parts[1]), float(parts[2])


def wrk(
    setup: Setup, port: int, seconds: int, conns: int, headers: Sequence[str]
) -> WrkResult | None:
    cmd: list[str | Path] = [
        "wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", GET_LUA,
        *(a for h in headers for a in ("-H", h)), f"http://127.0.0.1:{port}{SMALL_NAME}",
    ]  # fmt: skip
    try:
        proc = setup.ns.run(cmd, timeout=seconds + WRK_SLACK)
    except subprocess.TimeoutExpired:
        return None
    return parse_wrk(proc.stdout)


def _one_get(ctx: ssl.SSLContext, host: str, port: int, request: bytes, want: int) -> None:
    """A new TCP connection, a full TLS handshake, one GET read to its last byte, close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = tls.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed before the response head")
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            first = lines[0].split()
            status = first[1] if len(first) > 1 else b"?"
            if status != b"200":
                raise ConnectionError(f"status {status.decode(errors='replace')}")
            length = want
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length != want:
                raise ConnectionError(f"Content-Length {length}, want {want}")
            while len(body) < length:
                chunk = tls.recv(65536)
                if not chunk:
                    raise ConnectionError(f"body cut at {len(body)} bytes")
                body += chunk


def _connect_worker(job: dict[str, Any]) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=job["ca"])
    ctx.load_cert_chain(job["proxy"])
    request = (
        f"GET {job['path']} HTTP/1.1\r\nHost: {job['host']}:{job['port']}\r\n"
        "User-Agent: x509-bench\r\nConnection: close\r\n\r\n"
    ).encode()
    ok = errors = 0
    first_error = ""
    start = time.perf_counter()
    deadline = start + float(job["seconds"])
    while time.perf_counter() < deadline and ok + errors < MAX_CONNECTIONS:
        try:
            _one_get(ctx, job["host"], int(job["port"]), request, int(job["size"]))
            ok += 1
        except (OSError, ValueError, IndexError) as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
            if errors > 100 and ok == 0:
                break  # nothing works: stop early, the error says why
    return {"ok": ok, "errors": errors, "first_error": first_error,
            "seconds": time.perf_counter() - start}  # fmt: skip


def connect_main(argv: Sequence[str]) -> int:
    """``x509.py _connect JOB.json``: run inside the namespace, print JSON."""
    job = json.loads(Path(argv[0]).read_text())
    procs = int(job["procs"])
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        parts = pool.map(_connect_worker, [job] * procs)
    json.dump(
        {
            "ok": sum(p["ok"] for p in parts),
            "errors": sum(p["errors"] for p in parts),
            "first_error": next((p["first_error"] for p in parts if p["first_error"]), ""),
            "seconds": max(p["seconds"] for p in parts),
        },
        sys.stdout,
    )
    return 0


def connection_rate(setup: Setup, side: str, seconds: float, procs: int) -> tuple[float, int, str]:
    """(connections/s, connections, problem or "") of ``procs`` processes making new TLS
    connections."""
    job = {
        "host": HOST, "port": setup.port(side), "path": SMALL_NAME, "size": SMALL_SIZE,
        "proxy": str(setup.proxy), "ca": str(setup.pki.ca_cert), "seconds": seconds,
        "procs": procs,
    }  # fmt: skip
    job_path = setup.base / f"connect-{side}.json"
    job_path.write_text(json.dumps(job))
    res = setup.ns.run(
        [sys.executable, str(Path(__file__).resolve()), "_connect", job_path],
        timeout=seconds + 60,
    )
    if res.returncode != 0:
        return 0.0, 0, f"client exited {res.returncode}: {res.stderr[-500:]}"
    out = json.loads(res.stdout)
    if out["errors"]:
        tried = out["ok"] + out["errors"]
        return 0.0, 0, f"{out['errors']} failed connections of {tried}: {out['first_error']}"
    return out["ok"] / out["seconds"], int(out["ok"]), ""


# --------------------------------------------------------------------------- measurements


def measure_big(setup: Setup, side: str, size: int, results: Results, timed: bool) -> None:
    with cpu_of(setup.pid(side)) as used:
        status, got, seconds = curl_get(setup, setup.url(side, BIG_NAME))
    label = f"GET {human(size)} {side}"
    if status != "200" or got != size or seconds <= 0:
        results.error(f"{label}: status {status}, {got} bytes")
        return
    rate = size / seconds / MIB
    per_gib = used[0] / (size / GIB)
    log(
        f"  {label}{'' if timed else ' (warm-up)'}: {seconds:.2f} s, {rate:,.0f} MiB/s, "
        f"server CPU {per_gib:.2f} s/GiB"
    )
    if timed:
        results.add("big", side, rate)
        results.add("big_cpu", side, per_gib)


def measure_connections(
    setup: Setup, side: str, seconds: float, procs: int, results: Results, timed: bool
) -> None:
    with cpu_of(setup.pid(side)) as used:
        rate, count, problem = connection_rate(setup, side, seconds, procs)
    label = f"new TLS connections {side}"
    if problem or not count:
        results.error(f"{label}: {problem or 'none made'}")
        return
    per_conn = used[0] * 1000 / count
    log(
        f"  {label}{'' if timed else ' (warm-up)'}: {rate:,.0f} conn/s, "
        f"server CPU {per_conn:.2f} ms/connection"
    )
    if timed:
        results.add("connect", side, rate)
        results.add("connect_cpu", side, per_conn)


def measure_keepalive(
    setup: Setup, credential: str, seconds: int, conns: int, results: Results, timed: bool
) -> None:
    if credential == "proxy":
        port, headers = HAPROXY_PROXY_PORT, []
    else:
        port, headers = HAPROXY_TOKEN_PORT, [f"Authorization: Bearer {setup.token}"]
    with cpu_of(setup.se.proc.pid) as used:
        r = wrk(setup, port, seconds, conns, headers)
    label = f"GET 4 KiB keep-alive via haproxy, {credential}"
    if r is None or not r.requests:
        results.error(f"{label}: no wrk result")
        return
    if r.non_2xx or r.socket_errors:
        results.error(
            f"{label}: {r.non_2xx} non-2xx, {r.socket_errors} socket errors of {r.requests}"
        )
        return
    per_request = used[0] * 1e6 / r.requests
    log(
        f"  {label}{'' if timed else ' (warm-up)'}: {r.rps:,.0f} req/s, {r.latency_ms:.1f} ms, "
        f"se CPU {per_request:.0f} us/request"
    )
    if timed:
        results.add("keepalive", credential, r.rps)
        results.add("keepalive_cpu", credential, per_request)


def sanity(setup: Setup) -> list[str]:
    """Both servers demand the proxy and serve the right bytes; the bridge works."""
    problems = []
    want = {"se": "401", "xrootd": "403", "xrootd-dn": "403"}
    for side in want:
        status, _, _ = curl_get(setup, setup.url(side, SMALL_NAME), cert=False, timeout=30)
        if status != want[side]:
            problems.append(f"{side}: anonymous GET answered {status}, want {want[side]}")
        status, got, _ = curl_get(setup, setup.url(side, SMALL_NAME), timeout=30)
        if status != "200" or got != SMALL_SIZE:
            problems.append(f"{side}: GET with the proxy answered {status}, {got} bytes")
    checks = [
        (HAPROXY_PROXY_PORT, [], "200"),
        (HAPROXY_TOKEN_PORT, ["-H", f"Authorization: Bearer {setup.token}"], "200"),
        (HAPROXY_TOKEN_PORT, [], "401"),
    ]
    for port, extra, code in checks:
        res = setup.ns.curl(
            [
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                *extra,
                f"http://127.0.0.1:{port}{SMALL_NAME}",
            ],
            timeout=30,
        )
        if res.stdout.strip() != code:
            problems.append(f"haproxy :{port} {extra[:1]}: answered {res.stdout!r}, want {code}")
    return problems


# --------------------------------------------------------------------------- report


def rows_for(args: argparse.Namespace) -> list[Row]:
    big = human(args.size)
    conn = f"new TLS connections with a proxy, handshake + GET 4 KiB, no reuse ({args.conn_procs} "
    keep = f"GET 4 KiB keep-alive, wrk -t2 -c{args.wrk_connections} via haproxy"
    return [
        Row(
            "big",
            f"GET {big}, curl with a proxy (MiB/s); reference: XRootD",
            ("se", "xrootd"),
            ">= 1.00x",
            lambda ratio: ratio >= 1.0,
        ),
        Row("big_cpu", "  server CPU per GiB of that GET (s)", ("se", "xrootd"), "-", None, 2),
        Row(
            "connect",
            conn + "client processes, conn/s); reference: XRootD",
            ("se", "xrootd"),
            "-",
            None,
        ),
        Row(
            "connect_cpu",
            "  server CPU per connection (ms)",
            ("se", "xrootd"),
            "-",
            None,
            2,
        ),
        Row(
            "connect",
            "the same; reference: XRootD with a DN rule instead of VOMS extraction (conn/s)",
            ("se", "xrootd-dn"),
            "-",
            None,
        ),
        Row(
            "connect_cpu",
            "  server CPU per connection (ms)",
            ("se", "xrootd-dn"),
            "-",
            None,
            2,
        ),
        Row(
            "keepalive",
            f"{keep} (req/s); se with a proxy, reference: se with a token",
            ("proxy", "token"),
            ">= 0.91x (cost <= 10%)",
            lambda ratio: ratio >= 1 / 1.1,
        ),
        Row(
            "keepalive_cpu",
            "  se CPU per request (us)",
            ("proxy", "token"),
            "-",
            None,
        ),
    ]


HEADER = ["test", "se", "reference", "ratio se/reference", "target", "met"]


def table(results: Results, rows: list[Row]) -> list[list[str]]:
    out = []
    for row in rows:
        a, b = (results.median(row.key, side) for side in row.sides)
        ratio = a / b if a is not None and b else None
        met = (
            "-"
            if row.met is None
            else ("n/a" if ratio is None else "yes" if row.met(ratio) else "NO")
        )
        cells = ["-" if v is None else f"{v:,.{row.digits}f}" for v in (a, b)]
        out.append([row.label, *cells, "-" if ratio is None else f"{ratio:.2f}x", row.target, met])
    return out


def tree_cpu(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes (those still alive)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[-1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


@contextlib.contextmanager
def cpu_of(pid: int) -> Iterator[list[float]]:
    """CPU seconds a server's process tree uses inside the block, in the yielded list."""
    pids = process_tree(pid)
    used = [0.0]
    start = tree_cpu(pids)
    try:
        yield used
    finally:
        used[0] = tree_cpu(pids) - start


def subject_hash(cert: Path) -> str:
    res = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(cert)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return res.stdout.strip()


def loadavg() -> str:
    try:
        return " ".join(Path(LOAD_NOTE).read_text().split()[:3])
    except OSError:
        return "?"


def report(results: Results, args: argparse.Namespace, logs: list[Path], load: str) -> None:
    rows = rows_for(args)
    cells = table(results, rows)
    log("")
    log(format_text(cells, HEADER))
    log("\nevery run (in order):")
    listed = set()
    for row in rows:
        for side in row.sides:
            if (row.key, side) in listed:
                continue
            listed.add((row.key, side))
            runs = ", ".join(f"{v:,.{row.digits}f}" for v in results.runs(row.key, side))
            log(f"  {row.key} {side}: {runs or '-'}")
    findings = error_lines(logs)
    log_errors(results.errors, findings)
    log("\n<!-- markdown -->")
    log(
        f"Median of {args.repeat} interleaved round(s) after one warm-up, {os.cpu_count()} CPUs, "
        f"load average {load} at the start and {loadavg()} at the end; se `--workers "
        f'{args.workers}` (access log on, `client_certs = "optional"`), '
        f"{tool_version(['xrootd', '-v'])} (libXrdVoms, `ofs.authorize`), "
        f"{tool_version(['haproxy', '-v'])}, {tool_version(['wrk', '--version'])}; "
        f"RSA 2048 keys, proxy with a VOMS AC (/dteam).\n"
    )
    log(format_markdown(cells, HEADER))


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="se with X.509 proxies vs XRootD over HTTPS.")
    p.add_argument("--size", type=parse_size, default=GIB, help="big file (default 1GiB)")
    p.add_argument("--repeat", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument("--conn-seconds", type=float, default=5.0, help="per connection-rate run")
    p.add_argument("--conn-procs", type=int, default=2, help="connecting client processes")
    p.add_argument("--wrk-seconds", type=int, default=10, help="per keep-alive run")
    p.add_argument("--wrk-connections", type=int, default=64, help="wrk -c (default 64)")
    p.add_argument("--workers", type=int, default=2, help="se --workers (default 2)")
    p.add_argument("--tmpdir", type=Path, help="where the work dir goes (e.g. /dev/shm)")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.conn_procs < 1 or args.wrk_connections < 1:
        p.error("--repeat, --conn-procs and --wrk-connections must be >= 1")
    return args


def prerequisites() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, XRootD)"
    reason = xrootd_available()
    if reason is not None:
        return reason
    for tool in ("curl", "wrk", "haproxy", "voms-proxy-fake"):
        if shutil.which(tool) is None:
            return f"not installed: {tool} (apt-get install curl wrk haproxy voms-clients)"
    if find_plugin("libXrdVoms-5.so") is None:
        return "libXrdVoms-5.so not found (apt-get install xrootd-voms-plugins)"
    return None


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace, results: Results) -> int:
    load = loadavg()
    with scratch_dir() as base, Netns() as ns:
        log(f"work dir {base}, network namespace {ns.name}, load average {load}")
        (base / "pki").mkdir()
        pki = build_pki(base / "pki")
        proxy = pki.proxy(pki.user("alice"), fqans=FQANS)
        data = base / "data"
        (data / "dteam").mkdir(parents=True)
        log(f"writing {human(args.size)} of random data ...")
        write_random(data / BIG_NAME.lstrip("/"), args.size)
        (data / SMALL_NAME.lstrip("/")).write_bytes(os.urandom(SMALL_SIZE))
        give_to_xrootd(data)
        key, jwks = issuer.keygen(base / "keys")
        token = issuer.issue(
            issuer.load_key(key), ISSUER, "storage.read:/dteam", ["https://wlcg.cern.ch/jwt/v1/any"],
            3600, "bench",
        )  # fmt: skip
        tls = pki.host_tls()
        site = grid_site(base / "grid", pki.ca_dir, pki.vomsdir, "o dteam /dteam a")
        xrd = start_xrootd(
            ns, base, data, XRD_PORT, tls=tls, extra_config=site.extra_config, env=site.env
        )
        dn_rule = f"u {subject_hash(pki.user('alice').cert)}.0 /dteam a"
        site_dn = grid_site(base / "grid-dn", pki.ca_dir, pki.vomsdir, dn_rule, voms=False)
        xrd_dn = start_xrootd(
            ns, base, data, XRD_DN_PORT, tls=tls, extra_config=site_dn.extra_config
        )
        se = start_se_in(ns, base, data, se_config(pki, jwks), ["--workers", str(args.workers)])
        haproxy, haproxy_log = start_haproxy(ns, base, haproxy_config(se.port, pki, proxy))
        setup = Setup(ns, base, pki, proxy, token, se, xrd, xrd_dn, haproxy, haproxy_log)
        logs = [
            p for p in (se.stderr_path, xrd.log_path, xrd_dn.log_path, haproxy_log) if p is not None
        ]
        try:
            problems = sanity(setup)
            if problems:
                for problem in problems:
                    log(f"sanity check failed: {problem}")
                return 1
            log(f"se at {setup.url('se', '/')}, XRootD at {setup.url('xrootd', '/')}")
            _measure(setup, args, results)
        finally:
            report(results, args, logs, load)
            stop(haproxy)
            se.stop()
            xrd_dn.stop()
            xrd.stop()
    return 0


def _measure(setup: Setup, args: argparse.Namespace, results: Results) -> None:
    warm_page_cache(setup.xrd.data_dir / BIG_NAME.lstrip("/"))
    sides = ["se", "xrootd"]
    connecting = ["se", "xrootd", "xrootd-dn"]
    credentials = ["proxy", "token"]
    log("warm-up")
    for side in sides:
        measure_big(setup, side, args.size, results, timed=False)
    for side in connecting:
        measure_connections(setup, side, 1.0, args.conn_procs, results, timed=False)
    for credential in credentials:
        measure_keepalive(setup, credential, 2, args.wrk_connections, results, timed=False)
    for rnd in range(args.repeat):
        log(f"round {rnd + 1}/{args.repeat}")
        flip = rnd % 2 == 1
        order = sides[::-1] if flip else sides
        for side in order:
            measure_big(setup, side, args.size, results, timed=True)
        for side in connecting[rnd % 3 :] + connecting[: rnd % 3]:
            measure_connections(setup, side, args.conn_seconds, args.conn_procs, results, True)
        for credential in credentials[::-1] if flip else credentials:
            measure_keepalive(
                setup, credential, args.wrk_seconds, args.wrk_connections, results, timed=True
            )
        for name, alive in (
            ("se", setup.se.proc.poll() is None),
            ("xrootd", setup.xrd.proc.poll() is None),
            ("xrootd-dn", setup.xrd_dn.proc.poll() is None),
            ("haproxy", setup.haproxy.poll() is None),
        ):
            if not alive:
                results.error(f"{name} exited during the run")
                return


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["_connect"]:
        return connect_main(raw[1:])
    args = parse_args(raw)
    signal.signal(signal.SIGTERM, _terminate)
    reason = prerequisites()
    if reason is not None:
        log(reason)
        return 2
    if args.tmpdir is not None:
        tempfile.tempdir = str(args.tmpdir.resolve())
    need = args.size + 256 * MIB
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < need:
        log(f"{tempfile.gettempdir()}: {free / GIB:.1f} GiB free, need {need / GIB:.1f} GiB")
        return 2
    results = Results()
    try:
        return run(args, results)
    except RuntimeError as exc:  # a server did not start
        log(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        log("\ninterrupted (partial results above)")
        return 130


if __name__ == "__main__":
    sys.exit(main())
