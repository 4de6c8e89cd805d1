"""The persistent state of the tape layer: stage requests, their files, pins and the catalogue.

One interface, :class:`TapeStore`; its embedded implementation, :class:`SQLiteStore`, and
:class:`~se.tape.pgstore.PostgresStore` for several frontends sharing one database.  Every
method is one transaction, committed before it returns: a process killed right after a method
returned has lost nothing that method did.

Layout of the code, so that a PostgreSQL store can share it:

* :class:`_SQLCore` holds the behaviour.  Its methods run synchronously on a DB-API cursor inside
  a transaction someone else opened, and use only portable SQL (``INSERT ... ON CONFLICT``, partial
  indexes, ``COALESCE``, ``LIMIT``) with ``?`` placeholders.  Nothing in it is SQLite-specific.
* :class:`SQLiteStore` adds what is: the DDL, the pragmas, ``BEGIN IMMEDIATE`` and the thread that
  owns the connection.

Timestamps are integer seconds since the Unix epoch, as on the wire.  Paths are opaque strings; the
caller passes the same spelling for a request's files, its pins and the catalogue.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from se.tape.model import CartridgeState, FileState, Locality, StageFile, StageRequest

__all__ = [
    "SCHEMA_VERSION",
    "CatalogueEntry",
    "DuplicateRequestError",
    "FileSpec",
    "FileUpdate",
    "InitialState",
    "RequestSummary",
    "SQLiteStore",
    "SchemaError",
    "TapeStore",
    "open_store",
]

SCHEMA_VERSION = 1

# (path, disk_lifetime in seconds or None, our sitename's targetedMetadata entry or None)
FileSpec = tuple[str, int | None, dict[str, Any] | None]
# (state, error) of one file when its request is created
InitialState = tuple[FileState, str | None]
# (locality, size, cartridge, position on the cartridge) of one file of the tape tier
CatalogueEntry = tuple[Locality, int, str | None, int | None]
# (path, new state, error, pin expiry or None) of one file: see TapeStore.set_file_states
FileUpdate = tuple[str, FileState, str | None, int | None]
# (id, owner, created_at, completed_at, files per state) of one request: see request_summaries
RequestSummary = tuple[str, str, int, int | None, dict[FileState, int]]

_T = TypeVar("_T")
# Most parameters in one ``IN (...)`` list (SQLite allows 32766, PostgreSQL 65535).
_CHUNK = 500

# The non-terminal states, as an SQL list; the partial indexes below are declared on this very
# term so that both SQLite and PostgreSQL use them.
_PENDING = "(" + ", ".join(f"'{s.value}'" for s in FileState if not s.terminal) + ")"


class SchemaError(RuntimeError):
    """The database was written by a newer version of ``se`` (or is not ours)."""


class DuplicateRequestError(ValueError):
    """A request with this id already exists."""


class TapeStore(Protocol):
    """What the tape REST API and the simulator keep across restarts.

    Requests: a request is *visible* until DELETE or garbage collection; methods given the id of an
    invisible request behave as for an unknown id.  A file's state only ever leaves SUBMITTED and
    STARTED: once terminal (CANCELLED, FAILED, COMPLETED) it never changes again.  The request's
    ``started_at`` is the first time one of its files left SUBMITTED, ``completed_at`` the time the
    last one became terminal.  A file that becomes terminal without having started gets
    ``started_at = finished_at``.

    Pins: one per (request id, path), with an expiry time; a pin with ``expires_at <= now`` is dead.

    Catalogue: the tape tier's view of each file: locality, size and, once written to tape, the
    cartridge and the position on it; plus the last access time that drives LRU eviction.
    """

    async def close(self) -> None:
        """Finish the calls under way and release the database."""

    # -- requests ---------------------------------------------------------------------------

    async def create_request(
        self,
        request_id: str,
        owner: str,
        created_at: int,
        files: Sequence[FileSpec],
        states: Sequence[InitialState],
        *,
        spellings: Sequence[str | None] | None = None,
        pins: Sequence[int | None] | None = None,
    ) -> None:
        """Record a request, its files and their initial states (``states[i]`` for ``files[i]``).

        ``spellings[i]``: how the client wrote ``files[i]``'s path, when not as the canonical
        path (responses echo it).  ``pins[i]``: for a file created COMPLETED, the expiry of the
        pin the request takes on it, in the same transaction.

        Files given a terminal state get ``started_at = finished_at = created_at``; a STARTED one
        ``started_at = created_at``.  Raises ValueError for an empty or mismatched list, a
        duplicate path or an ``error`` on a state other than FAILED/CANCELLED, and
        DuplicateRequestError if the id exists.
        """

    async def get_request(self, request_id: str) -> StageRequest | None:
        """The request with its files in submission order; None if unknown or invisible."""

    async def count_active(self, owner: str) -> int:
        """How many visible requests of ``owner`` still have a non-terminal file."""

    async def delete_request(self, request_id: str, at: int | None = None) -> bool:
        """Cancel the non-terminal files, drop the request's pins and hide it; False if unknown."""

    async def cancel(self, request_id: str, paths: Sequence[str], at: int | None = None) -> bool:
        """Cancel ``paths`` of a request: all or nothing.

        False, and nothing changed, if the request is unknown or any path is not one of its files.
        Otherwise non-terminal files become CANCELLED (``finished_at = at``), terminal ones keep
        their state, and the request's pins on all those paths are dropped.
        """

    async def set_file_state(
        self,
        request_id: str,
        path: str,
        state: FileState,
        at: int,
        error: str | None = None,
        *,
        pin_until: int | None = None,
    ) -> bool:
        """Move a non-terminal file to ``state`` at time ``at``.

        False, and nothing changed, if the file is unknown or already terminal (for example
        cancelled while it was being read).  With ``state`` COMPLETED and ``pin_until``, the pin
        (request, path) is taken in the same transaction, so a concurrent cancel cannot leave a pin
        behind.  ``error`` is only allowed with FAILED and CANCELLED.
        """

    async def pending_files(self) -> list[tuple[str, str]]:
        """(request id, path) of every non-terminal file, oldest request first, then file order."""

    async def gc(self, older_than: int) -> int:
        """Forget requests completed before ``older_than`` (with their files and pins); how many."""

    # -- pins -------------------------------------------------------------------------------

    async def add_pin(self, request_id: str, path: str, expires_at: int) -> bool:
        """Pin ``path`` for a request until ``expires_at`` (replacing that pin's expiry).

        Only a COMPLETED file of a visible request can be pinned; False otherwise.
        """

    async def release(self, request_id: str, paths: Sequence[str]) -> int:
        """Drop the request's pins on ``paths`` (other paths are ignored); how many were dropped."""

    async def release_owner(self, owner: str, paths: Sequence[str]) -> int:
        """Drop the pins that any request of ``owner`` holds on ``paths``; how many.

        For a RELEASE without a request id (gfal2's ``gfal2-placeholder-id``).
        """

    async def pinned(self, path: str, now: int) -> bool:
        """Whether some request holds a live pin on ``path``."""

    async def expire_pins(self, now: int) -> int:
        """Drop the dead pins; how many."""

    # -- catalogue --------------------------------------------------------------------------

    async def set_locality(
        self,
        path: str,
        locality: Locality,
        size: int,
        cartridge: str | None = None,
        position: int | None = None,
    ) -> None:
        """Record a file of the tape tier; replaces everything but the last access time.

        ``cartridge`` and ``position`` go together (both None: no tape copy).  Pass the tape copy
        again when only the locality changes (eviction: DISK_AND_TAPE -> TAPE).
        """

    async def get_file(self, path: str) -> CatalogueEntry | None:
        """(locality, size, cartridge, position) of a file, None if the tier does not know it."""

    async def forget_file(self, path: str) -> bool:
        """Drop a file from the catalogue (the user deleted it); False if it was not there."""

    async def files_on(self, cartridge: str) -> list[tuple[str, int, int]]:
        """(path, position, size) of the files on a cartridge, in tape order."""

    async def next_position(self, cartridge: str) -> int:
        """Where the next file written to ``cartridge`` starts: the end of its last file, or 0."""

    async def touch(self, path: str, at: int) -> bool:
        """Set the last access time of a file; False if the catalogue does not know it."""

    async def lru_evictable(self, now: int, limit: int) -> list[tuple[str, int]]:
        """(path, size) of DISK_AND_TAPE files without a live pin, least recently used first.

        A file never touched counts as accessed at time 0.
        """

    async def disk_usage(self) -> int:
        """Bytes the catalogue holds on disk: the sizes of DISK and DISK_AND_TAPE files."""

    # -- bulk, cartridges, settings, summaries ----------------------------------------------

    async def get_files(self, paths: Sequence[str]) -> dict[str, CatalogueEntry]:
        """:meth:`get_file` for many paths in one transaction; unknown paths are left out."""

    async def set_file_states(self, request_id: str, updates: Sequence[FileUpdate], at: int) -> int:
        """:meth:`set_file_state` for many files of one request in one transaction; how many
        moved (files unknown or already terminal are skipped)."""

    async def unarchived(self, limit: int) -> list[tuple[str, int, int]]:
        """(path, size, written at) of DISK files not yet on tape, oldest write first."""

    async def rename(self, src: str, dst: str) -> int:
        """A file or a directory tree was renamed: move its catalogue entries (the tape copy
        stays valid) and drop any entries under ``dst`` they replace; how many moved."""

    async def forget_tree(self, path: str) -> int:
        """Drop ``path`` and every entry below it from the catalogue; how many."""

    async def cartridges(self) -> dict[str, tuple[str | None, CartridgeState]]:
        """Every cartridge the store knows: vid -> (owning tape pool or None, state)."""

    async def claim_cartridge(self, vid: str, pool: str) -> bool:
        """Give an unowned cartridge to a pool; False if another pool owns it already."""

    async def set_cartridge_state(self, vid: str, state: CartridgeState) -> None:
        """Set a cartridge's state (recording the cartridge if new)."""

    async def settings(self) -> dict[str, Any]:
        """Run-time switches (failure injection): key -> JSON value."""

    async def set_setting(self, key: str, value: Any) -> None:
        """Set a run-time switch; ``None`` removes it."""

    async def request_summaries(self, limit: int) -> list[RequestSummary]:
        """The newest visible requests with their file counts per state, newest first."""

    async def locality_counts(self) -> dict[Locality, tuple[int, int]]:
        """Catalogue totals: locality -> (files, bytes)."""

    async def recalled(
        self,
        request_id: str,
        path: str,
        size: int,
        cartridge: str,
        position: int,
        at: int,
        pin_until: int | None,
    ) -> bool:
        """A recall read ``path`` from (cartridge, position), in one transaction: the file is
        DISK_AND_TAPE again (only if the catalogue still holds that tape copy: a file
        rewritten meanwhile keeps its new entry), its access time is now and, with
        ``pin_until``, the request's file is COMPLETED with its pin, so no eviction can come
        in between.  False, and nothing changed, when the catalogue no longer knows the file
        (deleted or renamed meanwhile)."""

    async def archived(
        self, path: str, size: int, locality: Locality, cartridge: str, position: int
    ) -> bool:
        """Record the tape copy of a file just flushed, in one transaction, only if the
        catalogue still has it as DISK with no tape copy and this size; False otherwise (it
        was deleted or rewritten after the flush picked it)."""

    async def adopt(self, files: Sequence[tuple[str, Locality, int]], at: int) -> None:
        """Record files the catalogue does not know yet (path, locality, size), written at
        ``at``, in one transaction; paths it knows already are left alone."""

    async def offline_below(self, path: str) -> str | None:
        """A file below ``path`` whose disk copy does not count (TAPE, LOST, UNAVAILABLE)."""


