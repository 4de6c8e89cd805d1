"""The tape store: one suite for every implementation of :class:`se.tape.store.TapeStore`.

Each test takes the ``backend`` fixture, parametrized over the implementations; adding PostgreSQL
is one more parameter that yields a fresh ``postgresql://`` location (or skips with the reason).
A location reopened gives the same state; ``open_store`` turns it into a store, also in the
subprocess of the crash test.  Tests on SQLite internals are at the end, outside the suite.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from se.tape.model import FileState, Locality, StageRequest
from se.tape.store import (
    DuplicateRequestError,
    FileSpec,
    InitialState,
    SchemaError,
    SQLiteStore,
    TapeStore,
    open_store,
)

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000
S, ST, C, F, X = (
    FileState.SUBMITTED,
    FileState.STARTED,
    FileState.COMPLETED,
    FileState.FAILED,
    FileState.CANCELLED,
)


@dataclass(frozen=True)
class Backend:
    name: str
    location: str  # what open_store() takes; the same location reopens the same state

    async def open(self) -> TapeStore:
        return await open_store(self.location)


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    name: str = request.param
    if name == "sqlite":
        return Backend(name, str(tmp_path / "state" / "tape.sqlite"))
    raise AssertionError(name)  # pragma: no cover


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[TapeStore]:
    opened = await backend.open()
    yield opened
    await opened.close()


def files(*paths: str) -> list[FileSpec]:
    return [(p, None, None) for p in paths]


def states(n: int, state: FileState = S) -> list[InitialState]:
    return [(state, None)] * n


async def make(
    store: TapeStore,
    rid: str,
    paths: Sequence[str],
    owner: str = "alice",
    at: int = T0,
    init: Sequence[InitialState] | None = None,
) -> None:
    await store.create_request(rid, owner, at, files(*paths), init or states(len(paths)))


async def get(store: TapeStore, rid: str) -> StageRequest:
    req = await store.get_request(rid)
    assert req is not None
    return req


def by_path(req: StageRequest) -> dict[str, Any]:
    return {f.path: f for f in req.files}


# -- requests --------------------------------------------------------------------------------


async def test_create_and_read_back(store: TapeStore) -> None:
    specs: list[FileSpec] = [
        ("/t/a", 3600, {"activity": "reprocessing", "n": [1, 2]}),
        ("/t/b", None, None),
        ("/t/c", None, {}),
        ("/t/d", 60, None),
    ]
    init: list[InitialState] = [(S, None), (C, None), (F, "no such file"), (ST, None)]
    await store.create_request("r1", "alice", T0, specs, init)
    req = await get(store, "r1")
    assert (req.id, req.owner, req.created_at) == ("r1", "alice", T0)
    # Some file left SUBMITTED at creation, so the request started then; not all are terminal.
    assert req.started_at == T0
    assert req.completed_at is None
    assert [f.path for f in req.files] == ["/t/a", "/t/b", "/t/c", "/t/d"]  # submission order
    a, b, c, d = req.files
    assert (a.state, a.started_at, a.finished_at, a.error) == (S, None, None, None)
    assert (a.disk_lifetime, a.metadata) == (3600, {"activity": "reprocessing", "n": [1, 2]})
    assert (b.state, b.started_at, b.finished_at, b.error) == (C, T0, T0, None)
    assert (b.disk_lifetime, b.metadata) == (None, None)
    assert (c.state, c.started_at, c.finished_at, c.error, c.metadata) == (
        F,
        T0,
        T0,
        "no such file",
        {},
    )
    assert (d.state, d.started_at, d.finished_at, d.disk_lifetime) == (ST, T0, None, 60)
    assert await store.get_request("nope") is None


async def test_request_timestamps_at_creation(store: TapeStore) -> None:
    await make(store, "fresh", ["/a", "/b"])
    req = await get(store, "fresh")
    assert (req.started_at, req.completed_at) == (None, None)
    await make(store, "done", ["/a", "/b"], init=[(C, None), (F, "directory")])
    req = await get(store, "done")
    assert (req.started_at, req.completed_at) == (T0, T0)


async def test_create_rejects_bad_input_and_writes_nothing(store: TapeStore) -> None:
    with pytest.raises(ValueError, match="at least one"):
        await store.create_request("r", "alice", T0, [], [])
    with pytest.raises(ValueError, match="states"):
        await store.create_request("r", "alice", T0, files("/a", "/b"), states(1))
    with pytest.raises(ValueError, match="duplicate"):
        await store.create_request("r", "alice", T0, files("/a", "/a"), states(2))
    with pytest.raises(ValueError, match="error"):
        await store.create_request("r", "alice", T0, files("/a"), [(C, "oops")])
    assert await store.get_request("r") is None
    await make(store, "r", ["/a"])
    with pytest.raises(DuplicateRequestError):
        await make(store, "r", ["/x", "/y"], owner="bob")
    req = await get(store, "r")
    assert (req.owner, [f.path for f in req.files]) == ("alice", ["/a"])
    assert await store.count_active("bob") == 0


async def test_create_is_one_transaction(store: TapeStore) -> None:
    """A failure on the sixth file leaves neither the request nor its first five files."""
    specs: list[Any] = [(f"/f{i}", None, None) for i in range(10)]
    specs[5] = (object(), None, None)  # cannot be stored: fails in the middle of the inserts
    with pytest.raises((sqlite3.Error, TypeError, ValueError)):
        await store.create_request("half", "alice", T0, specs, states(10))
    assert await store.get_request("half") is None
    assert await store.pending_files() == []
    assert await store.count_active("alice") == 0
    await make(store, "half", ["/f0"])  # the id is still free
    assert len((await get(store, "half")).files) == 1


async def test_count_active_per_owner(store: TapeStore) -> None:
    await make(store, "a1", ["/x", "/y"], owner="alice")
    await make(store, "a2", ["/x"], owner="alice")
    await make(store, "a3", ["/z"], owner="alice", init=[(F, "missing")])  # finished at once
    await make(store, "b1", ["/x"], owner="bob")
    assert await store.count_active("alice") == 2
    assert await store.count_active("bob") == 1
    assert await store.count_active("carol") == 0
    assert await store.set_file_state("a1", "/x", C, T0 + 5)
    assert await store.count_active("alice") == 2  # /y is still pending
    assert await store.set_file_state("a1", "/y", F, T0 + 6, "media error")
    assert await store.count_active("alice") == 1
    assert await store.delete_request("a2")
    assert await store.count_active("alice") == 0
    assert await store.count_active("bob") == 1


async def test_file_state_transitions_and_request_timestamps(store: TapeStore) -> None:
    await make(store, "r", ["/a", "/b", "/c"])
    assert await store.set_file_state("r", "/a", ST, T0 + 10)
    assert await store.set_file_state("r", "/b", ST, T0 + 20)
    req = await get(store, "r")
    assert req.started_at == T0 + 10  # the first file that started
    assert by_path(req)["/b"].started_at == T0 + 20
    # Requeued (drive failure): back to SUBMITTED, keeps when it started.
    assert await store.set_file_state("r", "/b", S, T0 + 25)
    f = by_path(await get(store, "r"))["/b"]
    assert (f.state, f.started_at, f.finished_at) == (S, T0 + 20, None)
    assert await store.set_file_state("r", "/b", ST, T0 + 30)
    assert by_path(await get(store, "r"))["/b"].started_at == T0 + 20
    assert await store.set_file_state("r", "/a", C, T0 + 40)
    assert await store.set_file_state("r", "/b", F, T0 + 50, "checksum mismatch")
    req = await get(store, "r")
    assert req.completed_at is None
    a, b, _ = req.files
    assert (a.state, a.started_at, a.finished_at, a.error) == (C, T0 + 10, T0 + 40, None)
    assert (b.state, b.started_at, b.finished_at, b.error) == (
        F,
        T0 + 20,
        T0 + 50,
        "checksum mismatch",
    )
    # Never started, then failed: started_at = finished_at.
    assert await store.set_file_state("r", "/c", F, T0 + 60, "Tape backend is unreachable")
    req = await get(store, "r")
    assert (req.files[2].started_at, req.files[2].finished_at) == (T0 + 60, T0 + 60)
    assert (req.started_at, req.completed_at) == (T0 + 10, T0 + 60)


async def test_terminal_states_are_final(store: TapeStore) -> None:
    await make(store, "r", ["/a", "/b"])
    assert await store.set_file_state("r", "/a", C, T0 + 1)
    before = await get(store, "r")
    for state in FileState:
        assert not await store.set_file_state("r", "/a", state, T0 + 2)
    assert not await store.set_file_state("r", "/nope", ST, T0 + 2)
    assert not await store.set_file_state("nope", "/a", ST, T0 + 2)
    assert await get(store, "r") == before
    with pytest.raises(ValueError, match="error"):
        await store.set_file_state("r", "/b", C, T0 + 3, "not for a completed file")
    with pytest.raises(ValueError, match="pinned"):
        await store.set_file_state("r", "/b", F, T0 + 3, "bad", pin_until=T0 + 100)
    assert await get(store, "r") == before


async def test_completion_with_pin_is_atomic(store: TapeStore) -> None:
    await make(store, "r", ["/a", "/b"])
    assert await store.set_file_state("r", "/a", ST, T0 + 1)
    assert await store.set_file_state("r", "/a", C, T0 + 2, pin_until=T0 + 100)
    assert await store.pinned("/a", T0 + 99)
    assert not await store.pinned("/a", T0 + 100)
    # Cancelled while being read: the read finishes, but the file stays CANCELLED, no pin.
    assert await store.set_file_state("r", "/b", ST, T0 + 3)
    assert await store.cancel("r", ["/b"], at=T0 + 4)
    assert not await store.set_file_state("r", "/b", C, T0 + 5, pin_until=T0 + 100)
    assert by_path(await get(store, "r"))["/b"].state is X
    assert not await store.pinned("/b", T0 + 6)


async def test_cancel_is_all_or_nothing(store: TapeStore) -> None:
    await make(store, "r", ["/a", "/b", "/c", "/d"])
    assert await store.set_file_state("r", "/a", C, T0 + 1, pin_until=T0 + 1000)
    assert await store.set_file_state("r", "/d", C, T0 + 1, pin_until=T0 + 1000)
    before = await get(store, "r")
    assert not await store.cancel("r", ["/a", "/b", "/elsewhere"], at=T0 + 5)
    assert await get(store, "r") == before
    assert await store.pinned("/a", T0 + 5)
    assert not await store.cancel("unknown", ["/a"], at=T0 + 5)

    assert await store.cancel("r", ["/a", "/b", "/b"], at=T0 + 5)
    req = await get(store, "r")
    a, b, c, _ = req.files
    assert (a.state, a.finished_at) == (C, T0 + 1)  # a terminal file keeps its state...
    assert not await store.pinned("/a", T0 + 5)  # ...but loses this request's pin
    assert await store.pinned("/d", T0 + 5)  # not named: kept
    assert (b.state, b.started_at, b.finished_at, b.error) == (X, T0 + 5, T0 + 5, None)
    assert (c.state, req.completed_at) == (S, None)
    assert await store.cancel("r", ["/c"], at=T0 + 9)
    assert (await get(store, "r")).completed_at == T0 + 9
    assert await store.cancel("r", ["/c"], at=T0 + 10)  # again: allowed, changes nothing
    assert (await get(store, "r")).files[2].finished_at == T0 + 9


async def test_delete_hides_the_request(store: TapeStore) -> None:
    await make(store, "r", ["/a", "/b"])
    await make(store, "other", ["/a"])
    assert await store.set_file_state("r", "/a", C, T0 + 1, pin_until=T0 + 1000)
    assert await store.set_file_state("other", "/a", C, T0 + 1, pin_until=T0 + 1000)
    assert await store.delete_request("r", at=T0 + 2)
    assert await store.get_request("r") is None
    assert not await store.delete_request("r", at=T0 + 3)
    assert not await store.delete_request("never", at=T0 + 3)
    assert await store.pending_files() == []
    assert await store.count_active("alice") == 0
    assert not await store.cancel("r", ["/b"], at=T0 + 3)
    assert not await store.set_file_state("r", "/b", C, T0 + 3)
    assert not await store.add_pin("r", "/a", T0 + 1000)
    assert await store.release("r", ["/a"]) == 0
    assert await store.pinned("/a", T0 + 3)  # still pinned by the other request
    assert await store.release("other", ["/a"]) == 1
    assert not await store.pinned("/a", T0 + 3)
    with pytest.raises(DuplicateRequestError):  # a hidden id is not reused
        await make(store, "r", ["/z"])


async def test_pending_files_in_creation_order(store: TapeStore) -> None:
    # Same created_at for all: the order is the order of creation, not of time or id.
    await make(store, "zz", ["/3", "/1", "/2"])
    await make(store, "aa", ["/9", "/8"], init=[(S, None), (C, None)])
    await make(store, "mm", ["/5"], owner="bob", at=T0 - 100)
    await make(store, "done", ["/7"], init=[(F, "missing")])
    assert await store.pending_files() == [
        ("zz", "/3"),
        ("zz", "/1"),
        ("zz", "/2"),
        ("aa", "/9"),
        ("mm", "/5"),
    ]
    assert await store.set_file_state("zz", "/1", ST, T0 + 1)  # STARTED is still pending
    assert await store.set_file_state("zz", "/3", C, T0 + 1)
    assert await store.cancel("aa", ["/9"], at=T0 + 2)
    assert await store.pending_files() == [("zz", "/1"), ("zz", "/2"), ("mm", "/5")]


async def test_gc_drops_requests_completed_before_a_time(store: TapeStore) -> None:
    await make(store, "old", ["/a"], init=[(C, None)], at=T0)
    await make(store, "newer", ["/b"], init=[(C, None)], at=T0 + 100)
    await make(store, "active", ["/c"], at=T0)
    await make(store, "gone", ["/d"], at=T0)
    assert await store.add_pin("old", "/a", T0 + 10_000)
    assert await store.delete_request("gone", at=T0 + 50)
    assert await store.gc(T0) == 0  # strictly before
    assert await store.gc(T0 + 51) == 2  # old, and the deleted one
    assert await store.get_request("old") is None
    assert not await store.pinned("/a", T0 + 60)  # its pin went with it
    assert await store.get_request("newer") is not None
    assert await store.get_request("active") is not None
    assert await store.gc(T0 + 10_000) == 1
    assert await store.get_request("active") is not None
    assert await store.pending_files() == [("active", "/c")]


# -- pins ------------------------------------------------------------------------------------


async def test_pins_expiry_and_renewal(store: TapeStore) -> None:
    await make(store, "r", ["/a", "/b"], init=[(C, None), (S, None)])
    assert await store.add_pin("r", "/a", T0 + 100)
    assert not await store.add_pin("r", "/b", T0 + 100)  # not on disk yet
    assert not await store.add_pin("r", "/zz", T0 + 100)
    assert not await store.add_pin("nope", "/a", T0 + 100)
    assert await store.pinned("/a", T0 + 99)
    assert not await store.pinned("/a", T0 + 100)  # expires_at is the first dead second
    assert not await store.pinned("/b", T0)
    assert await store.add_pin("r", "/a", T0 + 200)  # renew: replaces the expiry
    assert await store.pinned("/a", T0 + 150)
    assert await store.add_pin("r", "/a", T0 + 120)  # and can shorten it
    assert not await store.pinned("/a", T0 + 150)
    assert await store.expire_pins(T0 + 119) == 0
    assert await store.expire_pins(T0 + 120) == 1
    assert await store.expire_pins(T0 + 120) == 0
    assert not await store.pinned("/a", T0)  # gone, not just dead


async def test_pins_are_per_request(store: TapeStore) -> None:
    await make(store, "a1", ["/x", "/y"], owner="alice", init=states(2, C))
    await make(store, "a2", ["/x"], owner="alice", init=states(1, C))
    await make(store, "b1", ["/x", "/y"], owner="bob", init=states(2, C))
    for rid, path in [("a1", "/x"), ("a1", "/y"), ("a2", "/x"), ("b1", "/x"), ("b1", "/y")]:
        assert await store.add_pin(rid, path, T0 + 1000)
    assert await store.release("a1", ["/x", "/not-in-it"]) == 1
    assert await store.release("unknown", ["/x"]) == 0
    assert await store.pinned("/x", T0)  # a2 and b1 still hold it
    # gfal2-placeholder-id: every pin alice holds on the paths, none of bob's.
    assert await store.release_owner("alice", ["/x", "/y", "/x"]) == 2
    assert await store.release_owner("alice", ["/x"]) == 0
    assert await store.pinned("/x", T0)
    assert await store.release_owner("bob", ["/x"]) == 1
    assert not await store.pinned("/x", T0)
    assert await store.pinned("/y", T0)
    assert await store.expire_pins(T0 + 1000) == 1  # b1's pin on /y
    assert not await store.pinned("/y", T0)


# -- catalogue -------------------------------------------------------------------------------


async def test_catalogue_entries(store: TapeStore) -> None:
    assert await store.get_file("/a") is None
    await store.set_locality("/a", Locality.DISK, 1000)
    assert await store.get_file("/a") == (Locality.DISK, 1000, None, None)
    await store.set_locality("/a", Locality.DISK_AND_TAPE, 1000, "V00001", 0)
    entry = await store.get_file("/a")
    assert entry == (Locality.DISK_AND_TAPE, 1000, "V00001", 0)
    assert entry is not None and isinstance(entry[0], Locality)
    await store.set_locality("/a", Locality.TAPE, 1000, "V00001", 0)  # evicted
    assert await store.get_file("/a") == (Locality.TAPE, 1000, "V00001", 0)
    await store.set_locality("/a", Locality.DISK, 5)  # overwritten: no tape copy any more
    assert await store.get_file("/a") == (Locality.DISK, 5, None, None)
    with pytest.raises(ValueError, match="together"):
        await store.set_locality("/a", Locality.TAPE, 5, "V00001")
    with pytest.raises(ValueError, match="together"):
        await store.set_locality("/a", Locality.TAPE, 5, None, 7)
    with pytest.raises(ValueError, match="negative"):
        await store.set_locality("/a", Locality.TAPE, -1)
    assert await store.get_file("/a") == (Locality.DISK, 5, None, None)
    assert await store.touch("/a", T0)
    assert not await store.touch("/missing", T0)
    assert await store.forget_file("/a")
    assert not await store.forget_file("/a")
    assert await store.get_file("/a") is None


async def test_files_on_a_cartridge_in_tape_order(store: TapeStore) -> None:
    assert await store.next_position("V1") == 0
    assert await store.files_on("V1") == []
    written: list[tuple[str, int, int]] = []
    for name, size in [("/ds/c", 300), ("/ds/a", 100), ("/ds/b", 200)]:
        pos = await store.next_position("V1")
        await store.set_locality(name, Locality.DISK_AND_TAPE, size, "V1", pos)
        written.append((name, pos, size))
    await store.set_locality("/other", Locality.TAPE, 50, "V2", 0)
    assert await store.files_on("V1") == written  # write order, whatever the names
    assert [p for _, p, _ in written] == [0, 300, 400]
    assert await store.next_position("V1") == 600
    assert await store.next_position("V2") == 50
    await store.set_locality("/ds/a", Locality.TAPE, 100, "V1", 300)  # evicted: still on V1
    assert [n for n, _, _ in await store.files_on("V1")] == ["/ds/c", "/ds/a", "/ds/b"]


async def test_lru_eviction_order_and_pins(store: TapeStore) -> None:
    await store.set_locality("/disk-only", Locality.DISK, 10)
    await store.set_locality("/tape-only", Locality.TAPE, 20, "V1", 0)
    for i, name in enumerate(["/e1", "/e2", "/e3", "/e4"]):
        await store.set_locality(name, Locality.DISK_AND_TAPE, 100 * (i + 1), "V1", 100 + i)
    await store.set_locality("/never-read", Locality.DISK_AND_TAPE, 7, "V1", 200)
    assert await store.touch("/e1", T0 + 40)
    assert await store.touch("/e2", T0 + 10)
    assert await store.touch("/e3", T0 + 30)
    assert await store.touch("/e4", T0 + 20)
    assert await store.lru_evictable(T0 + 50, 10) == [
        ("/never-read", 7),
        ("/e2", 200),
        ("/e4", 400),
        ("/e3", 300),
        ("/e1", 100),
    ]
    assert await store.lru_evictable(T0 + 50, 2) == [("/never-read", 7), ("/e2", 200)]
    await make(store, "r", ["/e2", "/e3"], init=states(2, C))
    assert await store.add_pin("r", "/e2", T0 + 100)
    assert await store.add_pin("r", "/e3", T0 + 60)
    assert [p for p, _ in await store.lru_evictable(T0 + 50, 10)] == ["/never-read", "/e4", "/e1"]
    # A dead pin protects nothing, even before expire_pins() ran.
    assert [p for p, _ in await store.lru_evictable(T0 + 60, 10)] == [
        "/never-read",
        "/e4",
        "/e3",
        "/e1",
    ]
    assert await store.release("r", ["/e2"]) == 1
    assert (await store.lru_evictable(T0 + 50, 2))[1] == ("/e2", 200)


async def test_disk_usage(store: TapeStore) -> None:
    assert await store.disk_usage() == 0
    await store.set_locality("/d", Locality.DISK, 10)
    await store.set_locality("/dt", Locality.DISK_AND_TAPE, 200, "V1", 0)
    await store.set_locality("/t", Locality.TAPE, 3000, "V1", 200)
    await store.set_locality("/z", Locality.NONE, 0)
    await store.set_locality("/l", Locality.LOST, 40000, "V1", 3200)
    await store.set_locality("/u", Locality.UNAVAILABLE, 500000, "V2", 0)
    assert await store.disk_usage() == 210
    await store.set_locality("/dt", Locality.TAPE, 200, "V1", 0)
    assert await store.disk_usage() == 10
    assert await store.forget_file("/d")
    assert await store.disk_usage() == 0


# -- restart, size, concurrency, crash -------------------------------------------------------


async def test_reopening_gives_the_same_state(backend: Backend) -> None:
    first = await backend.open()
    await make(first, "r1", ["/a", "/b", "/c"], owner="alice")
    await make(first, "r2", ["/d"], owner="bob", init=[(C, None)])
    assert await first.set_file_state("r1", "/a", C, T0 + 5, pin_until=T0 + 500)
    assert await first.set_file_state("r1", "/b", ST, T0 + 6)
    assert await first.add_pin("r2", "/d", T0 + 400)
    await first.set_locality("/a", Locality.DISK_AND_TAPE, 10, "V1", 0)
    await first.set_locality("/d", Locality.DISK_AND_TAPE, 20, "V1", 10)
    await first.set_locality("/c", Locality.TAPE, 30, "V1", 30)
    assert await first.touch("/d", T0 + 7)
    await make(first, "gone", ["/e"])
    assert await first.delete_request("gone", at=T0 + 8)
    snapshot = (
        await first.get_request("r1"),
        await first.get_request("r2"),
        await first.pending_files(),
        await first.count_active("alice"),
        await first.count_active("bob"),
        await first.files_on("V1"),
        await first.get_file("/c"),
        await first.disk_usage(),
        await first.lru_evictable(T0 + 450, 10),
    )
    await first.close()
    await first.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await first.get_request("r1")

    second = await backend.open()
    try:
        assert (
            await second.get_request("r1"),
            await second.get_request("r2"),
            await second.pending_files(),
            await second.count_active("alice"),
            await second.count_active("bob"),
            await second.files_on("V1"),
            await second.get_file("/c"),
            await second.disk_usage(),
            await second.lru_evictable(T0 + 450, 10),
        ) == snapshot
        assert snapshot[2] == [("r1", "/b"), ("r1", "/c")]
        assert await second.get_request("gone") is None
        assert await second.pinned("/a", T0 + 499)
        assert await second.pinned("/d", T0 + 399)
        # Staging resumes where it was.
        assert await second.set_file_state("r1", "/b", C, T0 + 20)
        assert await second.set_file_state("r1", "/c", C, T0 + 21)
        assert (await get(second, "r1")).completed_at == T0 + 21
    finally:
        await second.close()


async def test_ten_thousand_files(store: TapeStore) -> None:
    n = 10_000
    specs: list[FileSpec] = [(f"/data/run1/file{i:05d}.root", None, None) for i in range(n)]
    specs[17] = (specs[17][0], 86_400, {"activity": "staging"})
    await store.create_request("big", "alice", T0, specs, states(n))
    req = await get(store, "big")
    assert [f.path for f in req.files] == [p for p, _, _ in specs]
    assert all(f.state is S for f in req.files)
    assert (req.files[17].disk_lifetime, req.files[17].metadata) == (
        86_400,
        {"activity": "staging"},
    )
    assert len(await store.pending_files()) == n
    assert await store.set_file_state("big", specs[0][0], C, T0 + 1, pin_until=T0 + 100)
    assert await store.cancel("big", [p for p, _, _ in specs], at=T0 + 2)
    req = await get(store, "big")
    assert req.completed_at == T0 + 2
    assert sum(f.state is X for f in req.files) == n - 1
    assert await store.pending_files() == []
    assert not await store.pinned(specs[0][0], T0 + 3)


async def test_concurrent_calls_from_many_tasks(store: TapeStore) -> None:
    tasks, per_task = 40, 5

    async def worker(k: int) -> None:
        rid = f"req-{k:02d}"
        paths = [f"/c/{k}/{i}" for i in range(per_task)]
        await make(store, rid, paths, owner=f"user{k % 4}")
        for i, path in enumerate(paths):
            await store.set_locality(path, Locality.TAPE, 10, f"V{k}", i * 10)
            await store.set_file_state(rid, path, ST, T0 + 1)
            assert await store.get_request(rid) is not None
            await store.set_file_state(rid, path, C, T0 + 2, pin_until=T0 + 100)
            await store.set_locality(path, Locality.DISK_AND_TAPE, 10, f"V{k}", i * 10)

    async with asyncio.timeout(60):
        await asyncio.gather(*(worker(k) for k in range(tasks)))
    for k in range(tasks):
        req = await get(store, f"req-{k:02d}")
        assert all(f.state is C for f in req.files)
        assert req.completed_at == T0 + 2
        assert len(await store.files_on(f"V{k}")) == per_task
    assert await store.pending_files() == []
    assert sum([await store.count_active(f"user{u}") for u in range(4)]) == 0
    assert await store.disk_usage() == tasks * per_task * 10
    assert await store.lru_evictable(T0 + 50, 1000) == []
    assert len(await store.lru_evictable(T0 + 100, 1000)) == tasks * per_task


CRASH_SCRIPT = """
import asyncio, sys
from se.tape.model import FileState
from se.tape.store import open_store

