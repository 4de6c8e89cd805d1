"""Caches that cannot lie: every answer is checked, on every use, against what identifies it.

Three users: the bytes of small files (saving the open/read/close of every small GET), the
rendered ``<D:response>`` fragments of the members of large collections (saving the xattr
reads and XML rendering of a Depth 1 PROPFIND: about 30 microseconds per member), and the
whole answers to PROPFIND Depth 0 of a file (what FTS and gfal2 ask before and after every
transfer).

Nothing here is keyed on a path alone, and nothing is trusted by path: an entry is
stored with the :class:`~se.storage.types.Stat` (device, inode, size, mtime and ctime in ns)
of what it was made from, and handed out only when a fresh ``stat`` of the same path, done by
the caller for this request, gives the same Stat.  A rename of the file or of any ancestor, a
replacement, an in-place write (through any hard link, from any process or host), a chmod, a
``setxattr`` (checksums, dead properties) each change one of those fields, so each makes the
next request miss.  Listing membership is never cached: a listing reads its directory every
time and looks each member's fragment up by that member's fresh Stat.  The one exception, a
whole Depth 1 body kept with a :class:`~se.storage.dirwatch.Token`, is trusted only while
inotify reports nothing about the directory's and every member's inode (see that module).

Timestamp granularity.  A file rewritten with the same size within one tick of the
filesystem's clock (a jiffy on ext4/xfs/tmpfs, a second or two on some network and legacy
filesystems) keeps its mtime and ctime, and would look unchanged.  Like git's "racy" index
entries, a value is therefore never stored while its mtime or ctime is less than
``settle_ns`` (default 2 s) before the moment it was read: any change made after that moment
gets a timestamp at least one tick later, so it cannot collide with the stored one.  A clock
stepped backwards by more than ``settle_ns`` (or a network filesystem whose server clock
is behind ours by more) voids that argument; such sites raise ``storage.cache_settle_time``
or turn the caches off.

Confinement.  A file is only ever stored after the backend opened it through its confinement
checks.  A hit needs the same device and inode with an unchanged ctime, so the inode's links
have not changed since (link, unlink and rename update ctime): the bytes handed out are those
of a file that this very path legitimately named, and any change to the file is a miss that
goes through the checks again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Generic, TypeVar

from se.storage.dirwatch import Token
from se.storage.types import CachedFile, Identity, Stat

__all__ = [
    "DEFAULT_SETTLE_NS",
    "MEMBER_COST",
    "AnswerCache",
    "FileCache",
    "ListingCache",
    "settled",
]

DEFAULT_SETTLE_NS = 2_000_000_000
V = TypeVar("V")
_EMPTY: Mapping[str, tuple[Identity, bytes]] = MappingProxyType({})


def settled(st: Stat, now_ns: int, settle_ns: int) -> bool:
    """True when ``st`` was last changed at least ``settle_ns`` before ``now_ns`` (and not
    in the future): only such a Stat can identify its bytes (see the module docstring)."""
    return now_ns - max(st.mtime_ns, st.ctime_ns) >= settle_ns


class _Checked(Generic[V]):
    """Values by key, each kept with the identity of what it was made from and handed out
    only for that identity; least recently used first out, within ``max_bytes`` (as
    :meth:`_cost` counts a value)."""

    def __init__(self, max_bytes: int, settle_ns: int = DEFAULT_SETTLE_NS) -> None:
        self.max_bytes = max_bytes
        self.settle_ns = settle_ns
        self._bytes = 0
        self._kept: OrderedDict[Hashable, tuple[Identity, V]] = OrderedDict()

    def _cost(self, value: V) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._kept)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._kept

    def get(self, key: Hashable, current: Identity | None) -> V | None:
        """The value kept for ``key`` if ``current`` (the identity of a stat made for this
        request) is exactly the one it was made from; anything else drops it."""
        got = self._kept.get(key)
        if got is None:
            return None
        if current != got[0]:
            self.discard(key)
            return None
        self._kept.move_to_end(key)
        return got[1]

    def peek(self, key: Hashable) -> V | None:
        """The value for ``key`` without validating it (the caller compares identities)."""
        got = self._kept.get(key)
        return got[1] if got is not None else None

    def discard(self, key: Hashable) -> None:
        old = self._kept.pop(key, None)
        if old is not None:
            self._bytes -= self._cost(old[1])

    def _keep(self, key: Hashable, identity: Identity, value: V) -> bool:
        self.discard(key)
        self._kept[key] = (identity, value)
        self._bytes += self._cost(value)
        while self._bytes > self.max_bytes and self._kept:
            self.discard(next(iter(self._kept)))
        return key in self._kept

    def clear(self) -> None:
        self._kept.clear()
        self._bytes = 0


class FileCache(_Checked[CachedFile]):
    """Small files' bytes, by path, valid while the path stats the same."""

    def _cost(self, value: CachedFile) -> int:
        return len(value.data)

    def storable(self, st: Stat, now_ns: int | None = None) -> bool:
        return st.size <= self.max_bytes // 4 and settled(
            st, time.time_ns() if now_ns is None else now_ns, self.settle_ns
        )

    def put(self, key: Hashable, f: CachedFile) -> bool:
        """Keep ``f`` (read with ``f.stat`` checked before and after reading) unless it
        changed too recently to be told apart from a later change."""
        if len(f.data) != f.stat.size or not self.storable(f.stat):
            return False
        return self._keep(key, f.stat.identity, f)


