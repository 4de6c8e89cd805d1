"""The disk buffer (:mod:`se.tape.buffer`) on a real SQLite store: watermarks, pins, LRU eviction.

Files are put in the catalogue directly (DISK_AND_TAPE with a tape copy, or DISK only); pins are
the pins of COMPLETED files of stage requests, as the simulator takes them.  Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from se.tape.buffer import BufferConfig, DiskBuffer
from se.tape.model import FileState, Locality
from se.tape.sqlite_store import SQLiteStore
from se.tape.store import TapeStore

SIZE = 100
CAP = 10 * SIZE  # ten files fill the buffer

_ids = itertools.count()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    st = await SQLiteStore.open(tmp_path / "tape.sqlite", synchronous="NORMAL")
    yield st
    await st.close()


def buffer(
    store: TapeStore, capacity: int = CAP, high: float = 0.9, low: float = 0.8
) -> DiskBuffer:
    return DiskBuffer(store, BufferConfig(capacity, high, low, poll=0.005))


def now() -> int:
    return int(time.time())


async def on_tape(store: TapeStore, path: str, accessed: int, size: int = SIZE) -> None:
    """A recalled or archived file: on disk and on tape, last accessed at ``accessed``."""
    position = await store.next_position("V00000")
    await store.set_locality(path, Locality.DISK_AND_TAPE, size, "V00000", position)
    await store.touch(path, accessed)


async def disk_only(store: TapeStore, path: str, accessed: int, size: int = SIZE) -> None:
    await store.set_locality(path, Locality.DISK, size)
    await store.touch(path, accessed)


async def pin(store: TapeStore, path: str, until: int) -> str:
    """Pin ``path`` until ``until`` by a COMPLETED stage request; the request's id."""
    request_id = f"pin-{next(_ids)}"
    await store.create_request(
        request_id,
        "alice",
        now(),
        [(path, None, None)],
        [(FileState.COMPLETED, None)],
        pins=[until],
    )
    return request_id


async def localities(store: TapeStore, paths: list[str]) -> dict[str, Locality]:
    return {p: e[0] for p, e in (await store.get_files(paths)).items()}


async def evicted(store: TapeStore, paths: list[str]) -> set[str]:
    return {p for p, loc in (await localities(store, paths)).items() if loc is Locality.TAPE}


async def test_collect_does_nothing_up_to_the_high_watermark(store: SQLiteStore) -> None:
    paths = [f"/t/f{i}" for i in range(9)]  # 900 bytes: exactly the high watermark
    for i, p in enumerate(paths):
        await on_tape(store, p, i)
    buf = buffer(store)
    assert await buf.collect() == 0
    assert await evicted(store, paths) == set()
    assert await buf.usage() == 9 * SIZE
    assert buf.evicted_files == buf.evicted_bytes == 0


async def test_collect_evicts_lru_down_to_the_low_watermark(store: SQLiteStore) -> None:
    t = now()
    # Accessed long ago, so they would go first if they could: pinned and DISK-only files.
    pinned = ["/t/pinned0", "/t/pinned1"]
    for i, p in enumerate(pinned):
        await on_tape(store, p, i)
        await pin(store, p, t + 3600)
    disk = ["/t/disk0", "/t/disk1"]
    for i, p in enumerate(disk):
        await disk_only(store, p, 10 + i)
    # Six evictable files, accessed in an order unrelated to their names.
    order = [3, 0, 5, 1, 4, 2]
    lru = [f"/t/u{i}" for i in order]  # least recently used first
    for rank, p in enumerate(lru):
        await on_tape(store, p, 1000 + rank)
    buf = buffer(store, high=0.9, low=0.5)
    assert await buf.usage() == CAP  # 100 %: above the high watermark
    assert await buf.collect(t) == 5 * SIZE  # down to 50 %: five files
    assert await evicted(store, [*pinned, *disk, *lru]) == set(lru[:5])
    assert await localities(store, [lru[5], *pinned, *disk]) == {
        lru[5]: Locality.DISK_AND_TAPE,
        pinned[0]: Locality.DISK_AND_TAPE,
        pinned[1]: Locality.DISK_AND_TAPE,
        disk[0]: Locality.DISK,
        disk[1]: Locality.DISK,
    }
    assert await buf.usage() == 5 * SIZE
    assert (buf.evicted_files, buf.evicted_bytes) == (5, 5 * SIZE)
    # The tape copy is kept: evicting only flips the locality.
    entry = await store.get_file(lru[0])
    assert entry is not None and entry[1:] == (SIZE, "V00000", entry[3]) and entry[3] is not None
    # Below the high watermark now: another collect does nothing.
    assert await buf.collect(t) == 0


