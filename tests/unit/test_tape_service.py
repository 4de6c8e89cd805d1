"""The tape tier of one process (:mod:`se.tape.service`): archive flushes, namespace changes,
localities and read checks, on a real SQLite store and library, without HTTP.

The service is built from a ``[tape]`` mapping through :func:`se.config.load_mapping`, with a
time scale of 10 000 and a sync interval of an hour: tests call :meth:`TapeService.tick` and
:meth:`TapeService.flush` themselves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from se import metrics
from se.config import ConfigError, TapeConfig, load_mapping
from se.errors import ServiceUnavailable
from se.storage.paths import DavPath, confine
from se.storage.types import Stat
from se.tape.model import ERR_MISSING, CartridgeState, FileState, Locality
from se.tape.service import TapeService, library_config
from se.tape.simulator import LibraryConfig, TapeTiming
from se.tape.store import TapeStore

SCALE = 10_000.0
HOUR = 3600.0

MakeService = Callable[..., Awaitable[TapeService]]


def tape_mapping(tmp_path: Path, **tape: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "enabled": True,
        "pools": [{"path": "/tape"}],
        "database": str(tmp_path / "tape.sqlite"),
        "time_scale": SCALE,
        "sync_interval": HOUR,  # the background loop never runs during a test
        # Archive criteria that are never met unless a test lowers one.
        "archive_min_files": 1000,
        "archive_min_bytes": 10**15,
        "archive_min_age": HOUR * SCALE,  # an hour of real time
        "cartridges": 4,
        "cartridge_capacity": 10**9,
        "min_request_age": 1.0,
        "retry_after": 123,
    }
    section.update(tape)
    return {"storage": {"root": str(tmp_path / "data")}, "tape": section}


@pytest.fixture
async def make_service(tmp_path: Path) -> AsyncIterator[MakeService]:
    made: list[TapeService] = []

    async def make(run_library: bool = True, **tape: Any) -> TapeService:
        svc = TapeService(load_mapping(tape_mapping(tmp_path, **tape)), run_library=run_library)
        made.append(svc)
        await svc.start()
        return svc

    yield make
    for svc in reversed(made):
        await svc.close()


def dav(path: str) -> DavPath:
    return confine(path)


async def entry_of(store: TapeStore, path: str) -> tuple[Locality, int, str | None, int | None]:
    entry = await store.get_file(path)
    assert entry is not None, path
    return entry


async def write(svc: TapeService, *files: tuple[str, int]) -> None:
    for path, size in files:
        await svc.written(dav(path), size)


# -- archive flushes ---------------------------------------------------------------------------


async def test_flush_by_count(make_service: MakeService) -> None:
    archived = metrics.value("se_tape_archived_files_total")  # (this process's count)
    svc = await make_service(archive_min_files=3)
    await write(svc, ("/tape/a", 10), ("/tape/b", 20))
    assert await svc.flush() == 0
    await svc.tick()
    assert (await entry_of(svc.store, "/tape/a"))[0] is Locality.DISK
    await write(svc, ("/tape/c", 30))
    await svc.tick()  # tick() flushes too
    entries = [await entry_of(svc.store, p) for p in ("/tape/a", "/tape/b", "/tape/c")]
    assert [e[0] for e in entries] == [Locality.DISK_AND_TAPE] * 3
    vids = {e[2] for e in entries}
    assert len(vids) == 1 and None not in vids
    assert sorted(e[3] for e in entries if e[3] is not None) == [0, 10, 30]  # write order
    assert metrics.value("se_tape_archived_files_total") - archived == 3
    assert await svc.flush() == 0  # nothing left


async def test_flush_by_bytes(make_service: MakeService) -> None:
    svc = await make_service(archive_min_bytes=1000)
    await write(svc, ("/tape/small", 999))
    assert await svc.flush() == 0
    await write(svc, ("/tape/more", 1))
    assert await svc.flush() == 2


async def test_flush_by_age(make_service: MakeService) -> None:
    svc = await make_service(archive_min_age=10 * SCALE)  # ten real seconds
    await write(svc, ("/tape/old", 5), ("/tape/new", 5))
    assert await svc.flush() == 0
    await svc.store.touch("/tape/old", int(time.time()) - 60)  # written a minute ago
    # The pool is due: every waiting file of it goes, not only the old one.
    assert await svc.flush() == 2
    assert (await entry_of(svc.store, "/tape/new"))[0] is Locality.DISK_AND_TAPE


async def test_flush_force_and_files_outside_pools(make_service: MakeService) -> None:
    svc = await make_service()
    await write(svc, ("/tape/a", 10), ("/elsewhere/b", 10), ("/tapes/c", 10))
    assert await svc.store.get_file("/elsewhere/b") is None  # not tape-backed: not recorded
    assert await svc.store.get_file("/tapes/c") is None  # a common prefix is not the pool
    # A DISK entry outside every pool (left by an older configuration) is never archived.
    await svc.store.set_locality("/old/pool/f", Locality.DISK, 10)
    assert await svc.flush() == 0
    assert await svc.flush(force=True) == 1
    assert (await entry_of(svc.store, "/tape/a"))[0] is Locality.DISK_AND_TAPE
    assert await svc.store.get_file("/old/pool/f") == (Locality.DISK, 10, None, None)


async def test_flush_criteria_are_per_pool(make_service: MakeService) -> None:
    svc = await make_service(
        archive_min_files=2,
        pools=[{"path": "/tape"}, {"path": "/tape/raw", "pool": "raw"}, {"path": "/other"}],
    )
    assert svc.pool_of(dav("/tape/x")) == "/tape"
    assert svc.pool_of(dav("/tape/raw/x")) == "raw"  # the longest prefix wins
    assert svc.pool_of(dav("/other")) == "/other"
    assert svc.pool_of(dav("/tapex")) is None
    await write(svc, ("/tape/a", 1), ("/tape/raw/b", 1), ("/tape/raw/c", 1), ("/other/d", 1))
    assert await svc.flush() == 2  # only raw has two files waiting
    b = await entry_of(svc.store, "/tape/raw/b")
    assert b[0] is Locality.DISK_AND_TAPE
    assert (await svc.store.cartridges())[b[2] or ""][0] == "raw"
    assert (await entry_of(svc.store, "/tape/a"))[0] is Locality.DISK
    assert await svc.flush(force=True) == 2
    a, d = await entry_of(svc.store, "/tape/a"), await entry_of(svc.store, "/other/d")
    assert len({a[2], b[2], d[2]}) == 3  # one cartridge per pool


@pytest.mark.parametrize("change", ["removed", "rewritten"])
async def test_a_file_changed_during_a_flush_is_not_archived_stale(
    make_service: MakeService, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    svc = await make_service()
    library = svc.library
    assert library is not None
    await write(svc, ("/tape/a", 5), ("/tape/b", 5))
    archive = library.archive

    async def archive_while_b_changes(path: str, size: int, pool: str, **kw: Any) -> Any:
        if path == "/tape/a":  # a DELETE or PUT of /tape/b is handled meanwhile
            if change == "removed":
                await svc.removed(dav("/tape/b"))
            else:
                await svc.written(dav("/tape/b"), 99)
        return await archive(path, size, pool, **kw)

    monkeypatch.setattr(library, "archive", archive_while_b_changes)
    await svc.flush(force=True)
    b = await svc.store.get_file("/tape/b")
    if change == "removed":
        assert b is None
    else:
        assert b is not None and b[:2] == (Locality.DISK, 99)


async def test_without_the_library_nothing_is_flushed(make_service: MakeService) -> None:
    svc = await make_service(run_library=False, archive_min_files=1)
    assert svc.library is None and svc.buffer is None
    await write(svc, ("/tape/a", 10))
    await svc.tick()
    assert await svc.flush(force=True) == 0
    assert await svc.store.get_file("/tape/a") == (Locality.DISK, 10, None, None)


# -- namespace changes -------------------------------------------------------------------------


async def test_written(make_service: MakeService) -> None:
    svc = await make_service()
    await write(svc, ("/tape/empty", 0), ("/tape/full", 10))
    assert await svc.store.get_file("/tape/empty") == (Locality.NONE, 0, None, None)
    assert await svc.store.get_file("/tape/full") == (Locality.DISK, 10, None, None)
    assert await svc.flush(force=True) == 1  # the empty file never goes to tape
    assert (await entry_of(svc.store, "/tape/full"))[2] is not None
    # Overwritten: the tape copy is of the old data; the new data is on disk only.
    await write(svc, ("/tape/full", 20))
    assert await svc.store.get_file("/tape/full") == (Locality.DISK, 20, None, None)
    await write(svc, ("/tape/full", 0))
    assert await svc.store.get_file("/tape/full") == (Locality.NONE, 0, None, None)
    await write(svc, ("/scratch/x", 5))
    assert await svc.store.get_file("/scratch/x") is None


async def test_renamed(make_service: MakeService) -> None:
    svc = await make_service()
    await write(svc, ("/tape/a", 10), ("/tape/d/x", 1), ("/tape/d/sub/y", 2), ("/tape/dd", 3))
    await svc.flush(force=True)
    a = await entry_of(svc.store, "/tape/a")
    x = await entry_of(svc.store, "/tape/d/x")
    y = await entry_of(svc.store, "/tape/d/sub/y")
    # Within the tape area the tape copy stays valid.
    await svc.renamed(dav("/tape/a"), dav("/tape/b"))
    assert await svc.store.get_file("/tape/a") is None
    assert await svc.store.get_file("/tape/b") == a
    # A directory moves its subtree, and only its subtree.
    await svc.renamed(dav("/tape/d"), dav("/tape/e/f"))
    assert await svc.store.get_files(["/tape/d/x", "/tape/d/sub/y"]) == {}
    assert await svc.store.get_file("/tape/e/f/x") == x
    assert await svc.store.get_file("/tape/e/f/sub/y") == y
    assert (await entry_of(svc.store, "/tape/dd"))[1] == 3
    # Out of the tape area: forgotten.
    await svc.renamed(dav("/tape/b"), dav("/scratch/b"))
    assert await svc.store.get_files(["/tape/b", "/scratch/b"]) == {}
    await svc.renamed(dav("/tape/e"), dav("/scratch/e"))
    assert await svc.store.get_files(["/tape/e/f/x", "/scratch/e/f/x"]) == {}
    # Into it: unknown until looked at (then adopted as new data).
    await svc.renamed(dav("/scratch/z"), dav("/tape/z"))
    assert await svc.store.get_file("/tape/z") is None
    # A rename over an archived file drops the replaced entry.
    await write(svc, ("/tape/new", 7))
    await svc.renamed(dav("/tape/new"), dav("/tape/dd"))
    assert await svc.store.get_file("/tape/dd") == (Locality.DISK, 7, None, None)
    # Entirely outside: nothing recorded.
    await svc.renamed(dav("/scratch/p"), dav("/scratch/q"))
    assert await svc.store.locality_counts() == {Locality.DISK: (1, 7)}


async def test_renaming_a_parent_of_the_pool(make_service: MakeService) -> None:
    svc = await make_service(pools=[{"path": "/data/tape"}])
    await write(svc, ("/data/tape/a", 10))
    await svc.renamed(dav("/data"), dav("/moved"))  # /moved/tape is not tape-backed
    assert await svc.store.get_file("/data/tape/a") is None
    assert await svc.store.get_file("/moved/tape/a") is None


async def test_copied(make_service: MakeService) -> None:
    svc = await make_service()
    await write(svc, ("/tape/a", 10), ("/tape/t/x", 1), ("/tape/t/y", 1), ("/tape/tt", 1))
    await svc.flush(force=True)
    await svc.copied(dav("/tape/a"), 20)  # a file copied over an archived one
    assert await svc.store.get_file("/tape/a") == (Locality.DISK, 20, None, None)
    await svc.copied(dav("/tape/c"), 0)
    assert await svc.store.get_file("/tape/c") == (Locality.NONE, 0, None, None)
    await svc.copied(dav("/tape/t"), None)  # a tree: adopted when looked at
    assert await svc.store.get_files(["/tape/t", "/tape/t/x", "/tape/t/y"]) == {}
    assert (await entry_of(svc.store, "/tape/tt"))[0] is Locality.DISK_AND_TAPE
    await svc.copied(dav("/scratch/a"), 5)
    assert await svc.store.get_file("/scratch/a") is None


async def test_removed_forgets_a_tree_but_not_its_siblings(make_service: MakeService) -> None:
    svc = await make_service()
    await write(
        svc,
        ("/tape/d", 0),  # a stale entry at the directory's own path
        ("/tape/d/x", 1),
        ("/tape/d/sub/y", 1),
        ("/tape/dd", 1),
        ("/tape/d.txt", 1),
        ("/tape/d-2/z", 1),
    )
    await svc.removed(dav("/tape/d"))
    left = await svc.store.get_files(
        ["/tape/d", "/tape/d/x", "/tape/d/sub/y", "/tape/dd", "/tape/d.txt", "/tape/d-2/z"]
    )
    assert sorted(left) == ["/tape/d-2/z", "/tape/d.txt", "/tape/dd"]
    await svc.removed(dav("/tape/dd"))
    assert await svc.store.get_file("/tape/dd") is None
    # Removing a parent of the pool forgets the whole pool.
    await svc.removed(dav("/"))
    assert await svc.store.locality_counts() == {}


# -- localities and reads ----------------------------------------------------------------------


async def test_localities_adopt_unknown_files(make_service: MakeService) -> None:
    svc = await make_service()
    got = await svc.localities([(dav("/tape/old"), 10), (dav("/tape/empty"), 0), (dav("/x/y"), 5)])
    assert got == {"/tape/old": Locality.DISK, "/tape/empty": Locality.NONE}
    assert await svc.store.get_file("/tape/old") == (Locality.DISK, 10, None, None)
    assert await svc.store.get_file("/tape/empty") == (Locality.NONE, 0, None, None)
    assert await svc.store.get_file("/x/y") is None
    assert await svc.locality(dav("/x/y"), 5) is None
    # Adopted files are archived like new ones.
    assert await svc.flush(force=True) == 1
    assert await svc.locality(dav("/tape/old"), 10) is Locality.DISK_AND_TAPE


async def test_a_tape_file_on_a_disabled_cartridge_is_unavailable(
    make_service: MakeService,
) -> None:
    svc = await make_service()
    assert svc.library is not None
    await write(svc, ("/tape/a", 10), ("/tape/b", 10))
    await svc.flush(force=True)
    vid = (await entry_of(svc.store, "/tape/a"))[2]
    assert vid is not None
    assert await svc.library.evict("/tape/a")
    assert await svc.locality(dav("/tape/a"), 10) is Locality.TAPE
    await svc.store.set_cartridge_state(vid, CartridgeState.DISABLED)
    await svc.tick()  # the service re-reads the cartridge states
    got = await svc.localities([(dav("/tape/a"), 10), (dav("/tape/b"), 10)])
    # The one with a disk copy is still readable.
    assert got == {"/tape/a": Locality.UNAVAILABLE, "/tape/b": Locality.DISK_AND_TAPE}
    await svc.store.set_cartridge_state(vid, CartridgeState.ACTIVE)
    await svc.tick()
    assert await svc.locality(dav("/tape/a"), 10) is Locality.TAPE


async def test_check_readable(make_service: MakeService) -> None:
    svc = await make_service()
    assert svc.library is not None
    await write(svc, ("/tape/disk", 10), ("/tape/both", 10), ("/tape/tape", 10))
    await write(svc, ("/tape/empty", 0))
    await svc.flush(force=True)
    await svc.library.evict("/tape/tape")
    await write(svc, ("/tape/disk", 10))  # rewritten: DISK again
    await svc.store.set_locality("/tape/off", Locality.TAPE, 10, "V00003", 0)
    await svc.store.set_cartridge_state("V00003", CartridgeState.BROKEN)
    await svc.store.set_locality("/tape/lost", Locality.LOST, 10, "V00003", 10)
    await svc.tick()
    refused = metrics.value("se_tape_reads_refused_total")
    for path in ("/tape/disk", "/tape/both", "/tape/empty", "/tape/unknown", "/scratch/x"):
        await svc.check_readable(dav(path), 10)
    assert metrics.value("se_tape_reads_refused_total") == refused
    for path, what in [
        ("/tape/tape", "on tape only"),
        ("/tape/off", "unavailable"),
        ("/tape/lost", "lost"),
    ]:
        with pytest.raises(ServiceUnavailable) as caught:
            await svc.check_readable(dav(path), 10)
        err = caught.value
        assert err.status == 503 and err.headers == {"Retry-After": "123"}
        assert path in err.reason and what in err.reason
    assert metrics.value("se_tape_reads_refused_total") - refused == 3
    # Looking does not recall: the file is still on tape only.
    assert (await entry_of(svc.store, "/tape/tape"))[0] is Locality.TAPE
    assert await svc.store.pending_files() == []


async def test_check_readable_records_the_access(make_service: MakeService) -> None:
    svc = await make_service()
    await write(svc, ("/tape/a", 10), ("/tape/b", 10))
    await svc.flush(force=True)
    await svc.store.touch("/tape/a", 100)
    await svc.store.touch("/tape/b", 200)
    assert [p for p, _ in await svc.store.lru_evictable(0, 10)] == ["/tape/a", "/tape/b"]
    await svc.check_readable(dav("/tape/a"), 10)  # the touch runs in the background
    async with asyncio.timeout(2):
        while [p for p, _ in await svc.store.lru_evictable(0, 10)] != ["/tape/b", "/tape/a"]:
            await asyncio.sleep(0.005)


# -- periodic work -------------------------------------------------------------------------------


async def request(store: TapeStore, request_id: str, paths: list[str], at: int, done: bool) -> None:
    state = FileState.COMPLETED if done else FileState.SUBMITTED
    await store.create_request(
        request_id, "alice", at, [(p, None, None) for p in paths], [(state, None)] * len(paths)
    )


async def test_tick_forgets_old_requests(make_service: MakeService) -> None:
    svc = await make_service(request_retention=100.0)
    now = int(time.time())
    await request(svc.store, "old", ["/tape/a"], now - 1000, done=True)
    await request(svc.store, "recent", ["/tape/a"], now - 10, done=True)
    await request(svc.store, "old-but-active", ["/tape/b"], now - 1000, done=False)
    await svc.tick()
    assert await svc.store.get_request("old") is None
    assert await svc.store.get_request("recent") is not None
    assert await svc.store.get_request("old-but-active") is not None


async def test_tick_recalls_evicts_and_archives(make_service: MakeService) -> None:
    svc = await make_service(buffer_capacity=100, high_watermark=0.5, low_watermark=0.3)
    assert svc.buffer is not None and svc.library is not None
    await write(svc, *[(f"/tape/f{i}", 10) for i in range(6)])
    await svc.tick()  # not due yet; 60 % of the buffer is DISK: nothing to evict
    assert await svc.store.disk_usage() == 60
    await svc.flush(force=True)
    for i in range(6):
        await svc.store.touch(f"/tape/f{i}", 1000 + i)
    await svc.tick()  # 60 % > 50 %: evict the least recently used down to 30 %
    got = await svc.store.get_files([f"/tape/f{i}" for i in range(6)])
    assert [got[f"/tape/f{i}"][0] for i in range(6)] == [Locality.TAPE] * 3 + [
        Locality.DISK_AND_TAPE
    ] * 3
    # A stage request recorded by another frontend is picked up by the next tick.
    await request(svc.store, "r", ["/tape/f0", "/tape/f5"], int(time.time()), done=False)
    await svc.tick()
    async with asyncio.timeout(4):
        while True:
            req = await svc.store.get_request("r")
            assert req is not None
            if req.completed_at is not None:
                break
            await asyncio.sleep(0.01)
    assert {f.state for f in req.files} == {FileState.COMPLETED}
    assert (await entry_of(svc.store, "/tape/f0"))[0] is Locality.DISK_AND_TAPE


async def test_start_picks_up_pending_recalls(make_service: MakeService) -> None:
    first = await make_service(run_library=False)  # a frontend that only records requests
    assert first.library is None
    await first.store.set_locality("/tape/a", Locality.TAPE, 10, "V00000", 0)
    await request(first.store, "r", ["/tape/a"], int(time.time()), done=False)
    await first.tick()
    req = await first.store.get_request("r")
    assert req is not None and [f.state for f in req.files] == [FileState.SUBMITTED]
    svc = await make_service()  # the library's process starts: it picks the request up
    async with asyncio.timeout(4):
        while True:
            req = await svc.store.get_request("r")
            assert req is not None
            if req.completed_at is not None:
                break
            await asyncio.sleep(0.01)
    assert [f.state for f in req.files] == [FileState.COMPLETED]


async def test_store_is_unavailable_before_start_and_after_close(tmp_path: Path) -> None:
    svc = TapeService(load_mapping(tape_mapping(tmp_path)), run_library=True)
    with pytest.raises(RuntimeError):
        _ = svc.store
    await svc.start()
    await svc.close()
    with pytest.raises(RuntimeError):
        _ = svc.store
    # The default database lives in the state directory.
    mapping = tape_mapping(tmp_path)
    del mapping["tape"]["database"]
    other = TapeService(load_mapping(mapping), run_library=False)
    assert other.database == str(tmp_path / "data" / ".se-state" / "tape.sqlite")


# -- configuration -------------------------------------------------------------------------------

# [tape] keys that are not the library's (API, archive criteria, buffer, service).
NOT_LIBRARY = {
    "enabled",
    "sitename",
    "description",
    "api_path",
    "endpoint",
    "database",
    "library",
    "pools",
    "max_files_per_request",
    "max_active_requests",
    "max_archiveinfo_paths",
    "max_body_bytes",
    "request_retention",
    "max_pin_lifetime",
    "retry_after",
    "buffer_capacity",
    "high_watermark",
    "low_watermark",
    "archive_min_files",
    "archive_min_bytes",
    "archive_min_age",
    "sync_interval",
}


def test_library_config_maps_every_key() -> None:
    timing_keys = {f.name for f in dataclasses.fields(TapeTiming)}
    library_keys = {f.name for f in dataclasses.fields(LibraryConfig)} - {
        "timing",
        "pools",
        "max_drives",
    }
    tape_keys = {f.name for f in dataclasses.fields(TapeConfig)}
    # Every [tape] key is accounted for: the library's, the timing's, or another part's.
    assert tape_keys - NOT_LIBRARY == library_keys | timing_keys
    # Values unlike every default, so that a key left out shows.
    values: dict[str, Any] = {}
    for i, name in enumerate(sorted(library_keys | timing_keys)):
        default = getattr(TapeConfig(), name)
        if name.endswith("probability"):
            values[name] = 0.01 * (i + 1)
        elif isinstance(default, float):
            values[name] = default + 1.5 + i
        else:
            values[name] = default + 3 + i
    t = dataclasses.replace(TapeConfig(), **values)
    lc = library_config(t)
    for name in library_keys:
        assert getattr(lc, name) == values[name], name
    for name in timing_keys:
        assert getattr(lc.timing, name) == values[name], name
    assert lc.pools == {}


def test_library_config_max_drives_per_pool(tmp_path: Path) -> None:
    cfg = load_mapping(
        tape_mapping(
            tmp_path,
            pools=[
                {"path": "/tape/atlas/", "max_drives": 2},
                {"path": "/cms", "pool": "cms-pool", "max_drives": 1},
                {"path": "/lhcb"},
            ],
        )
    )
    assert library_config(cfg.tape).max_drives == {"/tape/atlas": 2, "cms-pool": 1}


@pytest.mark.parametrize(
    ("tape", "key"),
    [
        ({"api_path": "/api/v1/"}, "tape.api_path"),
        ({"api_path": "api"}, "tape.api_path"),
        ({"pools": [{"path": "/tape"}, {"path": "/tape/"}]}, "tape.pools[1].path"),
        ({"pools": [{"path": "/a"}, {"path": "/b"}, {"path": "//a"}]}, "tape.pools[2].path"),
        ({"pools": [{"path": "relative"}]}, "tape.pools[0].path"),
        ({"pools": [{"path": "/t", "max_drives": -1}]}, "tape.pools[0].max_drives"),
        ({"low_watermark": 0.95, "high_watermark": 0.9}, "watermarks"),
        ({"high_watermark": 1.5}, "watermarks"),
        ({"time_scale": 0}, "time_scale"),
        ({"time_scale": -1.0}, "time_scale"),
        ({"read_rate": 0}, "read_rate"),
        ({"load": -1.0}, "load"),
        ({"archive_min_files": 0}, "archive_min_files"),
        ({"sync_interval": 0}, "sync_interval"),
        ({"bad_file_probability": 1.5}, "bad_file_probability"),
        ({"drive_failure_probability": -0.1}, "drive_failure_probability"),
        ({"drives": 0}, "drives"),
        ({"buffer_capacity": -1}, "buffer_capacity"),
    ],
)
def test_bad_tape_configs_are_rejected(tmp_path: Path, tape: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_mapping(tape_mapping(tmp_path, **tape))
    assert key in str(caught.value)


def test_bad_tape_config_ignored_when_disabled(tmp_path: Path) -> None:
    load_mapping(tape_mapping(tmp_path, enabled=False, time_scale=0, api_path="/x/"))


async def test_archive_info_of_a_write_in_progress(make_service: MakeService) -> None:
    """A missing file that a write in progress is creating is DISK; a file that exists keeps
    its own locality while it is being overwritten; without the write, missing."""
    svc = await make_service()
    await write(svc, ("/tape/old", 10))
    await svc.flush(force=True)
    old = Stat(False, 10, 0, 0, 1, 1)
    files = [
        ("/tape/new", dav("/tape/new"), None),
        ("/tape/old", dav("/tape/old"), old),
        ("/other/new", dav("/other/new"), None),
        ("/tape/none", dav("/tape/none"), None),
    ]
    writing = {dav("/tape/new"), dav("/tape/old"), dav("/other/new")}
    assert await svc.archive_info(files, writing) == [
        ("/tape/new", Locality.DISK, None),
        ("/tape/old", Locality.DISK_AND_TAPE, None),
        ("/other/new", Locality.DISK, None),
        ("/tape/none", None, ERR_MISSING),
    ]
    assert (await svc.archive_info(files[:1]))[0] == ("/tape/new", None, ERR_MISSING)
