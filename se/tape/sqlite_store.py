"""The tape store in one SQLite file: :class:`SQLiteStore`, the embedded implementation.

It runs the portable behaviour of :mod:`se.tape.sql` through sqlite3 on the thread of
:class:`~se.tape.store.ThreadedStore`; what is SQLite's own is here: the pragmas (WAL, synchronous,
foreign keys) and ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

from se.tape.sql import SCHEMA, SchemaError, check_version
from se.tape.store import ThreadedStore

__all__ = ["SQLiteStore", "Synchronous"]

_T = TypeVar("_T")

Synchronous = Literal["FULL", "NORMAL"]


class SQLiteStore(ThreadedStore):
    """:class:`~se.tape.store.TapeStore` in one SQLite file, in WAL mode.

    All sqlite3 calls, from connecting to closing, run on one dedicated thread that owns the
    connection; calls from any number of tasks are queued there, each one transaction.

    ``synchronous`` defaults to FULL: in WAL mode NORMAL already survives a killed process (a
    commit is in the WAL, which the OS writes out), but can lose the last commits on power loss or
    an OS crash, and a stage request answered 201 is a promise the client will not repeat.  FULL
    costs one fsync of the WAL per commit, small beside tape timings; NORMAL is offered for tests
    and benchmarks that do not need that guarantee.
    """

    _conn: sqlite3.Connection

    def __init__(self, executor: ThreadPoolExecutor, conn: sqlite3.Connection) -> None:
        super().__init__(executor)
        self._conn = conn

    @classmethod
    async def open(
        cls, path: str | Path, *, synchronous: Synchronous = "FULL", busy_timeout: float = 10.0
    ) -> SQLiteStore:
        """Open (creating if missing) the database file ``path``."""
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tape-store")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(
                executor, cls._connect, Path(path), synchronous, busy_timeout
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, conn)

    @staticmethod
    def _wal(conn: sqlite3.Connection, busy_timeout: float) -> str:
        """Switch to WAL.  Two processes opening a new database at once (the workers of one
        se) make the switch fail at once with "locked", busy timeout or not: retry it."""
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    @staticmethod
    def _connect(path: Path, synchronous: Synchronous, busy_timeout: float) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; every method opens its own.
        conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        try:
            mode = SQLiteStore._wal(conn, busy_timeout)
            if str(mode).lower() != "wal":
                raise SchemaError(f"{path}: cannot use WAL mode (got {mode})")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for ddl in SCHEMA:
                    cur.execute(ddl)
                check_version(cur, str(path))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        except BaseException:
            conn.close()
            raise
        return conn

    def _transaction(self, write: bool, fn: Callable[[sqlite3.Cursor], _T]) -> _T:
        """On the store's thread: run ``fn`` in one transaction, committed before returning."""
        cur = self._conn.cursor()
        # IMMEDIATE takes the write lock up front, so a writer never fails half-way on BUSY.
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = fn(cur)
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")
        return result