async def main():
    store = await open_store(sys.argv[1])
    paths = [f"/crash/{i}" for i in range(500)]
    await store.create_request("crash", "alice", 1700000000, [(p, None, None) for p in paths],
                               [(FileState.SUBMITTED, None)] * len(paths))
    await store.set_file_state("crash", "/crash/0", FileState.STARTED, 1700000001)
    print("created", flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


async def test_sigkill_after_create_loses_nothing(backend: Backend) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASH_SCRIPT,
        backend.location,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line == b"created\n"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(proc.wait(), 30) == -signal.SIGKILL
    store = await backend.open()
    try:
        req = await get(store, "crash")
        assert len(req.files) == 500
        assert (req.started_at, req.files[0].state) == (T0 + 1, ST)
        assert len(await store.pending_files()) == 500
        assert await store.count_active("alice") == 1
    finally:
        await store.close()


# -- SQLite specifics ------------------------------------------------------------------------


async def test_sqlite_file_is_wal_with_a_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "tape.sqlite"
    store = await SQLiteStore.open(path)
    await make(store, "r", ["/a"])
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        conn.execute("UPDATE schema_version SET version = 99")
    conn.close()
    with pytest.raises(SchemaError, match="99"):
        await SQLiteStore.open(path)


async def test_sqlite_synchronous_choice(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "n.sqlite", synchronous="NORMAL")
    await make(store, "r", ["/a"])
    assert (await get(store, "r")).files[0].path == "/a"
    await store.close()
    with pytest.raises(ValueError, match="synchronous"):
        await SQLiteStore.open(tmp_path / "x.sqlite", synchronous="OFF")  # type: ignore[arg-type]


async def test_open_store_names_postgresql_as_not_yet_available() -> None:
    with pytest.raises(NotImplementedError):
        await open_store("postgresql://localhost/se")


async def test_sqlite_calls_run_on_one_thread_off_the_loop(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "t.sqlite")
    try:
        idents = await asyncio.gather(
            *(store._run(False, lambda _cur: threading.get_ident()) for _ in range(20))
        )
        assert len(set(idents)) == 1
        assert idents[0] != threading.get_ident()
    finally:
        await store.close()
