"""The tape store's behaviour in portable SQL, and the vocabulary every store and caller shares.

Each public function is one :class:`~se.tape.store.TapeStore` operation, run synchronously on a
DB-API cursor inside a transaction someone else opened (the store commits it), using only portable
SQL (``INSERT ... ON CONFLICT``, partial indexes, ``COALESCE``, ``LIMIT``) with ``?``
placeholders: nothing here is SQLite- or PostgreSQL-specific.  :data:`SCHEMA` is the DDL in
SQLite's spelling, which :mod:`se.tape.pgstore` translates.

Timestamps are integer seconds since the Unix epoch, as on the wire.  Paths are opaque strings; the
caller passes the same spelling for a request's files, its pins and the catalogue.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from se.tape.model import CartridgeState, FileState, Locality, StageFile, StageRequest

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "CatalogueEntry",
    "Cursor",
    "DuplicateRequestError",
    "FileSpec",
    "FileUpdate",
    "InitialState",
    "RequestSummary",
    "SchemaError",
    "add_pin",
    "adopt",
    "archived",
    "cancel",
    "cartridges",
    "check_version",
    "claim_cartridge",
    "count_active",
    "create_request",
    "delete_request",
    "disk_usage",
    "expire_pins",
    "files_on",
    "forget_file",
    "forget_tree",
    "gc",
    "get_file",
    "get_files",
    "get_request",
    "locality_counts",
    "lru_evictable",
    "next_position",
    "offline_below",
    "pending_files",
    "pinned",
    "recalled",
    "release",
    "release_owner",
    "rename",
    "request_summaries",
    "set_cartridge_state",
    "set_file_state",
    "set_file_states",
    "set_locality",
    "set_setting",
    "settings",
    "touch",
    "unarchived",
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

# Most parameters in one ``IN (...)`` list (SQLite allows 32766, PostgreSQL 65535).
_CHUNK = 500

# The non-terminal states, as an SQL list; the partial indexes below are declared on this very
# term so that both SQLite and PostgreSQL use them.
_PENDING = "(" + ", ".join(f"'{s.value}'" for s in FileState if not s.terminal) + ")"


class SchemaError(RuntimeError):
    """The database was written by a newer version of ``se`` (or is not ours)."""


class DuplicateRequestError(ValueError):
    """A request with this id already exists."""


class Cursor(Protocol):
    """The part of a DB-API 2.0 cursor the functions here use (qmark placeholders)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


