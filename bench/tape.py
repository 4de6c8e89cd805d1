#!/usr/bin/env python3
"""Benchmark se's tape tier: the Tape REST API over HTTP, and the recall policy; see
bench/README.md.

Usage: python bench/tape.py [--quick] [--files 10000] [--runs 5] [--sim-files 2000]

Two parts, one run:

* HTTP: a real ``se`` on 127.0.0.1 with ``[tape]`` on and a pool at ``/tape``.  ``--files``
  small files are written straight into its data directory (the first ARCHIVEINFO adopts them
  as DISK), flushed to tape and evicted through ``/.well-known/se/tape``, then timed: STAGE of
  all of them (target < 1 s), GET of the request (target < 200 ms, during the recall and after
  it), ARCHIVEINFO of all of them, and the wall time of the simulated recall.
* Simulation, in-process: ``--sim-files`` files of realistic size on ``--cartridges``
  cartridges, one dataset per cartridge, requested by stage requests that arrive in random
  order over simulated time, recalled (a) by se's :class:`~se.tape.simulator.TapeLibrary` and
  (b) by a naive FIFO policy written here, with the same drives and timings.  se's library runs
  on an event loop whose clock is virtual (it jumps to the next timer when nothing else is
  runnable and no store call is in flight), so the simulated times are exact and take no real
  sleeping; FIFO is a discrete-event computation.

The result is a report: the exit status is 0 even when targets are missed, 1 when a sanity
check fails (files not TAPE after eviction, a recall not COMPLETED), 2 when se does not start,
130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import http.client
import json
import os
import random
import selectors
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.run import format_markdown, format_text, log  # noqa: E402
from se.tape.model import FileState  # noqa: E402
from se.tape.simulator import LibraryConfig, LibraryStats, TapeLibrary, TapeTiming  # noqa: E402
from se.tape.sqlite_store import SQLiteStore  # noqa: E402
from tests.support import start_se  # noqa: E402

GB = 10**9
STAGE_TARGET = 1.0  # seconds, POST stage of 10 000 files
POLL_TARGET = 0.2  # seconds, GET stage/{id} of a 10 000-file request
API = "/api/v1"
ADMIN = "/.well-known/se/tape"
POOL = "/tape"
FILE_SIZE = 1024  # bytes of each file of the HTTP part (not zero: empty files never go to tape)
POLL_PERIOD = 0.25  # real seconds between two polls while the recall runs
IDLE_TIMEOUT = 30.0  # real seconds to wait for the library to drain between stage runs
SIM_POLL = 1.0  # simulated seconds between two looks at se's library
SIM_HORIZON = 30 * 86_400.0  # simulated seconds after which a simulation is abandoned

_T = TypeVar("_T")


# --------------------------------------------------------------------------- HTTP part


class Client:
    """One keep-alive HTTP/1.1 connection to se; each call returns (status, body, seconds)."""

    def __init__(self, url: str, timeout: float = 600.0) -> None:
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes, float]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        start = time.perf_counter()
        self.conn.request(method, path, body=data, headers=headers)
        resp = self.conn.getresponse()
        payload = resp.read()
        return resp.status, payload, time.perf_counter() - start

    def json(self, method: str, path: str, body: Any = None, want: int = 200) -> Any:
        status, payload, _ = self.call(method, path, body)
        if status != want:
            raise BenchError(f"{method} {path}: {status} {payload[:300]!r}")
        return json.loads(payload)

    def close(self) -> None:
        self.conn.close()


class BenchError(RuntimeError):
    """A sanity check failed: the numbers would not mean what they say."""


@dataclass
class HttpResult:
    samples: dict[str, list[float]] = field(default_factory=dict)  # seconds
    notes: list[str] = field(default_factory=list)
    recall_wall: float | None = None
    recall_states: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, seconds: float) -> None:
        self.samples.setdefault(key, []).append(seconds)


def http_config(args: argparse.Namespace) -> str:
    return (
        '[logging]\naccess_log = false\nlevel = "warning"\n'
        "[tape]\nenabled = true\n"
        f"time_scale = {float(args.time_scale)}\n"
        f"drives = {args.drives}\n"
        f'[[tape.pools]]\npath = "{POOL}"\n'
    )


def write_files(root: Path, count: int) -> list[str]:
    """``count`` small files under /tape, written straight into the filesystem."""
    directory = root / POOL.strip("/")
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        name = f"f{i:05d}"
        (directory / name).write_bytes(name.encode().ljust(FILE_SIZE, b"."))
        paths.append(f"{POOL}/{name}")
    return paths


def localities(client: Client, paths: list[str]) -> Counter[str]:
    items = client.json("POST", f"{API}/archiveinfo", {"paths": paths})
    return Counter(str(item.get("locality", item.get("error", "?"))) for item in items)


def settle(client: Client, n: int) -> dict[str, Any]:
    """Wait until the library has nothing queued and no tape in a drive (bounded in time),
    then evict again (a file being read when its request was deleted is on disk now) and
    check that all ``n`` files are TAPE.  Returns the library's status."""
    deadline = time.monotonic() + IDLE_TIMEOUT
    status: dict[str, Any]
    while True:
        status = client.json("GET", ADMIN)
        # (A worker without the library has neither key: with --workers > 1 this may pass early.)
        if not status.get("queued_files") and not status.get("drives", {}).get("mounted"):
            break
        if time.monotonic() > deadline:
            raise BenchError(f"the library did not become idle within {IDLE_TIMEOUT:g} s")
        time.sleep(0.05)
    status = client.json("POST", ADMIN, {"evict": True})
    if status["localities"].get("TAPE", {}).get("files") != n:
        raise BenchError(f"not all {n} files are TAPE: {status['localities']}")
    return status


