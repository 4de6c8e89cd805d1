"""Cost of SciTags fireflies on GETs.  Several ``se`` instances serve the same data, measured
in one run, interleaved: for each code tree (``--code``, default this checkout) one instance
with fireflies on, to a collector (``[scitags] collectors = ["127.0.0.1:SINK"]``, a UDP socket
this script binds; ``report_local = true`` so that loopback flows are reported) and one with
``fireflies = false`` (tags still parsed).  Every request carries ``SciTag: 147`` (or
``?scitag.flow=147`` with ``--tag-via query``).  The peer copy of each firefly (``send_to_peer``,
on by default) goes to the client's UDP 10514, where nothing listens (``--peer closed``, the
shipped default), to a second sink (``--peer sink``) or nowhere (``--peer off``).  The access log
is on unless ``--access-log off`` (shipped default: on).  Rounds alternate in direction;
medians; the issue-16 target is at most 10% fewer requests/s with fireflies on (4 KiB, wrk).
Run on demand:

    python bench/scitags.py [--duration 4] [--repeat 3] [--workers 2] [--peer closed]
    python bench/scitags.py --code old=/tmp/se-old --code new=.    # A/B of two code trees
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
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
TARGET = 0.10  # issue 16: at most 10% fewer small GETs/s with fireflies on
PEER_PORT = 10514  # the shipped firefly_port
METRICS = "/.well-known/se/metrics"
HEADER = ["test", "fireflies off", "fireflies on", "ratio on/off", "cost", "target", "met"]


class Sink:
    """A UDP port fireflies go to.  It is not read while a run is measured (that would take
    CPU from the server); afterwards, queued datagrams are drained and the kernel's drop
    counter for the socket (/proc/net/udp) covers the ones that did not fit."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, port))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self._drops = self._kernel_drops()
        self.ended = 0

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
        """Datagrams since the last call: (count, up to a few of them).  :attr:`ended`
        becomes the bytes the end fireflies among them report (``usage.sent``)."""
        count, sample = 0, list[bytes]()
        self.ended = 0
        for _ in range(10_000_000):
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                break
            count += 1
            if len(sample) < 4:
                sample.append(data)
            if b'"state":"end"' in data:
                self.ended += _usage_sent(data)
        drops = self._kernel_drops()
        count += drops - self._drops
        self._drops = drops
        return count, sample

    def close(self) -> None:
        self.sock.close()


