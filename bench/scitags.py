"""Cost of SciTags fireflies on GETs: two se instances on the same data, one sending a start
and an end firefly for every tagged GET (``[scitags] report_local = true``, to a UDP sink
socket on 127.0.0.1), one with SciTags off (``[scitags] enabled = false``).  Every request
carries ``SciTag: 147`` for both.  Runs alternate; medians; the target is under 2% fewer
requests/s (4 KiB, wrk) and MB/s (large file, curl).  Run on demand:

    python bench/scitags.py [--duration 10] [--repeat 3] [--workers 2] [--big-size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.run import (  # noqa: E402
    GET_LUA,
    HOST,
    MIB,
    SMALL_NAME,
    SMALL_SIZE,
    Server,
    StartError,
    format_markdown,
    format_text,
    log,
    request,
    run_wrk,
    start_se,
    stop_server,
    tool_version,
    warm_page_cache,
)

TAG = "147"  # atlas (2), Staging (19)
BIG_NAME = "big.bin"
BIG_TIMEOUT = 120.0
TARGET = 0.02  # at most 2% slower with fireflies
HEADER = ["test", "fireflies off", "fireflies on", "ratio on/off", "cost", "target", "met"]


class Sink:
    """The UDP port the fireflies go to.  It is not read while a run is measured (that
    would take CPU from the server); afterwards, queued datagrams are drained and the
    kernel's drop counter for the socket (/proc/net/udp) covers the ones that did not fit."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self._drops = self._kernel_drops()

    def _kernel_drops(self) -> int:
        wanted = f"{socket.htonl(0x7F000001):08X}:{self.port:04X}"
        try:
            lines = Path("/proc/net/udp").read_text().splitlines()[1:]
        except OSError:
            return 0
        for line in lines:
            cols = line.split()
            if len(cols) >= 13 and cols[1] == wanted:
                return int(cols[-1])
        return 0

    def collect(self) -> tuple[int, list[bytes]]:
        """Datagrams since the last call: (count, up to a few of them)."""
        count, sample = 0, list[bytes]()
        for _ in range(10_000_000):
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                break
            count += 1
            if len(sample) < 4:
                sample.append(data)
        drops = self._kernel_drops()
        count += drops - self._drops
        self._drops = drops
        return count, sample

    def close(self) -> None:
        self.sock.close()


@dataclass
class Instance:
    name: str
    server: Server
    fireflies: bool


