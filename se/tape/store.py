"""The persistent state of the tape layer: stage requests, their files, pins and the catalogue.

:class:`TapeStore` is the one contract: each operation is written here once, with its
documentation, as one transaction running the function of the same name in :mod:`se.tape.sql`
(the portable SQL, on a DB-API cursor).  Every method is one transaction, committed before it
returns: a process killed right after a method returned has lost nothing that method did.

A store provides only :meth:`TapeStore._run` (one transaction on its database) and
:meth:`TapeStore.close`.  :class:`ThreadedStore` does both on one thread that owns the connection,
for :class:`~se.tape.sqlite_store.SQLiteStore` (embedded) and
:class:`~se.tape.pgstore.PostgresStore` (several frontends sharing one database);
:func:`se.tape.stores.open_store` picks one by location.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, TypeVarTuple

from se.tape import sql
from se.tape.model import CartridgeState, FileState, Locality, StageRequest
from se.tape.sql import (
    CatalogueEntry,
    Cursor,
    FileSpec,
    FileUpdate,
    InitialState,
    RequestSummary,
)

__all__ = ["TapeStore", "ThreadedStore"]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")


def _now(at: int | None) -> int:
    return int(time.time()) if at is None else at


class TapeStore(abc.ABC):
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

    @abc.abstractmethod
    async def _run(self, write: bool, fn: Callable[[Cursor, *_Ts], _T], *args: *_Ts) -> _T:
        """Run ``fn(cursor, *args)`` in one transaction (``write``: one that changes something),
        committed before it returns."""

    @abc.abstractmethod
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
        await self._run(
            True,
            sql.create_request,
            request_id,
            owner,
            created_at,
            files,
            states,
            spellings,
            pins,
        )

    async def get_request(self, request_id: str) -> StageRequest | None:
        """The request with its files in submission order; None if unknown or invisible."""
        return await self._run(False, sql.get_request, request_id)

    async def count_active(self, owner: str) -> int:
        """How many visible requests of ``owner`` still have a non-terminal file."""
        return await self._run(False, sql.count_active, owner)

    async def delete_request(self, request_id: str, at: int | None = None) -> bool:
        """Cancel the non-terminal files, drop the request's pins and hide it; False if unknown."""
        return await self._run(True, sql.delete_request, request_id, _now(at))

    async def cancel(self, request_id: str, paths: Sequence[str], at: int | None = None) -> bool:
        """Cancel ``paths`` of a request: all or nothing.

        False, and nothing changed, if the request is unknown or any path is not one of its files.
        Otherwise non-terminal files become CANCELLED (``finished_at = at``), terminal ones keep
        their state, and the request's pins on all those paths are dropped.
        """
        return await self._run(True, sql.cancel, request_id, list(paths), _now(at))

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
        return await self._run(
            True, sql.set_file_state, request_id, path, state, at, error, pin_until
        )

    async def pending_files(self) -> list[tuple[str, str]]:
        """(request id, path) of every non-terminal file, oldest request first, then file order."""
        return await self._run(False, sql.pending_files)

    async def gc(self, older_than: int) -> int:
        """Forget requests completed before ``older_than`` (with their files and pins); how many."""
        return await self._run(True, sql.gc, older_than)

    # -- pins -------------------------------------------------------------------------------

    async def add_pin(self, request_id: str, path: str, expires_at: int) -> bool:
        """Pin ``path`` for a request until ``expires_at`` (replacing that pin's expiry).

        Only a COMPLETED file of a visible request can be pinned; False otherwise.
        """
        return await self._run(True, sql.add_pin, request_id, path, expires_at)

    async def release(self, request_id: str, paths: Sequence[str]) -> int:
        """Drop the request's pins on ``paths`` (other paths are ignored); how many were dropped."""
        return await self._run(True, sql.release, request_id, list(paths))

    async def release_owner(self, owner: str, paths: Sequence[str]) -> int:
        """Drop the pins that any request of ``owner`` holds on ``paths``; how many.

        For a RELEASE without a request id (gfal2's ``gfal2-placeholder-id``).
        """
        return await self._run(True, sql.release_owner, owner, list(paths))

    async def pinned(self, path: str, now: int) -> bool:
        """Whether some request holds a live pin on ``path``."""
        return await self._run(False, sql.pinned, path, now)

    async def expire_pins(self, now: int) -> int:
        """Drop the dead pins; how many."""
        return await self._run(True, sql.expire_pins, now)

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
        await self._run(True, sql.set_locality, path, locality, size, cartridge, position)

    async def get_file(self, path: str) -> CatalogueEntry | None:
        """(locality, size, cartridge, position) of a file, None if the tier does not know it."""
        return await self._run(False, sql.get_file, path)

    async def forget_file(self, path: str) -> bool:
        """Drop a file from the catalogue (the user deleted it); False if it was not there."""
        return await self._run(True, sql.forget_file, path)

    async def files_on(self, cartridge: str) -> list[tuple[str, int, int]]:
        """(path, position, size) of the files on a cartridge, in tape order."""
        return await self._run(False, sql.files_on, cartridge)

    async def next_position(self, cartridge: str) -> int:
        """Where the next file written to ``cartridge`` starts: the end of its last file, or 0."""
        return await self._run(False, sql.next_position, cartridge)

    async def touch(self, path: str, at: int) -> bool:
        """Set the last access time of a file; False if the catalogue does not know it."""
        return await self._run(True, sql.touch, path, at)

    async def lru_evictable(self, now: int, limit: int) -> list[tuple[str, int]]:
        """(path, size) of DISK_AND_TAPE files without a live pin, least recently used first.

        A file never touched counts as accessed at time 0.
        """
        return await self._run(False, sql.lru_evictable, now, limit)

    async def disk_usage(self) -> int:
        """Bytes the catalogue holds on disk: the sizes of DISK and DISK_AND_TAPE files."""
        return await self._run(False, sql.disk_usage)

    # -- bulk, cartridges, settings, summaries ----------------------------------------------

    async def get_files(self, paths: Sequence[str]) -> dict[str, CatalogueEntry]:
        """:meth:`get_file` for many paths in one transaction; unknown paths are left out."""
        return await self._run(False, sql.get_files, list(paths))

    async def set_file_states(self, request_id: str, updates: Sequence[FileUpdate], at: int) -> int:
        """:meth:`set_file_state` for many files of one request in one transaction; how many
        moved (files unknown or already terminal are skipped)."""
        return await self._run(True, sql.set_file_states, request_id, list(updates), at)

    async def unarchived(self, limit: int) -> list[tuple[str, int, int]]:
        """(path, size, written at) of DISK files not yet on tape, oldest write first."""
        return await self._run(False, sql.unarchived, limit)

    async def rename(self, src: str, dst: str) -> int:
        """A file or a directory tree was renamed: move its catalogue entries (the tape copy
        stays valid) and drop any entries under ``dst`` they replace; how many moved."""
        return await self._run(True, sql.rename, src, dst)

    async def forget_tree(self, path: str) -> int:
        """Drop ``path`` and every entry below it from the catalogue; how many."""
        return await self._run(True, sql.forget_tree, path)

    async def cartridges(self) -> dict[str, tuple[str | None, CartridgeState]]:
        """Every cartridge the store knows: vid -> (owning tape pool or None, state)."""
        return await self._run(False, sql.cartridges)

    async def claim_cartridge(self, vid: str, pool: str) -> bool:
        """Give an unowned cartridge to a pool; False if another pool owns it already."""
        return await self._run(True, sql.claim_cartridge, vid, pool)

    async def set_cartridge_state(self, vid: str, state: CartridgeState) -> None:
        """Set a cartridge's state (recording the cartridge if new)."""
        await self._run(True, sql.set_cartridge_state, vid, state)

    async def settings(self) -> dict[str, Any]:
        """Run-time switches (failure injection): key -> JSON value."""
        return await self._run(False, sql.settings)

    async def set_setting(self, key: str, value: Any) -> None:
        """Set a run-time switch; ``None`` removes it."""
        await self._run(True, sql.set_setting, key, value)

    async def request_summaries(self, limit: int) -> list[RequestSummary]:
        """The newest visible requests with their file counts per state, newest first."""
        return await self._run(False, sql.request_summaries, limit)

    async def locality_counts(self) -> dict[Locality, tuple[int, int]]:
        """Catalogue totals: locality -> (files, bytes)."""
        return await self._run(False, sql.locality_counts)

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
        return await self._run(
            True, sql.recalled, request_id, path, size, cartridge, position, at, pin_until
        )

    async def archived(
        self, path: str, size: int, locality: Locality, cartridge: str, position: int
    ) -> bool:
        """Record the tape copy of a file just flushed, in one transaction, only if the
        catalogue still has it as DISK with no tape copy and this size; False otherwise (it
        was deleted or rewritten after the flush picked it)."""
        return await self._run(True, sql.archived, path, size, locality, cartridge, position)

    async def adopt(self, files: Sequence[tuple[str, Locality, int]], at: int) -> None:
        """Record files the catalogue does not know yet (path, locality, size), written at
        ``at``, in one transaction; paths it knows already are left alone."""
        await self._run(True, sql.adopt, list(files), at)

    async def offline_below(self, path: str) -> str | None:
        """A file below ``path`` whose disk copy does not count (TAPE, LOST, UNAVAILABLE)."""
        return await self._run(False, sql.offline_below, path)


class ThreadedStore(TapeStore):
    """A store whose database calls all run on one thread that owns the connection.

    Subclasses set ``_conn`` (closed on that thread by :meth:`close`) and provide
    :meth:`_transaction`, run on that thread for each call.
    """

    _conn: Any

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self._executor = executor
        self._closed = False

    @abc.abstractmethod
    def _transaction(self, write: bool, fn: Callable[[Any], _T]) -> _T:
        """On the store's thread: run ``fn(cursor)`` in one transaction, committed before
        returning."""

    async def _run(self, write: bool, fn: Callable[[Cursor, *_Ts], _T], *args: *_Ts) -> _T:
        if self._closed:
            raise RuntimeError("the tape store is closed")

        def call(cur: Cursor) -> _T:
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
