#!/usr/bin/env python3
"""Benchmark se's HTTP third-party copy against XRootD's; see bench/README.md.

Usage: python bench/tpc.py [--size 1GiB] [--repeat 3] [--concurrency 200] [--tmpdir DIR]

Two se instances and two XRootD instances (XrdHttp + libXrdHttpTPC) run in one loopback-only
network namespace (tests/xrootd.py).  Measured, with curl sending the COPY:

* one big file pulled and pushed se -> se and xrootd -> xrootd (MB/s, median of --repeat),
  with the peak RSS of the server that moves the data;
* --concurrency pulls of --concurrency-size files issued at once by an aiohttp client,
  se -> se (and xrootd -> xrootd for reference): failures, wall time, peak RSS of the pulling
  server's process tree (sampled from /proc every 50 ms).

The result is a report: the exit status is 0 even when targets are missed, 2 when a server
cannot start or a prerequisite is missing, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import aiohttp  # noqa: E402

from bench.run import (  # noqa: E402
    error_lines,
    format_markdown,
    format_text,
    log,
    log_errors,
    same_samples,
    tool_version,
    warm_page_cache,
)
from tests.support import SEProcess  # noqa: E402
from tests.xrootd import (  # noqa: E402
    Netns,
    TPCReply,
    XRootD,
    give_to_xrootd,
    parse_perf_markers,
    scratch_dir,
    start_se_in,
    start_xrootd,
    tpc_copy,
    xrootd_available,
)

MB = 1_000_000  # reported units are MB (10^6 bytes) and MB/s
MIB = 1 << 20
GIB = 1 << 30
BIG_NAME = "big.bin"
CONC_DIR = "c"
SAMPLE_PERIOD = 0.05  # seconds between RSS samples
TREE_RESCAN = 10  # samples between rescans of /proc for new child processes
RSS_TARGET_MB = 300.0
XRD_PORTS = (1094, 1095)
XRD_EXTRA = "xrootd.chksum adler32"  # as a WLCG XRootD is configured; TPC does not use it
SE_DEFAULT_CONFIG = '[logging]\naccess_log = false\nlevel = "warning"\n'
PAGE = os.sysconf("SC_PAGE_SIZE")

_SIZE_RE = re.compile(r"(?i)^\s*(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$")
_UNITS = {
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "kb": 1000,
    "m": MIB,
    "mib": MIB,
    "mb": MB,
    "g": GIB,
    "gib": GIB,
    "gb": 1000 * MB,
}


def parse_size(text: str) -> int:
    """``1GiB``, ``512MiB``, ``100MB``, ``4096`` -> bytes (K/M/G alone are binary)."""
    m = _SIZE_RE.match(text)
    if m is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1GiB, 256MiB, 100MB)")
    value = int(float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()])
    if value < 0:
        raise argparse.ArgumentTypeError(f"negative size: {text!r}")
    return value


def human(size: int) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} B"


# --------------------------------------------------------------------------- RSS of a tree


def _parent_map() -> dict[int, list[int]]:
    """ppid -> pids, from /proc/<pid>/stat of every process."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[-1].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    children = _parent_map()
    tree: list[int] = []
    todo = [root]
    while todo and len(tree) < 10_000:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def rss_bytes(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


class RSSSampler(threading.Thread):
    """Samples the summed RSS of a process and its descendants every SAMPLE_PERIOD s."""

    def __init__(self, root_pid: int) -> None:
        super().__init__(daemon=True, name=f"rss-{root_pid}")
        self.root_pid = root_pid
        self.peak = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        pids: list[int] = []
        while not self._halt.is_set():
            if self.samples % TREE_RESCAN == 0:
                pids = process_tree(self.root_pid)
            self.peak = max(self.peak, rss_bytes(pids))
            self.samples += 1
            self._halt.wait(SAMPLE_PERIOD)

    def finish(self) -> int:
        self._halt.set()
        self.join(5)
        return self.peak


@contextmanager
def sampling(pid: int) -> Iterator[RSSSampler]:
    sampler = RSSSampler(pid)
    sampler.start()
    try:
        yield sampler
    finally:
        sampler.finish()


# --------------------------------------------------------------------------- the servers


@dataclass
class Peer:
    """One server as the benchmark sees it: URLs, data dir, process to sample."""

    name: str  # se-a, se-b, xrd-a, xrd-b
    kind: str  # se | xrootd
    url: str
    root: Path
    pid: int
    alive: Callable[[], bool]
    logs: list[Path] = field(default_factory=list)


def se_peer(name: str, srv: SEProcess) -> Peer:
    logs = [p for p in (srv.stderr_path,) if p is not None]
    return Peer(name, "se", srv.url, srv.root, srv.proc.pid, lambda: srv.proc.poll() is None, logs)


def xrd_peer(name: str, srv: XRootD) -> Peer:
    return Peer(
        name,
        "xrootd",
        srv.url,
        srv.data_dir,
        srv.proc.pid,
        lambda: srv.proc.poll() is None,
        [srv.log_path],
    )


def write_random(path: Path, size: int) -> None:
    chunk = 16 * MIB
    with path.open("wb") as f:
        left = size
        while left > 0:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n


# --------------------------------------------------------------------------- big copies


@dataclass
class Results:
    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (key, kind)
    errors: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)

    def add(self, key: str, kind: str, value: float) -> None:
        self.values.setdefault((key, kind), []).append(value)

    def median(self, key: str, kind: str) -> float | None:
        values = self.values.get((key, kind), [])
        return statistics.median(values) if values else None

    def error(self, msg: str) -> None:
        self.errors.append(msg)
        log(f"    !! {msg}")


