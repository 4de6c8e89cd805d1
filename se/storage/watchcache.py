"""Answers kept in memory until inotify says the directory they came from changed.

Two users: rendered PROPFIND listings of large collections (a Depth 1 over a thousand
entries costs milliseconds of stat calls and XML rendering in Python; from memory it costs
microseconds), and the bytes of small files (saving the open/fstat/read/close of every
small GET).  Entries are grouped per directory; a directory is watched, and so are the
subcollections a listing shows (whose own mtime changes without an event on the parent);
any event on any of those watches drops everything cached for that directory.  The kernel
queue is drained before every lookup and before every store, so a change that happened
before a request is never answered from the cache.  A value is stored only if nothing
changed between the start of the watch and the end of reading or rendering.

Changes made on another host of a network filesystem produce no inotify event; sites on
such filesystems turn the caches off (``webdav.listing_cache_dirs = 0``,
``storage.file_cache_bytes = 0``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from inotify_simple import INotify
from inotify_simple import flags as F

__all__ = ["WatchedCache"]

log = logging.getLogger("se.storage")

_MASK = (
    F.MODIFY
    | F.ATTRIB
    | F.CLOSE_WRITE
    | F.MOVED_FROM
    | F.MOVED_TO
    | F.CREATE
    | F.DELETE
    | F.DELETE_SELF
    | F.MOVE_SELF
    | F.ONLYDIR
)
MAX_SUBDIRS = 32
V = TypeVar("V")


@dataclass(slots=True)
class _Slot(Generic[V]):
    token: int
    wds: set[int] = field(default_factory=set)
    bodies: dict[Hashable, tuple[int, V]] = field(default_factory=dict)  # (size, value)

    @property
    def size(self) -> int:
        return sum(n for n, _v in self.bodies.values())


class WatchedCache(Generic[V]):
    """Per-process cache of values keyed by (directory, variant)."""

    def __init__(
        self, max_dirs: int = 256, max_bytes: int = 64 * 1024 * 1024, max_variants: int = 8
    ) -> None:
        self._max_dirs = max_dirs
        self._max_bytes = max_bytes
        self._max_variants = max_variants
        self._bytes = 0
        self._slots: OrderedDict[str, _Slot[V]] = OrderedDict()
        self._owners: dict[int, set[str]] = {}
        self._next_token = 0
        self._ino: INotify | None = None
        if max_dirs > 0:
            try:
                self._ino = INotify(nonblocking=True)
            except OSError as exc:
                log.warning("listing cache off: inotify unavailable (%s)", exc.strerror)

    @property
    def enabled(self) -> bool:
        return self._ino is not None

    def close(self) -> None:
        if self._ino is not None:
            self._ino.close()
            self._ino = None

    # -- events ----------------------------------------------------------------------
    def _drain(self) -> None:
        assert self._ino is not None
        while True:
            try:
                events = self._ino.read(timeout=0)
            except BlockingIOError:
                return
            if not events:
                return
            for ev in events:
                if ev.mask & F.Q_OVERFLOW:
                    self.clear()
                    return
                for owner in list(self._owners.get(ev.wd, ())):
                    self._drop(owner)

    def _drop(self, fs_dir: str) -> None:
        slot = self._slots.pop(fs_dir, None)
        if slot is None:
            return
        self._bytes -= slot.size
        for wd in slot.wds:
            owners = self._owners.get(wd)
            if owners is None:
                continue
            owners.discard(fs_dir)
            if not owners:
                del self._owners[wd]
                if self._ino is not None:
                    with contextlib.suppress(OSError):  # already gone with its directory
                        self._ino.rm_watch(wd)

    def clear(self) -> None:
        for fs_dir in list(self._slots):
            self._drop(fs_dir)

    def _watch(self, slot: _Slot[V], fs_dir: str, path: str) -> bool:
        assert self._ino is not None
        try:
            wd = self._ino.add_watch(path, _MASK)
        except OSError:
            return False
        slot.wds.add(wd)
        self._owners.setdefault(wd, set()).add(fs_dir)
        return True

    # -- API -------------------------------------------------------------------------
    def get(self, fs_dir: str, variant: Hashable) -> V | None:
        if self._ino is None:
            return None
        self._drain()
        slot = self._slots.get(fs_dir)
        if slot is None:
            return None
        self._slots.move_to_end(fs_dir)
        hit = slot.bodies.get(variant)
        return hit[1] if hit is not None else None

    def begin(self, fs_dir: str) -> int | None:
        """Start watching a collection before it is read; returns a token for :meth:`store`."""
        if self._ino is None:
            return None
        self._drain()
        existing = self._slots.get(fs_dir)
        if existing is not None:
            return existing.token
        self._next_token += 1
        slot: _Slot[V] = _Slot(self._next_token)
        self._slots[fs_dir] = slot
        if not self._watch(slot, fs_dir, fs_dir):
            self._slots.pop(fs_dir)
            return None
        while len(self._slots) > self._max_dirs:
            self._drop(next(iter(self._slots)))
        return slot.token

    def store(
        self,
        fs_dir: str,
        variant: Hashable,
        token: int,
        value: V,
        size: int,
        subdirs: Sequence[tuple[str, int]] = (),
    ) -> bool:
        """Keep ``value`` (about ``size`` bytes) if nothing changed since :meth:`begin`.

        ``subdirs`` are the (path, mtime_ns) of the subcollections the value shows.
        """
        if self._ino is None or size > self._max_bytes // 4:
            return False
        slot = self._slots.get(fs_dir)
        if slot is None or slot.token != token:
            return False
        if len(subdirs) > MAX_SUBDIRS:
            self._drop(fs_dir)
            return False
        for path, mtime_ns in subdirs:
            if not self._watch(slot, fs_dir, path):
                self._drop(fs_dir)
                return False
            try:
                if os.stat(path).st_mtime_ns != mtime_ns:
                    self._drop(fs_dir)
                    return False
            except OSError:
                self._drop(fs_dir)
                return False
        self._drain()
        if self._slots.get(fs_dir) is not slot:
            return False
        if len(slot.bodies) >= self._max_variants:
            self._bytes -= slot.size
            slot.bodies.clear()
        old = slot.bodies.get(variant)
        self._bytes += size - (old[0] if old is not None else 0)
        slot.bodies[variant] = (size, value)
        while self._bytes > self._max_bytes and self._slots:
            self._drop(next(iter(self._slots)))
        return fs_dir in self._slots
