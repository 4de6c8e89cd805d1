#!/usr/bin/env python3
"""Soak: many concurrent clients mixing every kind of request for minutes; see bench/README.md.

Usage: python bench/soak.py [--clients 200] [--duration 600] [--quick] [--tmpdir DIR] [--keep]

Two se run with their shipped defaults (access log on) and ``--workers 2`` on 127.0.0.1: the
one under test (tape tier on, ``/tape`` a tape pool) and a source for third-party pulls.
Each client owns a directory and loops over a weighted mix: PUT (with a Digest), PUT cut off
mid-body (the client disconnects), GET of a byte range, PROPFIND Depth 1, MOVE, DELETE, COPY
pull from the second se, and a tape stage request followed by a poll.  A client knows what
each of its files must hold, so every answer is checked as it comes.

At the end every file under the tree is read back: its bytes must be what the client last
stored, and match the adler32 se keeps in its xattr; no file may exist that no client
stored (no partial upload, no temp file left).  Reported: requests by kind and status,
unexpected answers (any 5xx, wrong bytes), and the RSS of the server's process tree at start,
peak and end.  The exit status is 0 when the run was clean, 1 otherwise, 2 when a server
cannot start.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import aiohttp  # noqa: E402

from bench.tpc import RSSSampler, process_tree, rss_bytes  # noqa: E402
from tests.support import SEProcess, start_se  # noqa: E402

MIB = 1 << 20
SOURCES = 64  # files on the pull source
CONFIG = """
[server]
workers = 2
[tape]
enabled = true
time_scale = 100000
[[tape.pools]]
path = "/tape"
"""
NO_CACHES = """
[storage]
file_cache_bytes = 0
[webdav]
listing_cache_dirs = 0
"""
# (kind, weight)
MIX = [
    ("put", 30),
    ("put_cut", 5),
    ("get_range", 30),
    ("propfind", 10),
    ("move", 6),
    ("delete", 6),
    ("copy_pull", 8),
    ("stage", 5),
]


def content(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def adler32_hex(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


@dataclass
class Tally:
    statuses: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    problems: list[str] = field(default_factory=list)

    def see(self, kind: str, status: int, ok: bool, what: str) -> None:
        self.statuses[(kind, status)] += 1
        if not ok or status >= 500:
            if len(self.problems) < 50:
                self.problems.append(f"{kind} {what}: {status}")
            else:
                self.problems.append("...")


class Client:
    """One client: its own directory, and what each of its files must hold."""

    def __init__(self, n: int, url: str, source_url: str, session: aiohttp.ClientSession) -> None:
        self.n = n
        self.url = url
        self.source_url = source_url
        self.session = session
        self.rng = random.Random(n)
        self.files: dict[str, tuple[int, int]] = {}  # path -> (seed, size)
        self.counter = 0
        self.base = f"/soak/c{n:03d}"

    def _new_name(self, prefix: str = "f") -> str:
        self.counter += 1
        return f"{self.base}/{prefix}{self.counter}"

    def _pick(self) -> str | None:
        return self.rng.choice(list(self.files)) if self.files else None

    async def step(self, kind: str, tally: Tally) -> None:
        await getattr(self, kind)(tally)

    async def put(self, tally: Tally) -> None:
        path = self._new_name() if not self.files or self.rng.random() < 0.8 else self._pick()
        assert path is not None
        seed, size = self.rng.getrandbits(32), self.rng.randint(0, 2 * MIB)
        data = content(seed, size)
        headers = {"Digest": f"adler32={adler32_hex(data)}"}
        async with self.session.put(self.url + path, data=data, headers=headers) as resp:
            await resp.read()
            ok = resp.status in (201, 204)
        if ok:
            self.files[path] = (seed, size)
        tally.see("put", resp.status, ok, path)

    async def put_cut(self, tally: Tally) -> None:
        """Send half a body and hang up: nothing may appear under that name."""
        path = self._new_name("cut")
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        size = 1 * MIB
        head = f"PUT {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {size}\r\n\r\n"
        writer.write(head.encode() + content(1, size // 2))
        await writer.drain()
        await asyncio.sleep(self.rng.random() * 0.2)
        writer.transport.abort()
        del reader
        tally.see("put_cut", 0, True, path)

    async def get_range(self, tally: Tally) -> None:
        path = self._pick()
        if path is None:
            return await self.put(tally)
        seed, size = self.files[path]
        data = content(seed, size)
        if size == 0:
            start, end = 0, -1
            headers = {}
        else:
            start = self.rng.randrange(size)
            end = min(size - 1, start + self.rng.randint(0, 256 * 1024))
            headers = {"Range": f"bytes={start}-{end}"}
        async with self.session.get(self.url + path, headers=headers) as resp:
            body = await resp.read()
        ok = resp.status in (200, 206) and body == data[start : end + 1]
        tally.see("get_range", resp.status, ok, path)

    async def propfind(self, tally: Tally) -> None:
        async with self.session.request(
            "PROPFIND", self.url + self.base + "/", headers={"Depth": "1"}
        ) as resp:
            body = await resp.read()
        mine = [p for p in self.files if p.startswith(self.base + "/")]
        missing = [p for p in mine if p.rsplit("/", 1)[1].encode() not in body]
        ok = (resp.status == 207 and not missing) or (resp.status == 404 and not mine)
        tally.see("propfind", resp.status, ok, f"{self.base} missing {missing[:3]}")

    async def move(self, tally: Tally) -> None:
        """Within the client's directory (a MOVE into a collection that does not exist yet is
        rightly a 409)."""
        mine = [p for p in self.files if p.startswith(self.base + "/")]
        path = self.rng.choice(mine) if mine else None
        if path is None:
            return
        dest = self._new_name("m")
        headers = {"Destination": self.url + dest}
        async with self.session.request("MOVE", self.url + path, headers=headers) as resp:
            await resp.read()
        ok = resp.status in (201, 204)
        if ok:
            self.files[dest] = self.files.pop(path)
        tally.see("move", resp.status, ok, path)

    async def delete(self, tally: Tally) -> None:
        path = self._pick()
        if path is None:
            return
        async with self.session.delete(self.url + path) as resp:
            await resp.read()
        ok = resp.status == 204
        if ok:
            del self.files[path]
        tally.see("delete", resp.status, ok, path)

    async def copy_pull(self, tally: Tally) -> None:
        k = self.rng.randrange(SOURCES)
        dest = self._new_name("pull")
        headers = {"Source": f"{self.source_url}/src/s{k}", "Overwrite": "T"}
        async with self.session.request("COPY", self.url + dest, headers=headers) as resp:
            text = await resp.text()
        last = text.strip().rsplit("\n", 1)[-1] if text.strip() else ""
        ok = resp.status == 202 and last.startswith("success")
        if ok:
            self.files[dest] = source_spec(k)
        tally.see("copy_pull", resp.status, ok, f"{dest}: {last[:120]}")

    async def stage(self, tally: Tally) -> None:
        path = f"/tape/c{self.n:03d}-{self.counter}"
        self.counter += 1
        seed, size = self.rng.getrandbits(32), self.rng.randint(1, 64 * 1024)
        async with self.session.put(self.url + path, data=content(seed, size)) as resp:
            await resp.read()
        if resp.status in (201, 204):
            self.files[path] = (seed, size)
        body = {"files": [{"path": path}]}
        async with self.session.post(self.url + "/api/v1/stage", json=body) as resp:
            answer = await resp.json(content_type=None)
        ok = resp.status == 201 and "requestId" in answer
        tally.see("stage", resp.status, ok, path)
        if ok:
            poll = f"{self.url}/api/v1/stage/{answer['requestId']}"
            async with self.session.get(poll) as resp:
                await resp.read()
            tally.see("stage_poll", resp.status, resp.status == 200, path)


def source_spec(k: int) -> tuple[int, int]:
    return (10_000 + k, 4096 + k * 37_000)


async def drive(args: argparse.Namespace, url: str, source_url: str, tally: Tally) -> list[Client]:
    connector = aiohttp.TCPConnector(limit=args.clients * 2)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        clients = [Client(n, url, source_url, session) for n in range(args.clients)]
        kinds = [k for k, _ in MIX]
        weights = [w for _, w in MIX]
        deadline = time.monotonic() + args.duration

        async def run(client: Client) -> None:
            while time.monotonic() < deadline:
                kind = client.rng.choices(kinds, weights)[0]
                try:
                    await client.step(kind, tally)
                except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                    tally.see(kind, -1, False, f"{type(exc).__name__}: {exc}"[:160])

        await asyncio.gather(*(run(c) for c in clients))
        return clients


def verify(root: Path, clients: list[Client], tally: Tally) -> int:
    """Every file holds what its client stored and matches the adler32 se keeps."""
    expected: dict[str, tuple[int, int]] = {}
    for client in clients:
        expected.update(client.files)
    checked = 0
    for path, (seed, size) in expected.items():
        full = root / path.lstrip("/")
        try:
            data = full.read_bytes()
        except FileNotFoundError:
            tally.problems.append(f"verify {path}: missing")
            continue
        want = content(seed, size)
        if data != want:
            tally.problems.append(f"verify {path}: {len(data)} bytes, not the {size} stored")
        stored = os.getxattr(full, "user.se.checksum.adler32").decode().split(";")[0]
        if stored != adler32_hex(data):
            tally.problems.append(f"verify {path}: xattr adler32 {stored} != {adler32_hex(data)}")
        checked += 1
    for dirpath, _dirs, names in os.walk(root):
        rel_dir = "/" + os.path.relpath(dirpath, root)
        if rel_dir.startswith("/.se-state") or rel_dir == "/src":
            continue
        for name in names:
            rel = (rel_dir.rstrip("/") if rel_dir != "/." else "") + "/" + name
            if rel not in expected:
                tally.problems.append(f"verify: unexpected file {rel}")
    return checked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--quick", action="store_true", help="60 s")
    parser.add_argument("--tmpdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--no-caches",
        action="store_true",
        help="turn the file and listing caches off (tells cache memory from anything else)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 60.0
    work = Path(tempfile.mkdtemp(prefix="se-soak-", dir=args.tmpdir))
    servers: list[SEProcess] = []
    try:
        src_root = work / "source"
        (src_root / "src").mkdir(parents=True)
        for k in range(SOURCES):
            (src_root / "src" / f"s{k}").write_bytes(content(*source_spec(k)))
        try:
            source = start_se(work, root=src_root, config="[server]\nworkers = 2\n")
            servers.append(source)
            extra = NO_CACHES if args.no_caches else ""
            target = start_se(work, root=work / "data", config=CONFIG + extra)
            servers.append(target)
        except RuntimeError as exc:
            print(f"soak: {exc}", file=sys.stderr)
            return 2
        rss_start = rss_bytes(process_tree(target.proc.pid))
        sampler = RSSSampler(target.proc.pid)
        sampler.start()
        tally = Tally()
        began = time.monotonic()
        series: list[tuple[float, int]] = []
        done = threading.Event()

        def every_minute() -> None:  # the RSS curve: flat, or growing?
            while not done.wait(60.0):
                series.append((time.monotonic() - began, rss_bytes(process_tree(target.proc.pid))))

        minute = threading.Thread(target=every_minute, daemon=True)
        minute.start()
        clients = asyncio.run(drive(args, target.url, source.url, tally))
        elapsed = time.monotonic() - began
        done.set()
        peak = sampler.finish()
        time.sleep(2)
        rss_end = rss_bytes(process_tree(target.proc.pid))
        checked = verify(target.root, clients, tally)
        report(args, tally, elapsed, checked, rss_start, peak, rss_end, target)
        curve = ", ".join(f"{t:.0f} s: {rss / (1 << 20):.0f}" for t, rss in series)
        print(f"RSS every minute (MiB): {curve}")
        return 0 if not tally.problems else 1
    finally:
        for srv in servers:
            srv.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"soak: kept {work}")


def report(
    args: argparse.Namespace,
    tally: Tally,
    elapsed: float,
    checked: int,
    rss_start: int,
    rss_peak: int,
    rss_end: int,
    target: SEProcess,
) -> None:
    total = sum(tally.statuses.values())
    print(f"se soak: {args.clients} clients, {elapsed:.0f} s, {total} requests ")
    print(f"({total / elapsed:.0f}/s), se --workers 2 with its defaults (access log on)\n")
    print("| request | status | count |\n|---|---:|---:|")
    for (kind, status), count in sorted(tally.statuses.items()):
        print(f"| {kind} | {status if status else 'cut'} | {count} |")
    five = sum(c for (_k, s), c in tally.statuses.items() if s >= 500)
    print(f"\nfiles verified at the end (bytes and stored adler32): {checked}")
    print(f"unexpected 5xx: {five}; problems: {len(tally.problems)}")
    mb = 1 << 20
    print(
        f"RSS of the server's process tree (MiB): start {rss_start / mb:.0f}, "
        f"peak {rss_peak / mb:.0f}, end {rss_end / mb:.0f}"
    )
    for line in tally.problems[:50]:
        print("  " + line)
    log = target.stderr()
    tracebacks = log.count("Traceback")
    print(f"tracebacks in the server log: {tracebacks}")
    print(json.dumps({"requests": total, "problems": len(tally.problems)}))


if __name__ == "__main__":
    sys.exit(main())
