"""The tape store in PostgreSQL, for several frontends sharing one database.

:class:`PostgresStore` runs the portable behaviour of :mod:`se.tape.sql` through psycopg 3,
exactly as :class:`se.tape.sqlite_store.SQLiteStore` runs it through sqlite3: one dedicated thread
owns a synchronous connection, every method is one transaction committed before it returns.
What differs is the concurrency model:

* Writes are serialised across every frontend on the database by a transaction-level advisory
  lock (:data:`WRITE_LOCK`) taken first thing in each write transaction, which is what SQLite's
  ``BEGIN IMMEDIATE`` does for one file.  Write transactions run at READ COMMITTED, so every
  statement after the lock sees what the previous writers committed: the read-then-write logic of
  :mod:`se.tape.sql` (is the id free? is the file still pending?) is then as safe as on SQLite.
* Reads take no lock; they run at REPEATABLE READ READ ONLY, one consistent snapshot per method
  (a request and its files are read as of one instant), like a deferred SQLite read transaction.
* The schema is created in one transaction under the same lock, so frontends starting together do
  not race on ``CREATE TABLE IF NOT EXISTS``.

A connection found broken when a transaction is about to start is replaced once; one that breaks
during a transaction fails that call (its outcome may be unknown) and is replaced by the next.

psycopg is an optional dependency (``pip install 'se[postgres]'``);
:func:`se.tape.stores.open_store` imports this module only for a ``postgresql://`` location.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, TypeVarTuple, cast

import psycopg
import psycopg.errors
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow

from se.tape.sql import SCHEMA, Cursor, DuplicateRequestError, check_version, create_request
from se.tape.store import ThreadedStore

__all__ = ["WRITE_LOCK", "PostgresStore"]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

# The advisory lock key of the tape store's write transactions (and of schema creation): the
# bytes "se-tape\x01" as a signed 64-bit integer.  Every frontend on a database must use the same.
WRITE_LOCK = int.from_bytes(b"se-tape\x01", "big", signed=True)

_BEGIN_WRITE = "BEGIN ISOLATION LEVEL READ COMMITTED"
_BEGIN_READ = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
_LOCK = f"SELECT pg_advisory_xact_lock({WRITE_LOCK})"

# What the PostgreSQL DDL says differently from the SQLite one, each phrase found exactly once.
_PG_DDL = (
    # SQLite's rowid (creation order) is an identity column here.
    ("seq INTEGER PRIMARY KEY,", "seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"),
    # The pending-files index also keys the path.  On (request_id) alone PostgreSQL's planner
    # prefers this small partial index to the unique (request_id, path) one for the per-file
    # ``UPDATE file ... WHERE request_id = ? AND path = ? AND state IN (pending)`` of
    # set_file_state and cancel, and then reads every pending file of the request for each file:
    # 7.5 s instead of 0.25 s to cancel 10,000 files.  SQLite picks the unique index by itself.
    ("file_pending ON file (request_id) WHERE", "file_pending ON file (request_id, path) WHERE"),
)


def _pg_schema() -> tuple[str, ...]:
    """The SQLite DDL in PostgreSQL terms: the same tables, columns and constraints."""
    ddl: tuple[str, ...] = SCHEMA
    for old, new in _PG_DDL:
        assert sum(stmt.count(old) for stmt in ddl) == 1, f"not in the SQLite DDL: {old}"
        ddl = tuple(stmt.replace(old, new) for stmt in ddl)
    assert all("%" not in stmt and "?" not in stmt for stmt in ddl)
    return ddl


PG_SCHEMA = _pg_schema()


@functools.lru_cache(maxsize=512)
def _to_pyformat(sql: str) -> str:
    """``?`` placeholders to psycopg's ``%s``.  The store's SQL has no literal ``%`` nor ``?``."""
    assert "%" not in sql, f"a literal % in the tape store's SQL: {sql}"
    return sql.replace("?", "%s")


def _check_arity(sql: str, parameters: Sequence[Any]) -> None:
    # A literal "?" (in a string constant) would show up as one placeholder too many.
    assert sql.count("?") == len(parameters), f"{len(parameters)} parameters for: {sql}"


class _QmarkCursor:
    """A psycopg cursor seen through the qmark interface :mod:`se.tape.sql` is written for."""

    def __init__(self, cur: psycopg.Cursor[TupleRow]) -> None:
        self._cur = cur

    @property
    def rowcount(self) -> int:
        # After executemany psycopg (>= 3.1) reports the sum over the parameter sets, as sqlite3
        # does; se.tape.sql relies on that (``cancel``, ``release``, ``release_owner``).
        return self._cur.rowcount

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> None:
        _check_arity(sql, parameters)
        self._cur.execute(_to_pyformat(sql), parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> None:
        rows = list(seq_of_parameters)
        if rows:
            _check_arity(sql, rows[0])
        self._cur.executemany(_to_pyformat(sql), rows)

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()


def _connect(conninfo: str, connect_timeout: float) -> psycopg.Connection[TupleRow]:
    # autocommit: no implicit transactions; every method opens its own with an explicit BEGIN.
    return psycopg.connect(conninfo, autocommit=True, connect_timeout=max(1, int(connect_timeout)))


def _describe(conn: psycopg.Connection[TupleRow]) -> str:
    """The database in messages, without the password."""
    info = conn.info
    return f"postgresql database {info.dbname!r} on {info.host}:{info.port}"


class PostgresStore(ThreadedStore):
    """:class:`se.tape.store.TapeStore` in a PostgreSQL database (``postgresql://`` URL).

    All psycopg calls, from connecting to closing, run on one dedicated thread that owns the
    connection; calls from any number of tasks are queued there, each one transaction.  Several
    frontends (processes, hosts) may open the same database: writes are serialised among them by
    :data:`WRITE_LOCK`.
    """

    _conn: psycopg.Connection[TupleRow]

    def __init__(
        self,
        executor: ThreadPoolExecutor,
        conn: psycopg.Connection[TupleRow],
        conninfo: str,
        connect_timeout: float,
    ) -> None:
        super().__init__(executor)
        self._conn = conn
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout

    @classmethod
    async def open(cls, url: str, *, connect_timeout: float = 10.0) -> PostgresStore:
        """Connect to the database ``url``, creating the tables if missing."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tape-store-pg")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, cls._open_sync, url, connect_timeout)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, conn, url, connect_timeout)

    @classmethod
    def _open_sync(cls, conninfo: str, connect_timeout: float) -> psycopg.Connection[TupleRow]:
        conn = _connect(conninfo, connect_timeout)
        try:
            with conn.cursor() as cur:
                cur.execute(_BEGIN_WRITE)
                # One schema creator at a time: concurrent CREATE ... IF NOT EXISTS can fail.
                cur.execute(_LOCK)
                for ddl in PG_SCHEMA:
                    cur.execute(ddl)
                check_version(_QmarkCursor(cur), _describe(conn))
                cur.execute("COMMIT")
        except BaseException:
            conn.close()  # which rolls back an open transaction
            raise
        return conn

    def _begin(self, write: bool) -> psycopg.Cursor[TupleRow]:
        """On the store's thread: open a transaction (replacing a broken connection once)."""
        for attempt in range(2):
            if self._conn.closed or self._conn.broken:
                self._conn = _connect(self._conninfo, self._connect_timeout)
            cur = self._conn.cursor()
            try:
                cur.execute(_BEGIN_WRITE if write else _BEGIN_READ)
                if write:
                    # Like SQLite's BEGIN IMMEDIATE: one writer at a time, across frontends.
                    cur.execute(_LOCK)
            except psycopg.OperationalError:
                # Nothing was done yet, so trying again on a new connection is safe.
                self._abort()
                if attempt == 0 and (self._conn.closed or self._conn.broken):
                    continue
                raise
            except BaseException:
                self._abort()
                raise
            return cur
        raise AssertionError("unreachable")  # pragma: no cover

    def _abort(self) -> None:
        """Roll back after a failure; close a connection that cannot (the next call reconnects)."""
        if self._conn.closed or self._conn.broken:
            return
        if self._conn.info.transaction_status == TransactionStatus.IDLE:
            return  # a failed COMMIT or BEGIN leaves no transaction behind
        try:
            self._conn.execute("ROLLBACK")
        except psycopg.Error:
            self._conn.close()

    def _transaction(self, write: bool, fn: Callable[[_QmarkCursor], _T]) -> _T:
        """On the store's thread: run ``fn`` in one transaction, committed before returning."""
        cur = self._begin(write)
        try:
            result = fn(_QmarkCursor(cur))
            cur.execute("COMMIT")
        except BaseException:
            self._abort()
            raise
        return result

    async def _run(self, write: bool, fn: Callable[[Cursor, *_Ts], _T], *args: *_Ts) -> _T:
        try:
            return await super()._run(write, fn, *args)
        except psycopg.errors.UniqueViolation as exc:
            # create_request checks the id first and writers are serialised, so only a
            # writer that does not take WRITE_LOCK can get here; the answer is the same.
            called: object = fn  # (to mypy a generic callable is never that function)
            if called is create_request and exc.diag.table_name == "request":
                # create_request(cur, request_id, ...)
                request_id = cast("tuple[str, ...]", args)[0]
                raise DuplicateRequestError(request_id) from exc
            raise