async def test_collect_never_evicts_disk_only_or_pinned_files(store: SQLiteStore) -> None:
    t = now()
    paths = [f"/t/f{i}" for i in range(10)]
    for i, p in enumerate(paths):
        if i % 2:
            await disk_only(store, p, i)
        else:
            await on_tape(store, p, i)
            await pin(store, p, t + 3600)
    buf = buffer(store)
    assert await buf.collect(t) == 0  # 100 % full, nothing may go
    assert await evicted(store, paths) == set()
    assert await buf.evict_unpinned() == 0


async def test_expired_pins_do_not_protect(store: SQLiteStore) -> None:
    t = now()
    stale, live = "/t/stale", "/t/live"
    await on_tape(store, stale, 1)
    await pin(store, stale, t - 1)  # expired a second ago
    await on_tape(store, live, 2)
    await pin(store, live, t + 3600)
    for i in range(8):
        await on_tape(store, f"/t/f{i}", 100 + i)
    buf = buffer(store)
    assert await buf.collect(t) == 2 * SIZE  # 1000 -> 800
    assert await evicted(store, [stale, live, "/t/f0", "/t/f1"]) == {stale, "/t/f0"}
    # collect() dropped the dead pin itself (not merely ignored it).
    assert not await store.pinned(stale, 0)
    assert await store.pinned(live, t)


async def test_capacity_zero_is_unlimited(store: SQLiteStore) -> None:
    t = now()
    paths = [f"/t/f{i}" for i in range(20)]
    for i, p in enumerate(paths):
        await on_tape(store, p, i, size=10**12)
    buf = buffer(store, capacity=0)
    assert await buf.collect(t) == 0
    assert await buf.make_room(10**15, 0.0)
    assert await evicted(store, paths) == set()
    # Dead pins are still dropped.
    await pin(store, paths[0], t - 1)
    await buf.collect(t)
    assert not await store.pinned(paths[0], 0)