def write_data(data: Path, big_size: int) -> None:
    data.mkdir(parents=True, exist_ok=True)
    (data / SMALL_NAME).write_bytes(os.urandom(SMALL_SIZE))
    log(f"writing {data / BIG_NAME} ({big_size // MIB} MiB) ...")
    with (data / BIG_NAME).open("wb") as f:
        for _ in range(big_size // (16 * MIB)):
            f.write(os.urandom(16 * MIB))
        f.write(os.urandom(big_size % (16 * MIB)))


def check_firefly(raw: bytes) -> str | None:
    """None if ``raw`` looks like a firefly of this benchmark's GETs."""
    text = raw.decode("utf-8", "replace")
    if not text.startswith("<134>1 ") or " firefly-json " not in text:
        return f"not a firefly: {text[:80]!r}"
    try:
        body = json.loads(text.split(" ", 7)[7])
    except (IndexError, json.JSONDecodeError) as exc:
        return f"body is not JSON ({exc}): {text[:120]!r}"
    ctx = body.get("context", {})
    if (ctx.get("experiment-id"), ctx.get("activity-id")) != (2, 19):
        return f"wrong tag: {ctx}"
    return None


def sanity(instances: list[Instance], sink: Sink, data: Path) -> list[str]:
    problems = []
    small = (data / SMALL_NAME).read_bytes()
    for inst in instances:
        status, _, body = request(inst.server, "GET", f"/{SMALL_NAME}", {"SciTag": TAG})
        if status != 200 or body != small:
            problems.append(f"{inst.name}: GET {SMALL_NAME} -> {status}, {len(body)} bytes")
        time.sleep(0.1)
        count, sample = sink.collect()
        want = 2 if inst.fireflies else 0
        if count != want:
            problems.append(f"{inst.name}: one tagged GET gave {count} fireflies, not {want}")
        problems += [f"{inst.name}: {p}" for p in map(check_firefly, sample) if p]
    return problems


def big_get(server: Server, size: int, count: int) -> float | None:
    """MB/s of ``count`` sequential curl GETs of the big file (10^6 bytes per MB)."""
    cmd = [
        "curl", "-s", "--max-time", str(int(BIG_TIMEOUT)),
        "-H", f"SciTag: {TAG}", "-w", "%{http_code} %{size_download}\n",
        *(["-o", "/dev/null", f"{server.url}/{BIG_NAME}"] * count),
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=BIG_TIMEOUT * count + 10, check=False
    )
    wall = time.perf_counter() - start
    lines = proc.stdout.split()
    if proc.returncode != 0 or lines != ["200", str(size)] * count:
        server.error(f"GET {BIG_NAME}: curl exit {proc.returncode}, {proc.stdout.strip()!r}")
        return None
    return size * count / wall / 1e6


def row(label: str, off: list[float], on: list[float], unit: str) -> list[str]:
    if not off or not on:
        return [label, "fail" if not off else "-", "fail" if not on else "-", "-", "-", "-", "-"]
    m_off, m_on = statistics.median(off), statistics.median(on)
    ratio = m_on / m_off
    cost = 1 - ratio
    return [
        f"{label} ({unit})",
        f"{m_off:,.0f}",
        f"{m_on:,.0f}",
        f"{ratio:.3f}x",
        f"{cost * 100:+.1f}%",
        f"< {TARGET * 100:.0f}%",
        "yes" if cost < TARGET else "NO",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="GET throughput with SciTags fireflies on vs off.")
    p.add_argument("--duration", type=int, default=10, help="wrk seconds per 4 KiB run")
    p.add_argument("--repeat", type=int, default=3, help="runs per instance (alternating)")
    p.add_argument("--workers", type=int, default=2, help="se --workers")
    p.add_argument("--big-size", type=int, default=256, help="large file, MiB")
    p.add_argument("--big-count", type=int, default=4, help="large GETs per run")
    p.add_argument("--tmpdir", type=Path, help="where the work dir goes (default: system temp)")
    args = p.parse_args(argv)
    for tool in ("curl", "wrk"):
        if shutil.which(tool) is None:
            log(f"{tool} not found (apt-get install -y {tool})")
            return 2
    big_size = args.big_size * MIB
    sink = Sink()
    instances: list[Instance] = []
    rates: dict[tuple[str, str], list[float]] = {}
    per_request: list[float] = []
    status = 0
    with tempfile.TemporaryDirectory(prefix="se-bench-scitags-", dir=args.tmpdir) as tmp:
        base = Path(tmp)
        data = base / "data"
        try:
            write_data(data, big_size)
            warm_page_cache(data / BIG_NAME)
            for name, section in (
                ("on", f"report_local = true\nfirefly_port = {sink.port}\n"),
                ("off", "enabled = false\n"),
            ):
                cfg = base / f"{name}.toml"
                cfg.write_text(f"[logging]\naccess_log = false\n[scitags]\n{section}")
                server = start_se(base / name, data, args.workers, sys.executable, cfg)
                server.name = f"se ({name})"
                instances.append(Instance(name, server, name == "on"))
            problems = sanity(instances, sink, data)
            for problem in problems:
                log(f"!! {problem}")
            if problems:
                return 1
            for i in range(args.repeat):
                order = instances if i % 2 == 0 else instances[::-1]
                for inst in order:
                    srv = inst.server
                    sink.collect()
                    r = run_wrk(
                        srv, f"/{SMALL_NAME}", GET_LUA, 2, 64, args.duration, [f"SciTag: {TAG}"]
                    )
                    fireflies, _ = sink.collect()
                    if r is None or r.non_2xx or r.socket_errors or not r.requests:
                        log(f"run {i + 1} {inst.name}: no usable wrk result ({r})")
                        srv.error(f"wrk: {r}")
                        continue
                    rates.setdefault(("small", inst.name), []).append(r.rps)
                    note = ""
                    if inst.fireflies:
                        per_request.append(fireflies / r.requests)
                        note = f", {fireflies / r.requests:.3f} fireflies/request"
                    log(f"run {i + 1} {inst.name}: GET 4 KiB {r.rps:,.0f} req/s{note}")
                for inst in order:
                    mbs = big_get(inst.server, big_size, args.big_count)
                    sink.collect()
                    if mbs is not None:
                        rates.setdefault(("big", inst.name), []).append(mbs)
                        log(f"run {i + 1} {inst.name}: GET {args.big_size} MiB {mbs:,.0f} MB/s")
        except StartError as exc:
            log(f"error: {exc}")
            status = 2
        except KeyboardInterrupt:
            log("\ninterrupted; partial results:")
            status = 130
        finally:
            for inst in instances:
                stop_server(inst.server)
            sink.close()
        rows = [
            row(
                "GET 4 KiB, wrk -t2 -c64",
                rates.get(("small", "off"), []),
                rates.get(("small", "on"), []),
                "req/s",
            ),
            row(
                f"GET {args.big_size} MiB, curl x{args.big_count}",
                rates.get(("big", "off"), []),
                rates.get(("big", "on"), []),
                "MB/s",
            ),
        ]
        log(
            f"\nMedian of {args.repeat} alternating runs, se --workers {args.workers}, "
            f"{os.cpu_count()} CPUs, {tool_version(['wrk', '--version'])}; every GET carries "
            f"SciTag: {TAG}; fireflies to a UDP socket on {HOST} that is not read during runs."
        )
        if per_request:
            log(
                "fireflies counted per 4 KiB request (drained + kernel drops): "
                + ", ".join(f"{x:.3f}" for x in per_request)
            )
        for inst in instances:
            for e in inst.server.errors:
                log(f"  - {inst.server.name}: {e}")
        log("")
        log(format_text(rows, HEADER))
        log("\n<!-- markdown -->")
        log(format_markdown(rows, HEADER))
    return status


if __name__ == "__main__":
    sys.exit(main())