def http_part(args: argparse.Namespace, base: Path, result: HttpResult) -> None:
    data = base / "data"
    t0 = time.perf_counter()
    paths = write_files(data, args.files)
    log(f"wrote {len(paths)} files of {FILE_SIZE} bytes in {time.perf_counter() - t0:.1f} s")
    srv = start_se(base, data, http_config(args), ["--workers", str(args.workers)])
    try:
        client = Client(srv.url)
        try:
            _http_runs(args, client, paths, result)
        finally:
            client.close()
    finally:
        srv.stop()
        problems = [
            line for line in srv.stderr().splitlines() if "Traceback" in line or "ERROR" in line
        ]
        for line in problems[:5]:
            result.notes.append(f"se log: {line.strip()}")


def _http_runs(
    args: argparse.Namespace, client: Client, paths: list[str], result: HttpResult
) -> None:
    n = len(paths)
    stage_body = {"files": [{"path": p} for p in paths]}

    t0 = time.perf_counter()
    seen = localities(client, paths)
    log(f"first ARCHIVEINFO (adopts the files): {time.perf_counter() - t0:.1f} s, {dict(seen)}")
    for switch in ("flush", "evict"):
        t0 = time.perf_counter()
        status = client.json("POST", ADMIN, {switch: True})
        log(f"{switch}: {time.perf_counter() - t0:.1f} s, localities {status['localities']}")
    seen = localities(client, paths)
    if seen != Counter({"TAPE": n}):
        raise BenchError(f"after flush and evict, ARCHIVEINFO says {dict(seen)}, not all TAPE")

    for i in range(args.runs):
        status, payload, seconds = client.call("POST", f"{API}/archiveinfo", {"paths": paths})
        if status != 200 or payload.count(b'"TAPE"') != n:
            raise BenchError(f"ARCHIVEINFO: {status}, not {n} TAPE files")
        result.add("archiveinfo", seconds)
        log(f"  ARCHIVEINFO {i + 1}/{args.runs}: {seconds * 1000:.0f} ms")

    # Each stage run is a fresh request, deleted afterwards (so the active-request count stays
    # at zero, far from max_active_requests) once it has been polled once; the library then
    # drops its jobs and is left to become idle before the next run.
    for i in range(args.runs):
        settle(client, n)
        status, payload, seconds = client.call("POST", f"{API}/stage", stage_body)
        if status != 201:
            raise BenchError(f"STAGE: {status} {payload[:300]!r}")
        result.add("stage", seconds)
        rid = json.loads(payload)["requestId"]
        status, payload, poll_seconds = client.call("GET", f"{API}/stage/{rid}")
        if status != 200:
            raise BenchError(f"GET stage/{rid}: {status}")
        result.add("poll_first", poll_seconds)
        status, _, _ = client.call("DELETE", f"{API}/stage/{rid}")
        if status != 200:
            raise BenchError(f"DELETE stage/{rid}: {status}")
        log(
            f"  STAGE {i + 1}/{args.runs}: {seconds * 1000:.0f} ms"
            f" (then GET {poll_seconds * 1000:.0f} ms, DELETE)"
        )

    # The recall: one more request, polled until every file is terminal.
    before = settle(client, n)
    status, payload, seconds = client.call("POST", f"{API}/stage", stage_body)
    if status != 201:
        raise BenchError(f"STAGE: {status} {payload[:300]!r}")
    start = time.perf_counter()
    log(f"  STAGE for the recall: {seconds * 1000:.0f} ms")
    rid = json.loads(payload)["requestId"]
    deadline = start + args.recall_timeout
    body: dict[str, Any] = {}
    while True:
        status, payload, poll_seconds = client.call("GET", f"{API}/stage/{rid}")
        if status != 200:
            raise BenchError(f"GET stage/{rid}: {status}")
        body = json.loads(payload)
        if "completedAt" in body:
            result.recall_wall = time.perf_counter() - start
            break
        result.add("poll_recall", poll_seconds)
        if time.perf_counter() > deadline:
            result.notes.append(f"recall not finished after {args.recall_timeout:g} s")
            break
        time.sleep(POLL_PERIOD)
    result.recall_states = dict(Counter(f["state"] for f in body.get("files", [])))
    after = client.json("GET", ADMIN)
    log(
        f"  recall: {result.recall_wall or float('nan'):.1f} s wall, states"
        f" {result.recall_states}, mounts {after.get('mounts', '?')}"
    )
    if result.recall_states != {"COMPLETED": n}:
        raise BenchError(f"the recall ended with {result.recall_states}, not {n} COMPLETED")
    if before["library"] and after["library"]:  # with --workers > 1: maybe another worker
        recalled = after["files_recalled"] - before["files_recalled"]
        if recalled != n:
            result.notes.append(f"the library read {recalled} files for the recall, not {n}")
    for i in range(max(args.runs, 3) * 2):
        status, payload, seconds = client.call("GET", f"{API}/stage/{rid}")
        if status != 200:
            raise BenchError(f"GET stage/{rid}: {status}")
        result.add("poll_done", seconds)
        if i == 0:
            log(f"  GET after the recall: {seconds * 1000:.0f} ms, {len(payload)} bytes")
    seen = localities(client, paths)
    if seen != Counter({"DISK_AND_TAPE": n}):
        raise BenchError(f"after the recall, ARCHIVEINFO says {dict(seen)}")