async def test_make_room_evicts_lru_when_it_can(store: SQLiteStore) -> None:
    paths = [f"/t/f{i}" for i in range(10)]
    for i, p in enumerate(reversed(paths)):  # f9 is the least recently used
        await on_tape(store, p, i)
    buf = buffer(store)
    # Each room is given back at once (settle), as when a read fails: nothing lands.
    assert await buf.make_room(SIZE // 2, 0.0)  # half a file: one file goes
    buf.settle(SIZE // 2)
    assert await evicted(store, paths) == {"/t/f9"}
    assert await buf.make_room(3 * SIZE, 0.0)  # 900 + 300 > 1000: two more
    buf.settle(3 * SIZE)
    assert await evicted(store, paths) == {"/t/f9", "/t/f8", "/t/f7"}
    assert await buf.make_room(3 * SIZE, 0.0)  # fits without evicting: 700 + 300
    assert buf.reserved == 3 * SIZE
    buf.settle(3 * SIZE)
    assert await buf.usage() == 7 * SIZE


async def test_make_room_fits_without_evicting(store: SQLiteStore) -> None:
    for i in range(5):
        await on_tape(store, f"/t/f{i}", i)
    buf = buffer(store)
    assert await buf.make_room(5 * SIZE, 0.0)  # exactly full afterwards is fine
    assert buf.evicted_files == 0


async def test_make_room_waits_until_a_pin_is_released(store: SQLiteStore) -> None:
    t = now()
    holders: dict[str, str] = {}
    for i in range(10):
        p = f"/t/f{i}"
        await on_tape(store, p, i)
        holders[p] = await pin(store, p, t + 3600)
    buf = buffer(store)
    waiter = asyncio.create_task(buf.make_room(SIZE, 10.0))
    await asyncio.sleep(0.05)  # ten polls
    assert not waiter.done()
    assert buf.evicted_files == 0

    async def release() -> None:  # another task: a RELEASE of the tape REST API
        assert await store.release(holders["/t/f4"], ["/t/f4"]) == 1

    await asyncio.create_task(release())
    async with asyncio.timeout(2):
        assert await waiter
    assert await evicted(store, list(holders)) == {"/t/f4"}


async def test_make_room_waits_while_full_of_disk_only_files(store: SQLiteStore) -> None:
    for i in range(10):
        await disk_only(store, f"/t/f{i}", i)
    buf = buffer(store)
    waiter = asyncio.create_task(buf.make_room(SIZE, 10.0))
    await asyncio.sleep(0.03)
    assert not waiter.done()
    # The file is archived meanwhile (DISK -> DISK_AND_TAPE): now it may go.
    await store.set_locality("/t/f3", Locality.DISK_AND_TAPE, SIZE, "V00000", 0)
    async with asyncio.timeout(2):
        assert await waiter
    assert await evicted(store, [f"/t/f{i}" for i in range(10)]) == {"/t/f3"}


async def test_make_room_gives_up_after_its_patience(store: SQLiteStore) -> None:
    t = now()
    for i in range(10):
        await on_tape(store, f"/t/f{i}", i)
        await pin(store, f"/t/f{i}", t + 3600)
    buf = buffer(store)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert not await buf.make_room(SIZE, 0.1)
    assert 0.1 <= loop.time() - start < 1.0
    assert buf.evicted_files == 0
    assert not await buf.make_room(SIZE, 0.0)  # no patience: one look
    # Larger than the whole buffer: never fits.
    assert not await buf.make_room(CAP + 1, 0.02)


async def test_make_room_expires_pins(store: SQLiteStore) -> None:
    t = now()
    for i in range(10):
        await on_tape(store, f"/t/f{i}", i)
        await pin(store, f"/t/f{i}", t + (-5 if i == 7 else 3600))
    buf = buffer(store)
    assert await buf.make_room(SIZE, 0.0)
    assert await evicted(store, [f"/t/f{i}" for i in range(10)]) == {"/t/f7"}


async def test_evict_unpinned_drops_every_unpinned_on_tape_file(store: SQLiteStore) -> None:
    t = now()
    await on_tape(store, "/t/a", 1)
    await on_tape(store, "/t/b", 2)
    await on_tape(store, "/t/pinned", 3)
    await pin(store, "/t/pinned", t + 3600)
    await on_tape(store, "/t/expired", 4)
    await pin(store, "/t/expired", t - 1)
    await disk_only(store, "/t/disk", 5)
    buf = buffer(store)  # 5 % full: far below the watermarks
    assert await buf.evict_unpinned() == 3 * SIZE
    assert await localities(store, ["/t/a", "/t/b", "/t/pinned", "/t/expired", "/t/disk"]) == {
        "/t/a": Locality.TAPE,
        "/t/b": Locality.TAPE,
        "/t/expired": Locality.TAPE,
        "/t/pinned": Locality.DISK_AND_TAPE,
        "/t/disk": Locality.DISK,
    }
    assert (buf.evicted_files, buf.evicted_bytes) == (3, 3 * SIZE)
    assert await buf.evict_unpinned() == 0
    assert await buf.usage() == 2 * SIZE


async def test_evict_more_than_one_round_of_victims(store: SQLiteStore) -> None:
    # _evict fetches victims 256 at a time.
    for i in range(300):
        await on_tape(store, f"/t/f{i:04d}", i, size=1)
    buf = buffer(store, capacity=300, high=0.5, low=0.1)
    assert await buf.collect() == 270  # 300 -> 30
    left = await store.lru_evictable(now(), 1000)
    assert [p for p, _ in left] == [f"/t/f{i:04d}" for i in range(270, 300)]


@pytest.mark.parametrize(
    "kw",
    [
        {"capacity": -1},
        {"low_watermark": 0.0},
        {"low_watermark": 0.95, "high_watermark": 0.9},
        {"high_watermark": 1.1},
        {"poll": 0.0},
    ],
)
def test_buffer_config_validation(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BufferConfig(**kw)  # type: ignore[arg-type]


async def test_make_room_reserves_until_settled(store: SQLiteStore) -> None:
    t = now()
    for i in range(9):
        await on_tape(store, f"/t/held{i}", i)
        await pin(store, f"/t/held{i}", t + 3600)
    buf = buffer(store)
    # Two readers look at once: one gets the last tenth, the other waits for it.
    first, second = await asyncio.gather(buf.make_room(SIZE, 0.0), buf.make_room(SIZE, 0.05))
    assert sorted([first, second]) == [False, True]
    assert buf.reserved == SIZE
    waiter = asyncio.create_task(buf.make_room(SIZE, 5.0))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    buf.settle(SIZE)  # that read failed: its room is free again
    async with asyncio.timeout(2):
        assert await waiter
    # The read lands: settled, and the catalogue holds it now.
    await on_tape(store, "/t/new", 100)
    buf.settle(SIZE)
    assert buf.reserved == 0 and await buf.usage() == CAP
    buf.settle(SIZE)  # never below zero
    assert buf.reserved == 0


async def test_make_room_counts_reservations_when_evicting(store: SQLiteStore) -> None:
    for i in range(9):
        await on_tape(store, f"/t/f{i}", i)
    buf = buffer(store)
    assert await buf.make_room(SIZE, 0.0)  # 900 + 100: fits
    assert buf.evicted_files == 0
    assert await buf.make_room(SIZE, 0.0)  # 900 + 100 reserved + 100: one must go
    assert await evicted(store, [f"/t/f{i}" for i in range(9)]) == {"/t/f0"}
    assert buf.reserved == 2 * SIZE
