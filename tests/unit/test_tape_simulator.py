"""The simulated tape library (:mod:`se.tape.simulator`) on a real SQLite store.

Timings run 10 000 times faster than real (a 146 s mount and dismount takes 15 ms); every wait
is bounded.  Files are archived through the library, so positions are in write order per pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from se.tape.buffer import BufferConfig, DiskBuffer
from se.tape.model import CartridgeState, FileState, Locality, StageRequest
from se.tape.simulator import LibraryConfig, TapeFullError, TapeLibrary, TapeTiming
from se.tape.sqlite_store import SQLiteStore
from se.tape.store import TapeStore

MB = 10**6
SIZE = MB
FAST = TapeTiming(time_scale=10_000)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    st = await SQLiteStore.open(tmp_path / "tape.sqlite", synchronous="NORMAL")
    yield st
    await st.close()


class Reads:
    """Records the on_read calls; ``reached(n)`` is an event set after the n-th read."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, int]] = []
        self._events: dict[int, asyncio.Event] = {}

    def __call__(self, vid: str, path: str, position: int) -> None:
        self.log.append((vid, path, position))
        for n, ev in self._events.items():
            if len(self.log) >= n:
                ev.set()

    def reached(self, n: int) -> asyncio.Event:
        return self._events.setdefault(n, asyncio.Event())

    def paths(self) -> set[str]:
        return {p for _, p, _ in self.log}