class _Cursor(Protocol):
    """The part of a DB-API 2.0 cursor the portable core uses (qmark placeholders)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


def _dump(metadata: dict[str, Any] | None) -> str | None:
    return None if metadata is None else json.dumps(metadata, separators=(",", ":"))


def _load(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    value = json.loads(text)
    assert isinstance(value, dict)
    return value


def _check_error(state: FileState, error: str | None) -> None:
    if error is not None and state not in (FileState.FAILED, FileState.CANCELLED):
        raise ValueError(f"an error only goes with FAILED or CANCELLED, not {state}")


class _SQLCore:
    """The store's behaviour on a cursor inside an open transaction.  Portable SQL only."""

    @staticmethod
    def _visible(cur: _Cursor, request_id: str) -> bool:
        cur.execute("SELECT 1 FROM request WHERE id = ? AND deleted = 0", (request_id,))
        return cur.fetchone() is not None

    @staticmethod
    def _settle(cur: _Cursor, request_id: str, at: int, started: bool, finished: bool) -> None:
        """Maintain the request's started_at and completed_at after some of its files moved."""
        if started:
            cur.execute(
                "UPDATE request SET started_at = ? WHERE id = ? AND started_at IS NULL",
                (at, request_id),
            )
        if finished:
            cur.execute(
                f"SELECT 1 FROM file WHERE request_id = ? AND state IN {_PENDING} LIMIT 1",
                (request_id,),
            )
            if cur.fetchone() is None:
                cur.execute(
                    "UPDATE request SET completed_at = ? WHERE id = ? AND completed_at IS NULL",
                    (at, request_id),
                )

    @staticmethod
    def _create_request(
        cur: _Cursor,
        request_id: str,
        owner: str,
        created_at: int,
        files: Sequence[FileSpec],
        states: Sequence[InitialState],
        spellings: Sequence[str | None] | None = None,
        pins: Sequence[int | None] | None = None,
    ) -> None:
        if not files:
            raise ValueError("a request has at least one file")
        if len(files) != len(states):
            raise ValueError(f"{len(files)} files but {len(states)} states")
        if spellings is not None and len(spellings) != len(files):
            raise ValueError(f"{len(files)} files but {len(spellings)} spellings")
        if pins is not None and len(pins) != len(files):
            raise ValueError(f"{len(files)} files but {len(pins)} pins")
        if len({path for path, _, _ in files}) != len(files):
            raise ValueError("duplicate paths in a request")
        rows: list[tuple[Any, ...]] = []
        started = False
        finished = True
        for idx, ((path, lifetime, meta), (given, error)) in enumerate(
            zip(files, states, strict=True)
        ):
            state = FileState(given)
            _check_error(state, error)
            start = None if state is FileState.SUBMITTED else created_at
            finish = created_at if state.terminal else None
            started = started or start is not None
            finished = finished and state.terminal
            rows.append(
                (
                    request_id,
                    idx,
                    path,
                    state.value,
                    start,
                    finish,
                    error,
                    lifetime,
                    _dump(meta),
                    None if spellings is None or spellings[idx] == path else spellings[idx],
                )
            )
            if pins is not None and pins[idx] is not None and state is not FileState.COMPLETED:
                raise ValueError("only a COMPLETED file is pinned")
        cur.execute("SELECT 1 FROM request WHERE id = ?", (request_id,))
        if cur.fetchone() is not None:
            raise DuplicateRequestError(request_id)
        cur.execute(
            "INSERT INTO request (id, owner, created_at, started_at, completed_at, deleted)"
            " VALUES (?, ?, ?, ?, ?, 0)",
            (
                request_id,
                owner,
                created_at,
                created_at if started else None,
                created_at if finished else None,
            ),
        )
        cur.executemany(
            "INSERT INTO file (request_id, idx, path, state, started_at, finished_at, error,"
            " disk_lifetime, metadata, spelling) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        if pins is not None:
            cur.executemany(
                "INSERT INTO pin (request_id, path, expires_at) VALUES (?, ?, ?)",
                [(request_id, f[0], until) for f, until in zip(files, pins, strict=True) if until],
            )

    @staticmethod
    def _get_request(cur: _Cursor, request_id: str) -> StageRequest | None:
        cur.execute(
            "SELECT owner, created_at, started_at, completed_at FROM request"
            " WHERE id = ? AND deleted = 0",
            (request_id,),
        )
        row = cur.fetchone()
        if row is None:
            return None
        cur.execute(
            "SELECT path, state, started_at, finished_at, error, disk_lifetime, metadata,"
            " spelling FROM file WHERE request_id = ? ORDER BY idx",
            (request_id,),
        )
        files = tuple(
            StageFile(p, FileState(s), st, fi, e, lt, _load(m), sp)
            for p, s, st, fi, e, lt, m, sp in cur.fetchall()
        )
        return StageRequest(request_id, row[0], row[1], row[2], row[3], files)

    @staticmethod
    def _count_active(cur: _Cursor, owner: str) -> int:
        cur.execute(
            "SELECT COUNT(*) FROM request WHERE owner = ? AND completed_at IS NULL AND deleted = 0",
            (owner,),
        )
        return int(cur.fetchone()[0])

    @classmethod
    def _delete_request(cls, cur: _Cursor, request_id: str, at: int) -> bool:
        if not cls._visible(cur, request_id):
            return False
        cur.execute(
            "UPDATE file SET state = ?, started_at = COALESCE(started_at, ?), finished_at = ?"
            f" WHERE request_id = ? AND state IN {_PENDING}",
            (FileState.CANCELLED.value, at, at, request_id),
        )
        if cur.rowcount > 0:
            cls._settle(cur, request_id, at, started=True, finished=True)
        cur.execute("DELETE FROM pin WHERE request_id = ?", (request_id,))
        cur.execute("UPDATE request SET deleted = 1 WHERE id = ?", (request_id,))
        return True

    @classmethod
    def _cancel(cls, cur: _Cursor, request_id: str, paths: Sequence[str], at: int) -> bool:
        if not cls._visible(cur, request_id):
            return False
        wanted = set(paths)
        cur.execute("SELECT path FROM file WHERE request_id = ?", (request_id,))
        if not wanted <= {row[0] for row in cur.fetchall()}:
            return False
        cur.executemany(
            "UPDATE file SET state = ?, started_at = COALESCE(started_at, ?), finished_at = ?"
            f" WHERE request_id = ? AND path = ? AND state IN {_PENDING}",
            [(FileState.CANCELLED.value, at, at, request_id, p) for p in wanted],
        )
        if cur.rowcount > 0:
            cls._settle(cur, request_id, at, started=True, finished=True)
        cur.executemany(
            "DELETE FROM pin WHERE request_id = ? AND path = ?", [(request_id, p) for p in wanted]
        )
        return True

    @classmethod
    def _set_file_state(
        cls,
        cur: _Cursor,
        request_id: str,
        path: str,
        state: FileState,
        at: int,
        error: str | None,
        pin_until: int | None,
    ) -> bool:
        state = FileState(state)
        _check_error(state, error)
        if pin_until is not None and state is not FileState.COMPLETED:
            raise ValueError("only a COMPLETED file is pinned")
        sets = "state = ?, error = ?"
        args: tuple[Any, ...] = (state.value, error)
        if state is not FileState.SUBMITTED:  # back to SUBMITTED (requeued) keeps started_at
            sets += ", started_at = COALESCE(started_at, ?)"
            args += (at,)
        if state.terminal:
            sets += ", finished_at = ?"
            args += (at,)
        cur.execute(
            f"UPDATE file SET {sets} WHERE request_id = ? AND path = ? AND state IN {_PENDING}",
            (*args, request_id, path),
        )
        if cur.rowcount == 0:
            return False
        cls._settle(
            cur,
            request_id,
            at,
            started=state is not FileState.SUBMITTED,
            finished=state.terminal,
        )
        if pin_until is not None:
            cls._upsert_pin(cur, request_id, path, pin_until)
        return True

    @staticmethod
    def _pending_files(cur: _Cursor) -> list[tuple[str, str]]:
        cur.execute(
            "SELECT f.request_id, f.path FROM file f JOIN request r ON r.id = f.request_id"
            f" WHERE f.state IN {_PENDING} ORDER BY r.seq, f.idx"
        )
        return [(row[0], row[1]) for row in cur.fetchall()]

    @staticmethod
    def _gc(cur: _Cursor, older_than: int) -> int:
        # Files and pins go with their request (ON DELETE CASCADE).
        cur.execute(
            "DELETE FROM request WHERE completed_at IS NOT NULL AND completed_at < ?",
            (older_than,),
        )
        return cur.rowcount

    @staticmethod
    def _upsert_pin(cur: _Cursor, request_id: str, path: str, expires_at: int) -> None:
        cur.execute(
            "INSERT INTO pin (request_id, path, expires_at) VALUES (?, ?, ?)"
            " ON CONFLICT (request_id, path) DO UPDATE SET expires_at = excluded.expires_at",
            (request_id, path, expires_at),
        )

    @classmethod
    def _add_pin(cls, cur: _Cursor, request_id: str, path: str, expires_at: int) -> bool:
        cur.execute(
            "SELECT 1 FROM file f JOIN request r ON r.id = f.request_id"
            " WHERE f.request_id = ? AND f.path = ? AND f.state = ? AND r.deleted = 0",
            (request_id, path, FileState.COMPLETED.value),
        )
        if cur.fetchone() is None:
            return False
        cls._upsert_pin(cur, request_id, path, expires_at)
        return True

    @staticmethod
    def _release(cur: _Cursor, request_id: str, paths: Sequence[str]) -> int:
        cur.executemany(
            "DELETE FROM pin WHERE request_id = ? AND path = ?",
            [(request_id, p) for p in set(paths)],
        )
        return cur.rowcount

    @staticmethod
    def _release_owner(cur: _Cursor, owner: str, paths: Sequence[str]) -> int:
        cur.executemany(
            "DELETE FROM pin WHERE path = ? AND EXISTS"
            " (SELECT 1 FROM request r WHERE r.id = pin.request_id AND r.owner = ?)",
            [(p, owner) for p in set(paths)],
        )
        return cur.rowcount

    @staticmethod
    def _pinned(cur: _Cursor, path: str, now: int) -> bool:
        cur.execute("SELECT 1 FROM pin WHERE path = ? AND expires_at > ? LIMIT 1", (path, now))
        return cur.fetchone() is not None

    @staticmethod
    def _expire_pins(cur: _Cursor, now: int) -> int:
        cur.execute("DELETE FROM pin WHERE expires_at <= ?", (now,))
        return cur.rowcount

    @staticmethod
    def _set_locality(
        cur: _Cursor,
        path: str,
        locality: Locality,
        size: int,
        cartridge: str | None,
        position: int | None,
    ) -> None:
        if (cartridge is None) != (position is None):
            raise ValueError("a cartridge and a position go together")
        if size < 0 or (position is not None and position < 0):
            raise ValueError("negative size or position")
        cur.execute(
            "INSERT INTO catalogue (path, locality, size, cartridge, tape_position, last_access)"
            " VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (path) DO UPDATE SET"
            " locality = excluded.locality, size = excluded.size,"
            " cartridge = excluded.cartridge, tape_position = excluded.tape_position",
            (path, Locality(locality).value, size, cartridge, position),
        )

    @staticmethod
    def _get_file(cur: _Cursor, path: str) -> CatalogueEntry | None:
        cur.execute(
            "SELECT locality, size, cartridge, tape_position FROM catalogue WHERE path = ?",
            (path,),
        )
        row = cur.fetchone()
        return None if row is None else (Locality(row[0]), row[1], row[2], row[3])

    @staticmethod
    def _forget_file(cur: _Cursor, path: str) -> bool:
        cur.execute("DELETE FROM catalogue WHERE path = ?", (path,))
        return cur.rowcount > 0

    @staticmethod
    def _files_on(cur: _Cursor, cartridge: str) -> list[tuple[str, int, int]]:
        cur.execute(
            "SELECT path, tape_position, size FROM catalogue WHERE cartridge = ?"
            " ORDER BY tape_position",
            (cartridge,),
        )
        return [(row[0], row[1], row[2]) for row in cur.fetchall()]

    @staticmethod
    def _next_position(cur: _Cursor, cartridge: str) -> int:
        cur.execute(
            "SELECT COALESCE(MAX(tape_position + size), 0) FROM catalogue WHERE cartridge = ?",
            (cartridge,),
        )
        return int(cur.fetchone()[0])

    @staticmethod
    def _touch(cur: _Cursor, path: str, at: int) -> bool:
        cur.execute("UPDATE catalogue SET last_access = ? WHERE path = ?", (at, path))
        return cur.rowcount > 0

    @staticmethod
    def _lru_evictable(cur: _Cursor, now: int, limit: int) -> list[tuple[str, int]]:
        cur.execute(
            "SELECT c.path, c.size FROM catalogue c WHERE c.locality = ? AND NOT EXISTS"
            " (SELECT 1 FROM pin p WHERE p.path = c.path AND p.expires_at > ?)"
            " ORDER BY c.last_access, c.path LIMIT ?",
            (Locality.DISK_AND_TAPE.value, now, limit),
        )
        return [(row[0], row[1]) for row in cur.fetchall()]

    @staticmethod
    def _disk_usage(cur: _Cursor) -> int:
        cur.execute(
            "SELECT COALESCE(SUM(size), 0) FROM catalogue WHERE locality IN (?, ?)",
            (Locality.DISK.value, Locality.DISK_AND_TAPE.value),
        )
        return int(cur.fetchone()[0])

    # -- bulk, cartridges, settings, summaries ----------------------------------------------

    @staticmethod
    def _get_files(cur: _Cursor, paths: Sequence[str]) -> dict[str, CatalogueEntry]:
        out: dict[str, CatalogueEntry] = {}
        unique = list(dict.fromkeys(paths))
        for i in range(0, len(unique), _CHUNK):
            chunk = unique[i : i + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            cur.execute(
                "SELECT path, locality, size, cartridge, tape_position FROM catalogue"
                f" WHERE path IN ({marks})",
                chunk,
            )
            for path, loc, size, vid, pos in cur.fetchall():
                out[path] = (Locality(loc), size, vid, pos)
        return out

    @classmethod
    def _set_file_states(
        cls, cur: _Cursor, request_id: str, updates: Sequence[FileUpdate], at: int
    ) -> int:
        moved = 0
        for path, state, error, pin_until in updates:
            if cls._set_file_state(cur, request_id, path, state, at, error, pin_until):
                moved += 1
        return moved

    @staticmethod
    def _unarchived(cur: _Cursor, limit: int) -> list[tuple[str, int, int]]:
        cur.execute(
            "SELECT path, size, last_access FROM catalogue WHERE locality = ?"
            " AND cartridge IS NULL ORDER BY last_access, path LIMIT ?",
            (Locality.DISK.value, limit),
        )
        return [(row[0], row[1], row[2]) for row in cur.fetchall()]

    @staticmethod
    def _below(path: str) -> tuple[str, int]:
        prefix = path.rstrip("/") + "/"
        return prefix, len(prefix)

    @classmethod
    def _forget_tree(cls, cur: _Cursor, path: str) -> int:
        prefix, n = cls._below(path)
        cur.execute(
            "DELETE FROM catalogue WHERE path = ? OR substr(path, 1, ?) = ?", (path, n, prefix)
        )
        return cur.rowcount

    @classmethod
    def _rename(cls, cur: _Cursor, src: str, dst: str) -> int:
        if src == dst:
            return 0
        cls._forget_tree(cur, dst)
        cur.execute("UPDATE catalogue SET path = ? WHERE path = ?", (dst, src))
        moved = cur.rowcount
        prefix, n = cls._below(src)
        cur.execute(
            "UPDATE catalogue SET path = ? || substr(path, ?) WHERE substr(path, 1, ?) = ?",
            (dst.rstrip("/") + "/", n + 1, n, prefix),
        )
        return moved + cur.rowcount

    @staticmethod
    def _cartridges(cur: _Cursor) -> dict[str, tuple[str | None, CartridgeState]]:
        cur.execute("SELECT vid, pool, state FROM cartridge ORDER BY vid")
        return {row[0]: (row[1], CartridgeState(row[2])) for row in cur.fetchall()}

    @staticmethod
    def _claim_cartridge(cur: _Cursor, vid: str, pool: str) -> bool:
        cur.execute(
            "INSERT INTO cartridge (vid, pool, state) VALUES (?, ?, ?)"
            " ON CONFLICT (vid) DO UPDATE SET pool = excluded.pool WHERE cartridge.pool IS NULL",
            (vid, pool, CartridgeState.ACTIVE.value),
        )
        cur.execute("SELECT pool FROM cartridge WHERE vid = ?", (vid,))
        return bool(cur.fetchone()[0] == pool)

    @staticmethod
    def _set_cartridge_state(cur: _Cursor, vid: str, state: CartridgeState) -> None:
        cur.execute(
            "INSERT INTO cartridge (vid, pool, state) VALUES (?, NULL, ?)"
            " ON CONFLICT (vid) DO UPDATE SET state = excluded.state",
            (vid, CartridgeState(state).value),
        )

    @staticmethod
    def _settings(cur: _Cursor) -> dict[str, Any]:
        cur.execute("SELECT name, value FROM setting ORDER BY name")
        return {row[0]: json.loads(row[1]) for row in cur.fetchall()}

    @staticmethod
    def _set_setting(cur: _Cursor, key: str, value: Any) -> None:
        if value is None:
            cur.execute("DELETE FROM setting WHERE name = ?", (key,))
            return
        cur.execute(
            "INSERT INTO setting (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    @staticmethod
    def _request_summaries(cur: _Cursor, limit: int) -> list[RequestSummary]:
        cur.execute(
            "SELECT id, owner, created_at, completed_at FROM request WHERE deleted = 0"
            " ORDER BY seq DESC LIMIT ?",
            (limit,),
        )
        rows = cur.fetchall()
        out: list[RequestSummary] = []
        for rid, owner, created, completed in rows:
            cur.execute(
                "SELECT state, COUNT(*) FROM file WHERE request_id = ? GROUP BY state", (rid,)
            )
            counts = {FileState(st): int(n) for st, n in cur.fetchall()}
            out.append((rid, owner, created, completed, counts))
        return out

    @staticmethod
    def _adopt(cur: _Cursor, files: Sequence[tuple[str, Locality, int]], at: int) -> None:
        cur.executemany(
            "INSERT INTO catalogue (path, locality, size, cartridge, tape_position, last_access)"
            " VALUES (?, ?, ?, NULL, NULL, ?) ON CONFLICT (path) DO NOTHING",
            [(path, Locality(loc).value, size, at) for path, loc, size in files],
        )

    @staticmethod
    def _archived(
        cur: _Cursor, path: str, size: int, locality: Locality, cartridge: str, position: int
    ) -> bool:
        cur.execute(
            "UPDATE catalogue SET locality = ?, cartridge = ?, tape_position = ?"
            " WHERE path = ? AND locality = ? AND cartridge IS NULL AND size = ?",
            (Locality(locality).value, cartridge, position, path, Locality.DISK.value, size),
        )
        return cur.rowcount > 0

    @classmethod
    def _recalled(
        cls,
        cur: _Cursor,
        request_id: str,
        path: str,
        size: int,
        cartridge: str,
        position: int,
        at: int,
        pin_until: int | None,
    ) -> bool:
        entry = cls._get_file(cur, path)
        if entry is None:
            return False
        if entry[2] == cartridge and entry[3] == position:
            cls._set_locality(cur, path, Locality.DISK_AND_TAPE, size, cartridge, position)
        cls._touch(cur, path, at)
        if pin_until is not None:
            cls._set_file_state(cur, request_id, path, FileState.COMPLETED, at, None, pin_until)
        return True

    @classmethod
    def _offline_below(cls, cur: _Cursor, path: str) -> str | None:
        prefix, n = cls._below(path)
        cur.execute(
            "SELECT path FROM catalogue WHERE substr(path, 1, ?) = ? AND locality IN (?, ?, ?)"
            " LIMIT 1",
            (n, prefix, Locality.TAPE.value, Locality.LOST.value, Locality.UNAVAILABLE.value),
        )
        row = cur.fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def _locality_counts(cur: _Cursor) -> dict[Locality, tuple[int, int]]:
        cur.execute(
            "SELECT locality, COUNT(*), COALESCE(SUM(size), 0) FROM catalogue GROUP BY locality"
        )
        return {Locality(row[0]): (int(row[1]), int(row[2])) for row in cur.fetchall()}


# SQLite DDL.  Types are the portable spellings (SQLite maps BIGINT to INTEGER affinity); only
# ``seq INTEGER PRIMARY KEY`` (the rowid: creation order) is SQLite's way of saying what PostgreSQL
# says with ``seq BIGINT GENERATED ALWAYS AS IDENTITY``.  No WITHOUT ROWID / STRICT on purpose.
# (With that one substitution this DDL, and every statement of _SQLCore, prepare on PostgreSQL 15.)
_SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS request (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        owner TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        started_at BIGINT,
        completed_at BIGINT,
        deleted INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS request_active ON request (owner) WHERE completed_at IS NULL",
    "CREATE INDEX IF NOT EXISTS request_completed ON request (completed_at)",
    """CREATE TABLE IF NOT EXISTS file (
        request_id TEXT NOT NULL REFERENCES request (id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        path TEXT NOT NULL,
        state TEXT NOT NULL,
        started_at BIGINT,
        finished_at BIGINT,
        error TEXT,
        disk_lifetime BIGINT,
        metadata TEXT,
        spelling TEXT,
        PRIMARY KEY (request_id, idx),
        UNIQUE (request_id, path)
    )""",
    f"CREATE INDEX IF NOT EXISTS file_pending ON file (request_id) WHERE state IN {_PENDING}",
    """CREATE TABLE IF NOT EXISTS pin (
        request_id TEXT NOT NULL REFERENCES request (id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (request_id, path)
    )""",
    "CREATE INDEX IF NOT EXISTS pin_path ON pin (path, expires_at)",
    "CREATE INDEX IF NOT EXISTS pin_expiry ON pin (expires_at)",
    """CREATE TABLE IF NOT EXISTS catalogue (
        path TEXT PRIMARY KEY,
        locality TEXT NOT NULL,
        size BIGINT NOT NULL,
        cartridge TEXT,
        tape_position BIGINT,
        last_access BIGINT NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS catalogue_tape ON catalogue (cartridge, tape_position)",
    "CREATE INDEX IF NOT EXISTS catalogue_lru ON catalogue (locality, last_access, path)",
    """CREATE TABLE IF NOT EXISTS cartridge (
        vid TEXT PRIMARY KEY,
        pool TEXT,
        state TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS setting (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
)

Synchronous = Literal["FULL", "NORMAL"]


class _StoreCalls(_SQLCore):
    """Every :class:`TapeStore` method as one transaction of :class:`_SQLCore` behaviour.

    A store implementation provides :meth:`_run`: run ``fn(cursor, *args)`` in one
    transaction (``write``: one that changes something), committed before it returns.
    """

    async def _run(self, write: bool, fn: Callable[..., _T], *args: Any) -> _T:
        raise NotImplementedError

    # -- requests ---------------------------------------------------------------------------

    async def create_request(
        self,
        request_id: str,
        owner: str,
        created_at: int,
        files: Sequence[FileSpec],
        states: Sequence[InitialState],
        *,
        spellings: Sequence[str | None] | None = None,
        pins: Sequence[int | None] | None = None,
    ) -> None:
        await self._run(
            True,
            self._create_request,
            request_id,
            owner,
            created_at,
            files,
            states,
            spellings,
            pins,
        )

    async def get_request(self, request_id: str) -> StageRequest | None:
        return await self._run(False, self._get_request, request_id)

    async def count_active(self, owner: str) -> int:
        return await self._run(False, self._count_active, owner)

    async def delete_request(self, request_id: str, at: int | None = None) -> bool:
        return await self._run(True, self._delete_request, request_id, _now(at))

    async def cancel(self, request_id: str, paths: Sequence[str], at: int | None = None) -> bool:
        return await self._run(True, self._cancel, request_id, list(paths), _now(at))

    async def set_file_state(
        self,
        request_id: str,
        path: str,
        state: FileState,
        at: int,
        error: str | None = None,
        *,
        pin_until: int | None = None,
    ) -> bool:
        return await self._run(
            True, self._set_file_state, request_id, path, state, at, error, pin_until
        )

    async def pending_files(self) -> list[tuple[str, str]]:
        return await self._run(False, self._pending_files)

    async def gc(self, older_than: int) -> int:
        return await self._run(True, self._gc, older_than)

    # -- pins -------------------------------------------------------------------------------

    async def add_pin(self, request_id: str, path: str, expires_at: int) -> bool:
        return await self._run(True, self._add_pin, request_id, path, expires_at)

    async def release(self, request_id: str, paths: Sequence[str]) -> int:
        return await self._run(True, self._release, request_id, list(paths))

    async def release_owner(self, owner: str, paths: Sequence[str]) -> int:
        return await self._run(True, self._release_owner, owner, list(paths))

    async def pinned(self, path: str, now: int) -> bool:
        return await self._run(False, self._pinned, path, now)

    async def expire_pins(self, now: int) -> int:
        return await self._run(True, self._expire_pins, now)

    # -- catalogue --------------------------------------------------------------------------

    async def set_locality(
        self,
        path: str,
        locality: Locality,
        size: int,
        cartridge: str | None = None,
        position: int | None = None,
    ) -> None:
        await self._run(True, self._set_locality, path, locality, size, cartridge, position)

    async def get_file(self, path: str) -> CatalogueEntry | None:
        return await self._run(False, self._get_file, path)

    async def forget_file(self, path: str) -> bool:
        return await self._run(True, self._forget_file, path)

    async def files_on(self, cartridge: str) -> list[tuple[str, int, int]]:
        return await self._run(False, self._files_on, cartridge)

    async def next_position(self, cartridge: str) -> int:
        return await self._run(False, self._next_position, cartridge)

    async def touch(self, path: str, at: int) -> bool:
        return await self._run(True, self._touch, path, at)

    async def lru_evictable(self, now: int, limit: int) -> list[tuple[str, int]]:
        return await self._run(False, self._lru_evictable, now, limit)

    async def disk_usage(self) -> int:
        return await self._run(False, self._disk_usage)

    async def get_files(self, paths: Sequence[str]) -> dict[str, CatalogueEntry]:
        return await self._run(False, self._get_files, list(paths))

    async def set_file_states(self, request_id: str, updates: Sequence[FileUpdate], at: int) -> int:
        return await self._run(True, self._set_file_states, request_id, list(updates), at)

    async def unarchived(self, limit: int) -> list[tuple[str, int, int]]:
        return await self._run(False, self._unarchived, limit)

    async def rename(self, src: str, dst: str) -> int:
        return await self._run(True, self._rename, src, dst)

    async def forget_tree(self, path: str) -> int:
        return await self._run(True, self._forget_tree, path)

    async def cartridges(self) -> dict[str, tuple[str | None, CartridgeState]]:
        return await self._run(False, self._cartridges)

    async def claim_cartridge(self, vid: str, pool: str) -> bool:
        return await self._run(True, self._claim_cartridge, vid, pool)

    async def set_cartridge_state(self, vid: str, state: CartridgeState) -> None:
        await self._run(True, self._set_cartridge_state, vid, state)

    async def settings(self) -> dict[str, Any]:
        return await self._run(False, self._settings)

    async def set_setting(self, key: str, value: Any) -> None:
        await self._run(True, self._set_setting, key, value)

    async def request_summaries(self, limit: int) -> list[RequestSummary]:
        return await self._run(False, self._request_summaries, limit)

    async def locality_counts(self) -> dict[Locality, tuple[int, int]]:
        return await self._run(False, self._locality_counts)

    async def offline_below(self, path: str) -> str | None:
        return await self._run(False, self._offline_below, path)

    async def adopt(self, files: Sequence[tuple[str, Locality, int]], at: int) -> None:
        await self._run(True, self._adopt, list(files), at)

    async def archived(
        self, path: str, size: int, locality: Locality, cartridge: str, position: int
    ) -> bool:
        return await self._run(True, self._archived, path, size, locality, cartridge, position)

    async def recalled(
        self,
        request_id: str,
        path: str,
        size: int,
        cartridge: str,
        position: int,
        at: int,
        pin_until: int | None,
    ) -> bool:
        return await self._run(
            True, self._recalled, request_id, path, size, cartridge, position, at, pin_until
        )


class _ThreadedStore(_StoreCalls):
    """A store whose database calls all run on one thread that owns the connection.

    Subclasses set ``_conn`` (closed on that thread by :meth:`close`) and provide
    ``_transaction(write, fn)``, run on that thread for each call.
    """

    _conn: Any

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self._executor = executor
        self._closed = False

    def _transaction(self, write: bool, fn: Callable[[Any], _T]) -> _T:
        raise NotImplementedError

    async def _run(self, write: bool, fn: Callable[..., _T], *args: Any) -> _T:
        if self._closed:
            raise RuntimeError("the tape store is closed")

        def call(cur: Any) -> _T:
            return fn(cur, *args)

        job = functools.partial(self._transaction, write, call)
        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._conn.close)
        finally:
            await asyncio.to_thread(self._executor.shutdown, True)

    @staticmethod
    def _check_version(cur: _Cursor, where: str) -> None:
        """Record the schema version in a new database; refuse one of another version."""
        cur.execute("SELECT version FROM schema_version")
        rows = cur.fetchall()
        if not rows:
            cur.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif len(rows) != 1 or rows[0][0] != SCHEMA_VERSION:
            # Future versions migrate older schemas here; a newer one is refused.
            found = ", ".join(str(r[0]) for r in rows)
            raise SchemaError(f"{where}: schema version {found}, this se knows {SCHEMA_VERSION}")


class SQLiteStore(_ThreadedStore):
    """:class:`TapeStore` in one SQLite file, in WAL mode.

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
                for ddl in _SQLITE_SCHEMA:
                    cur.execute(ddl)
                SQLiteStore._check_version(cur, str(path))
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


def _now(at: int | None) -> int:
    return int(time.time()) if at is None else at


async def open_store(location: str | Path) -> TapeStore:
    """Open the store named by ``location``: a PostgreSQL URL, or else an SQLite file path."""
    if str(location).startswith(("postgresql://", "postgres://")):
        # Imported here: psycopg is an optional dependency (the ``postgres`` extra).
        from se.tape.pgstore import PostgresStore

        return await PostgresStore.open(str(location))
    return await SQLiteStore.open(location)
