"""Who runs the simulated library when several frontends share a PostgreSQL tape database.

Every frontend whose ``tape.library`` is true (its first worker) asks for the library's lease;
the one that holds it runs the :class:`~se.tape.simulator.TapeLibrary`, the others stand by and
ask again every ``tape.sync_interval``.  The lease is a session-level PostgreSQL advisory lock
(:data:`LIBRARY_LOCK`) held on a connection of its own: when the holder's process dies, its
connection closes and the server releases the lock, so the next standby to ask takes the
library over and resumes the pending recalls from the database (the library keeps nothing that
matters anywhere else).

A holder checks its lease on every tick; a lease connection found broken (the database
restarted, the network cut) stops its library, and it asks again like a standby.  A host that
vanishes without closing its connections (power cut, partition) keeps the lock until the
database server's TCP keepalives give up on it: :data:`KEEPALIVES` asks for that within about
half a minute.  Until the old holder notices its loss at its next tick, two libraries may run
for a moment; the store's write transactions keep the catalogue consistent, and a file recalled
twice is only read twice.

psycopg is imported by :func:`se.tape.service` only for a ``postgresql://`` database, as the
store is.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

__all__ = ["KEEPALIVES", "LIBRARY_LOCK", "SERVER_KEEPALIVES", "LibraryLease"]

log = logging.getLogger("se.tape")

# The advisory lock key of the library lease: the bytes "se-tape\x02" as a signed 64-bit
# integer (the store's write lock is "se-tape\x01").  Every frontend on a database uses it.
LIBRARY_LOCK = int.from_bytes(b"se-tape\x02", "big", signed=True)

# Both ends notice a vanished peer: the client (libpq) and the server (session settings,
# added to the URL's own ``options``).
KEEPALIVES: dict[str, object] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
SERVER_KEEPALIVES = (
    "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"
)

# Seconds a lease call may take before the lease counts as lost (a hung network).
CALL_TIMEOUT = 10.0


class LibraryLease:
    """The library's lease on one database: :meth:`acquire` to take it, :meth:`held` to check
    it, :meth:`close` to give it back."""

    def __init__(self, url: str, connect_timeout: float = 10.0) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._held = False
        self._closed = False
        # One thread owns the connection, as the store's does.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tape-lease")

    async def _call(self, fn: object) -> bool:
        loop = asyncio.get_running_loop()
        assert callable(fn)
        try:
            return bool(
                await asyncio.wait_for(loop.run_in_executor(self._executor, fn), CALL_TIMEOUT)
            )
        except (psycopg.Error, OSError, TimeoutError) as exc:
            log.warning("tape: library lease on %s: %s", self._where(), exc)
            self._held = False
            await loop.run_in_executor(self._executor, self._drop)
            return False

    def _where(self) -> str:
        return self.url.rsplit("@", 1)[-1]  # no user or password in messages

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()  # which releases a lock it held

    def _acquire(self) -> bool:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._drop()
            given = conninfo_to_dict(self.url).get("options")
            options = f"{given} {SERVER_KEEPALIVES}" if given else SERVER_KEEPALIVES
            self._conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(1, int(self.connect_timeout)),
                options=options,
                **KEEPALIVES,  # type: ignore[arg-type]
            )
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LIBRARY_LOCK,)).fetchone()
        return bool(row and row[0])

    def _check(self) -> bool:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            return False
        conn.execute("SELECT 1").fetchone()
        return True

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it; True when this frontend holds it now."""
        if self._held:
            return await self.held()
        self._held = await self._call(self._acquire)
        return self._held

    async def held(self) -> bool:
        """Whether the lease is still this frontend's (its connection alive)."""
        if not self._held:
            return False
        self._held = await self._call(self._check)
        if not self._held:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._drop)
        return self._held

    async def close(self) -> None:
        """Give the lease back (closing its connection) and end the thread (once)."""
        self._held = False
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._executor, self._drop)
        self._executor.shutdown(wait=False)
