"""The tape store: one suite for every implementation of :class:`se.tape.store.TapeStore`.

Each test takes the ``backend`` fixture, parametrized over the implementations: ``sqlite`` (a
fresh file) and ``postgres`` (a fresh database on a real PostgreSQL server started once per
session by :mod:`tests.pg`, or a skip naming what is missing).  A location reopened gives the same
state; ``open_store`` turns it into a store, also in the subprocess of the crash test.  Tests on
the internals of one implementation are at the end, outside the suite.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import signal
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from se.tape.model import CartridgeState, FileState, Locality, StageRequest
from se.tape.sql import DuplicateRequestError, FileSpec, InitialState, SchemaError
from se.tape.sqlite_store import SQLiteStore
from se.tape.store import TapeStore
from se.tape.stores import open_store
from tests.pg import PGServer, postgres_or_skip

try:
    import psycopg
    import psycopg.errors

    from se.tape.pgstore import PostgresStore
except ImportError:  # pragma: no cover - the postgres tests skip then
    DB_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error,)
else:
    DB_ERRORS = (sqlite3.Error, psycopg.Error)

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


@pytest.fixture(scope="session")
def postgres() -> Iterator[PGServer]:
    """One real PostgreSQL server for the session (started on first use)."""
    with postgres_or_skip() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    name: str = request.param
    if name == "sqlite":
        yield Backend(name, str(tmp_path / "state" / "tape.sqlite"))
    elif name == "postgres":
        server: PGServer = request.getfixturevalue("postgres")
        url = server.create_database("tape")
        yield Backend(name, url)
        server.drop_database(url)
    else:  # pragma: no cover
        raise AssertionError(name)


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
    with pytest.raises((*DB_ERRORS, TypeError, ValueError)):
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


# -- spellings, bulk calls, cartridges, settings, summaries ----------------------------------


async def test_create_with_spellings_and_pins(store: TapeStore) -> None:
    await store.create_request(
        "r",
        "alice",
        T0,
        files("/t/a", "/t/b", "/t/c"),
        [(C, None), (C, None), (S, None)],
        spellings=["/t//a", "/t/b", None],
        pins=[T0 + 100, None, None],
    )
    a, b, c = (await get(store, "r")).files
    assert (a.path, a.spelling, a.shown) == ("/t/a", "/t//a", "/t//a")
    assert (b.spelling, b.shown) == (None, "/t/b")  # spelled as the path: nothing kept
    assert (c.spelling, c.shown) == (None, "/t/c")
    assert await store.pinned("/t/a", T0 + 99)
    assert not await store.pinned("/t/a", T0 + 100)
    assert not await store.pinned("/t/b", T0)
    assert await store.release("r", ["/t/a", "/t/b"]) == 1  # the pin is the request's

    # A pin only for a COMPLETED file; a refused request writes nothing.
    for init in ([(S, None)], [(ST, None)], [(F, "gone")], [(X, None)]):
        with pytest.raises(ValueError, match="pinned"):
            await store.create_request("p", "alice", T0, files("/x"), init, pins=[T0 + 5])
    assert await store.get_request("p") is None
    assert not await store.pinned("/x", T0)
    # No pin (None) is fine for any state.
    await store.create_request("q", "alice", T0, files("/x"), states(1), pins=[None])
    assert not await store.pinned("/x", T0)

    with pytest.raises(ValueError, match="spellings"):
        await store.create_request("m", "alice", T0, files("/x"), states(1), spellings=["/x", "/y"])
    with pytest.raises(ValueError, match="pins"):
        await store.create_request("m", "alice", T0, files("/x", "/y"), states(2, C), pins=[T0])
    with pytest.raises(ValueError, match="spellings"):
        await store.create_request("m", "alice", T0, files("/x"), states(1), spellings=[])
    assert await store.get_request("m") is None


async def test_get_files_in_bulk(store: TapeStore) -> None:
    assert await store.get_files([]) == {}
    known = {
        "/g/0": (Locality.DISK, 1, None, None),
        "/g/499": (Locality.DISK_AND_TAPE, 2, "V1", 0),
        "/g/500": (Locality.TAPE, 3, "V1", 2),  # in the second chunk of 500
        "/g/1199": (Locality.LOST, 4, "V2", 7),
    }
    for path, (loc, size, vid, pos) in known.items():
        await store.set_locality(path, loc, size, vid, pos)
    asked = [f"/g/{i}" for i in range(1200)] + ["/g/500", "/elsewhere"]  # a duplicate, unknowns
    got = await store.get_files(asked)
    assert got == known
    assert all(isinstance(entry[0], Locality) for entry in got.values())
    assert await store.get_files(["/nope"]) == {}


async def test_set_file_states_in_bulk(store: TapeStore) -> None:
    await make(store, "r", ["/a", "/b", "/c", "/d", "/e"])
    assert await store.set_file_state("r", "/d", C, T0 + 1)
    moved = await store.set_file_states(
        "r",
        [
            ("/a", ST, None, None),
            ("/b", C, None, T0 + 100),
            ("/d", F, "too late", None),  # already terminal: skipped
            ("/zz", C, None, None),  # not a file of the request: skipped
        ],
        T0 + 5,
    )
    assert moved == 2
    req = await get(store, "r")
    a, b, c, d, _ = req.files
    assert (a.state, a.started_at, a.finished_at) == (ST, T0 + 5, None)
    assert (b.state, b.started_at, b.finished_at) == (C, T0 + 5, T0 + 5)
    assert (c.state, d.state, d.finished_at, d.error) == (S, C, T0 + 1, None)
    assert (req.started_at, req.completed_at) == (T0 + 1, None)
    assert await store.pinned("/b", T0 + 99)
    assert not await store.pinned("/d", T0)

    # One transaction: a bad update refuses the whole batch.
    before = await get(store, "r")
    with pytest.raises(ValueError, match="pinned"):
        await store.set_file_states("r", [("/c", ST, None, None), ("/e", F, "x", T0 + 9)], T0 + 6)
    with pytest.raises(ValueError, match="error"):
        await store.set_file_states("r", [("/c", ST, None, None), ("/e", C, "x", None)], T0 + 6)
    assert await get(store, "r") == before

    assert await store.set_file_states("nope", [("/a", C, None, None)], T0 + 7) == 0
    assert await store.set_file_states("r", [], T0 + 7) == 0
    assert (
        await store.set_file_states(
            "r", [("/a", C, None, None), ("/c", F, "media", None), ("/e", X, None, None)], T0 + 8
        )
        == 3
    )
    req = await get(store, "r")
    assert req.completed_at == T0 + 8
    assert req.files[2].error == "media"
    assert await store.pending_files() == []


async def test_unarchived_files(store: TapeStore) -> None:
    assert await store.unarchived(10) == []
    await store.set_locality("/u1", Locality.DISK, 10)
    await store.set_locality("/u2", Locality.DISK, 20)
    await store.set_locality("/u3", Locality.DISK, 30)  # never touched: counts as time 0
    await store.set_locality("/dt", Locality.DISK_AND_TAPE, 40, "V1", 0)
    await store.set_locality("/t", Locality.TAPE, 50, "V1", 40)
    await store.set_locality("/n", Locality.NONE, 0)
    assert await store.touch("/u1", T0 + 30)
    assert await store.touch("/u2", T0 + 10)
    assert await store.touch("/dt", T0 + 1)
    assert await store.unarchived(10) == [
        ("/u3", 30, 0),
        ("/u2", 20, T0 + 10),
        ("/u1", 10, T0 + 30),
    ]
    assert await store.unarchived(2) == [("/u3", 30, 0), ("/u2", 20, T0 + 10)]
    await store.set_locality("/u3", Locality.DISK_AND_TAPE, 30, "V1", 90)  # archived
    assert [p for p, _, _ in await store.unarchived(10)] == ["/u2", "/u1"]


async def test_rename_a_file(store: TapeStore) -> None:
    await store.set_locality("/f", Locality.DISK_AND_TAPE, 5, "V1", 0)
    await store.set_locality("/f2", Locality.DISK, 6)
    assert await store.touch("/f2", T0 + 3)
    await store.set_locality("/g", Locality.DISK, 99)  # replaced by the rename
    assert await store.rename("/f", "/g") == 1
    assert await store.get_file("/f") is None
    assert await store.get_file("/g") == (Locality.DISK_AND_TAPE, 5, "V1", 0)
    assert await store.files_on("V1") == [("/g", 0, 5)]  # the tape copy stays valid
    assert await store.rename("/f2", "/h") == 1
    assert await store.unarchived(10) == [("/h", 6, T0 + 3)]  # keeps its last access
    assert await store.rename("/nope", "/x") == 0
    assert await store.rename("/g", "/g") == 0
    assert await store.get_file("/g") == (Locality.DISK_AND_TAPE, 5, "V1", 0)


async def test_rename_a_tree(store: TapeStore) -> None:
    sizes = {"/a/b/x": 1, "/a/b/y/z": 2, "/a/bc": 3, "/a/b%": 4, "/c/old": 5, "/c/y/z": 6}
    sizes |= {"/cc": 7, "/a": 8}
    for path, size in sizes.items():
        await store.set_locality(path, Locality.DISK, size)
    assert await store.rename("/a/b", "/c") == 2
    got = await store.get_files(
        ["/a/b/x", "/a/b/y/z", "/c/x", "/c/y/z", "/c/old", "/a/bc", "/a/b%", "/cc", "/a"]
    )
    assert {p: e[1] for p, e in got.items()} == {
        "/c/x": 1,
        "/c/y/z": 2,  # moved over the entry that was there
        "/a/bc": 3,  # a sibling with the same prefix is not below /a/b
        "/a/b%": 4,
        "/cc": 7,
        "/a": 8,
    }
    # The directory's own entry moves with the tree, into a deeper destination.
    await store.set_locality("/c", Locality.DISK, 9)
    assert await store.rename("/c", "/d/e") == 3
    got = await store.get_files(["/c", "/c/x", "/d/e", "/d/e/x", "/d/e/y/z"])
    assert {p: e[1] for p, e in got.items()} == {"/d/e": 9, "/d/e/x": 1, "/d/e/y/z": 2}


async def test_forget_tree(store: TapeStore) -> None:
    for path in ["/a", "/a/b", "/a/b/x", "/a/b/y/z", "/a/bc", "/a/b_"]:
        await store.set_locality(path, Locality.DISK, 1)
    assert await store.forget_tree("/a/b") == 3
    got = await store.get_files(["/a", "/a/b", "/a/b/x", "/a/b/y/z", "/a/bc", "/a/b_"])
    assert sorted(got) == ["/a", "/a/b_", "/a/bc"]
    assert await store.forget_tree("/nothing") == 0
    assert await store.forget_tree("/a") == 3
    assert await store.locality_counts() == {}


async def test_adopt_archived_recalled_offline_below(store: TapeStore) -> None:
    await store.set_locality("/t/known", Locality.TAPE, 5, "V1", 0)
    await store.adopt(
        [("/t/known", Locality.DISK, 9), ("/t/new", Locality.DISK, 7), ("/t/e", Locality.NONE, 0)],
        T0,
    )
    got = await store.get_files(["/t/known", "/t/new", "/t/e"])
    assert got == {
        "/t/known": (Locality.TAPE, 5, "V1", 0),  # known: left alone
        "/t/new": (Locality.DISK, 7, None, None),
        "/t/e": (Locality.NONE, 0, None, None),
    }
    assert await store.unarchived(10) == [("/t/new", 7, T0)]
    assert await store.offline_below("/t") == "/t/known"
    assert await store.offline_below("/t/new") is None
    # archived(): only a DISK file of that size without a tape copy.
    assert not await store.archived("/t/new", 8, Locality.DISK_AND_TAPE, "V1", 5)
    assert await store.archived("/t/new", 7, Locality.DISK_AND_TAPE, "V1", 5)
    assert not await store.archived("/t/new", 7, Locality.DISK_AND_TAPE, "V1", 12)
    assert not await store.archived("/t/gone", 7, Locality.DISK_AND_TAPE, "V1", 12)
    assert await store.get_file("/t/new") == (Locality.DISK_AND_TAPE, 7, "V1", 5)
    # recalled(): the tape copy read back, pin in the same transaction.
    await store.create_request("r", "o", T0, [("/t/known", None, None)], [(ST, None)])
    assert await store.recalled("r", "/t/known", 5, "V1", 0, T0 + 1, T0 + 100)
    assert await store.get_file("/t/known") == (Locality.DISK_AND_TAPE, 5, "V1", 0)
    assert await store.pinned("/t/known", T0 + 50)
    req = await store.get_request("r")
    assert req is not None and req.files[0].state is C
    assert not await store.recalled("r", "/t/gone", 5, "V1", 0, T0 + 1, None)
    # A file rewritten while it was read keeps its new entry.
    await store.set_locality("/t/new", Locality.DISK, 99)
    assert await store.recalled("r", "/t/new", 7, "V1", 5, T0 + 2, None)
    assert await store.get_file("/t/new") == (Locality.DISK, 99, None, None)


async def test_cartridges(store: TapeStore) -> None:
    assert await store.cartridges() == {}
    assert await store.claim_cartridge("V1", "poolA")
    assert await store.claim_cartridge("V1", "poolA")  # already ours
    assert not await store.claim_cartridge("V1", "poolB")
    assert await store.cartridges() == {"V1": ("poolA", CartridgeState.ACTIVE)}
    await store.set_cartridge_state("V2", CartridgeState.DISABLED)  # a new, unowned cartridge
    assert (await store.cartridges())["V2"] == (None, CartridgeState.DISABLED)
    assert await store.claim_cartridge("V2", "poolB")
    assert not await store.claim_cartridge("V2", "poolA")
    await store.set_cartridge_state("V1", CartridgeState.BROKEN)  # keeps its owner
    carts = await store.cartridges()
    assert carts == {
        "V1": ("poolA", CartridgeState.BROKEN),
        "V2": ("poolB", CartridgeState.DISABLED),
    }
    assert all(isinstance(state, CartridgeState) for _, state in carts.values())


async def test_settings(store: TapeStore) -> None:
    assert await store.settings() == {}
    await store.set_setting("read_failure_rate", 0.25)
    await store.set_setting("broken", ["V1", "V2"])
    await store.set_setting("nested", {"a": {"b": [1, None, True]}, "s": "x"})
    await store.set_setting("off", False)  # a false value is a value
    await store.set_setting("read_failure_rate", 0.5)  # replaced
    assert await store.settings() == {
        "broken": ["V1", "V2"],
        "nested": {"a": {"b": [1, None, True]}, "s": "x"},
        "off": False,
        "read_failure_rate": 0.5,
    }
    await store.set_setting("broken", None)
    await store.set_setting("never-set", None)
    assert sorted(await store.settings()) == ["nested", "off", "read_failure_rate"]


async def test_request_summaries(store: TapeStore) -> None:
    assert await store.request_summaries(10) == []
    await make(store, "r1", ["/a", "/b", "/c"], owner="alice", at=T0)
    await make(store, "r2", ["/a"], owner="bob", at=T0 + 1)
    await make(store, "r3", ["/x", "/y"], owner="carol", at=T0 + 2, init=[(C, None), (F, "e")])
    await make(store, "r4", ["/z"], owner="dave", at=T0 - 5)  # created last, clock aside
    assert await store.set_file_state("r1", "/a", C, T0 + 5)
    assert await store.set_file_state("r1", "/b", ST, T0 + 5)
    assert await store.delete_request("r2", at=T0 + 6)
    assert await store.request_summaries(10) == [
        ("r4", "dave", T0 - 5, None, {S: 1}),
        ("r3", "carol", T0 + 2, T0 + 2, {C: 1, F: 1}),
        ("r1", "alice", T0, None, {C: 1, ST: 1, S: 1}),
    ]
    assert [s[0] for s in await store.request_summaries(2)] == ["r4", "r3"]
    summary = (await store.request_summaries(1))[0]
    assert all(isinstance(state, FileState) for state in summary[4])


async def test_locality_counts(store: TapeStore) -> None:
    assert await store.locality_counts() == {}
    await store.set_locality("/d1", Locality.DISK, 10)
    await store.set_locality("/d2", Locality.DISK, 20)
    await store.set_locality("/dt", Locality.DISK_AND_TAPE, 300, "V1", 0)
    await store.set_locality("/t", Locality.TAPE, 4000, "V1", 300)
    await store.set_locality("/n", Locality.NONE, 0)
    big = 5 * 2**40  # sums beyond 32 bits
    await store.set_locality("/big", Locality.TAPE, big, "V2", 0)
    counts = await store.locality_counts()
    assert counts == {
        Locality.DISK: (2, 30),
        Locality.DISK_AND_TAPE: (1, 300),
        Locality.TAPE: (2, 4000 + big),
        Locality.NONE: (1, 0),
    }
    assert all(type(n) is int and type(b) is int for n, b in counts.values())


# -- restart, size, concurrency, crash -------------------------------------------------------


async def _state_of(store: TapeStore) -> tuple[object, ...]:
    """What the reopen test compares before and after."""
    return (
        await store.get_request("r1"),
        await store.get_request("r2"),
        await store.pending_files(),
        await store.count_active("alice"),
        await store.count_active("bob"),
        await store.files_on("V1"),
        await store.get_file("/c"),
        await store.disk_usage(),
        await store.lru_evictable(T0 + 450, 10),
    )


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
    snapshot = await _state_of(first)
    await first.close()
    await first.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await first.get_request("r1")

    second = await backend.open()
    try:
        assert await _state_of(second) == snapshot
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
from se.tape.stores import open_store

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


# -- PostgreSQL specifics --------------------------------------------------------------------


@pytest.fixture
def pg_backend(postgres: PGServer) -> Iterator[Backend]:
    url = postgres.create_database("pg")
    yield Backend("postgres", url)
    postgres.drop_database(url)


async def open_pg(location: str) -> PostgresStore:
    store = await open_store(location)
    assert isinstance(store, PostgresStore)
    return store


async def backend_pid(store: PostgresStore) -> int:
    def pid(cur: Any) -> int:
        cur.execute("SELECT pg_backend_pid()")
        return int(cur.fetchone()[0])

    return await store._run(False, pid)


def connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(url, autocommit=True, connect_timeout=10)


def admin(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with connect(url) as conn:
        cur = conn.execute(sql.replace("?", "%s"), args)
        return cur.fetchall() if cur.description else []


async def test_open_store_takes_both_url_schemes(pg_backend: Backend) -> None:
    url = pg_backend.location
    assert url.startswith("postgresql://")
    for location in (url, "postgres://" + url.removeprefix("postgresql://")):
        store = await open_pg(location)
        try:
            await make(store, location.split(":")[0], ["/a"])
        finally:
            await store.close()
    store = await open_pg(url)
    try:
        assert [s[0] for s in await store.request_summaries(5)] == ["postgres", "postgresql"]
    finally:
        await store.close()


async def test_postgres_schema_version(pg_backend: Backend) -> None:
    url = pg_backend.location
    # Frontends starting together: one creates the schema, the others find it.
    stores = await asyncio.gather(*(open_pg(url) for _ in range(4)))
    for store in stores:
        await store.close()
    assert await asyncio.to_thread(admin, url, "SELECT version FROM schema_version") == [(1,)]
    await asyncio.to_thread(admin, url, "UPDATE schema_version SET version = 99")
    with pytest.raises(SchemaError, match="99"):
        await open_pg(url)


async def test_postgres_calls_run_on_one_thread_off_the_loop(pg_backend: Backend) -> None:
    store = await open_pg(pg_backend.location)
    try:
        idents = await asyncio.gather(
            *(store._run(False, lambda _cur: threading.get_ident()) for _ in range(20))
        )
        assert len(set(idents)) == 1
        assert idents[0] != threading.get_ident()
    finally:
        await store.close()


async def test_postgres_reconnects_when_the_connection_broke(pg_backend: Backend) -> None:
    store = await open_pg(pg_backend.location)
    try:
        await make(store, "r", ["/a"])
        before = await backend_pid(store)
        killed = await asyncio.to_thread(
            admin, pg_backend.location, "SELECT pg_terminate_backend(?)", before
        )
        assert killed == [(True,)]
        assert (await get(store, "r")).files[0].path == "/a"  # a read: reconnected once
        assert await backend_pid(store) != before
        killed = await asyncio.to_thread(
            admin, pg_backend.location, "SELECT pg_terminate_backend(?)", await backend_pid(store)
        )
        assert await store.set_file_state("r", "/a", C, T0 + 1)  # a write, likewise
    finally:
        await store.close()


async def test_two_frontends_race_on_a_request_id(pg_backend: Backend) -> None:
    one, two = await open_pg(pg_backend.location), await open_pg(pg_backend.location)
    try:
        async with asyncio.timeout(60):
            for k in range(20):
                rid = f"dup-{k}"
                results = await asyncio.gather(
                    make(one, rid, ["/a", "/b"], owner="one"),
                    make(two, rid, ["/c"], owner="two"),
                    return_exceptions=True,
                )
                errors = [r for r in results if isinstance(r, BaseException)]
                assert len(errors) == 1 and isinstance(errors[0], DuplicateRequestError), results
                req = await get(two, rid)
                winner = "two" if results[0] is errors[0] else "one"
                assert req.owner == winner
                assert [f.path for f in req.files] == (["/c"] if winner == "two" else ["/a", "/b"])
    finally:
        await one.close()
        await two.close()


async def test_unique_violation_is_a_duplicate_request(pg_backend: Backend) -> None:
    """A writer that does not take the store's lock (here: plain SQL) inserts the same id while
    create_request runs: the unique index decides, and the answer is DuplicateRequestError."""
    url = pg_backend.location
    store = await open_pg(url)
    raw = await asyncio.to_thread(connect, url)
    try:
        await asyncio.to_thread(raw.execute, "BEGIN")
        await asyncio.to_thread(
            raw.execute,
            "INSERT INTO request (id, owner, created_at) VALUES ('x', 'raw', %s)",
            (T0,),
        )
        task = asyncio.create_task(make(store, "x", ["/a"]))
        waiting: list[tuple[Any, ...]] = []
        for _ in range(200):  # until the store's INSERT waits on the uncommitted row
            await asyncio.sleep(0.05)
            waiting = await asyncio.to_thread(
                admin,
                url,
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE 'INSERT INTO request%%'",
            )
            if waiting or task.done():
                break
        assert waiting, "create_request did not wait for the other writer"
        await asyncio.to_thread(raw.execute, "COMMIT")
        with pytest.raises(DuplicateRequestError) as info:
            await asyncio.wait_for(task, 30)
        assert isinstance(info.value.__cause__, psycopg.errors.UniqueViolation)
        assert (await get(store, "x")).owner == "raw"
    finally:
        await asyncio.to_thread(raw.close)
        await store.close()


async def test_two_frontends_race_cancel_against_completion(pg_backend: Backend) -> None:
    """A file cancelled by one frontend while another completes it with a pin: whichever
    wins, a cancelled file holds no pin."""
    reader, canceller = await open_pg(pg_backend.location), await open_pg(pg_backend.location)
    n = 40
    paths = [f"/race/{i}" for i in range(n)]
    try:
        await make(reader, "r", paths)
        for p in paths:
            assert await reader.set_file_state("r", p, ST, T0 + 1)
        async with asyncio.timeout(60):
            for p in paths:
                await asyncio.gather(
                    reader.set_file_state("r", p, C, T0 + 2, pin_until=T0 + 1000),
                    canceller.cancel("r", [p], at=T0 + 2),
                )
        req = await get(canceller, "r")
        outcome = {FileState.COMPLETED: 0, FileState.CANCELLED: 0}
        for f in req.files:
            outcome[f.state] += 1
            if f.state is X:
                assert not await reader.pinned(f.path, T0 + 3), f.path
        assert sum(outcome.values()) == n
        assert req.completed_at == T0 + 2
        # The request's pins were all dropped by the cancel that ran after each completion.
        assert await reader.release("r", paths) == 0
    finally:
        await reader.close()
        await canceller.close()


def _open_and_close(path: str) -> str:
    conn = SQLiteStore._connect(Path(path), "NORMAL", 10.0)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


def test_sqlite_workers_create_the_database_at_once(tmp_path: Path) -> None:
    """The workers of one se open a new database together: the switch to WAL is retried
    instead of failing one of them with "database is locked"."""
    ctx = multiprocessing.get_context("fork")
    for attempt in range(5):
        path = str(tmp_path / f"tape{attempt}.sqlite")
        with concurrent.futures.ProcessPoolExecutor(6, mp_context=ctx) as pool:
            modes = list(pool.map(_open_and_close, [path] * 6))
        assert modes == ["wal"] * 6
