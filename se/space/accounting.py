"""Used bytes and file counts per share, in the state database, written through by every write.

One row per share (``space_usage``): bytes, files, when it last changed and when it was last
reconciled.  Every worker process and every frontend on a shared PostgreSQL database adds its
deltas to the same rows, each change in a transaction of its own, committed on the I/O thread
of the write before the request is answered (se.storage.usage says where the deltas come
from); no totals are kept in memory, so a process killed at any moment loses at most the
change it was making.  Reading is a query, so what SRR, the quota check, PROPFIND and the
metrics show are the same numbers.

Quotas: :meth:`Accounting.admit` (a commit, a MOVE or COPY into a share) adds the deltas and
reads the new totals in one transaction, and rolls back with
:class:`~se.errors.InsufficientStorage` when a share with a ``size`` grew past it: two
uploads committing at once cannot both slip under the limit.  :meth:`check_room` is the
early check (before a body is read, before a third-party pull's 202).

Reconciliation walks a share's paths (``lstat`` only, never following a symlink, skipping
``.se-*`` names and upload temp files; the paths of other shares below are left to them) and
sets the totals, unless a change was counted meanwhile (then it walks again).  Changes that
are counted at another moment than they happen on disk are known to it: an upload or a
delete counted before its rename or unlink (a pending row, made and judged under the
directory's lock), a tree deleted, copied or moved, counted after (a change mark, see
:meth:`Accounting.begin_change`).  It waits for those in flight, and a pending change whose
process was killed is settled by the walk itself (its row goes with the new totals, so the
recovery does not take it back a second time).

SQLite (default ``<state_dir>/space.sqlite``, WAL, ``synchronous=NORMAL``: a committed
change survives the process being killed) or PostgreSQL (a ``postgresql://`` URL;
``pip install 'se[postgres]'``).  A few connections per process, lent to one thread at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import socket
import sqlite3
import stat as stat_mod
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from se.config import Config, ShareConfig, state_dir
from se.errors import InsufficientStorage, ServiceUnavailable
from se.space.shares import ShareMap
from se.storage.paths import DavPath
from se.storage.usage import CHANGE_KEY, DELETE_KEY, Deltas, dir_locked, walk_files

__all__ = ["Accounting", "Usage", "database_location"]

log = logging.getLogger("se.space")
T = TypeVar("T")

# Advisory lock key of the schema creation on PostgreSQL: the bytes "se-space" as an int64.
SCHEMA_LOCK = int.from_bytes(b"se-space", "big", signed=True)
_POOL_SIZE = 4  # connections per process (each lent to one thread at a time)
RECONCILE_TRIES = 3  # walks of a share that keeps changing under them
SETTLE_BATCH = 64  # settled uploads forgotten together, or ...
SETTLE_DELAY = 1.0  # ... after this many seconds (at the next upload, recovery or close)
RECOVER_INTERVAL = 10.0  # seconds between looks for uploads counted but never put in place
IN_FLIGHT_WAIT = 60.0  # seconds a reconciliation waits for changes in flight, then gives up
IN_FLIGHT_POLL = 0.05  # seconds between its looks
# A change mark of a process on another host (whose life cannot be seen from here) is taken
# as that of a dead process after this many seconds.
CHANGE_STALE = 6 * 3600.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS space_usage ("
    " name TEXT PRIMARY KEY,"
    " bytes BIGINT NOT NULL DEFAULT 0,"
    " files BIGINT NOT NULL DEFAULT 0,"
    " updated DOUBLE PRECISION NOT NULL DEFAULT 0,"
    " reconciled DOUBLE PRECISION NOT NULL DEFAULT 0)",
    # Uploads counted but not yet in place: (temp file, share) -> what was added.  Gone once
    # the upload is in place; what a writer killed in between left is taken back by
    # :meth:`Accounting.recover_sync` (its temp file is still there, and unlocked).  Also
    # files counted as deleted but not yet unlinked: temp "delete:<id>", the target and its
    # inode (still there with that inode: taken back).  And changes in flight counted after
    # they are on disk: temp "change:<id>", share "*", the owner (host/pid/start) as target.
    "CREATE TABLE IF NOT EXISTS space_pending ("
    " temp TEXT NOT NULL,"
    " share TEXT NOT NULL,"
    " target TEXT NOT NULL,"
    " bytes BIGINT NOT NULL,"
    " files BIGINT NOT NULL,"
    " created DOUBLE PRECISION NOT NULL,"
    " ino BIGINT NOT NULL DEFAULT 0,"
    " PRIMARY KEY (temp, share))",
)


@dataclass(frozen=True, slots=True)
class Usage:
    bytes: int
    files: int
    updated: float  # epoch seconds of the last change (0: never)
    reconciled: float = 0.0  # epoch seconds of the last reconciliation (0: never)


def database_location(cfg: Config) -> str:
    """The accounting database: space.database, else <state_dir>/space.sqlite."""
    return cfg.space.database or str(state_dir(cfg) / "space.sqlite")


class _Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...

    @property
    def rowcount(self) -> int: ...


class _Database:
    """A small pool of connections to one database; ``?`` placeholders on both kinds."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.postgres = location.startswith(("postgresql://", "postgres://"))
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._made = 0
        self._lock = threading.Lock()
        self._closed = False
        self._ready = False

    def exists(self) -> bool:
        """Whether the database may hold totals: an SQLite file is made by the first change
        (a server that only reads leaves no state behind), PostgreSQL always may."""
        return self.postgres or self._ready or os.path.exists(self.location)

    def _ensure(self) -> None:
        """Create the file (SQLite) and the schema on first use."""
        with self._lock:
            if self._ready:
                return
            if not self.postgres:
                Path(self.location).parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            try:
                cur = conn.cursor()
                cur.execute("BEGIN" if self.postgres else "BEGIN IMMEDIATE")
                if self.postgres:
                    cur.execute(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
                for stmt in _SCHEMA:
                    cur.execute(stmt)
                cur.execute("COMMIT")
            finally:
                conn.close()
            self._ready = True

    def _connect(self) -> Any:
        if self.postgres:
            import psycopg  # optional dependency: only for a postgresql:// database

            return psycopg.connect(self.location, autocommit=True, connect_timeout=10)
        conn = sqlite3.connect(
            self.location, timeout=60.0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _borrow(self) -> Any:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._made < _POOL_SIZE:
                self._made += 1
                try:
                    return self._connect()
                except BaseException:
                    self._made -= 1
                    raise
        return self._idle.get(timeout=120)

    @contextlib.contextmanager
    def transaction(self, write: bool, single: bool = False) -> Iterator[_Cursor]:
        """One transaction on a lent connection (committed on leaving, rolled back on error).
        ``single``: the caller runs one statement, its own transaction (autocommit): one
        round trip to PostgreSQL instead of three or four."""
        if not self._ready:
            self._ensure()
        conn = self._borrow()
        broken = False
        try:
            cur = conn.cursor()
            if self.postgres:
                cur = _QmarkCursor(cur)
            if single:
                yield cur
                return
            if self.postgres:
                cur.execute("BEGIN" if write else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            else:
                cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield cur
            except BaseException:
                with contextlib.suppress(Exception):
                    cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
        except BaseException as exc:
            broken = not _is_domain_error(exc) and _connection_broken(conn, self.postgres)
            raise
        finally:
            if broken or self._closed:
                with contextlib.suppress(Exception):
                    conn.close()
                with self._lock:
                    self._made -= 1
            else:
                self._idle.put(conn)

    def close(self) -> None:
        self._closed = True
        for _ in range(_POOL_SIZE):
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                break
            with contextlib.suppress(Exception):
                conn.close()
            with self._lock:
                self._made -= 1


def _is_domain_error(exc: BaseException) -> bool:
    return isinstance(exc, InsufficientStorage)


def _connection_broken(conn: Any, postgres: bool) -> bool:
    if not postgres:
        return False
    return bool(getattr(conn, "closed", False) or getattr(conn, "broken", False))


class _QmarkCursor:
    """A psycopg cursor taking ``?`` placeholders (the SQL here has no literal ``%``/``?``)."""

    def __init__(self, cur: Any) -> None:
        self._cur = cur

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._cur.execute(sql.replace("?", "%s"), params)

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cur.fetchall())


_PENDING = (
    "INSERT INTO space_pending (temp, target, share, bytes, files, created, ino) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE = "UPDATE space_usage SET bytes = bytes + ?, files = files + ?, updated = ? WHERE name = ?"


def _add(cur: _Cursor, name: str, nbytes: int, files: int, now: float) -> None:
    cur.execute(_UPDATE, (nbytes, files, now, name))
    if cur.rowcount == 0:  # a share added since the rows were made (reload)
        cur.execute(
            "INSERT INTO space_usage (name, bytes, files, updated) VALUES (?, ?, ?, ?)",
            (name, nbytes, files, now),
        )


def _writer_state(temp: str, target: str) -> str:
    """ "gone" (the temp file is no more: renamed into place), "dead" (there, lockable: its
    writer is gone, and it is not linked at the target) or "alive" (anything else)."""
    try:
        fd = os.open(temp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return "gone"
    except OSError:
        return "alive"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return "alive"  # its writer holds it (or no locks here: the walk will tell)
        st = os.fstat(fd)
        with contextlib.suppress(OSError):
            there = os.lstat(target)
            if (there.st_dev, there.st_ino) == (st.st_dev, st.st_ino):
                return "gone"  # linked into place (Overwrite: F), the unlink not done
        return "dead"
    finally:
        os.close(fd)


def _unlinked_state(target: str, ino: int) -> str:
    """A pending delete: "dead" (the file is still there: never unlinked) or "gone"."""
    try:
        st = os.lstat(target)
    except OSError:
        return "gone"
    return "dead" if st.st_ino == ino else "gone"


def _process_start(pid: int) -> str:
    """When process ``pid`` started, in clock ticks since boot ("" when unknown): with the
    pid, one process, even after its pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else ""


_HOST = socket.gethostname()


def _owner() -> str:
    """This process, as a change mark names its owner: host/pid/start."""
    pid = os.getpid()
    return f"{_HOST}/{pid}/{_process_start(pid)}"


def _owner_alive(owner: str, created: float, now: float) -> bool:
    """Whether the process that made a change mark still runs (on another host: whether the
    mark is younger than CHANGE_STALE)."""
    host, _, rest = owner.partition("/")
    pid_text, _, start = rest.partition("/")
    if host != _HOST or not pid_text.isdigit():
        return now - created < CHANGE_STALE
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # there, someone else's
    return not start or _process_start(pid) in ("", start)


@dataclass
class _Judged:
    """The pending rows of a share as a reconciliation found them, none in flight: those of
    killed uploads and deletes (their count the walk replaces) and the marks of dead
    changes (the recovery's to drop)."""

    dead: list[str]
    dead_changes: set[str]


class Accounting:
    """Per-share usage in the state database; the backend's :class:`SpaceTracker`."""

    def __init__(self, cfg: Config, executor: Executor | None = None) -> None:
        self.cfg = cfg
        self.root = os.path.abspath(cfg.storage.root)
        self.root_real = os.path.realpath(self.root)
        self._map = ShareMap.of(cfg.shares)
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(2, thread_name_prefix="se-space")
        self._db = _Database(database_location(cfg))
        self._reconciling = threading.Lock()
        # Uploads in place whose pending rows are yet to be forgotten (see settle).
        self._settled: list[str] = []
        self._settled_at = time.monotonic()
        self._settle_lock = threading.Lock()
        self._walk_wanted = False  # a change mark of a dead process was dropped

    @classmethod
    def open(cls, cfg: Config) -> Accounting:
        """Open the accounting of a configuration outside a server (``se scan``)."""
        return cls(cfg)

    # -- shares -----------------------------------------------------------------------
    @property
    def shares(self) -> tuple[ShareConfig, ...]:
        return self._map.shares

    def share_of(self, path: DavPath) -> ShareConfig | None:
        return self._map.share_of(path)

    def update_shares(self, shares: Sequence[ShareConfig]) -> None:
        """Take a new ``[[shares]]`` (SIGHUP).  A new share's total is 0 until reconciled
        (POST <srr>?reconcile=<name>, or the next periodic run)."""
        self._map = ShareMap.of(shares)

    # -- SpaceTracker (on the backend's I/O threads) -------------------------------------
    def share_key(self, path: DavPath) -> str | None:
        return self._map.name_of(path)

    def nested(self, path: DavPath) -> bool:
        return self._map.nested(path)

    def apply(self, deltas: Deltas, settle: str | None = None) -> None:
        """Add ``deltas``; ``settle``: and forget that pending upload (its temp file), in the
        same transaction (an upload that did not get in place, taken back)."""
        items = sorted(deltas.items())  # one order everywhere: no deadlock between rows
        if settle is not None:
            with self._db.transaction(write=True) as cur:
                for name, nbytes, files in items:
                    _add(cur, name, nbytes, files, time.time())
                cur.execute("DELETE FROM space_pending WHERE temp = ?", (self._rel(settle),))
            return
        if not items:
            return
        now = time.time()
        if len(items) == 1:  # the usual case: one statement, atomic by itself
            name, nbytes, files = items[0]
            with self._db.transaction(write=True, single=True) as cur:
                cur.execute(_UPDATE, (nbytes, files, now, name))
                if cur.rowcount == 1:
                    return
        with self._db.transaction(write=True) as cur:
            for name, nbytes, files in items:
                _add(cur, name, nbytes, files, now)

    def admit(self, deltas: Deltas, pending: tuple[str, str] | None = None, ino: int = 0) -> None:
        """Add ``deltas`` unless a share with a size would go past it (InsufficientStorage,
        nothing added).  ``pending``: (temp file, target) of an upload about to be renamed
        into place, recorded with the deltas until :meth:`settle`; or ("delete:<id>",
        target) with the ``ino`` of a file about to be unlinked."""
        items = sorted(deltas.items())
        if not items:
            return
        now = time.time()
        if len(items) == 1 and self._admit_one(*items[0], now, pending, ino):
            return
        with self._db.transaction(write=True) as cur:
            self._admit_in(cur, items, pending, ino, now)

    def _admit_in(
        self,
        cur: _Cursor,
        items: Sequence[tuple[str, int, int]],
        pending: tuple[str, str] | None,
        ino: int,
        now: float,
    ) -> None:
        """Add ``items`` (and record ``pending``) in the caller's transaction;
        InsufficientStorage when a share with a size went past it (the caller rolls back)."""
        for name, nbytes, files in items:
            _add(cur, name, nbytes, files, now)
            if pending is not None:
                key = self._pending_key(pending)
                cur.execute(_PENDING, (*key, name, nbytes, files, now, ino))
            share = self._map.get(name)
            if share is None or not share.size or nbytes <= 0:
                continue
            cur.execute("SELECT bytes FROM space_usage WHERE name = ?", (name,))
            total = int(cur.fetchone()[0])
            if total > share.size:
                raise InsufficientStorage(
                    f"share {name} is full: {total - nbytes} of {share.size} bytes used, "
                    f"{nbytes} more refused"
                )

    def admit_many(
        self, uploads: Sequence[tuple[Deltas, tuple[str, str]]]
    ) -> list[InsufficientStorage | None]:
        """:meth:`admit` for several uploads about to be put in place together (a group
        commit into one directory), in one transaction: each is admitted or refused on its
        own (a refused one adds nothing), in turn, so the totals are those of admitting them
        one by one.  Per upload: None (admitted) or the InsufficientStorage refusing it."""
        results: list[InsufficientStorage | None] = [None] * len(uploads)
        todo = [(sorted(d.items()), pending, i) for i, (d, pending) in enumerate(uploads)]
        todo = [t for t in todo if t[0]]
        if not todo:
            return results
        if len(todo) == 1:  # one statement (or a short transaction), as admit does it
            _, pending, i = todo[0]
            try:
                self.admit(uploads[i][0], pending)
            except InsufficientStorage as exc:
                results[i] = exc
            return results
        todo.sort(key=lambda t: t[0])  # one order of rows everywhere (PostgreSQL: no deadlock)
        now = time.time()
        with self._db.transaction(write=True) as cur:
            for items, pending, i in todo:
                limited = any(
                    nbytes > 0 and (share := self._map.get(name)) is not None and share.size
                    for name, nbytes, _ in items
                )
                if not limited:  # nothing to refuse: no savepoint needed
                    self._admit_in(cur, items, pending, 0, now)
                    continue
                cur.execute("SAVEPOINT admit")
                try:
                    self._admit_in(cur, items, pending, 0, now)
                except InsufficientStorage as exc:
                    cur.execute("ROLLBACK TO SAVEPOINT admit")
                    results[i] = exc
                cur.execute("RELEASE SAVEPOINT admit")
        return results

    def _admit_one(
        self,
        name: str,
        nbytes: int,
        files: int,
        now: float,
        pending: tuple[str, str] | None,
        ino: int,
    ) -> bool:
        """The usual case (a PUT): one share, one statement atomic by itself (on SQLite, a
        short transaction when the upload is recorded as pending).  False when nothing was
        changed (no row yet, or over the limit): the caller's transaction sorts that out."""
        share = self._map.get(name)
        limit = share.size if share is not None and share.size and nbytes > 0 else 0
        update = _UPDATE + (" AND bytes + ? <= ?" if limit else "")
        args: tuple[Any, ...] = (nbytes, files, now, name) + ((nbytes, limit) if limit else ())
        if pending is None:
            with self._db.transaction(write=True, single=True) as cur:
                cur.execute(update, args)
                return cur.rowcount == 1
        temp, target = self._pending_key(pending)
        if self._db.postgres:  # both in one statement: one round trip
            with self._db.transaction(write=True, single=True) as cur:
                cur.execute(
                    f"WITH u AS ({update} RETURNING name) INSERT INTO space_pending "
                    "(temp, target, share, bytes, files, created, ino) "
                    "SELECT ?, ?, name, ?, ?, ?, ? FROM u",
                    (*args, temp, target, nbytes, files, now, ino),
                )
                return cur.rowcount == 1
        with self._db.transaction(write=True) as cur:
            cur.execute(update, args)
            if cur.rowcount != 1:
                return False
            cur.execute(_PENDING, (temp, target, name, nbytes, files, now, ino))
            return True

    def settle(self, pending: tuple[str, str]) -> None:
        """The upload is in place: forget it as pending.  Batched (SETTLE_BATCH rows or
        SETTLE_DELAY seconds, and at close), off the upload's critical path: a row left
        behind names a temp file that is gone, which recovery also forgets."""
        with self._settle_lock:
            self._settled.append(self._rel(pending[0]))
            now = time.monotonic()
            if len(self._settled) < SETTLE_BATCH and now - self._settled_at < SETTLE_DELAY:
                return
            batch, self._settled, self._settled_at = self._settled, [], now
        self._forget(batch)

    def abandoned(self, temp: str, ino: int) -> None:
        """The sweep is removing ``temp`` (inode ``ino``), whose writer is gone: take back
        what its upload counted, or forget it if it was linked into place (see
        se.storage.usage.SpaceTracker.abandoned)."""
        if not self._db.exists():
            return
        key = self._rel(temp)
        with self._db.transaction(write=False, single=True) as cur:
            cur.execute(
                "SELECT target, share, bytes, files FROM space_pending WHERE temp = ?", (key,)
            )
            rows = cur.fetchall()
        if not rows:
            return
        try:
            there = os.lstat(self._abs(str(rows[0][0])))
            placed = there.st_ino == ino and stat_mod.S_ISREG(there.st_mode)
        except OSError:
            placed = False
        back = Deltas()
        if not placed:
            for _target, share, nbytes, files in rows:
                back.add(str(share), -int(nbytes), -int(files))
        if self._drop_pending(key, back) and back:
            log.warning("space: upload %s never got in place; its count taken back", key)

    def _drop_pending(self, temp: str, back: Deltas, walk_again: bool = False) -> bool:
        """Forget the pending row(s) of ``temp`` and apply ``back`` (and with
        ``walk_again``, mark every share as never reconciled), in one transaction; only if
        the rows were still there (False: judged meanwhile by a recovery, a
        reconciliation or the sweep, which did it)."""
        with self._db.transaction(write=True) as cur:
            cur.execute("DELETE FROM space_pending WHERE temp = ?", (temp,))
            if cur.rowcount <= 0:
                return False
            for name, nbytes, files in sorted(back.items()):
                _add(cur, name, nbytes, files, time.time())
            if walk_again:
                cur.execute("UPDATE space_usage SET reconciled = 0")
        return True

    def begin_change(self) -> str:
        """Mark a change in flight whose count comes with or after what it does on disk (a
        tree deleted, copied or moved); ``apply(deltas, settle=key)`` ends it.  Until then a
        reconciliation waits (a walk meanwhile could see half of the change); a mark whose
        process is gone is dropped by the recovery, which has the shares walked again."""
        key = f"{CHANGE_KEY}{uuid.uuid4().hex}"
        with self._db.transaction(write=True, single=True) as cur:
            cur.execute(_PENDING, (key, _owner(), "*", 0, 0, time.time(), 0))
        return key

    def _judge(self, temp: str, target: str, ino: int, created: float, now: float) -> str:
        """The state of a pending row: "gone" (done on disk), "dead" (never will be: its
        process is gone) or "alive" (in flight).  An upload or delete is judged under its
        directory's lock, which its writer holds from its count to its rename or unlink:
        one seen in the middle is waited for, not taken for dead or done."""
        if temp.startswith(CHANGE_KEY):
            return "alive" if _owner_alive(target, created, now) else "dead"
        target_fs = self._abs(target)
        with contextlib.ExitStack() as stack:
            with contextlib.suppress(OSError):  # no directory (any more): nothing to wait for
                stack.enter_context(dir_locked(os.path.dirname(target_fs)))
            if temp.startswith(DELETE_KEY):
                return _unlinked_state(target_fs, ino)
            return _writer_state(self._abs(temp), target_fs)

    def flush_settled(self) -> None:
        with self._settle_lock:
            batch, self._settled = self._settled, []
        if batch:
            self._forget(batch)

    def _forget(self, temps: Sequence[str]) -> None:
        with self._db.transaction(write=True) as cur:
            for temp in temps:
                cur.execute("DELETE FROM space_pending WHERE temp = ?", (temp,))

    def _rel(self, fs: str) -> str:
        prefix = self.root_real.rstrip(os.sep) + os.sep
        return fs[len(prefix) :] if fs.startswith(prefix) else fs

    def _pending_key(self, pending: tuple[str, str]) -> tuple[str, str]:
        return self._rel(pending[0]), self._rel(pending[1])

    def recover_sync(self) -> int:
        """Take back what changes counted but never made (their process was killed between
        the two): a pending upload whose temp file is gone got in place (forgotten); one
        whose temp file is still there with no live writer (it can be locked) and not
        linked into place did not (taken back); likewise a pending delete whose file is
        still there.  A change mark whose process is gone is dropped, and every share is
        marked as never reconciled (its count never came; a walk at the next start, or at
        the next periodic run, sets the totals).  Live writers are left alone, and a row a
        reconciliation settled meanwhile is not taken back twice.  How many were undone."""
        if not self._db.exists():
            return 0
        self.flush_settled()
        with self._db.transaction(write=False, single=True) as cur:
            cur.execute("SELECT temp, target, share, bytes, files, ino, created FROM space_pending")
            rows = cur.fetchall()
        undone = 0
        done: list[str] = []  # got in place: forgotten together
        now = time.time()
        for temp in sorted({str(r[0]) for r in rows}):
            mine = [r for r in rows if r[0] == temp]
            first = mine[0]
            state = self._judge(temp, str(first[1]), int(first[5]), float(first[6]), now)
            if state == "alive":
                continue
            if state != "dead":
                done.append(temp)
                continue
            back = Deltas()
            for _t, _target, share, nbytes, files, _ino, _created in mine:
                back.add(str(share), -int(nbytes), -int(files))
            if not self._drop_pending(temp, back, walk_again=temp.startswith(CHANGE_KEY)):
                continue  # settled by a reconciliation meanwhile
            undone += 1
            if temp.startswith(CHANGE_KEY):
                self._walk_wanted = True
                log.warning(
                    "space: a change by %s never finished; every share will be walked again",
                    first[1],
                )
            else:
                log.warning("space: change %s never happened; its count taken back", temp)
        if done:
            self._forget(done)
        return undone

    async def recover(self) -> int:
        return await self._run(self.recover_sync)

    def _abs(self, rel: str) -> str:
        return rel if rel.startswith("/") else os.path.join(self.root_real, rel)

    # -- reading ------------------------------------------------------------------------
    def usage(self, name: str) -> Usage:
        """The totals of one share (zeros for an unknown one)."""
        if not self._db.exists():
            return Usage(0, 0, 0.0, 0.0)
        with self._db.transaction(write=False, single=True) as cur:
            cur.execute(
                "SELECT bytes, files, updated, reconciled FROM space_usage WHERE name = ?",
                (name,),
            )
            row = cur.fetchone()
        if row is None:
            return Usage(0, 0, 0.0, 0.0)
        return Usage(int(row[0]), int(row[1]), float(row[2]), float(row[3]))

    def all_usage(self) -> dict[str, Usage]:
        """The totals of every share in force, by name."""
        if not self._db.exists():
            return {s.name: Usage(0, 0, 0.0, 0.0) for s in self._map.shares}
        with self._db.transaction(write=False, single=True) as cur:
            cur.execute("SELECT name, bytes, files, updated, reconciled FROM space_usage")
            rows = cur.fetchall()
        found = {str(r[0]): Usage(int(r[1]), int(r[2]), float(r[3]), float(r[4])) for r in rows}
        return {s.name: found.get(s.name, Usage(0, 0, 0.0, 0.0)) for s in self._map.shares}

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            job = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except RuntimeError:  # the I/O threads are gone: a request that outlived the stop
            raise ServiceUnavailable("server is stopping") from None
        return await job

    async def usage_async(self, name: str) -> Usage:
        return await self._run(self.usage, name)

    async def all_usage_async(self) -> dict[str, Usage]:
        return await self._run(self.all_usage)

    def limit(self, path: DavPath) -> tuple[ShareConfig, int] | None:
        """The share of ``path`` and its size, when it has a limit."""
        share = self._map.share_of(path)
        if share is None or not share.size:
            return None
        return share, share.size

    async def check_room(self, path: DavPath, incoming: int, replacing: int = 0) -> None:
        """Refuse (507, the share named) ``incoming`` bytes at ``path`` that would take its
        share over its size (``replacing``: bytes of the file they replace)."""
        found = self.limit(path)
        if found is None or incoming - replacing <= 0:
            return
        share, size = found
        used = (await self.usage_async(share.name)).bytes
        if used - replacing + incoming > size:
            raise InsufficientStorage(
                f"share {share.name} is full: {used} of {size} bytes used, {incoming} more refused"
            )

    async def quota(self, path: DavPath, fs_available: int) -> tuple[int, int] | None:
        """RFC 4331 (used, available) of a path in a share: the share's used bytes, and what
        is left of its size (at most ``fs_available``; without a size, ``fs_available``).
        None outside every share."""
        share = self._map.share_of(path)
        if share is None:
            return None
        used = (await self.usage_async(share.name)).bytes
        if not share.size:
            return used, fs_available
        return used, max(0, min(share.size - used, fs_available))

    # -- writing totals ---------------------------------------------------------------------
    def set_usage_sync(self, name: str, nbytes: int, files: int, reconciled: bool = True) -> None:
        now = time.time()
        with self._db.transaction(write=True) as cur:
            cur.execute(
                "UPDATE space_usage SET bytes = ?, files = ?, updated = ?, reconciled = ? "
                "WHERE name = ?",
                (nbytes, files, now, now if reconciled else 0.0, name),
            )
            if cur.rowcount == 0:
                cur.execute(
                    "INSERT INTO space_usage (name, bytes, files, updated, reconciled) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (name, nbytes, files, now, now if reconciled else 0.0),
                )

    async def set_usage(self, name: str, nbytes: int, files: int) -> None:
        """Set a share's totals (reconciliation, ``se scan``)."""
        await self._run(self.set_usage_sync, name, nbytes, files)

    def walk(self, name: str) -> tuple[int, int]:
        """(bytes, files) of a share, by a walk of its paths below the storage root."""
        nbytes = files = 0
        for segs, inner in self._map.own_paths(name):
            fs = os.path.join(self.root, *segs) if segs else self.root
            if os.path.islink(fs) or not os.path.isdir(fs):
                continue
            skip = frozenset(inner).__contains__ if inner else None
            for _segs, b, f in walk_files(fs, segs, skip):
                nbytes += b
                files += f
        return nbytes, files

    def reconcile_sync(self, name: str | None = None) -> dict[str, Usage]:
        names = [s.name for s in self._map.shares] if name is None else [name]
        if name is not None and self._map.get(name) is None:
            raise KeyError(name)
        out: dict[str, Usage] = {}
        with self._reconciling:
            if name is None:
                self._walk_wanted = False
            for share in names:
                self._reconcile_share(share)
                out[share] = self.usage(share)
        return out

    def _reconcile_share(self, share: str) -> None:
        """Walk a share and set its totals: once no change of it is in flight (waiting up to
        IN_FLIGHT_WAIT), and only if no change was counted or begun while it walked (walking
        again, up to RECONCILE_TRIES times)."""
        walks = 0
        deadline = time.monotonic() + IN_FLIGHT_WAIT
        for _ in range(1 << 62):  # bounded by the deadline and the walks
            before = self.usage(share)
            judged = self._judge_pending(share)
            if judged is None:
                if time.monotonic() >= deadline:
                    log.warning(
                        "space: share %s had changes in flight for %.0f s; its totals stay "
                        "as counted",
                        share,
                        IN_FLIGHT_WAIT,
                    )
                    return
                time.sleep(IN_FLIGHT_POLL)
                continue
            nbytes, files = self.walk(share)
            if not (nbytes or files or self._db.exists()):
                return  # nothing to say: no database yet
            # Set only if no write counted meanwhile: else its count, which the walk may or
            # may not have seen, would be lost; walk again.
            if self._set_unless_changed(share, before, nbytes, files, judged):
                log.info("space: share %s reconciled: %d bytes in %d files", share, nbytes, files)
                return
            walks += 1
            if walks >= RECONCILE_TRIES:
                log.warning(
                    "space: share %s changed during each of %d walks; its totals stay as counted",
                    share,
                    RECONCILE_TRIES,
                )
                return

    def _judge_pending(self, share: str) -> _Judged | None:
        """The pending rows of ``share`` and the change marks, judged; None when one of them
        is in flight (the walk would see it half done, or not yet done but counted)."""
        if not self._db.exists():
            return _Judged([], set())
        with self._db.transaction(write=False, single=True) as cur:
            cur.execute(
                "SELECT temp, target, ino, created FROM space_pending WHERE share = ? OR share = ?",
                (share, "*"),
            )
            rows = cur.fetchall()
        judged = _Judged([], set())
        now = time.time()
        for temp, target, ino, created in rows:
            state = self._judge(str(temp), str(target), int(ino), float(created), now)
            if state == "alive":
                return None
            if state == "dead":
                if str(temp).startswith(CHANGE_KEY):
                    judged.dead_changes.add(str(temp))
                else:
                    judged.dead.append(str(temp))
        return judged

    def _set_unless_changed(
        self, name: str, before: Usage, nbytes: int, files: int, judged: _Judged
    ) -> bool:
        """Set the totals of ``name`` to a walk's, in one transaction with forgetting the
        killed changes the walk has settled; unless the totals changed since ``before`` or
        a change was begun that the walk may have seen in part."""
        now = time.time()
        try:
            with self._db.transaction(write=True) as cur:
                cur.execute("SELECT temp FROM space_pending WHERE temp LIKE ?", (CHANGE_KEY + "%",))
                if any(str(r[0]) not in judged.dead_changes for r in cur.fetchall()):
                    return False
                if not before.updated:  # no row yet: insert it, unless a write made it
                    cur.execute("SELECT 1 FROM space_usage WHERE name = ?", (name,))
                    if cur.fetchone() is not None:
                        return False
                    cur.execute(
                        "INSERT INTO space_usage (name, bytes, files, updated, reconciled) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (name, nbytes, files, now, now),
                    )
                else:
                    cur.execute(
                        "UPDATE space_usage SET bytes = ?, files = ?, updated = ?, reconciled = ? "
                        "WHERE name = ? AND bytes = ? AND files = ? AND updated = ?",
                        (nbytes, files, now, now, name, before.bytes, before.files, before.updated),
                    )
                    if cur.rowcount != 1:
                        return False
                for temp in judged.dead:
                    cur.execute(
                        "DELETE FROM space_pending WHERE temp = ? AND share = ?", (temp, name)
                    )
        except Exception:  # the same row inserted by a concurrent write
            if before.updated or not self.usage(name).updated:
                raise
            return False
        return True

    async def reconcile(self, name: str | None = None) -> dict[str, Usage]:
        """Walk the share's (or every share's) paths and set the totals; the new totals."""
        return await self._run(self.reconcile_sync, name)

    async def run_periodic(self, interval: float) -> None:
        """Reconcile shares never reconciled at once, then all every ``interval`` seconds
        (0: only the never-reconciled ones).  Runs until cancelled (the primary worker)."""
        recovery = asyncio.ensure_future(self._recover_every(RECOVER_INTERVAL))
        try:
            await self._periodic(interval)
        finally:
            recovery.cancel()
            await asyncio.gather(recovery, return_exceptions=True)

    async def _recover_every(self, period: float) -> None:
        for _ in range(1 << 62):  # until cancelled
            await asyncio.sleep(period)
            try:
                await self.recover()
                if self._walk_wanted:  # a change never finished: its count never came
                    await self.reconcile()
            except Exception:
                log.exception("space: recovery of pending changes failed")

    async def _periodic(self, interval: float) -> None:
        try:
            never = [n for n, u in (await self.all_usage_async()).items() if not u.reconciled]
            for name in never:
                await self.reconcile(name)
        except Exception:
            log.exception("space: first reconciliation failed")
        if interval <= 0:
            return
        for _ in range(1 << 62):  # until cancelled
            await asyncio.sleep(interval)
            try:
                await self.reconcile()
            except Exception:
                log.exception("space: periodic reconciliation failed")

    def close(self) -> None:
        with contextlib.suppress(Exception):  # what is left, recovery forgets
            self.flush_settled()
        self._db.close()
        if self._own_executor:
            self._executor.shutdown(wait=False)