def check_reply(reply: TPCReply, want_status: int) -> str | None:
    if reply.status != want_status:
        return f"status {reply.status} (want {want_status}): {reply.body[-300:]!r}"
    if reply.final != "success: Created":
        return f"final line {reply.final!r}"
    return None


def big_copy(
    ns: Netns,
    mode: str,
    src: Peer,
    dst: Peer,
    size: int,
    tag: str,
    timeout: float,
    results: Results,
    timed: bool = True,
) -> None:
    """One COPY of BIG_NAME from src to dst (``mode`` pull or push); an untimed one
    (warm-up) adds no values, but its problems are reported all the same."""
    kind = src.kind
    name = f"dst-{mode}-{re.sub(r'[^0-9A-Za-z]+', '-', tag)}.bin"
    target = dst.root / name
    source = destination = None
    if mode == "pull":  # the destination moves the data
        active, url, source = dst, f"{dst.url}/{name}", f"{src.url}/{BIG_NAME}"
    else:
        active, url, destination = src, f"{src.url}/{BIG_NAME}", f"{dst.url}/{name}"
    want_status = 202 if kind == "se" else 201
    label = f"{mode} {kind} [{tag}]"
    os.sync()  # nobody's dirty pages pending when the clock starts
    problem: str | None = None
    try:
        with sampling(active.pid) as sampler:
            start = time.perf_counter()
            reply = tpc_copy(ns, url, source=source, destination=destination, timeout=timeout)
            wall = time.perf_counter() - start
        problem = check_reply(reply, want_status)
        if problem is None:
            if not target.is_file() or target.stat().st_size != size:
                got = target.stat().st_size if target.is_file() else "no file"
                problem = f"destination has {got}, want {size} bytes"
            elif not same_samples(src.root / BIG_NAME, target):
                problem = "destination content differs from the source"
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    finally:
        with suppress(FileNotFoundError):
            target.unlink()
    if problem is not None:
        results.error(f"{label}: {problem}")
        return
    rate = size / wall / MB
    peak = sampler.peak / MB
    log(f"  {label}: {wall:.2f} s, {rate:,.0f} MB/s, peak RSS {active.name} {peak:.0f} MB")
    if timed:
        results.add(mode, kind, rate)
        results.add(f"{mode}_rss", kind, peak)


# --------------------------------------------------------------------------- concurrency


async def _one_copy(
    session: aiohttp.ClientSession, dst: str, src: str, t0: float
) -> dict[str, Any]:
    began = time.perf_counter() - t0
    try:
        async with session.request("COPY", dst, headers={"Source": src}) as resp:
            body = await resp.text(errors="replace")
            status = resp.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return {"dst": dst, "error": f"{type(exc).__name__}: {exc}", "began": began}
    _markers, final = parse_perf_markers(body)
    ended = time.perf_counter() - t0
    return {"dst": dst, "status": status, "final": final, "began": began, "ended": ended}