def config(**kw: object) -> LibraryConfig:
    base = LibraryConfig(
        drives=2,
        cartridges=10,
        cartridge_capacity=100 * SIZE,  # 100 files per cartridge
        min_request_age=1.0,
        timing=FAST,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


async def fill(lib: TapeLibrary, n: int, prefix: str = "/raw/f", pool: str = "raw") -> list[str]:
    """Archive ``n`` files of SIZE bytes, tape copy only; their paths in write order."""
    paths = [f"{prefix}{i:04d}" for i in range(n)]
    for p in paths:
        await lib.archive(p, SIZE, pool, keep_on_disk=False)
    return paths


async def submit(store: TapeStore, request_id: str, paths: list[str]) -> None:
    await store.create_request(
        request_id,
        "alice",
        1_700_000_000,
        [(p, None, None) for p in paths],
        [(FileState.SUBMITTED, None)] * len(paths),
    )


async def wait_done(store: TapeStore, request_id: str, timeout: float = 10.0) -> StageRequest:
    async with asyncio.timeout(timeout):
        while True:
            req = await store.get_request(request_id)
            assert req is not None
            if req.completed_at is not None:
                return req
            await asyncio.sleep(0.01)


async def wait_drives_empty(lib: TapeLibrary, timeout: float = 4.0) -> None:
    async with asyncio.timeout(timeout):
        while lib.stats().in_drives:
            await asyncio.sleep(0.005)


def states(req: StageRequest) -> dict[str, FileState]:
    return {f.path: f.state for f in req.files}


async def test_archive_positions_in_write_order_per_pool(store: SQLiteStore) -> None:
    lib = TapeLibrary(store, config(cartridges=("A", "B", "C"), cartridge_capacity=3 * SIZE))
    assert await lib.archive("/x/1", SIZE, "x") == (Locality.DISK_AND_TAPE, SIZE, "A", 0)
    assert await lib.archive("/y/1", SIZE, "y") == (Locality.DISK_AND_TAPE, SIZE, "B", 0)
    assert await lib.archive("/x/2", 2 * SIZE, "x") == (Locality.DISK_AND_TAPE, 2 * SIZE, "A", SIZE)
    assert await lib.archive("/x/3", SIZE, "x", keep_on_disk=False) == (
        Locality.TAPE,
        SIZE,
        "C",
        0,
    )
    assert await lib.archive("/x/empty", 0, "x") == (Locality.NONE, 0, None, None)
    assert await store.files_on("A") == [("/x/1", 0, SIZE), ("/x/2", SIZE, 2 * SIZE)]
    with pytest.raises(TapeFullError):
        await lib.archive("/x/4", 3 * SIZE, "x")  # no empty cartridge left
    with pytest.raises(TapeFullError):
        await lib.archive("/x/5", 4 * SIZE, "z")  # larger than a cartridge
    # A new library (after a restart) does not reuse a cartridge that holds files.
    lib2 = TapeLibrary(store, lib.config)
    with pytest.raises(TapeFullError):
        await lib2.archive("/z/1", SIZE, "z")
    assert await lib.evict("/x/1")
    assert not await lib.evict("/x/1")
    assert await store.get_file("/x/1") == (Locality.TAPE, SIZE, "A", 0)


async def test_1000_files_10_cartridges_2_drives_one_mount_each(store: SQLiteStore) -> None:
    reads = Reads()
    lib = TapeLibrary(store, config(), on_read=reads)
    paths = await fill(lib, 1000)
    shuffled = paths[:]
    random.Random(1).shuffle(shuffled)
    await submit(store, "r1", shuffled)
    await lib.start()
    try:
        assert await lib.recall("r1") == 1000
        req = await wait_done(store, "r1")
        await wait_drives_empty(lib)
        stats = lib.stats()
    finally:
        await lib.stop()
    assert set(states(req).values()) == {FileState.COMPLETED}
    assert all(f.error is None and f.started_at is not None for f in req.files)
    assert stats.mounts == {f"V{i:05d}": 1 for i in range(10)}
    assert stats.files_recalled == 1000 and stats.bytes_recalled == 1000 * SIZE
    assert stats.files_failed == stats.read_errors == stats.drive_failures == 0
    assert stats.queued_files == 0
    # Each cartridge mounted (28 s) and dismounted (118 s) once; the files are contiguous, so
    # no locate: 2 s overhead + 2.5 ms of reading each.
    expected = 10 * (28 + 118) + 1000 * (2 + SIZE / 400e6)
    assert stats.drive_busy == pytest.approx(expected)
    assert 0 < stats.utilisation <= 1
    assert len(reads.log) == 1000 and reads.paths() == set(paths)
    # Within each mount the files were read in position order.
    by_vid: dict[str, list[int]] = defaultdict(list)
    for vid, _, pos in reads.log:
        by_vid[vid].append(pos)
    assert all(positions == sorted(positions) for positions in by_vid.values())
    entry = await store.get_file(paths[0])
    assert entry == (Locality.DISK_AND_TAPE, SIZE, "V00000", 0)
    assert await store.pinned(paths[0], 1_700_000_000)


async def test_batches_read_in_position_order(store: SQLiteStore) -> None:
    reads = Reads()
    lib = TapeLibrary(store, config(drives=1, batch_max_files=7), on_read=reads)
    paths = await fill(lib, 60)
    picked = paths[::2] + paths[1::6]  # gaps on the tape, recalled out of order
    random.Random(2).shuffle(picked)
    await submit(store, "r", picked)
    await lib.start()
    try:
        await lib.recall("r")
        await wait_done(store, "r")
    finally:
        await lib.stop()
    positions = [pos for _, _, pos in reads.log]
    assert positions == sorted(positions) and len(positions) == len(set(picked))
    assert lib.stats().mounts["V00000"] == 1


async def test_late_request_joins_the_mounted_session(store: SQLiteStore) -> None:
    reads = Reads()
    timing = replace(FAST, idle_dismount=600.0)
    lib = TapeLibrary(store, config(drives=1, timing=timing), on_read=reads)
    paths = await fill(lib, 100)
    await submit(store, "early", paths[:60])
    await submit(store, "late", paths[60:])
    await lib.start()
    try:
        await lib.recall("early")
        async with asyncio.timeout(4):
            await reads.reached(5).wait()
        assert lib.stats().mounted == ("V00000",)
        await lib.recall("late")
        late = await store.get_request("late")
        assert late is not None
        # Its queue has a drive: STARTED on arrival (those already read are COMPLETED).
        assert FileState.SUBMITTED not in states(late).values()
        await wait_done(store, "early")
        late = await wait_done(store, "late")
        stats = lib.stats()
    finally:
        await lib.stop()
    assert set(states(late).values()) == {FileState.COMPLETED}
    assert stats.mounts["V00000"] == 1 and sum(stats.mounts.values()) == 1
    assert stats.files_recalled == 100


async def test_idle_tape_gives_its_drive_to_a_waiting_queue(store: SQLiteStore) -> None:
    # Without the hand-over the second tape would wait for the idle dismount: 100 s here.
    timing = replace(FAST, idle_dismount=1e6)
    lib = TapeLibrary(
        store, config(drives=1, min_request_age=500.0, mount_min_files=5, timing=timing)
    )
    paths = await fill(lib, 200)
    await submit(store, "a", paths[:10])  # mountable at once: 10 files
    await submit(store, "b", paths[100:102])  # mountable after 500 s (50 ms)
    await lib.start()
    try:
        await lib.recall("a")
        await lib.recall("b")
        await wait_done(store, "a")
        await wait_done(store, "b", timeout=5.0)
        stats = lib.stats()
    finally:
        await lib.stop()
    assert stats.mounts["V00000"] == stats.mounts["V00001"] == 1
    assert stats.mounted == ("V00001",)  # idle-mounted now, until its own timeout


async def test_pools_own_cartridges_and_drive_caps(store: SQLiteStore) -> None:
    pools = {"atlas": ("V00000", "V00001", "V00002"), "cms": ("V00003", "V00004")}
    cfg = config(drives=3, cartridges=6, pools=pools, max_drives={"atlas": 1})
    atlas_busy: list[int] = []
    lib: TapeLibrary | None = None

    def on_read(vid: str, path: str, position: int) -> None:
        assert lib is not None
        atlas_busy.append(sum(1 for v in lib.stats().in_drives if v in pools["atlas"]))

    lib = TapeLibrary(store, cfg, on_read=on_read)
    atlas = await fill(lib, 250, "/atlas/f", "atlas")
    cms = await fill(lib, 150, "/cms/f", "cms")
    other = await fill(lib, 10, "/other/f", "other")
    assert await store.get_file(atlas[-1]) == (Locality.TAPE, SIZE, "V00002", 49 * SIZE)
    assert await store.get_file(cms[-1]) == (Locality.TAPE, SIZE, "V00004", 49 * SIZE)
    assert await store.get_file(other[0]) == (Locality.TAPE, SIZE, "V00005", 0)
    with pytest.raises(TapeFullError):
        await lib.archive("/cms/full", 51 * SIZE, "cms")
    # A new library continues the pool's partly filled cartridge.
    assert await TapeLibrary(store, cfg).archive("/cms/more", SIZE, "cms") == (
        Locality.DISK_AND_TAPE,
        SIZE,
        "V00004",
        50 * SIZE,
    )
    await submit(store, "r", atlas + cms + other)
    await lib.start()
    try:
        await lib.recall("r")
        req = await wait_done(store, "r")
        stats = lib.stats()
    finally:
        await lib.stop()
    assert set(states(req).values()) == {FileState.COMPLETED}
    assert max(atlas_busy) == 1
    assert stats.mounts == {f"V{i:05d}": 1 for i in range(6)}


async def test_cancel_queued_files(store: SQLiteStore) -> None:
    reads = Reads()
    lib = TapeLibrary(store, config(drives=1), on_read=reads)
    paths = await fill(lib, 200)  # V00000: 0-99, V00001: 100-199
    first, second = paths[:100], paths[100:130]
    await submit(store, "r1", first)
    await submit(store, "r2", second)
    await lib.start()
    try:
        await lib.recall("r1")
        await lib.recall("r2")
        async with asyncio.timeout(4):
            await reads.reached(1).wait()
        r2 = await store.get_request("r2")
        assert r2 is not None and set(states(r2).values()) == {FileState.SUBMITTED}
        assert not await lib.cancel("r2", [*second[:10], "/not/in/r2"])  # all or nothing
        assert await lib.cancel("r2", second[:10])
        r2 = await wait_done(store, "r2")
        await wait_done(store, "r1")
        stats = lib.stats()
    finally:
        await lib.stop()
    got = states(r2)
    assert all(got[p] is FileState.CANCELLED for p in second[:10])
    assert all(got[p] is FileState.COMPLETED for p in second[10:])
    assert not reads.paths() & set(second[:10])
    assert stats.files_recalled == 120
    assert stats.mounts["V00000"] == stats.mounts["V00001"] == 1
    for p in second[:10]:
        assert await store.get_file(p) == (Locality.TAPE, SIZE, "V00001", p_pos(paths, p))


def p_pos(paths: list[str], path: str) -> int:
    return (paths.index(path) % 100) * SIZE  # 100 files per cartridge


async def test_delete_drops_every_queued_job(store: SQLiteStore) -> None:
    lib = TapeLibrary(store, config(min_request_age=1e9))  # nothing ever becomes mountable
    paths = await fill(lib, 20)
    await submit(store, "r", paths)
    await lib.start()
    try:
        assert await lib.recall("r") == 20
        assert lib.stats().queued_files == 20
        assert await lib.delete("r")
        assert not await lib.delete("r")
        assert lib.stats().queued_files == 0
    finally:
        await lib.stop()
    assert await store.get_request("r") is None
    assert await store.pending_files() == []


async def test_files_that_cannot_be_recalled_fail_at_once(store: SQLiteStore) -> None:
    lib = TapeLibrary(store, config(drives=1))
    await lib.archive("/d/empty", 0, "d")
    await lib.archive("/d/ondisk", SIZE, "d")
    ok = await lib.archive("/d/ok", SIZE, "d", keep_on_disk=False)
    await store.set_locality("/d/lost", Locality.LOST, SIZE, "V00000", 5 * SIZE)
    await store.set_locality("/d/alien", Locality.TAPE, SIZE, "NOSUCH", 0)
    await store.set_locality("/d/diskonly", Locality.DISK, SIZE)
    paths = ["/d/missing", "/d/empty", "/d/ondisk", "/d/ok", "/d/lost", "/d/alien", "/d/diskonly"]
    await submit(store, "r", paths)
    await lib.start()
    try:
        assert await lib.recall("r") == 1
        req = await wait_done(store, "r")
    finally:
        await lib.stop()
    files = {f.path: f for f in req.files}
    for path, needle in [
        ("/d/missing", "not in the tape tier"),
        ("/d/empty", "zero-length"),
        ("/d/lost", "lost"),
        ("/d/alien", "tape unavailable"),
    ]:
        error = files[path].error
        assert files[path].state is FileState.FAILED
        assert error is not None and needle in error
    for path in ("/d/ondisk", "/d/ok", "/d/diskonly"):
        assert files[path].state is FileState.COMPLETED and files[path].error is None
        assert await store.pinned(path, 1_700_000_000)
    assert await store.get_file("/d/ok") == (Locality.DISK_AND_TAPE, SIZE, ok[2], ok[3])
    assert lib.stats().files_recalled == 1


async def recall_once(lib: TapeLibrary, store: SQLiteStore, request_id: str) -> StageRequest:
    """Start the library, recall one request until it is done, stop the library."""
    await lib.start()
    try:
        await lib.recall(request_id)
        return await wait_done(store, request_id)
    finally:
        await lib.stop()


async def run_with_failures(store: SQLiteStore, **kw: object) -> tuple[StageRequest, TapeLibrary]:
    lib = TapeLibrary(store, config(drives=1, **kw))
    paths = await fill(lib, 100)
    await submit(store, "r", paths)
    req = await recall_once(lib, store, "r")
    return req, lib


async def test_bad_files_retried_then_failed_and_lost(store: SQLiteStore, tmp_path: Path) -> None:
    req, lib = await run_with_failures(store, seed=7, bad_file_probability=0.3, read_retries=1)
    failed = [f for f in req.files if f.state is FileState.FAILED]
    done = [f for f in req.files if f.state is FileState.COMPLETED]
    assert failed and done and len(failed) + len(done) == 100
    assert all(f.error is not None and "read error on tape V00000" in f.error for f in failed)
    for f in failed:
        entry = await store.get_file(f.path)
        assert entry is not None and entry[0] is Locality.LOST
    stats = lib.stats()
    assert stats.files_failed == len(failed) and stats.files_recalled == len(done)
    # Every failed file had 2 bad reads; a good one read at the 2nd attempt had 1.
    assert stats.read_errors >= 2 * len(failed)
    # The same seed fails the same files, whatever the timing.
    other = await SQLiteStore.open(tmp_path / "other.sqlite", synchronous="NORMAL")
    try:
        again, _ = await run_with_failures(other, seed=7, bad_file_probability=0.3, read_retries=1)
    finally:
        await other.close()
    assert {f.path for f in again.files if f.state is FileState.FAILED} == {f.path for f in failed}


async def test_drive_failure_requeues_the_session(store: SQLiteStore) -> None:
    req, lib = await run_with_failures(store, seed=3, drive_failure_probability=0.05)
    assert set(states(req).values()) == {FileState.COMPLETED}
    stats = lib.stats()
    assert stats.drive_failures >= 1
    assert stats.mounts["V00000"] == 1 + stats.drive_failures
    assert stats.files_recalled == 100
    assert 0 < stats.utilisation <= 1 and stats.elapsed > 0  # measured up to stop()


async def test_restart_mid_recall_resumes(tmp_path: Path) -> None:
    location = tmp_path / "tape.sqlite"
    store = await SQLiteStore.open(location, synchronous="NORMAL")
    reads = Reads()
    cfg = config(drives=1)
    lib = TapeLibrary(store, cfg, on_read=reads)
    paths = await fill(lib, 200)
    await submit(store, "r", paths)
    await lib.start()
    try:
        await lib.recall("r")
        async with asyncio.timeout(4):
            await reads.reached(30).wait()
    finally:
        await lib.stop()
        await store.close()

    store = await SQLiteStore.open(location, synchronous="NORMAL")
    try:
        pending = [p for _, p in await store.pending_files()]
        assert 0 < len(pending) < 200
        on_disk = 0
        for p in pending:
            entry = await store.get_file(p)
            assert entry is not None
            on_disk += entry[0] is Locality.DISK_AND_TAPE  # read, but killed before COMPLETED
        lib2 = TapeLibrary(store, cfg)
        await lib2.start()
        try:
            assert await lib2.resume() == len(pending) - on_disk
            assert await lib2.resume() == 0  # already queued
            req = await wait_done(store, "r")
            stats = lib2.stats()
        finally:
            await lib2.stop()
        assert set(states(req).values()) == {FileState.COMPLETED}
        assert stats.files_recalled == len(pending) - on_disk
        assert sum(stats.mounts.values()) == 2  # the rest of V00000, then V00001
    finally:
        await store.close()


def test_config_validation() -> None:
    assert LibraryConfig(cartridges=2).vids == ("V00000", "V00001")
    assert LibraryConfig(cartridges=("a", "b")).vids == ("a", "b")
    t = TapeTiming()
    assert t.mount() == 28 and t.dismount() == 118
    assert t.locate(0, 100) == 0 and t.locate(50, 100) == 70 and t.locate(-100, 100) == 135
    assert t.read(400 * MB) == 3
    assert TapeTiming(time_scale=1000).real(100) == pytest.approx(0.1)
    for bad in (
        {"drives": 0},
        {"cartridges": ("a", "a")},
        {"cartridges": 0},
        {"bad_file_probability": 1.5},
        {"read_retries": -1},
    ):
        with pytest.raises(ValueError):
            LibraryConfig(**bad)
    with pytest.raises(ValueError):
        TapeTiming(time_scale=0)
    with pytest.raises(ValueError):
        TapeTiming(load=-1)


# -- the disk buffer in front of the library -----------------------------------------------


async def resident(store: TapeStore, paths: list[str], holder: str | None) -> None:
    """Files already on disk (recalled earlier, on V00009); pinned by request ``holder``."""
    for i, p in enumerate(paths):
        await store.set_locality(p, Locality.DISK_AND_TAPE, SIZE, "V00009", i * SIZE)
        await store.touch(p, i + 1)
    if holder is not None:
        await store.create_request(
            holder,
            "bob",
            1_700_000_000,
            [(p, None, None) for p in paths],
            [(FileState.COMPLETED, None)] * len(paths),
            pins=[2_000_000_000_000] * len(paths),
        )


async def wait_states(
    store: TapeStore, request_id: str, wanted: set[FileState], timeout: float = 4.0
) -> StageRequest:
    """Wait until every file of the request is in one of ``wanted``."""
    async with asyncio.timeout(timeout):
        while True:
            req = await store.get_request(request_id)
            assert req is not None
            if set(states(req).values()) <= wanted:
                return req
            await asyncio.sleep(0.005)


def small_buffer(store: TapeStore, files: int) -> DiskBuffer:
    return DiskBuffer(store, BufferConfig(capacity=files * SIZE, poll=0.005))


async def test_recall_stalls_in_a_buffer_full_of_pinned_files(store: SQLiteStore) -> None:
    buf = small_buffer(store, 4)
    reads = Reads()
    lib = TapeLibrary(store, config(drives=1), on_read=reads, buffer=buf)
    paths = await fill(lib, 2)
    held = [f"/held/f{i}" for i in range(4)]
    await resident(store, held, "holder")
    await submit(store, "r", paths)
    await lib.start()
    try:
        await lib.recall("r")
        await wait_states(store, "r", {FileState.STARTED})  # the tape is mounted
        await asyncio.sleep(0.05)  # ten polls of the buffer
        req = await store.get_request("r")
        assert req is not None and set(states(req).values()) == {FileState.STARTED}
        assert reads.log == [] and await buf.usage() == 4 * SIZE
        # One pin released: room for one file (the first in tape order), not for two.
        assert await store.release("holder", [held[2]]) == 1
        async with asyncio.timeout(4):
            await reads.reached(1).wait()
        await asyncio.sleep(0.05)
        req = await store.get_request("r")
        assert req is not None
        assert states(req) == {paths[0]: FileState.COMPLETED, paths[1]: FileState.STARTED}
        assert await store.release("holder", [held[0]]) == 1
        req = await wait_done(store, "r")
    finally:
        await lib.stop()
    assert set(states(req).values()) == {FileState.COMPLETED}
    got = {p: e[0] for p, e in (await store.get_files(held)).items()}
    assert got == {
        held[0]: Locality.TAPE,
        held[1]: Locality.DISK_AND_TAPE,
        held[2]: Locality.TAPE,
        held[3]: Locality.DISK_AND_TAPE,
    }
    assert await buf.usage() == 4 * SIZE
    assert lib.stats().mounts["V00000"] == 1


async def test_recall_fails_when_the_buffer_stays_full(store: SQLiteStore) -> None:
    buf = small_buffer(store, 3)
    lib = TapeLibrary(store, config(drives=1, buffer_wait=500.0), buffer=buf)  # 50 ms
    paths = await fill(lib, 2)
    await resident(store, ["/held/a", "/held/b", "/held/c"], "holder")
    await submit(store, "r", paths)
    await lib.start()
    try:
        await lib.recall("r")
        req = await wait_done(store, "r", timeout=4.0)
        stats = lib.stats()
    finally:
        await lib.stop()
    for f in req.files:
        assert f.state is FileState.FAILED and f.error == "no space in disk buffer"
        assert await store.get_file(f.path) == (Locality.TAPE, SIZE, "V00000", p_pos(paths, f.path))
        assert not await store.pinned(f.path, 1_700_000_000)
    assert stats.files_recalled == 0
    assert await buf.usage() == 3 * SIZE


async def test_eviction_respects_pins_while_recalls_run(store: SQLiteStore) -> None:
    buf = small_buffer(store, 6)
    lib = TapeLibrary(store, config(drives=1), buffer=buf)
    paths = await fill(lib, 4)
    held = ["/held/p0", "/held/p1"]
    loose = ["/loose/u0", "/loose/u1", "/loose/u2", "/loose/u3"]
    await resident(store, held, "holder")  # accessed first: the LRU ones, but pinned
    for i, p in enumerate(loose):
        await store.set_locality(p, Locality.DISK_AND_TAPE, SIZE, "V00008", i * SIZE)
        await store.touch(p, 100 + i)
    await submit(store, "r", paths)
    req = await recall_once(lib, store, "r")
    assert set(states(req).values()) == {FileState.COMPLETED}
    got = {p: e[0] for p, e in (await store.get_files([*paths, *held, *loose])).items()}
    assert got == {
        **dict.fromkeys(paths, Locality.DISK_AND_TAPE),  # pinned by r
        **dict.fromkeys(held, Locality.DISK_AND_TAPE),
        **dict.fromkeys(loose, Locality.TAPE),  # made room, least recently used first
    }
    assert (buf.evicted_files, await buf.usage()) == (4, 6 * SIZE)
    assert await buf.collect() == 0  # 100 % full, but everything is pinned
    # Once the request releases its files, the periodic collect may take them.
    assert await store.release("r", paths) == 4
    assert await buf.collect() == 2 * SIZE
    got = {p: e[0] for p, e in (await store.get_files([*paths, *held])).items()}
    assert sorted(got.values()) == sorted([Locality.TAPE] * 2 + [Locality.DISK_AND_TAPE] * 4)
    assert all(got[p] is Locality.DISK_AND_TAPE for p in held)


async def test_a_recalled_file_is_never_evicted_before_its_pin(store: SQLiteStore) -> None:
    # A collect() runs back to back while files are recalled into a buffer above its high
    # watermark: a file must never be seen on disk without its request's pin.
    buf = DiskBuffer(store, BufferConfig(capacity=6 * SIZE, high_watermark=0.5, low_watermark=0.1))
    timing = replace(FAST, file_overhead=50.0)  # 5 ms per file
    lib = TapeLibrary(store, config(drives=2, mount_min_files=1, timing=timing), buffer=buf)
    paths = await fill(lib, 106)
    picked = [*paths[:3], *paths[100:103]]  # three on each of two tapes
    await submit(store, "r", picked)
    rounds = 0

    async def collector() -> None:
        nonlocal rounds
        for _ in range(100_000):
            await buf.collect()
            rounds += 1

    await lib.start()
    gc = asyncio.create_task(collector())
    try:
        await lib.recall("r")
        req = await wait_done(store, "r")
    finally:
        gc.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gc
        await lib.stop()
    assert rounds > 10
    assert set(states(req).values()) == {FileState.COMPLETED}
    got = {p: e[0] for p, e in (await store.get_files(picked)).items()}
    assert got == dict.fromkeys(picked, Locality.DISK_AND_TAPE)  # readable, as promised


async def test_concurrent_sessions_do_not_overfill_the_buffer(store: SQLiteStore) -> None:
    buf = small_buffer(store, 10)
    timing = replace(FAST, file_overhead=500.0)  # each read takes 50 ms
    lib = TapeLibrary(
        store, config(drives=2, mount_min_files=1, buffer_wait=2000.0, timing=timing), buffer=buf
    )
    paths = await fill(lib, 101)  # V00000: 0-99, V00001: 100
    await resident(store, [f"/held/f{i}" for i in range(9)], "holder")  # 90 % full, all pinned
    await submit(store, "r", [paths[0], paths[100]])  # one file on each of two tapes
    await lib.start()
    try:
        await lib.recall("r")
        await wait_done(store, "r")
    finally:
        await lib.stop()
    assert await buf.usage() <= 10 * SIZE  # expected: one read, the other waits then fails


# -- sync(): work and switches recorded by other frontends ---------------------------------


async def test_sync_queues_requests_created_elsewhere(store: SQLiteStore) -> None:
    lib = TapeLibrary(store, config(drives=1))
    paths = await fill(lib, 30)
    await lib.start()
    try:
        await submit(store, "r1", paths[:20])  # as the REST frontend of another process does
        await submit(store, "r2", paths[15:])
        assert await lib.sync() == 35
        assert await lib.sync() == 0  # already queued
        r1 = await wait_done(store, "r1")
        r2 = await wait_done(store, "r2")
        assert await lib.sync() == 0
    finally:
        await lib.stop()
    assert set(states(r1).values()) == set(states(r2).values()) == {FileState.COMPLETED}
    assert lib.stats().files_recalled == 35  # the overlap is read for each request


async def test_sync_drops_files_cancelled_elsewhere(store: SQLiteStore) -> None:
    reads = Reads()
    lib = TapeLibrary(store, config(drives=1, min_request_age=2000.0), on_read=reads)  # 0.2 s
    paths = await fill(lib, 10)
    await submit(store, "r", paths)
    await lib.start()
    try:
        assert await lib.sync() == 10
        assert lib.queue_depths() == {"V00000": 10}
        assert await store.cancel("r", paths[:4])  # another frontend's cancel
        assert await lib.sync() == 0
        assert lib.queue_depths() == {"V00000": 6}
        req = await wait_done(store, "r")
    finally:
        await lib.stop()
    got = states(req)
    assert all(got[p] is FileState.CANCELLED for p in paths[:4])
    assert all(got[p] is FileState.COMPLETED for p in paths[4:])
    assert reads.paths() == set(paths[4:])
    for p in paths[:4]:
        assert not await store.pinned(p, 0)
        assert await store.get_file(p) == (Locality.TAPE, SIZE, "V00000", p_pos(paths, p))


async def test_sync_drops_a_file_cancelled_while_its_tape_is_read(store: SQLiteStore) -> None:
    timing = replace(FAST, file_overhead=300.0)  # 30 ms per file
    reads = Reads()
    lib = TapeLibrary(store, config(drives=1, timing=timing), on_read=reads)
    paths = await fill(lib, 5)
    await submit(store, "r", paths)
    await lib.start()
    try:
        await lib.recall("r")
        async with asyncio.timeout(4):
            await reads.reached(1).wait()
        assert await store.cancel("r", paths[2:])  # in the session's batch, not in the queue
        await lib.sync()
        req = await wait_done(store, "r")
        await wait_drives_empty(lib)
    finally:
        await lib.stop()
    got = states(req)
    assert all(got[p] is FileState.CANCELLED for p in paths[2:])
    assert got[paths[0]] is FileState.COMPLETED
    for p in paths[2:]:  # a file being read may finish, but gets no pin
        assert not await store.pinned(p, 0)


async def test_sync_unreachable_fails_queued_and_new_files(store: SQLiteStore) -> None:
    lib = TapeLibrary(store, config(drives=1, min_request_age=1e9))  # never mountable by age
    paths = await fill(lib, 20)
    await lib.archive("/raw/ondisk", SIZE, "raw")
    await submit(store, "queued", paths[:10])
    await lib.start()
    try:
        assert await lib.recall("queued") == 10
        await store.set_setting("unreachable", True)
        await lib.sync()
        assert (lib.unreachable, lib.queue_depths()) == (True, {})
        queued = await wait_done(store, "queued")
        await submit(store, "new", [*paths[10:15], "/raw/ondisk"])
        assert await lib.recall("new") == 0
        new = await wait_done(store, "new")
        await submit(store, "elsewhere", paths[15:])
        assert await lib.sync() == 0
        elsewhere = await wait_done(store, "elsewhere")
        for req in (queued, elsewhere):
            assert {(f.state, f.error) for f in req.files} == {
                (FileState.FAILED, "Tape backend is unreachable")
            }
        files = {f.path: f for f in new.files}
        assert files.pop("/raw/ondisk").state is FileState.COMPLETED  # on disk: no tape needed
        assert {(f.state, f.error) for f in files.values()} == {
            (FileState.FAILED, "Tape backend is unreachable")
        }
        # Back again: new recalls are queued (and read: see the next test).
        await store.set_setting("unreachable", None)
        await lib.sync()
        assert lib.unreachable is False
        await submit(store, "after", paths[:3])
        assert await lib.sync() == 3
        assert lib.queue_depths() == {"V00000": 3}
        after = await store.get_request("after")
        assert after is not None and set(states(after).values()) == {FileState.SUBMITTED}
    finally:
        await lib.stop()
    for p in paths:  # a failed recall does not lose the file
        entry = await store.get_file(p)
        assert entry is not None and entry[0] is Locality.TAPE


async def test_unreachable_then_back_recalls_complete(store: SQLiteStore) -> None:
    lib = TapeLibrary(store, config(drives=1))
    paths = await fill(lib, 6)
    await lib.start()
    try:
        await store.set_setting("unreachable", True)
        await lib.sync()
        await submit(store, "down", paths[:3])
        await lib.recall("down")
        down = await wait_done(store, "down")
        await store.set_setting("unreachable", None)
        await lib.sync()
        await submit(store, "up", paths)
        assert await lib.sync() == 6
        up = await wait_done(store, "up")
    finally:
        await lib.stop()
    assert {f.error for f in down.files} == {"Tape backend is unreachable"}
    assert set(states(up).values()) == {FileState.COMPLETED}


async def test_bad_file_probability_set_at_run_time(store: SQLiteStore) -> None:
    lib = TapeLibrary(store, config(drives=1, read_retries=0))
    paths = await fill(lib, 8)
    await lib.start()
    try:
        await submit(store, "good", paths[:4])
        await lib.sync()
        good = await wait_done(store, "good")
        await store.set_setting("bad_file_probability", 1.0)
        await store.set_setting("drive_failure_probability", 0.0)
        await lib.sync()
        assert lib.bad_file_probability == 1.0
        await submit(store, "bad", paths[4:])
        await lib.sync()
        bad = await wait_done(store, "bad")
        # A missing or impossible value falls back to the configuration.
        await store.set_setting("bad_file_probability", 7)
        await lib.sync()
        assert lib.bad_file_probability == 0.0
    finally:
        await lib.stop()
    assert set(states(good).values()) == {FileState.COMPLETED}
    for f in bad.files:
        assert f.state is FileState.FAILED
        assert f.error == "read error on tape V00000 after 1 attempts"
        entry = await store.get_file(f.path)
        assert entry is not None and entry[0] is Locality.LOST
    assert lib.stats().files_failed == 4


async def test_disabled_cartridge_fails_its_files_and_is_not_mounted(store: SQLiteStore) -> None:
    lib = TapeLibrary(store, config(drives=2, min_request_age=2000.0))  # mountable after 0.2 s
    paths = await fill(lib, 200)  # V00000: 0-99, V00001: 100-199
    on0, on1 = paths[:5], paths[100:105]
    await submit(store, "r", [*on0, *on1])
    await lib.start()
    try:
        assert await lib.sync() == 10
        await store.set_cartridge_state("V00000", CartridgeState.DISABLED)
        await lib.sync()
        assert lib.cartridge_state("V00000") is CartridgeState.DISABLED
        assert lib.queue_depths() == {"V00001": 5}
        req = await wait_done(store, "r")
        # New recalls of the disabled tape fail at once.
        await submit(store, "again", on0[:2])
        assert await lib.sync() == 0
        again = await wait_done(store, "again")
        assert lib.stats().mounts["V00000"] == 0
        # Enabled again: its files are read.
        await store.set_cartridge_state("V00000", CartridgeState.ACTIVE)
        await submit(store, "later", on0)
        assert await lib.sync() == 5
        later = await wait_done(store, "later")
        stats = lib.stats()
    finally:
        await lib.stop()
    files = {f.path: f for f in req.files}
    for p in on0:
        assert (files[p].state, files[p].error) == (FileState.FAILED, "tape unavailable")
    for p in on1:
        assert files[p].state is FileState.COMPLETED
    assert {(f.state, f.error) for f in again.files} == {(FileState.FAILED, "tape unavailable")}
    assert set(states(later).values()) == {FileState.COMPLETED}
    assert stats.mounts["V00000"] == 1 and stats.mounts["V00001"] == 1


# -- pool ownership of cartridges, kept in the store -----------------------------------------


async def test_pool_ownership_survives_a_restart(store: SQLiteStore) -> None:
    cfg = config(cartridges=4)
    lib = TapeLibrary(store, cfg)
    await lib.start()
    try:
        for i in range(3):
            assert await lib.archive(f"/a/{i}", SIZE, "a") == (
                Locality.DISK_AND_TAPE,
                SIZE,
                "V00000",
                i * SIZE,
            )
    finally:
        await lib.stop()
    assert (await store.cartridges())["V00000"] == ("a", CartridgeState.ACTIVE)

    lib2 = TapeLibrary(store, cfg)  # after a restart
    await lib2.start()
    try:
        assert await lib2.archive("/a/3", SIZE, "a") == (
            Locality.DISK_AND_TAPE,
            SIZE,
            "V00000",
            3 * SIZE,
        )
        b = await lib2.archive("/b/0", SIZE, "b")
        assert b[2] not in (None, "V00000") and b[3] == 0
        assert await lib2.archive("/a/4", SIZE, "a", keep_on_disk=False) == (
            Locality.TAPE,
            SIZE,
            "V00000",
            4 * SIZE,
        )
    finally:
        await lib2.stop()
    owners = {vid: pool for vid, (pool, _state) in (await store.cartridges()).items()}
    assert owners == {"V00000": "a", b[2]: "b"}


async def test_a_restarted_pool_moves_on_when_its_cartridge_is_full(store: SQLiteStore) -> None:
    cfg = config(cartridges=3, cartridge_capacity=3 * SIZE)
    lib = TapeLibrary(store, cfg)
    await lib.start()
    await lib.archive("/a/0", 2 * SIZE, "a")
    await lib.stop()
    lib2 = TapeLibrary(store, cfg)
    await lib2.start()
    try:
        assert (await lib2.archive("/a/1", SIZE, "a"))[2:] == ("V00000", 2 * SIZE)
        assert (await lib2.archive("/a/2", SIZE, "a"))[2:] == ("V00001", 0)
    finally:
        await lib2.stop()
    owners = {vid: pool for vid, (pool, _state) in (await store.cartridges()).items()}
    assert owners == {"V00000": "a", "V00001": "a"}


async def test_two_libraries_cannot_claim_one_cartridge(store: SQLiteStore) -> None:
    cfg = config(cartridges=3)
    one, two = TapeLibrary(store, cfg), TapeLibrary(store, cfg)
    await one.start()
    await two.start()
    try:
        a, b = await asyncio.gather(one.archive("/a/0", SIZE, "a"), two.archive("/b/0", SIZE, "b"))
        assert a[2] is not None and b[2] is not None and a[2] != b[2]
        # Another frontend claimed V00002 (no file on it yet): this one does not take it.
        assert await store.claim_cartridge("V00002", "c")
        assert not await store.claim_cartridge("V00002", "d")
        with pytest.raises(TapeFullError):
            await two.archive("/d/0", SIZE, "d")
    finally:
        await one.stop()
        await two.stop()
    owners = {vid: pool for vid, (pool, _state) in (await store.cartridges()).items()}
    assert owners == {a[2]: "a", b[2]: "b", "V00002": "c"}
    assert await store.files_on("V00002") == []


async def test_stop_right_after_a_recall(store: SQLiteStore) -> None:
    lib = TapeLibrary(store, config(min_request_age=1e9))  # queued, mountable in 1e5 s
    paths = await fill(lib, 4)
    await submit(store, "r1", paths[:2])
    await submit(store, "r2", paths[2:])
    await lib.start()
    try:
        assert await lib.recall("r1") == 2
        # The scheduler runs: it now sleeps until r1's queue comes of age (with a timeout).
        assert await store.get_request("r1") is not None
        assert await lib.recall("r2") == 2  # sets the scheduler's wake-up event
    finally:
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with asyncio.timeout(1):  # bounded: its cancel reaches the scheduler again
            await lib.stop()
        assert loop.time() - start < 0.5


async def test_a_file_deleted_or_rewritten_while_it_is_read(store: SQLiteStore) -> None:
    reads = Reads()
    timing = replace(FAST, file_overhead=300.0)  # 30 ms per file
    lib = TapeLibrary(store, config(drives=1, timing=timing), on_read=reads)
    paths = await fill(lib, 3)
    await submit(store, "r", paths)
    await lib.start()
    try:
        await lib.recall("r")
        async with asyncio.timeout(4):
            await reads.reached(1).wait()  # the second file is being read now
        assert await store.forget_file(paths[1])  # the user deleted it
        await store.set_locality(paths[2], Locality.DISK, 5)  # and rewrote the third
        req = await wait_done(store, "r")
    finally:
        await lib.stop()
    files = {f.path: f for f in req.files}
    assert files[paths[0]].state is FileState.COMPLETED
    assert files[paths[1]].state is FileState.FAILED
    error = files[paths[1]].error
    assert error is not None and "deleted" in error
    assert await store.get_file(paths[1]) is None  # not brought back
    # The new data is on disk: the request has it, and the old tape copy is not restored.
    assert files[paths[2]].state is FileState.COMPLETED
    assert await store.get_file(paths[2]) == (Locality.DISK, 5, None, None)


async def test_pool_ownership_is_used_before_start(store: SQLiteStore) -> None:
    cfg = config(cartridges=4)
    lib = TapeLibrary(store, cfg)
    await lib.start()
    await lib.archive("/a/0", SIZE, "a")
    await lib.stop()
    # Not started (as archiving for configured pools works without start()).
    assert (await TapeLibrary(store, cfg).archive("/a/1", SIZE, "a"))[2:] == ("V00000", SIZE)
