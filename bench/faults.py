#!/usr/bin/env python3
"""What fault injection costs when no rule matches; see bench/README.md.

Usage: python bench/faults.py [--repeat 3] [--duration 10] [--workers 2]

Three servers on one data directory, measured in interleaved rounds (the order turns every
round), medians of ``--repeat``: ``se`` with its shipped defaults (access log on), the same
``se`` with ``[faults] enabled = true`` and rules that do not match the benchmark's request
(a path rule, an identity rule and a TPC rule: the per-request check runs in full), and
nginx (the peer, same data).  The row is ``wrk -t2 -c64`` GET of a 4 KiB file, req/s.
Target (issue 14): se with faults on loses at most 3% against se without.  A second row has
``[events] enabled = true`` too (one JSON line per request), reported beside, not a target.

The result is a report: exit status 0 even when the target is missed, 2 when a server does
not start.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR.parent) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR.parent))

from bench.run import (  # noqa: E402
    GET_LUA,
    SMALL_NAME,
    SMALL_SIZE,
    Server,
    StartError,
    log,
    run_wrk,
    start_nginx,
    start_se,
    stop_server,
)
from bench.x509 import cpu_of  # noqa: E402

DEFAULTS = '[logging]\naccess_log = true\nlevel = "info"\n'
FAULTS = """
[faults]
enabled = true
[[faults.rules]]
path = "/nowhere/**"
status = 507
[[faults.rules]]
identity = "nobody@*"
status = 403
[[faults.rules]]
tpc = "pull"
tpc_failure = "never"
"""
EVENTS = "\n[events]\nenabled = true\n"
TARGET = 0.97


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="se with fault injection on vs off.")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--duration", type=int, default=10, help="wrk seconds per run")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--aa",
        action="store_true",
        help="A/A check: the 'se+faults' server gets se's own configuration (faults off), "
        "to see how far two identical servers differ in this harness",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="se-bench-faults-") as tmp:
        base = Path(tmp)
        data = base / "data"
        data.mkdir()
        (data / SMALL_NAME).write_bytes(os.urandom(SMALL_SIZE))
        servers: dict[str, Server] = {}
        try:
            for name, text in (
                ("se", DEFAULTS),
                ("se+faults", DEFAULTS if args.aa else DEFAULTS + FAULTS),
                ("se+faults+events", DEFAULTS + FAULTS + EVENTS),
            ):
                cfg = base / f"{name}.toml"
                cfg.write_text(text)
                servers[name] = start_se(base / name, data, args.workers, sys.executable, cfg)
            servers["nginx"] = start_nginx(base, data, str(args.workers))
        except StartError as exc:
            print(f"error: {exc}", file=sys.stderr)
            for server in servers.values():
                stop_server(server)
            return 2
        samples: dict[str, list[float]] = {name: [] for name in servers}
        cpu: dict[str, list[float]] = {name: [] for name in servers}
        order = list(servers)
        try:
            for rep in range(args.repeat):
                for name in order if rep % 2 == 0 else reversed(order):
                    server = servers[name]
                    with cpu_of(server.proc.pid) as used:
                        r = run_wrk(server, f"/{SMALL_NAME}", GET_LUA, 2, 64, args.duration)
                    if r is None or not r.requests or r.non_2xx or r.socket_errors:
                        log(f"round {rep + 1}: {name}: no clean result ({r})")
                        continue
                    samples[name].append(r.rps)
                    cpu[name].append(used[0] / r.requests * 1e6)
                    each = f"{r.rps:,.0f} req/s, {cpu[name][-1]:.0f} us CPU/req"
                    log(f"round {rep + 1}: {name}: {each}")
        finally:
            for server in servers.values():
                stop_server(server)
    med = {name: statistics.median(v) if v else 0.0 for name, v in samples.items()}
    per = {name: statistics.median(v) if v else 0.0 for name, v in cpu.items()}
    print()
    print(f"GET 4 KiB, wrk -t2 -c64, {args.duration} s, median of {args.repeat} interleaved rounds")
    print(
        f"  {'server':18} {'req/s':>10}   {'vs se':>7}   {'vs nginx':>8}   {'server CPU/req':>14}"
    )
    for name, value in med.items():
        ratio_se = value / med["se"] if med["se"] else 0.0
        ratio_nginx = value / med["nginx"] if med["nginx"] else 0.0
        print(
            f"  {name:18} {value:10,.0f}   {ratio_se:6.3f}x   {ratio_nginx:7.3f}x   "
            f"{per[name]:11.0f} us"
        )
    ratio = med["se+faults"] / med["se"] if med["se"] else 0.0
    cpu_ratio = per["se"] / per["se+faults"] if per["se+faults"] else 0.0
    verdict = "met" if max(ratio, cpu_ratio) >= TARGET else "MISSED"
    print(
        f"target: se+faults >= {TARGET:.2f}x se: {ratio:.3f}x by req/s, {cpu_ratio:.3f}x by "
        f"server CPU per request ({verdict}; the CPU figure is the steadier one on a shared "
        "machine)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