@dataclass
class Instance:
    code: str  # label of the code tree
    fireflies: bool
    server: Server
    rps: list[float] = field(default_factory=list)
    mbs: list[float] = field(default_factory=list)
    per_request: list[float] = field(default_factory=list)  # collector fireflies per GET
    cpu_us: list[float] = field(default_factory=list)  # se CPU (all processes) per GET
    dropped: int = 0  # se_scitags_fireflies_total{outcome="dropped"} at the end

    @property
    def name(self) -> str:
        return f"{self.code} {'on' if self.fireflies else 'off'}"


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a process group
    (the server and its workers): robust to other load on a shared machine, unlike req/s."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 12 and int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def write_data(data: Path, big_size: int) -> None:
    data.mkdir(parents=True, exist_ok=True)
    (data / SMALL_NAME).write_bytes(os.urandom(SMALL_SIZE))
    if big_size <= 0:
        return
    log(f"writing {data / BIG_NAME} ({big_size // MIB} MiB) ...")
    with (data / BIG_NAME).open("wb") as f:
        for _ in range(big_size // (16 * MIB)):
            f.write(os.urandom(16 * MIB))
        f.write(os.urandom(big_size % (16 * MIB)))


def config_text(fireflies: bool, collector: int, peer: str, access_log: bool) -> str:
    lines = [
        "[logging]",
        f"access_log = {'true' if access_log else 'false'}",
        "[scitags]",
        "report_local = true",  # the benchmark's flows are on loopback
        f'collectors = ["{HOST}:{collector}"]',
    ]
    if not fireflies:
        lines.append("fireflies = false")
    if peer == "off":
        lines.append("send_to_peer = false")
    elif peer != str(PEER_PORT):
        lines.append(f"firefly_port = {peer}")
    return "\n".join(lines) + "\n"


def _usage_sent(raw: bytes) -> int:
    """``usage.sent`` of a firefly (0 when it has none or is not one)."""
    try:
        body = json.loads(raw.decode("utf-8", "replace").split(" ", 7)[7])
        return int(body.get("usage", {}).get("sent", 0))
    except (IndexError, ValueError, AttributeError):
        return 0


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


def metric(server: Server, name: str, outcome: str) -> float | None:
    """A counter from the server's metrics page (summed over workers), None if absent."""
    try:
        with urllib.request.urlopen(f"{server.url}{METRICS}", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    pattern = re.compile(rf'^{re.escape(name)}\{{outcome="{re.escape(outcome)}"\}} (\S+)$', re.M)
    m = pattern.search(text)
    return float(m.group(1)) if m else None


def sanity(
    instances: list[Instance], sinks: list[Sink], data: Path, target: str, headers: dict[str, str]
) -> list[str]:
    problems = []
    small = (data / SMALL_NAME).read_bytes()
    for inst in instances:
        status, _, body = request(inst.server, "GET", target, headers)
        if status != 200 or body != small:
            problems.append(f"{inst.name}: GET {target} -> {status}, {len(body)} bytes")
        time.sleep(0.1)
        for sink in sinks:
            count, sample = sink.collect()
            want = 2 if inst.fireflies else 0
            if count != want:
                problems.append(
                    f"{inst.name}: one tagged GET gave {count} fireflies on :{sink.port}, "
                    f"not {want}"
                )
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


def spread(values: list[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}" if len(values) > 1 else ""


def row(label: str, off: list[float], on: list[float], unit: str) -> list[str]:
    if not off or not on:
        return [label, "fail" if not off else "-", "fail" if not on else "-", "-", "-", "-", "-"]
    m_off, m_on = statistics.median(off), statistics.median(on)
    ratio = m_on / m_off
    cost = 1 - ratio
    return [
        f"{label} ({unit})",
        f"{m_off:,.0f} ({spread(off)})" if spread(off) else f"{m_off:,.0f}",
        f"{m_on:,.0f} ({spread(on)})" if spread(on) else f"{m_on:,.0f}",
        f"{ratio:.3f}x",
        f"{cost * 100:+.1f}%",
        f"< {TARGET * 100:.0f}%",
        "yes" if cost < TARGET else "NO",
    ]


def code_trees(specs: Sequence[str]) -> list[tuple[str, Path]]:
    trees = []
    for spec in specs or [f"this={REPO_ROOT}"]:
        label, sep, path = spec.partition("=")
        if not sep or not label or not (Path(path) / "se" / "__main__.py").is_file():
            raise SystemExit(f"--code {spec!r}: want LABEL=DIR with DIR/se/__main__.py")
        trees.append((label, Path(path).resolve()))
    return trees


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GET throughput with SciTags fireflies on vs off.")
    p.add_argument("--duration", type=int, default=4, help="wrk seconds per 4 KiB run")
    p.add_argument("--repeat", type=int, default=3, help="rounds (alternating order)")
    p.add_argument("--workers", type=int, default=2, help="se --workers")
    p.add_argument(
        "--code", action="append", default=[], metavar="LABEL=DIR",
        help="a code tree to measure (repeatable; default: this checkout)",
    )  # fmt: skip
    p.add_argument(
        "--peer", default="closed",
        help="the peer copy: closed (UDP 10514, nothing listening), sink, off, or a port",
    )  # fmt: skip
    p.add_argument("--access-log", choices=("on", "off"), default="on")
    p.add_argument("--tag-via", choices=("header", "query"), default="header")
    p.add_argument("--big-size", type=int, default=256, help="large file, MiB")
    p.add_argument("--big-count", type=int, default=0, help="large GETs per run (0: none)")
    p.add_argument("--tmpdir", type=Path, help="where the work dir goes (default: system temp)")
    args = p.parse_args(argv)
    if args.peer not in ("closed", "sink", "off") and not args.peer.isdigit():
        p.error("--peer: closed, sink, off or a port number")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("curl", "wrk"):
        if shutil.which(tool) is None:
            log(f"{tool} not found (apt-get install -y {tool})")
            return 2
    trees = code_trees(args.code)
    big_size = args.big_size * MIB if args.big_count > 0 else 0
    collector = Sink()
    sinks = [collector]
    peer = str(PEER_PORT) if args.peer == "closed" else args.peer
    if args.peer == "sink":
        sinks.append(Sink())
        peer = str(sinks[1].port)
    elif args.peer == "closed":
        try:
            Sink(PEER_PORT).close()
        except OSError:
            log(f"note: something holds UDP {HOST}:{PEER_PORT}; the peer copies go to it")
    if args.tag_via == "header":
        target, headers = f"/{SMALL_NAME}", {"SciTag": TAG}
    else:
        target, headers = f"/{SMALL_NAME}?scitag.flow={TAG}", {}
    instances: list[Instance] = []
    status = 0
    with tempfile.TemporaryDirectory(prefix="se-bench-scitags-", dir=args.tmpdir) as tmp:
        base = Path(tmp)
        data = base / "data"
        try:
            write_data(data, big_size)
            if big_size:
                warm_page_cache(data / BIG_NAME)
            for label, code in trees:
                for on in (True, False):
                    name = f"{label}-{'on' if on else 'off'}"
                    text = config_text(on, collector.port, peer, args.access_log == "on")
                    server = start_se(
                        base / name, data, args.workers, sys.executable, config_text=text, tree=code
                    )
                    server.name = f"se {label} ({'on' if on else 'off'})"
                    instances.append(Instance(label, on, server))
            problems = sanity(instances, sinks, data, target, headers)
            for problem in problems:
                log(f"!! {problem}")
            if problems:
                return 1
            hdrs = [f"{k}: {v}" for k, v in headers.items()]
            for i in range(args.repeat):
                order = instances if i % 2 == 0 else instances[::-1]
                for inst in order:
                    srv = inst.server
                    collector.collect()
                    cpu = group_cpu(srv.proc.pid)
                    r = run_wrk(srv, target, GET_LUA, 2, 64, args.duration, hdrs)
                    cpu = group_cpu(srv.proc.pid) - cpu
                    time.sleep(0.05)
                    fireflies, _ = collector.collect()
                    for sink in sinks[1:]:
                        sink.collect()
                    if r is None or r.non_2xx or r.socket_errors or not r.requests:
                        log(f"round {i + 1} {inst.name}: no usable wrk result ({r})")
                        srv.error(f"wrk: {r}")
                        continue
                    inst.rps.append(r.rps)
                    inst.cpu_us.append(cpu / r.requests * 1e6)
                    note = f", se CPU {cpu / r.requests * 1e6:.1f} us/request"
                    if inst.fireflies:
                        inst.per_request.append(fireflies / r.requests)
                        note += f", {fireflies / r.requests:.3f} fireflies/request at the collector"
                    log(f"round {i + 1} {inst.name}: GET 4 KiB {r.rps:,.0f} req/s{note}")
                for inst in order if big_size else ():
                    mbs = big_get(inst.server, big_size, args.big_count)
                    for sink in sinks:
                        sink.collect()
                    if mbs is not None:
                        inst.mbs.append(mbs)
                        log(f"round {i + 1} {inst.name}: GET {args.big_size} MiB {mbs:,.0f} MB/s")
            for inst in instances:
                inst.dropped = int(
                    metric(inst.server, "se_scitags_fireflies_total", "dropped") or 0
                )
        except StartError as exc:
            log(f"error: {exc}")
            status = 2
        except KeyboardInterrupt:
            log("\ninterrupted; partial results:")
            status = 130
        finally:
            for inst in instances:
                stop_server(inst.server)
            for sink in sinks:
                sink.close()
        report(instances, trees, args, target)
    return status


def report(
    instances: list[Instance], trees: list[tuple[str, Path]], args: argparse.Namespace, target: str
) -> None:
    by = {(inst.code, inst.fireflies): inst for inst in instances}
    rows = []
    for label, _ in trees:
        on, off = by.get((label, True)), by.get((label, False))
        if on is None or off is None:
            continue
        prefix = f"{label}: " if len(trees) > 1 else ""
        rows.append(row(f"{prefix}GET 4 KiB, wrk -t2 -c64", off.rps, on.rps, "req/s"))
        if off.cpu_us and on.cpu_us:
            # per request, lower is better: the row shows requests per se CPU-second
            rows.append(
                row(
                    f"{prefix}GET 4 KiB, se CPU",
                    [1e6 / x for x in off.cpu_us],
                    [1e6 / x for x in on.cpu_us],
                    "req per CPU-s",
                )
            )
        if args.big_count > 0:
            rows.append(
                row(
                    f"{prefix}GET {args.big_size} MiB, curl x{args.big_count}",
                    off.mbs,
                    on.mbs,
                    "MB/s",
                )
            )
    peer = {
        "closed": f"the peer copy to {HOST}:{PEER_PORT} (nothing listening)",
        "sink": "the peer copy to a second sink",
        "off": "send_to_peer = false",
    }.get(args.peer, f"the peer copy to {HOST}:{args.peer}")
    for inst in instances:
        if inst.cpu_us:
            log(
                f"{inst.name}: se CPU per 4 KiB GET, us: "
                + ", ".join(f"{x:.1f}" for x in inst.cpu_us)
                + f" (median {statistics.median(inst.cpu_us):.1f})"
            )
    log(
        f"\nMedian (min-max) of {args.repeat} alternating rounds, {args.duration} s each, "
        f"se --workers {args.workers}, {os.cpu_count()} CPUs, "
        f"{tool_version(['wrk', '--version'])}; every GET is {target}"
        f"{' with SciTag: ' + TAG if args.tag_via == 'header' else ''}; access log "
        f"{args.access_log}; fireflies to a collector on {HOST} (a UDP socket not read during "
        f"runs) and {peer}."
    )
    for inst in instances:
        if inst.fireflies:
            log(
                f"{inst.name}: collector fireflies per 4 KiB GET (drained + kernel drops): "
                + ", ".join(f"{x:.3f}" for x in inst.per_request)
                + f"; dropped by se (metrics): {inst.dropped}"
            )
        for e in inst.server.errors:
            log(f"  - {inst.server.name}: {e}")
    if len(trees) > 1:
        first = by.get((trees[0][0], True))
        for label, _ in trees[1:]:
            other = by.get((label, True))
            if first and other and first.rps and other.rps:
                log(
                    f"fireflies on, {label} / {trees[0][0]}: "
                    f"{statistics.median(other.rps) / statistics.median(first.rps):.3f}x"
                )
    log("")
    log(format_text(rows, HEADER))
    log("\n<!-- markdown -->")
    log(format_markdown(rows, HEADER))


if __name__ == "__main__":
    sys.exit(main())
