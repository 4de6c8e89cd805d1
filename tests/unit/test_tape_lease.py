"""The tape library's lease (se.tape.lease) on a real PostgreSQL server: one holder at a time,
released when its connection ends, lost (and noticed) when the server ends that connection."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.pg import PGServer, postgres_or_skip

pytest.importorskip("psycopg")

from se.tape.lease import LIBRARY_LOCK, LibraryLease  # after the skip: needs psycopg


@pytest.fixture(scope="module")
def postgres() -> Iterator[PGServer]:
    with postgres_or_skip() as server:
        yield server


async def _acquired(lease: LibraryLease) -> bool:
    """Ask until the lease is had: a session's lock goes when its server process has exited,
    a moment after the client closed or was told (5 s at most)."""
    for _ in range(50):
        if await lease.acquire():
            return True
        await asyncio.sleep(0.1)
    return False


async def test_one_holder_then_the_next(postgres: PGServer) -> None:
    # The URL's own options are kept beside the keepalive settings the lease adds.
    url = postgres.create_database("lease") + "?options=-c%20application_name%3Dse-lease"
    a, b = LibraryLease(url), LibraryLease(url)
    try:
        assert await a.acquire() is True
        assert await b.acquire() is False
        assert await a.acquire() is True  # asking again keeps it
        assert await a.held() is True and await b.held() is False
        conn = a._conn
        assert conn is not None
        assert conn.execute("SHOW application_name").fetchone() == ("se-lease",)
        assert conn.execute("SHOW tcp_keepalives_idle").fetchone() == ("10",)
        await a.close()
        assert await _acquired(b)  # once the server has ended a's session
    finally:
        await a.close()
        await b.close()
        postgres.drop_database(url.split("?")[0])


async def test_a_lease_whose_connection_ends_is_lost(postgres: PGServer) -> None:
    import psycopg

    url = postgres.create_database("lease")
    a, b = LibraryLease(url), LibraryLease(url)
    try:
        assert await a.acquire() is True
        # The server ends the holder's session (as when its host vanished and the keepalives
        # gave up): the lock goes with it, the holder notices, another one takes it.
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks"
                " WHERE locktype = 'advisory' AND granted"
                " AND (classid::bigint << 32 | objid::bigint) = %s",
                (LIBRARY_LOCK & 0xFFFFFFFFFFFFFFFF,),
            )
        assert await a.held() is False
        assert await _acquired(b)
        assert await a.acquire() is False  # reconnects, and waits its turn
    finally:
        await a.close()
        await b.close()
        postgres.drop_database(url)