# Memory a kept member costs beside its fragment's bytes (CPython 3.11, measured with
# tracemalloc): its name, its Stat identity (a tuple of six), the (identity, fragment) pair,
# the bytes object's header and the dict's slot.  Counting less let the listings of a
# worker take about twice max_bytes (a 10-minute soak).
MEMBER_COST = 448


@dataclass(frozen=True, slots=True)
class _Group:
    size: int
    fragments: Mapping[str, tuple[Identity, bytes]]
    whole: tuple[Token, bytes] | None


class ListingCache:
    """Rendered fragments of collection members, grouped per listing.

    A group maps a member's name to the (Stat identity, fragment) it was rendered from; a group is
    never changed once published (a listing builds a new one), so a pool thread may read
    the one it was handed while the event loop replaces it.

    A group may also hold the whole rendered body of the listing with the
    :class:`~se.storage.dirwatch.Token` that tells whether anything it was read from has
    changed since; ``on_drop`` is called with each such token when its group is replaced or
    evicted (so its watches can end).
    """

    def __init__(
        self,
        max_dirs: int,
        max_bytes: int = 64 * 1024 * 1024,
        settle_ns: int = DEFAULT_SETTLE_NS,
        on_drop: Callable[[Token], None] | None = None,
    ) -> None:
        self.max_dirs = max_dirs
        self.max_bytes = max_bytes
        self.settle_ns = settle_ns
        self._on_drop = on_drop
        self._bytes = 0
        self._groups: OrderedDict[Hashable, _Group] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_dirs > 0

    def __len__(self) -> int:
        return len(self._groups)

    def group(self, key: Hashable) -> Mapping[str, tuple[Identity, bytes]]:
        """The fragments kept for one listing (a read-only mapping, maybe empty)."""
        got = self._groups.get(key)
        if got is None:
            return _EMPTY
        self._groups.move_to_end(key)
        return got.fragments

    def whole(self, key: Hashable) -> tuple[Token, bytes] | None:
        """The body kept for one listing with its token (None when there is none)."""
        got = self._groups.get(key)
        if got is None:
            return None
        self._groups.move_to_end(key)
        return got.whole

    def replace(
        self,
        key: Hashable,
        fragments: dict[str, tuple[Identity, bytes]],
        whole: tuple[Token, bytes] | None = None,
    ) -> None:
        """Publish the fragments of the listing just made (members changed too recently
        are left out by the caller with :meth:`keepable`), and maybe its whole body."""
        self._drop(self._groups.pop(key, None))
        if not self.enabled or not (fragments or whole):
            self._drop_token(whole)
            return
        size = sum(len(frag) + MEMBER_COST for _st, frag in fragments.values())
        if whole is not None:
            size += len(whole[1]) + 256
        if size > self.max_bytes // 4:
            self._drop_token(whole)
            return
        self._groups[key] = _Group(size, MappingProxyType(fragments), whole)
        self._bytes += size
        while self._groups and (len(self._groups) > self.max_dirs or self._bytes > self.max_bytes):
            self._drop(self._groups.popitem(last=False)[1])

    def _drop(self, group: _Group | None) -> None:
        if group is not None:
            self._bytes -= group.size
            self._drop_token(group.whole)

    def _drop_token(self, whole: tuple[Token, bytes] | None) -> None:
        if whole is not None and self._on_drop is not None:
            self._on_drop(whole[0])

    def keepable(self, st: Stat, now_ns: int) -> bool:
        return settled(st, now_ns, self.settle_ns)

    def clear(self) -> None:
        while self._groups:
            self._drop(self._groups.popitem()[1])
        self._bytes = 0


# Memory a kept answer costs beside its bytes: its key (a tuple holding the path's segments,
# the base URL and the request), its identity and the dict's slot.
ANSWER_COST = 512


class AnswerCache(_Checked[bytes]):
    """Rendered answers about one path (a PROPFIND Depth 0 of a file), by a key that holds
    the path and everything else the answer depends on; each handed out only while a stat
    of the path made for the request gives the identity it was rendered from."""

    def _cost(self, value: bytes) -> int:
        return len(value) + ANSWER_COST

    def put(self, key: Hashable, st: Stat, data: bytes, now_ns: int | None = None) -> bool:
        """Keep ``data``, rendered from what had Stat ``st``, unless that changed too
        recently to be told apart from a later change (or it is too big to be worth it)."""
        now = time.time_ns() if now_ns is None else now_ns
        if self._cost(data) > self.max_bytes // 16 or not settled(st, now, self.settle_ns):
            return False
        return self._keep(key, st.identity, data)