# --------------------------------------------------------------------------- virtual clock


class VirtualClock:
    """Simulated seconds, and how many executor calls are under way (the clock waits for them)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.in_flight = 0
        self.idle_waits = 0


class _VirtualSelector(selectors.BaseSelector):
    """Real I/O readiness, but an idle wait moves the virtual clock instead of sleeping.

    While an executor call is in flight (the SQLite store's thread), time stands still and the
    selector really waits for the thread to hand its result back.
    """

    REAL_WAIT = 1.0
    MAX_IDLE_WAITS = 120  # real seconds with nothing scheduled and nothing in flight

    def __init__(self, clock: VirtualClock) -> None:
        self._inner = selectors.DefaultSelector()
        self._clock = clock

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def get_map(self) -> Any:
        return self._inner.get_map()

    def close(self) -> None:
        self._inner.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._inner.select(0)
        if ready or timeout == 0:
            return ready
        if self._clock.in_flight or timeout is None:
            ready = self._inner.select(self.REAL_WAIT)
            if ready or self._clock.in_flight:
                self._clock.idle_waits = 0
            else:
                self._clock.idle_waits += 1
                if self._clock.idle_waits > self.MAX_IDLE_WAITS:
                    raise RuntimeError("simulation stalled: nothing scheduled, nothing running")
            return ready
        self._clock.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` is simulated: idle waits take no real time."""

    def __init__(self) -> None:
        self.clock = VirtualClock()
        super().__init__(_VirtualSelector(self.clock))

    def time(self) -> float:
        return self.clock.now

    def run_in_executor(  # type: ignore[override]
        self, executor: Executor | None, func: Callable[..., _T], *args: Any
    ) -> asyncio.Future[_T]:
        future = super().run_in_executor(executor, func, *args)
        self.clock.in_flight += 1
        future.add_done_callback(self._settled)
        return future

    def _settled(self, _future: asyncio.Future[Any]) -> None:
        self.clock.in_flight -= 1


# --------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class SimFile:
    path: str
    pool: str
    size: int


@dataclass(frozen=True)
class SimRequest:
    arrival: float  # simulated seconds
    paths: tuple[str, ...]


@dataclass(frozen=True)
class Workload:
    files: tuple[SimFile, ...]  # in archive (dataset) order
    requests: tuple[SimRequest, ...]  # in arrival order


def make_workload(args: argparse.Namespace) -> Workload:
    """One dataset per cartridge, written in dataset order; requests of ``--request-files``
    files of one dataset each (in shuffled file order), arriving in random order with
    exponential gaps of mean ``--gap`` simulated seconds."""
    rng = random.Random(args.seed)
    lo, hi = int(args.size_min * GB), int(args.size_max * GB)
    files: list[SimFile] = []
    chunks: list[list[str]] = []
    per = [args.sim_files // args.cartridges] * args.cartridges
    for i in range(args.sim_files % args.cartridges):
        per[i] += 1
    for d, count in enumerate(per):
        pool = f"/data/ds{d:02d}"
        names = [f"{pool}/f{i:05d}" for i in range(count)]
        files += [SimFile(p, pool, rng.randint(lo, hi)) for p in names]
        for start in range(0, count, args.request_files):
            chunk = names[start : start + args.request_files]
            rng.shuffle(chunk)
            chunks.append(chunk)
    rng.shuffle(chunks)
    requests = []
    at = 0.0
    for i, chunk in enumerate(chunks):
        if i:
            at += rng.expovariate(1.0 / args.gap) if args.gap > 0 else 0.0
        requests.append(SimRequest(at, tuple(chunk)))
    return Workload(tuple(files), tuple(requests))


@dataclass
class PolicyResult:
    name: str
    makespan: float  # first arrival to the last file on disk
    end: float  # first arrival to the last drive emptied
    busy: float  # drive-seconds mounting, locating, reading, dismounting
    drives: int
    mounts: dict[str, int]
    file_latency: list[float]  # per file: on disk - its request's arrival
    request_latency: list[float]  # per request: last file on disk - arrival
    wall: float = 0.0  # real seconds the simulation took

    @property
    def utilisation(self) -> float:
        return self.busy / (self.drives * self.end) if self.end > 0 else 0.0

    @property
    def total_mounts(self) -> int:
        return sum(self.mounts.values())


def _latencies(workload: Workload, done_at: dict[str, float]) -> tuple[list[float], list[float]]:
    files: list[float] = []
    requests: list[float] = []
    for req in workload.requests:
        times = [done_at[p] - req.arrival for p in req.paths]
        files += times
        requests.append(max(times))
    return files, requests


# --------------------------------------------------------------------------- se's library

Layout = dict[str, tuple[str, int, int]]  # path -> (cartridge, position, size)


async def _run_library(
    workload: Workload, config: LibraryConfig, db: Path
) -> tuple[LibraryStats, dict[str, float], Layout]:
    loop = asyncio.get_running_loop()
    store = await SQLiteStore.open(db, synchronous="NORMAL")
    done_at: dict[str, float] = {}
    t0 = 0.0

    def on_read(_vid: str, path: str, _position: int) -> None:
        done_at[path] = loop.time() - t0

    library = TapeLibrary(store, config, on_read=on_read)
    try:
        await library.start()
        t0 = loop.time()
        for f in workload.files:  # dataset after dataset: each pool takes its own cartridge
            await library.archive(f.path, f.size, f.pool, keep_on_disk=False)
        entries = await store.get_files([f.path for f in workload.files])
        layout: Layout = {}
        for path, (_loc, size, vid, position) in entries.items():
            assert vid is not None and position is not None
            layout[path] = (vid, position, size)
        for i, req in enumerate(workload.requests):
            await asyncio.sleep(max(0.0, t0 + req.arrival - loop.time()))
            rid = f"bench-{i:04d}"
            files = [(p, None, None) for p in req.paths]
            states = [(FileState.SUBMITTED, None)] * len(files)
            await store.create_request(rid, "bench", int(time.time()), files, states)
            await library.recall(rid)
        total = len(workload.files)
        while loop.time() - t0 < SIM_HORIZON:
            stats = library.stats()
            if stats.files_recalled + stats.files_failed >= total and not stats.in_drives:
                break
            await asyncio.sleep(SIM_POLL)
        await library.stop()
        return library.stats(), done_at, layout
    finally:
        await library.stop()
        await store.close()


def run_se(
    workload: Workload, args: argparse.Namespace, min_age: float, db: Path
) -> tuple[PolicyResult, Layout]:
    config = LibraryConfig(
        drives=args.drives,
        cartridges=args.cartridges,
        min_request_age=min_age,
        timing=TapeTiming(time_scale=1.0),  # virtual clock: simulated seconds are loop seconds
    )
    start = time.perf_counter()
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        stats, done_at, layout = runner.run(_run_library(workload, config, db))
    wall = time.perf_counter() - start
    missing = [f.path for f in workload.files if f.path not in done_at]
    if missing:
        raise BenchError(f"se's library did not recall {len(missing)} files, e.g. {missing[0]}")
    files, requests = _latencies(workload, done_at)
    result = PolicyResult(
        name=f"se (CTA-like, min_request_age {min_age:g} s)",
        makespan=max(done_at.values()),
        end=stats.elapsed,
        busy=stats.drive_busy,
        drives=stats.drives,
        mounts={v: n for v, n in stats.mounts.items() if n},
        file_latency=files,
        request_latency=requests,
        wall=wall,
    )
    if abs(result.utilisation - stats.utilisation) > 1e-9:
        raise BenchError("utilisation differs from LibraryStats.utilisation")
    return result, layout


# --------------------------------------------------------------------------- naive FIFO


@dataclass
class _Drive:
    index: int
    tape: str | None = None
    head: int = 0
    busy: bool = False
    free_since: float = 0.0
    generation: int = 0  # bumped whenever the drive becomes free: stale idle timers ignored


def run_fifo(
    workload: Workload, layout: Layout, drives: int, timing: TapeTiming, capacity: int
) -> PolicyResult:
    """One global queue in arrival order.  A free drive takes the oldest job whose cartridge
    is not in another, busy drive; it prefers the free drive that has that cartridge mounted,
    else an empty one, else the one idle the longest, which first dismounts its tape.  It
    mounts, locates, reads that one file, and takes the next oldest job.  A tape left with no
    work for ``idle_dismount`` is dismounted, as in se's library.  No batching, no reordering
    by tape position, no waiting for a queue to fill."""
    start = time.perf_counter()
    events: list[tuple[float, int, str, int, str]] = []  # (time, seq, kind, drive, path)
    seq = 0

    def push(at: float, kind: str, drive: int = -1, path: str = "") -> None:
        nonlocal seq
        heapq.heappush(events, (at, seq, kind, drive, path))
        seq += 1

    for i, req in enumerate(workload.requests):
        push(req.arrival, "arrive", i)
    pool = [_Drive(i) for i in range(drives)]
    queue: list[str] = []
    released: dict[str, float] = {}  # cartridge -> when its dismount ends
    mounts: dict[str, int] = {}
    done_at: dict[str, float] = {}
    busy = 0.0
    end = 0.0

    def dispatch(now: float) -> None:
        nonlocal busy
        while queue:
            free = [d for d in pool if not d.busy]
            if not free:
                return
            in_use = {d.tape for d in pool if d.busy and d.tape is not None}
            pick = None
            for j, path in enumerate(queue):
                vid = layout[path][0]
                if vid not in in_use and released.get(vid, 0.0) <= now:
                    pick = j
                    break
            if pick is None:
                return
            path = queue.pop(pick)
            vid, position, size = layout[path]
            holders = [d for d in free if d.tape == vid]
            empty = [d for d in free if d.tape is None]
            drive = (holders or empty or sorted(free, key=lambda d: d.free_since))[0]
            cost = 0.0
            if drive.tape != vid:
                if drive.tape is not None:
                    cost += timing.dismount()
                    released[drive.tape] = now + timing.dismount()
                cost += timing.mount()
                drive.tape, drive.head = vid, 0
                mounts[vid] = mounts.get(vid, 0) + 1
            cost += timing.locate(position - drive.head, capacity) + timing.read(size)
            drive.head = position + size
            drive.busy = True
            busy += cost
            push(now + cost, "done", drive.index, path)

    while events:
        now, _, kind, index, path = heapq.heappop(events)
        if now > SIM_HORIZON:
            raise BenchError("the FIFO simulation did not finish")
        end = max(end, now)
        if kind == "arrive":
            queue.extend(workload.requests[index].paths)
        elif kind == "done":
            drive = pool[index]
            drive.busy = False
            drive.free_since = now
            drive.generation += 1
            if path:
                done_at[path] = now
            if drive.tape is not None:
                push(now + timing.idle_dismount, "idle", index, str(drive.generation))
        elif kind == "idle":
            drive = pool[index]
            if not drive.busy and drive.tape is not None and path == str(drive.generation):
                released[drive.tape] = now + timing.dismount()
                drive.tape = None
                drive.busy = True
                busy += timing.dismount()
                push(now + timing.dismount(), "done", index)
        elif kind == "wake":
            pass
        dispatch(now)
        # A job whose cartridge is being dismounted elsewhere waits for the end of that.
        waiting = [t for t in released.values() if t > now]
        if queue and waiting and not any(k == "wake" for _, _, k, _, _ in events):
            push(min(waiting), "wake")
    if len(done_at) != len(workload.files):
        raise BenchError(f"FIFO recalled {len(done_at)} of {len(workload.files)} files")
    files, requests = _latencies(workload, done_at)
    return PolicyResult(
        name="naive FIFO",
        makespan=max(done_at.values()),
        end=end,
        busy=busy,
        drives=drives,
        mounts=mounts,
        file_latency=files,
        request_latency=requests,
        wall=time.perf_counter() - start,
    )


def sim_part(args: argparse.Namespace, base: Path) -> tuple[Workload, list[PolicyResult]]:
    workload = make_workload(args)
    results: list[PolicyResult] = []
    layout: Layout = {}
    timing = TapeTiming()
    for i, min_age in enumerate(args.min_age):
        res, layout = run_se(workload, args, min_age, base / f"sim-{i}.sqlite")
        results.append(res)
        log(f"  {res.name}: makespan {res.makespan:,.0f} s, {res.wall:.1f} s of real time")
    fifo = run_fifo(workload, layout, args.drives, timing, LibraryConfig().cartridge_capacity)
    log(f"  {fifo.name}: makespan {fifo.makespan:,.0f} s, {fifo.wall:.2f} s of real time")
    results.append(fifo)
    return workload, results


# --------------------------------------------------------------------------- report


def _ms(values: list[float] | None) -> tuple[str, str]:
    if not values:
        return "-", "-"
    return f"{statistics.median(values) * 1000:,.0f}", f"{max(values) * 1000:,.0f}"


HTTP_HEADER = ["test", "median", "max", "runs", "target", "met"]


def http_rows(args: argparse.Namespace, result: HttpResult) -> list[list[str]]:
    n = f"{args.files:,}"
    specs: list[tuple[str, str, float | None]] = [
        ("stage", f"POST stage, {n} files (ms)", STAGE_TARGET),
        ("poll_first", f"GET stage/{{id}} right after the POST, {n} files (ms)", POLL_TARGET),
        ("poll_recall", f"GET stage/{{id}} during the recall, {n} files (ms)", POLL_TARGET),
        ("poll_done", f"GET stage/{{id}} after the recall, {n} files (ms)", POLL_TARGET),
        ("archiveinfo", f"POST archiveinfo, {n} paths (ms)", None),
    ]
    rows = []
    for key, label, target in specs:
        values = result.samples.get(key)
        med, top = _ms(values)
        met = "-"
        if target is not None and values:
            met = "yes" if statistics.median(values) < target else "NO"
        tgt = f"< {target * 1000:,.0f}" if target is not None else "-"
        rows.append([label, med, top, str(len(values or [])), tgt, met])
    wall = "-" if result.recall_wall is None else f"{result.recall_wall:,.1f}"
    rows.append([f"simulated recall of {n} files, wall time (s)", wall, "-", "1", "-", "-"])
    timing = TapeTiming(time_scale=args.time_scale)
    asleep = timing.real(timing.mount() + args.files * timing.read(FILE_SIZE))
    rows.append(["  of which tape timings / time_scale (s)", f"{asleep:,.1f}", "-", "-", "-", "-"])
    return rows


SIM_HEADER = [
    "policy",
    "makespan (h)",
    "mounts",
    "mounts/cartridge mean",
    "max",
    "drive utilisation",
    "overhead (drive-h)",
    "throughput (MB/s)",
    "mean file latency (h)",
    "mean request latency (h)",
]


def _ratio(ours: list[float], theirs: list[float]) -> str:
    return f"{statistics.mean(ours) / statistics.mean(theirs):.2f}x"


def sim_rows(workload: Workload, results: list[PolicyResult]) -> list[list[str]]:
    timing = TapeTiming()
    reading = sum(timing.read(f.size) for f in workload.files)  # the same for every policy
    volume = sum(f.size for f in workload.files)
    rows = []
    for r in results:
        per = list(r.mounts.values()) or [0]
        rows.append(
            [
                r.name,
                f"{r.makespan / 3600:.2f}",
                str(r.total_mounts),
                f"{statistics.mean(per):.1f}",
                str(max(per)),
                f"{r.utilisation:.1%}",
                f"{(r.busy - reading) / 3600:.2f}",
                f"{volume / r.makespan / 1e6:,.0f}",
                f"{statistics.mean(r.file_latency) / 3600:.2f}",
                f"{statistics.mean(r.request_latency) / 3600:.2f}",
            ]
        )
    fifo = results[-1]
    for r in results[:-1]:
        fm = list(fifo.mounts.values()) or [0]
        rm = list(r.mounts.values()) or [0]
        rows.append(
            [
                f"ratio se/FIFO ({r.name.split('(', 1)[1]}",
                f"{r.makespan / fifo.makespan:.2f}x",
                f"{r.total_mounts / max(1, fifo.total_mounts):.2f}x",
                f"{statistics.mean(rm) / max(1e-9, statistics.mean(fm)):.2f}x",
                f"{max(rm) / max(1, max(fm)):.2f}x",
                f"{r.utilisation / max(1e-9, fifo.utilisation):.2f}x",
                f"{(r.busy - reading) / max(1e-9, fifo.busy - reading):.2f}x",
                f"{fifo.makespan / r.makespan:.2f}x",
                _ratio(r.file_latency, fifo.file_latency),
                _ratio(r.request_latency, fifo.request_latency),
            ]
        )
    return rows


def report(
    args: argparse.Namespace,
    http: HttpResult | None,
    workload: Workload | None,
    sims: list[PolicyResult],
) -> None:
    if http is not None:
        rows = http_rows(args, http)
        log("")
        log(format_text(rows, HTTP_HEADER))
        for note in http.notes:
            log(f"  - {note}")
    if workload is not None and sims:
        rows = sim_rows(workload, sims)
        log("")
        log(format_text(rows, SIM_HEADER))
    log("\n<!-- markdown -->")
    if http is not None:
        log(
            f"HTTP: se `--workers {args.workers}`, {os.cpu_count()} CPUs, median of {args.runs}"
            f" run(s) (polls: every {POLL_PERIOD:g} s while the recall runs, then"
            f" {max(args.runs, 3) * 2} more), `time_scale = {args.time_scale:g}`,"
            f" {args.drives} drives, SQLite store (synchronous FULL) in"
            f" `{args.tmpdir or tempfile.gettempdir()}`.\n"
        )
        log(format_markdown(http_rows(args, http), HTTP_HEADER))
    if workload is not None and sims:
        sizes = [f.size for f in workload.files]
        log(
            f"\nSimulation: {len(workload.files):,} files of"
            f" {args.size_min:g}-{args.size_max:g} GB (total {sum(sizes) / 1e12:.1f} TB) on"
            f" {args.cartridges} cartridges, {len(workload.requests)} requests of"
            f" <= {args.request_files} files arriving over"
            f" {workload.requests[-1].arrival / 3600:.2f} h (mean gap {args.gap:g} s),"
            f" {args.drives} drives, LTO-9 timings, seed {args.seed}.\n"
        )
        log(format_markdown(sim_rows(workload, sims), SIM_HEADER))


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark se's Tape REST API and recall policy.")
    p.add_argument("--quick", action="store_true", help="2 timed runs instead of 5")
    p.add_argument("--files", type=int, default=10_000, help="files per STAGE (default 10000)")
    p.add_argument("--runs", type=int, help="timed runs of each HTTP call (default 5; quick 2)")
    p.add_argument("--workers", type=int, default=1, help="se --workers (default 1)")
    p.add_argument(
        "--time-scale",
        type=float,
        default=10_000.0,
        help="[tape] time_scale of the HTTP part (default 10000)",
    )
    p.add_argument(
        "--recall-timeout", type=float, default=300.0, help="real seconds for the recall"
    )
    p.add_argument(
        "--sim-files", type=int, default=2000, help="files of the simulation (default 2000)"
    )
    p.add_argument("--size-min", type=float, default=2.0, help="smallest file, GB (default 2)")
    p.add_argument("--size-max", type=float, default=5.0, help="largest file, GB (default 5)")
    p.add_argument("--cartridges", type=int, default=10, help="cartridges = datasets (default 10)")
    p.add_argument("--drives", type=int, default=4, help="tape drives (default 4)")
    p.add_argument(
        "--request-files", type=int, default=50, help="files per stage request (default 50)"
    )
    p.add_argument(
        "--gap", type=float, default=60.0, help="mean simulated s between requests (default 60)"
    )
    p.add_argument(
        "--min-age",
        type=float,
        action="append",
        help="se's min_request_age, simulated s; repeat for several rows (default 60)",
    )
    p.add_argument("--seed", type=int, default=1, help="workload seed (default 1)")
    p.add_argument("--skip-http", action="store_true", help="only the simulation")
    p.add_argument("--skip-sim", action="store_true", help="only the HTTP part")
    p.add_argument("--tmpdir", type=Path, help="where the work dir goes (e.g. /dev/shm)")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    args = p.parse_args(argv)
    if args.runs is None:
        args.runs = 2 if args.quick else 5
    if args.min_age is None:
        args.min_age = [60.0]
    if (
        args.runs < 1
        or args.files < 1
        or args.sim_files < args.cartridges
        or args.cartridges < 1
        or args.drives < 1
        or args.request_files < 1
        or not 0 < args.size_min <= args.size_max
        or args.gap < 0
        or any(a < 0 for a in args.min_age)
    ):
        p.error("counts must be positive (--sim-files >= --cartridges), 0 < size-min <= size-max")
    return args


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: clean up like Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if args.tmpdir is not None:
        tempfile.tempdir = str(args.tmpdir.resolve())
    base = Path(tempfile.mkdtemp(prefix="se-bench-tape-"))
    log(f"work dir {base}")
    http: HttpResult | None = None
    workload: Workload | None = None
    sims: list[PolicyResult] = []
    code = 0
    try:
        if not args.skip_http:
            log(f"HTTP part: {args.files} files, {args.runs} run(s)")
            http = HttpResult()
            http_part(args, base, http)
        if not args.skip_sim:
            log(f"simulation: {args.sim_files} files, {args.drives} drives")
            workload, sims = sim_part(args, base)
    except BenchError as exc:
        log(f"sanity check failed: {exc}")
        code = 1
    except RuntimeError as exc:  # se did not start
        log(f"error: {exc}")
        code = 2
    except KeyboardInterrupt:
        log("\ninterrupted (partial results below)")
        code = 130
    finally:
        report(args, http, workload, sims)
        if args.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