async def concurrent_pulls(jobs: list[tuple[str, str]], limit: float) -> dict[str, Any]:
    """Issue every COPY at once; each job is (destination URL, source URL)."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, force_close=True)
    client_timeout = aiohttp.ClientTimeout(total=limit)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        t0 = time.perf_counter()
        tasks = [asyncio.ensure_future(_one_copy(session, d, s, t0)) for d, s in jobs]
        done, pending = await asyncio.wait(tasks, timeout=limit + 5)
        wall = time.perf_counter() - t0
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    out: list[dict[str, Any]] = []
    for (dst, _src), task in zip(jobs, tasks, strict=True):
        if task in done and not task.cancelled() and task.exception() is None:
            out.append(task.result())
        else:
            out.append({"dst": dst, "error": "no answer within the time limit"})
    return {"wall": wall, "results": out}


def client_main(argv: Sequence[str]) -> int:
    """``tpc.py _client JOBS.json TIMEOUT``: run inside the namespace, print JSON."""
    jobs_path, timeout = Path(argv[0]), float(argv[1])
    jobs = [(str(d), str(s)) for d, s in json.loads(jobs_path.read_text())]
    result = asyncio.run(concurrent_pulls(jobs, timeout))
    json.dump(result, sys.stdout)
    return 0


def prepare_concurrency(src: Peer, dst: Peer, count: int, size: int) -> list[Path]:
    sources = []
    (src.root / CONC_DIR).mkdir(exist_ok=True)
    (dst.root / CONC_DIR).mkdir(exist_ok=True)  # XRootD cannot pull into a missing directory
    for i in range(count):
        path = src.root / CONC_DIR / f"f{i:04d}.bin"
        if not (path.is_file() and path.stat().st_size == size):
            path.write_bytes(os.urandom(size))
        sources.append(path)
    if src.kind == "xrootd":
        give_to_xrootd(src.root / CONC_DIR)
    if dst.kind == "xrootd":
        give_to_xrootd(dst.root / CONC_DIR)
    return sources


def concurrency_run(
    ns: Netns,
    base: Path,
    src: Peer,
    dst: Peer,
    sources: list[Path],
    timeout: float,
    results: Results,
) -> None:
    kind = src.kind
    label = f"{len(sources)} concurrent pulls {kind}"
    jobs = [(f"{dst.url}/{CONC_DIR}/{p.name}", f"{src.url}/{CONC_DIR}/{p.name}") for p in sources]
    jobs_path = base / f"jobs-{kind}.json"
    jobs_path.write_text(json.dumps(jobs))
    for p in sources:
        with suppress(FileNotFoundError):
            (dst.root / CONC_DIR / p.name).unlink()
    os.sync()
    want_status = 202 if kind == "se" else 201
    with sampling(dst.pid) as active, sampling(src.pid) as passive:
        proc = ns.run(
            [sys.executable, str(Path(__file__).resolve()), "_client", jobs_path, str(timeout)],
            timeout=timeout + 60,
        )
    if proc.returncode != 0:
        results.error(f"{label}: client exited {proc.returncode}: {proc.stderr[-1000:]}")
        return
    report = json.loads(proc.stdout)
    failures: list[str] = []
    latencies: list[float] = []
    for item, path in zip(report["results"], sources, strict=True):
        copy = dst.root / CONC_DIR / path.name
        if "error" in item:
            failures.append(f"{item['dst']}: {item['error']}")
        elif item["status"] != want_status or item["final"] != "success: Created":
            failures.append(f"{item['dst']}: status {item['status']}, final {item['final']!r}")
        elif not copy.is_file() or copy.read_bytes() != path.read_bytes():
            failures.append(f"{item['dst']}: copy missing or different")
        else:
            latencies.append(item["ended"] - item["began"])
    wall = float(report["wall"])
    log(
        f"  {label}: {len(failures)} failures, {wall:.2f} s wall, "
        f"peak RSS {dst.name} {active.peak / MB:.0f} MB, {src.name} {passive.peak / MB:.0f} MB"
        + (
            f", per-copy median {statistics.median(latencies):.2f} s max {max(latencies):.2f} s"
            if latencies
            else ""
        )
    )
    for f in failures[:10]:
        results.error(f"{label}: {f}")
    if len(failures) > 10:
        results.error(f"{label}: ... {len(failures) - 10} more failures")
    results.add("conc_fail", kind, len(failures))
    results.add("conc_wall", kind, wall)
    results.add("conc_rss", kind, active.peak / MB)
    results.add("conc_src_rss", kind, passive.peak / MB)
    if latencies:
        results.add("conc_lat", kind, statistics.median(latencies))
        results.add("conc_lat_max", kind, max(latencies))


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    digits: int = 0
    target: str = ""
    check: Callable[[float], bool] | None = None  # applied to se's value


def rows_for(args: argparse.Namespace) -> list[Row]:
    big = human(args.size)
    conc = f"{args.concurrency} x {human(args.concurrency_size)}"
    return [
        Row("pull", f"TPC pull {big} (MB/s)"),
        Row("push", f"TPC push {big} (MB/s)"),
        Row("pull_rss", f"peak RSS of the pulling server, {big} pull (MB)"),
        Row("push_rss", f"peak RSS of the pushing server, {big} push (MB)"),
        Row("conc_fail", f"{conc} concurrent pulls: failures", 0, "0", lambda v: v == 0),
        Row("conc_wall", f"{conc} concurrent pulls: wall time (s)", 2),
        Row("conc_lat", f"{conc} concurrent pulls: median time per COPY (s)", 2),
        Row("conc_lat_max", f"{conc} concurrent pulls: slowest COPY (s)", 2),
        Row(
            "conc_rss",
            f"{conc} concurrent pulls: peak RSS of the pulling server (MB)",
            0,
            f"< {RSS_TARGET_MB:g}",
            lambda v: v < RSS_TARGET_MB,
        ),
        Row("conc_src_rss", f"{conc} concurrent pulls: peak RSS of the source server (MB)"),
    ]


HEADER = ["test", "se", "xrootd", "ratio se/xrootd", "target (se)", "met"]


def table(results: Results, rows: list[Row]) -> list[list[str]]:
    out = []
    for row in rows:
        se = results.median(row.key, "se")
        xrd = results.median(row.key, "xrootd")
        ratio = "-" if se is None or not xrd else f"{se / xrd:.2f}x"
        met = (
            "-"
            if row.check is None
            else ("n/a" if se is None else "yes" if row.check(se) else "NO")
        )
        cells = ["-" if v is None else f"{v:,.{row.digits}f}" for v in (se, xrd)]
        out.append([row.label, *cells, ratio, row.target or "-", met])
    return out


def log_findings(peers: list[Peer]) -> list[str]:
    return [f"{peer.name} {line}" for peer in peers for line in error_lines(peer.logs)]


def report(results: Results, peers: list[Peer], args: argparse.Namespace, se_config: str) -> None:
    rows = table(results, rows_for(args))
    log("")
    log(format_text(rows, HEADER))
    findings = log_findings(peers)
    log_errors(results.errors, findings)
    knobs = " ".join(line.strip() for line in se_config.splitlines() if "=" in line)
    log("\n<!-- markdown -->")
    log(
        f"Median of {args.repeat} run(s) after {args.warmup} warm-up, {os.cpu_count()} CPUs, "
        f"data in `{args.tmpdir or tempfile.gettempdir()}`; se `--workers {args.workers}` "
        f"(`{knobs}`), {tool_version(['xrootd', '-v'])} (`{XRD_EXTRA}`); MB = 10^6 bytes; "
        f"RSS summed over each server's process tree, sampled every "
        f"{SAMPLE_PERIOD * 1000:.0f} ms.\n"
    )
    log(format_markdown(rows, HEADER))


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark se's HTTP-TPC against XRootD's.")
    p.add_argument("--size", type=parse_size, default=GIB, help="big file size (default 1GiB)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per copy (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per big COPY")
    p.add_argument("--concurrency", type=int, default=200, help="concurrent pulls (default 200)")
    p.add_argument(
        "--concurrency-size", type=parse_size, default=MIB, help="size of each (default 1MiB)"
    )
    p.add_argument(
        "--concurrency-timeout", type=float, default=120.0, help="seconds for all of them"
    )
    p.add_argument("--skip-big", action="store_true", help="only the concurrency test")
    p.add_argument("--skip-concurrency", action="store_true", help="only the big copies")
    p.add_argument("--se-only", action="store_true", help="no XRootD comparison runs")
    p.add_argument("--workers", type=int, default=1, help="se --workers (default 1)")
    p.add_argument(
        "--se-config",
        type=Path,
        help=f"TOML for both se instances instead of {SE_DEFAULT_CONFIG!r}",
    )
    p.add_argument("--tmpdir", type=Path, help="where the work dir goes (e.g. /dev/shm)")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0 or args.concurrency < 0:
        p.error("--repeat must be >= 1, --warmup and --concurrency >= 0")
    return args


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: clean up like Ctrl-C


def needed_bytes(args: argparse.Namespace) -> int:
    big = 0 if args.skip_big else 2 * args.size + args.size  # two sources + one copy at a time
    conc = 0 if args.skip_concurrency else 4 * args.concurrency * args.concurrency_size
    return big + conc + 256 * MIB


def run_benchmark(args: argparse.Namespace, se_config: str, results: Results) -> list[Peer]:
    peers: list[Peer] = []
    try:
        with scratch_dir() as base, Netns() as ns:
            try:
                _run_in(ns, base, args, se_config, results, peers)
            finally:
                report(results, peers, args, se_config)
    except KeyboardInterrupt:
        log("\ninterrupted (partial results above)")
        raise
    return peers


def _run_in(
    ns: Netns,
    base: Path,
    args: argparse.Namespace,
    se_config: str,
    results: Results,
    peers: list[Peer],
) -> None:
    log(f"work dir {base}, network namespace {ns.name}")
    dirs = {name: base / name for name in ("se-a", "se-b", "xrd-a", "xrd-b")}
    for d in dirs.values():
        d.mkdir()
    if not args.skip_big:
        big = dirs["se-a"] / BIG_NAME
        log(f"writing {big} ({human(args.size)} of random data) ...")
        write_random(big, args.size)
        if not args.se_only:
            shutil.copyfile(big, dirs["xrd-a"] / BIG_NAME)
    cfg_path = base / "se.toml"
    cfg_path.write_text(se_config)
    extra = ["--workers", str(args.workers)]
    se_a = se_peer("se-a", start_se_in(ns, base, dirs["se-a"], se_config, extra))
    peers.append(se_a)
    se_b = se_peer("se-b", start_se_in(ns, base, dirs["se-b"], se_config, extra))
    peers.append(se_b)
    log(f"se-a at {se_a.url}, se-b at {se_b.url}")
    pairs = [(se_a, se_b)]
    if not args.se_only:
        xa, xb = (
            start_xrootd(ns, base, dirs[n], port, extra_config=XRD_EXTRA)
            for n, port in zip(("xrd-a", "xrd-b"), XRD_PORTS, strict=True)
        )
        peers += [xrd_peer("xrd-a", xa), xrd_peer("xrd-b", xb)]
        log(f"xrd-a at {xa.url}, xrd-b at {xb.url}")
        pairs.append((peers[-2], peers[-1]))

    if not args.skip_big:
        for src, _dst in pairs:
            warm_page_cache(src.root / BIG_NAME)
        for mode in ("pull", "push"):
            for w in range(args.warmup):
                for src, dst in pairs:
                    tag = f"warm-up {w + 1}"
                    big_copy(ns, mode, src, dst, args.size, tag, args.timeout, results, False)
            for rep in range(args.repeat):
                order = pairs if rep % 2 == 0 else pairs[::-1]
                for src, dst in order:
                    if src.alive() and dst.alive():
                        tag = f"{rep + 1}/{args.repeat}"
                        big_copy(ns, mode, src, dst, args.size, tag, args.timeout, results)
                    else:
                        results.error(f"{src.name} or {dst.name} is no longer running")

    if not args.skip_concurrency and args.concurrency:
        for src, dst in pairs:
            sources = prepare_concurrency(src, dst, args.concurrency, args.concurrency_size)
            concurrency_run(ns, base, src, dst, sources, args.concurrency_timeout, results)

    for peer in peers:
        if not peer.alive():
            results.error(f"{peer.name} exited during the run")


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["_client"]:
        return client_main(raw[1:])
    args = parse_args(raw)
    signal.signal(signal.SIGTERM, _terminate)
    reason = xrootd_available()
    if reason is not None and not args.se_only:
        log(f"cannot run XRootD here: {reason}")
        return 2
    if os.geteuid() != 0:
        log("needs root (network namespaces)")
        return 2
    if args.tmpdir is not None:
        tempfile.tempdir = str(args.tmpdir.resolve())
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < needed_bytes(args):
        log(
            f"{tempfile.gettempdir()}: {free / GIB:.1f} GiB free, need about "
            f"{needed_bytes(args) / GIB:.1f} GiB (use a smaller --size or another --tmpdir)"
        )
        return 2
    se_config = args.se_config.read_text() if args.se_config else SE_DEFAULT_CONFIG
    results = Results()
    try:
        run_benchmark(args, se_config, results)
    except RuntimeError as exc:  # a server did not start
        log(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
