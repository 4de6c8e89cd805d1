#!/usr/bin/env python3
"""Benchmark ``se scan`` (adopting a tree in place) against ``xrdadler32`` and ``sha256sum``
over the same tree in the same run; see bench/README.md.

Usage: python bench/scan.py [--files 10000] [--size 20G] [--jobs N] [--dir DIR] [--warm]

The tree (``--files`` files, ``--size`` bytes in all, sizes spread log-uniformly from 4 KiB
up, random data) is written once into ``--dir/tree`` and reused by later runs with the same
numbers.  Then, each run starting from a cold page cache (``/proc/sys/vm/drop_caches`` when
writable, else ``posix_fadvise(DONTNEED)`` on every file; ``--warm`` skips it):

1. ``se scan --backfill`` on the tree stripped of checksum xattrs: every file read, adler32
   computed and stored (se's and XRootD's xattrs);
2. ``se scan`` again: every checksum kept, no file read (the cost of the walk and the xattrs);
3. ``xrdadler32`` on every file (when installed), ``--jobs`` at once through ``xargs -P``, on
   the tree stripped again (else it would find the XrdCks se stored); its values are compared
   with se's;
4. ``cat`` of every file to /dev/null, ``--jobs`` at once (64 files per process): reading
   alone, the speed of the disk that se scan is measured against;
5. ``sha256sum`` on every file, ``--jobs`` at once (64 files per process).

Files/s and MB/s (10^6 bytes) are wall-clock figures of each whole command; the ratios are
se scan's MB/s over each tool's.  Exit status 0 (a report), 1 when a sanity check fails (se
scan's summary or xrdadler32's values disagree with the tree), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.run import format_markdown, format_text, log, tool_version  # noqa: E402

SE = [sys.executable, "-m", "se"]
MIN_FILE = 4 * 1024
MAX_FILE = 512 * 1024 * 1024
BLOCK = 64 * 1024 * 1024  # random bytes the files are cut from
HEADER = ["run", "files", "GB", "seconds", "files/s", "MB/s", "se scan / this"]
CKS_PREFIXES = ("user.se.checksum.", "user.XrdCks.")


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)


def plan_sizes(files: int, total: int, seed: int) -> list[int]:
    """``files`` sizes adding up to ``total``, log-uniform between MIN_FILE and MAX_FILE
    before scaling."""
    rng = random.Random(seed)
    lo, hi = math.log(MIN_FILE), math.log(MAX_FILE)
    raw = [math.exp(lo + rng.random() * (hi - lo)) for _ in range(files)]
    scale = total / sum(raw)
    sizes = [max(0, int(w * scale)) for w in raw]
    sizes[0] += total - sum(sizes)
    return sizes


def tree_paths(tree: Path, files: int) -> list[Path]:
    """100 files per directory, 10 directories per parent (like a dataset layout)."""
    return [tree / f"d{i // 1000:03d}" / f"s{i // 100 % 10}" / f"f{i:06d}" for i in range(files)]


def make_tree(tree: Path, files: int, total: int, seed: int) -> list[Path]:
    log(f"writing {files} files, {total / 1e9:.1f} GB into {tree} ...")
    if tree.exists():
        shutil.rmtree(tree)
    paths = tree_paths(tree, files)
    rng = random.Random(seed)
    block = rng.randbytes(BLOCK)
    view = memoryview(block)
    started = time.monotonic()
    for p, size in zip(paths, plan_sizes(files, total, seed), strict=True):
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            offset = rng.randrange(BLOCK)
            left = size
            while left:
                n = min(left, BLOCK - offset, 8 * 1024 * 1024)
                os.write(fd, view[offset : offset + n])
                left -= n
                offset = (offset + n) % BLOCK
        finally:
            os.close(fd)
    os.sync()
    log(f"  written in {time.monotonic() - started:.0f} s")
    (tree.parent / "tree.json").write_text(json.dumps(_manifest(files, total, seed)))
    return paths


def _manifest(files: int, total: int, seed: int) -> dict[str, int]:
    return {"files": files, "bytes": total, "seed": seed}


def tree_is_current(tree: Path, files: int, total: int, seed: int) -> bool:
    """The tree of an earlier run with the same numbers, all files there with their sizes."""
    try:
        if json.loads((tree.parent / "tree.json").read_text()) != _manifest(files, total, seed):
            return False
        sizes = plan_sizes(files, total, seed)
        return all(
            p.stat().st_size == n for p, n in zip(tree_paths(tree, files), sizes, strict=True)
        )
    except (OSError, ValueError):
        return False


def strip_checksums(paths: list[Path]) -> None:
    for p in paths:
        for name in os.listxattr(p):
            if name.startswith(CKS_PREFIXES):
                os.removexattr(p, name)


def drop_cache(paths: list[Path], warm: bool) -> str:
    if warm:
        return "warm"
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "cold (drop_caches)"
    except OSError:
        pass
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "cold (fadvise DONTNEED per file)"


def timed(cmd: list[str], stdin: bytes | None = None) -> tuple[float, str, int]:
    started = time.monotonic()
    p = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    elapsed = time.monotonic() - started
    if p.returncode not in (0,):
        log(f"  {cmd[0]}... exited {p.returncode}: {p.stderr.decode(errors='replace')[-500:]}")
    return elapsed, p.stdout.decode(errors="replace"), p.returncode


def row(name: str, files: int, nbytes: int, seconds: float, se_mbps: float | None) -> list[str]:
    mbps = nbytes / seconds / 1e6 if seconds > 0 else 0.0
    ratio = "" if se_mbps is None or mbps == 0 else f"{se_mbps / mbps:.2f}x"
    return [
        name,
        str(files),
        f"{nbytes / 1e9:.2f}",
        f"{seconds:.1f}",
        f"{files / seconds:.0f}" if seconds > 0 else "-",
        f"{mbps:.0f}",
        ratio,
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--size", type=parse_size, default=20 * 2**30, help="e.g. 20G (default)")
    ap.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--dir", type=Path, default=Path("/tmp/se-bench-scan"))
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--warm", action="store_true", help="do not drop the page cache between runs")
    args = ap.parse_args(argv)

    tree = args.dir / "tree"
    state = args.dir / "state"  # se's state (the scan journal) outside the tree
    if tree_is_current(tree, args.files, args.size, args.seed):
        paths = tree_paths(tree, args.files)
        log(f"reusing the tree in {tree}")
    else:
        paths = make_tree(tree, args.files, args.size, args.seed)
    total = sum(p.stat().st_size for p in paths)
    cfg = args.dir / "se.toml"
    cfg.write_text(f'[storage]\nroot = "{tree}"\nstate_dir = "{state}"\n[space]\nenabled = false\n')
    log(
        f"se scan --jobs {args.jobs}; xrdadler32 and sha256sum {args.jobs} at once; "
        f"{os.cpu_count()} CPUs"
    )
    failures: list[str] = []
    rows: list[list[str]] = []
    scan = [*SE, "scan", "--config", str(cfg), "--jobs", str(args.jobs), "--restart"]

    strip_checksums(paths)
    cache = drop_cache(paths, args.warm)
    log(f"page cache: {cache}")
    log("1. se scan --backfill (no checksums yet) ...")
    secs, out, status = timed([*scan, "--backfill", "--progress-every", "30"])
    summary = json.loads(out) if out.strip() else {}
    if status != 0 or summary.get("computed") != len(paths) or summary.get("bytes") != total:
        failures.append(f"se scan --backfill: status {status}, summary {summary}")
    se_mbps = total / secs / 1e6
    if summary:
        log(
            f"  its own summary: {summary.get('mb_per_s')} MB/s, {summary.get('files_per_s')} "
            f"files/s over {summary.get('elapsed')} s (the interpreter's start left out)"
        )
    rows.append(row("se scan --backfill (adler32 computed, stored)", len(paths), total, secs, None))
    se_values = {}
    for p in paths:
        try:
            se_values[p] = os.getxattr(p, "user.se.checksum.adler32").decode().split(";")[0]
        except OSError:
            failures.append(f"no checksum stored on {p}")
            break

    drop_cache(paths, args.warm)
    log("2. se scan (everything kept) ...")
    secs, out, status = timed([*scan, "--progress-every", "30"])
    summary = json.loads(out) if out.strip() else {}
    if status != 0 or summary.get("kept") != len(paths):
        failures.append(f"se scan (kept): status {status}, summary {summary}")
    rows.append(row("se scan (all kept, nothing read)", len(paths), 0, secs, None))
    rows[-1][5] = "-"

    listing = b"\0".join(str(p).encode() for p in paths)
    if shutil.which("xrdadler32"):
        strip_checksums(paths)
        drop_cache(paths, args.warm)
        log("3. xrdadler32 on every file ...")
        cmd = ["xargs", "-0", "-P", str(args.jobs), "-n", "1", "xrdadler32"]
        secs, out, status = timed(cmd, listing)
        rows.append(row("xrdadler32 (xargs -P)", len(paths), total, secs, se_mbps))
        theirs: dict[str, str] = {}
        for line in out.splitlines():  # "<adler32 hex> <path>"
            value, _, name = line.partition(" ")
            theirs[name] = value
        differ = [p for p in paths if theirs.get(str(p)) != se_values.get(p)]
        if status != 0 or differ:
            failures.append(f"xrdadler32: status {status}, {len(differ)} values differ from se's")
    else:
        log("3. xrdadler32: not installed (Debian: xrootd-client), skipped")

    drop_cache(paths, args.warm)
    log("4. cat on every file (reading alone: the disk's speed) ...")
    cmd = ["xargs", "-0", "-P", str(args.jobs), "-n", "64", "cat"]
    started = time.monotonic()
    with open(os.devnull, "wb") as null:
        cat = subprocess.run(cmd, input=listing, stdout=null, check=False)
    secs = time.monotonic() - started
    if cat.returncode != 0:
        failures.append(f"cat: status {cat.returncode}")
    read_row = row("cat > /dev/null (xargs -P)", len(paths), total, secs, se_mbps)

    drop_cache(paths, args.warm)
    log("5. sha256sum on every file ...")
    cmd = ["xargs", "-0", "-P", str(args.jobs), "-n", "64", "sha256sum"]
    secs, out, status = timed(cmd, listing)
    if status != 0 or len(out.splitlines()) != len(paths):
        failures.append(f"sha256sum: status {status}")
    rows.append(row("sha256sum (xargs -P)", len(paths), total, secs, se_mbps))
    rows.append(read_row)

    log("")
    log(f"{len(paths)} files, {total / 1e9:.2f} GB, jobs {args.jobs}, page cache {cache}")
    log(f"xrdadler32: {tool_version(['xrdcp', '--version'])}")
    log(format_text(rows, HEADER))
    log("")
    log(format_markdown(rows, HEADER))
    for f in failures:
        log(f"FAILED: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