# SQLite DDL.  Types are the portable spellings (SQLite maps BIGINT to INTEGER affinity); only
# ``seq INTEGER PRIMARY KEY`` (the rowid: creation order) is SQLite's way of saying what PostgreSQL
# says with ``seq BIGINT GENERATED ALWAYS AS IDENTITY``.  No WITHOUT ROWID / STRICT on purpose.
# (With that one substitution this DDL, and every statement here, prepare on PostgreSQL 15.)
SCHEMA = (
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


def check_version(cur: Cursor, where: str) -> None:
    """Record the schema version in a new database; refuse one of another version."""
    cur.execute("SELECT version FROM schema_version")
    rows = cur.fetchall()
    if not rows:
        cur.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    elif len(rows) != 1 or rows[0][0] != SCHEMA_VERSION:
        # Future versions migrate older schemas here; a newer one is refused.
        found = ", ".join(str(r[0]) for r in rows)
        raise SchemaError(f"{where}: schema version {found}, this se knows {SCHEMA_VERSION}")


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


# -- requests -------------------------------------------------------------------------------------


def _visible(cur: Cursor, request_id: str) -> bool:
    cur.execute("SELECT 1 FROM request WHERE id = ? AND deleted = 0", (request_id,))
    return cur.fetchone() is not None


def _settle(cur: Cursor, request_id: str, at: int, started: bool, finished: bool) -> None:
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


def create_request(
    cur: Cursor,
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
    for idx, ((path, lifetime, meta), (given, error)) in enumerate(zip(files, states, strict=True)):
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


def get_request(cur: Cursor, request_id: str) -> StageRequest | None:
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


def count_active(cur: Cursor, owner: str) -> int:
    cur.execute(
        "SELECT COUNT(*) FROM request WHERE owner = ? AND completed_at IS NULL AND deleted = 0",
        (owner,),
    )
    return int(cur.fetchone()[0])


def delete_request(cur: Cursor, request_id: str, at: int) -> bool:
    if not _visible(cur, request_id):
        return False
    cur.execute(
        "UPDATE file SET state = ?, started_at = COALESCE(started_at, ?), finished_at = ?"
        f" WHERE request_id = ? AND state IN {_PENDING}",
        (FileState.CANCELLED.value, at, at, request_id),
    )
    if cur.rowcount > 0:
        _settle(cur, request_id, at, started=True, finished=True)
    cur.execute("DELETE FROM pin WHERE request_id = ?", (request_id,))
    cur.execute("UPDATE request SET deleted = 1 WHERE id = ?", (request_id,))
    return True


def cancel(cur: Cursor, request_id: str, paths: Sequence[str], at: int) -> bool:
    if not _visible(cur, request_id):
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
        _settle(cur, request_id, at, started=True, finished=True)
    cur.executemany(
        "DELETE FROM pin WHERE request_id = ? AND path = ?", [(request_id, p) for p in wanted]
    )
    return True


def set_file_state(
    cur: Cursor,
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
    _settle(
        cur,
        request_id,
        at,
        started=state is not FileState.SUBMITTED,
        finished=state.terminal,
    )
    if pin_until is not None:
        _upsert_pin(cur, request_id, path, pin_until)
    return True


def pending_files(cur: Cursor) -> list[tuple[str, str]]:
    cur.execute(
        "SELECT f.request_id, f.path FROM file f JOIN request r ON r.id = f.request_id"
        f" WHERE f.state IN {_PENDING} ORDER BY r.seq, f.idx"
    )
    return [(row[0], row[1]) for row in cur.fetchall()]


def gc(cur: Cursor, older_than: int) -> int:
    # Files and pins go with their request (ON DELETE CASCADE).
    cur.execute(
        "DELETE FROM request WHERE completed_at IS NOT NULL AND completed_at < ?",
        (older_than,),
    )
    return cur.rowcount


# -- pins -----------------------------------------------------------------------------------------


def _upsert_pin(cur: Cursor, request_id: str, path: str, expires_at: int) -> None:
    cur.execute(
        "INSERT INTO pin (request_id, path, expires_at) VALUES (?, ?, ?)"
        " ON CONFLICT (request_id, path) DO UPDATE SET expires_at = excluded.expires_at",
        (request_id, path, expires_at),
    )


def add_pin(cur: Cursor, request_id: str, path: str, expires_at: int) -> bool:
    cur.execute(
        "SELECT 1 FROM file f JOIN request r ON r.id = f.request_id"
        " WHERE f.request_id = ? AND f.path = ? AND f.state = ? AND r.deleted = 0",
        (request_id, path, FileState.COMPLETED.value),
    )
    if cur.fetchone() is None:
        return False
    _upsert_pin(cur, request_id, path, expires_at)
    return True


def release(cur: Cursor, request_id: str, paths: Sequence[str]) -> int:
    cur.executemany(
        "DELETE FROM pin WHERE request_id = ? AND path = ?",
        [(request_id, p) for p in set(paths)],
    )
    return cur.rowcount


def release_owner(cur: Cursor, owner: str, paths: Sequence[str]) -> int:
    cur.executemany(
        "DELETE FROM pin WHERE path = ? AND EXISTS"
        " (SELECT 1 FROM request r WHERE r.id = pin.request_id AND r.owner = ?)",
        [(p, owner) for p in set(paths)],
    )
    return cur.rowcount


def pinned(cur: Cursor, path: str, now: int) -> bool:
    cur.execute("SELECT 1 FROM pin WHERE path = ? AND expires_at > ? LIMIT 1", (path, now))
    return cur.fetchone() is not None


def expire_pins(cur: Cursor, now: int) -> int:
    cur.execute("DELETE FROM pin WHERE expires_at <= ?", (now,))
    return cur.rowcount


# -- catalogue ------------------------------------------------------------------------------------


def set_locality(
    cur: Cursor,
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


def get_file(cur: Cursor, path: str) -> CatalogueEntry | None:
    cur.execute(
        "SELECT locality, size, cartridge, tape_position FROM catalogue WHERE path = ?",
        (path,),
    )
    row = cur.fetchone()
    return None if row is None else (Locality(row[0]), row[1], row[2], row[3])


def forget_file(cur: Cursor, path: str) -> bool:
    cur.execute("DELETE FROM catalogue WHERE path = ?", (path,))
    return cur.rowcount > 0


def files_on(cur: Cursor, cartridge: str) -> list[tuple[str, int, int]]:
    cur.execute(
        "SELECT path, tape_position, size FROM catalogue WHERE cartridge = ?"
        " ORDER BY tape_position",
        (cartridge,),
    )
    return [(row[0], row[1], row[2]) for row in cur.fetchall()]


def next_position(cur: Cursor, cartridge: str) -> int:
    cur.execute(
        "SELECT COALESCE(MAX(tape_position + size), 0) FROM catalogue WHERE cartridge = ?",
        (cartridge,),
    )
    return int(cur.fetchone()[0])


def touch(cur: Cursor, path: str, at: int) -> bool:
    cur.execute("UPDATE catalogue SET last_access = ? WHERE path = ?", (at, path))
    return cur.rowcount > 0


def lru_evictable(cur: Cursor, now: int, limit: int) -> list[tuple[str, int]]:
    cur.execute(
        "SELECT c.path, c.size FROM catalogue c WHERE c.locality = ? AND NOT EXISTS"
        " (SELECT 1 FROM pin p WHERE p.path = c.path AND p.expires_at > ?)"
        " ORDER BY c.last_access, c.path LIMIT ?",
        (Locality.DISK_AND_TAPE.value, now, limit),
    )
    return [(row[0], row[1]) for row in cur.fetchall()]


def disk_usage(cur: Cursor) -> int:
    cur.execute(
        "SELECT COALESCE(SUM(size), 0) FROM catalogue WHERE locality IN (?, ?)",
        (Locality.DISK.value, Locality.DISK_AND_TAPE.value),
    )
    return int(cur.fetchone()[0])


# -- bulk, cartridges, settings, summaries --------------------------------------------------------


def get_files(cur: Cursor, paths: Sequence[str]) -> dict[str, CatalogueEntry]:
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


def set_file_states(cur: Cursor, request_id: str, updates: Sequence[FileUpdate], at: int) -> int:
    moved = 0
    for path, state, error, pin_until in updates:
        if set_file_state(cur, request_id, path, state, at, error, pin_until):
            moved += 1
    return moved


def unarchived(cur: Cursor, limit: int) -> list[tuple[str, int, int]]:
    cur.execute(
        "SELECT path, size, last_access FROM catalogue WHERE locality = ?"
        " AND cartridge IS NULL ORDER BY last_access, path LIMIT ?",
        (Locality.DISK.value, limit),
    )
    return [(row[0], row[1], row[2]) for row in cur.fetchall()]


def _below(path: str) -> tuple[str, int]:
    prefix = path.rstrip("/") + "/"
    return prefix, len(prefix)


def forget_tree(cur: Cursor, path: str) -> int:
    prefix, n = _below(path)
    cur.execute("DELETE FROM catalogue WHERE path = ? OR substr(path, 1, ?) = ?", (path, n, prefix))
    return cur.rowcount


def rename(cur: Cursor, src: str, dst: str) -> int:
    if src == dst:
        return 0
    forget_tree(cur, dst)
    cur.execute("UPDATE catalogue SET path = ? WHERE path = ?", (dst, src))
    moved = cur.rowcount
    prefix, n = _below(src)
    cur.execute(
        "UPDATE catalogue SET path = ? || substr(path, ?) WHERE substr(path, 1, ?) = ?",
        (dst.rstrip("/") + "/", n + 1, n, prefix),
    )
    return moved + cur.rowcount


def cartridges(cur: Cursor) -> dict[str, tuple[str | None, CartridgeState]]:
    cur.execute("SELECT vid, pool, state FROM cartridge ORDER BY vid")
    return {row[0]: (row[1], CartridgeState(row[2])) for row in cur.fetchall()}


def claim_cartridge(cur: Cursor, vid: str, pool: str) -> bool:
    cur.execute(
        "INSERT INTO cartridge (vid, pool, state) VALUES (?, ?, ?)"
        " ON CONFLICT (vid) DO UPDATE SET pool = excluded.pool WHERE cartridge.pool IS NULL",
        (vid, pool, CartridgeState.ACTIVE.value),
    )
    cur.execute("SELECT pool FROM cartridge WHERE vid = ?", (vid,))
    return bool(cur.fetchone()[0] == pool)


def set_cartridge_state(cur: Cursor, vid: str, state: CartridgeState) -> None:
    cur.execute(
        "INSERT INTO cartridge (vid, pool, state) VALUES (?, NULL, ?)"
        " ON CONFLICT (vid) DO UPDATE SET state = excluded.state",
        (vid, CartridgeState(state).value),
    )


def settings(cur: Cursor) -> dict[str, Any]:
    cur.execute("SELECT name, value FROM setting ORDER BY name")
    return {row[0]: json.loads(row[1]) for row in cur.fetchall()}


def set_setting(cur: Cursor, key: str, value: Any) -> None:
    if value is None:
        cur.execute("DELETE FROM setting WHERE name = ?", (key,))
        return
    cur.execute(
        "INSERT INTO setting (name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (key, json.dumps(value)),
    )


def request_summaries(cur: Cursor, limit: int) -> list[RequestSummary]:
    cur.execute(
        "SELECT id, owner, created_at, completed_at FROM request WHERE deleted = 0"
        " ORDER BY seq DESC LIMIT ?",
        (limit,),
    )
    rows = cur.fetchall()
    out: list[RequestSummary] = []
    for rid, owner, created, completed in rows:
        cur.execute("SELECT state, COUNT(*) FROM file WHERE request_id = ? GROUP BY state", (rid,))
        counts = {FileState(st): int(n) for st, n in cur.fetchall()}
        out.append((rid, owner, created, completed, counts))
    return out


def adopt(cur: Cursor, files: Sequence[tuple[str, Locality, int]], at: int) -> None:
    cur.executemany(
        "INSERT INTO catalogue (path, locality, size, cartridge, tape_position, last_access)"
        " VALUES (?, ?, ?, NULL, NULL, ?) ON CONFLICT (path) DO NOTHING",
        [(path, Locality(loc).value, size, at) for path, loc, size in files],
    )


def archived(
    cur: Cursor, path: str, size: int, locality: Locality, cartridge: str, position: int
) -> bool:
    cur.execute(
        "UPDATE catalogue SET locality = ?, cartridge = ?, tape_position = ?"
        " WHERE path = ? AND locality = ? AND cartridge IS NULL AND size = ?",
        (Locality(locality).value, cartridge, position, path, Locality.DISK.value, size),
    )
    return cur.rowcount > 0


def recalled(
    cur: Cursor,
    request_id: str,
    path: str,
    size: int,
    cartridge: str,
    position: int,
    at: int,
    pin_until: int | None,
) -> bool:
    entry = get_file(cur, path)
    if entry is None:
        return False
    if entry[2] == cartridge and entry[3] == position:
        set_locality(cur, path, Locality.DISK_AND_TAPE, size, cartridge, position)
    touch(cur, path, at)
    if pin_until is not None:
        set_file_state(cur, request_id, path, FileState.COMPLETED, at, None, pin_until)
    return True


def offline_below(cur: Cursor, path: str) -> str | None:
    prefix, n = _below(path)
    cur.execute(
        "SELECT path FROM catalogue WHERE substr(path, 1, ?) = ? AND locality IN (?, ?, ?) LIMIT 1",
        (n, prefix, Locality.TAPE.value, Locality.LOST.value, Locality.UNAVAILABLE.value),
    )
    row = cur.fetchone()
    return None if row is None else str(row[0])


def locality_counts(cur: Cursor) -> dict[Locality, tuple[int, int]]:
    cur.execute(
        "SELECT locality, COUNT(*), COALESCE(SUM(size), 0) FROM catalogue GROUP BY locality"
    )
    return {Locality(row[0]): (int(row[1]), int(row[2])) for row in cur.fetchall()}
