"""What space accounting needs from the storage layer: exact deltas, where changes happen.

The backend's sync write functions (upload commit, delete, move, copy; on the I/O pool) know
what they changed: the size of the file a PUT replaced, the files a DELETE of a tree really
removed, the tree a MOVE carried from one share to another.  They collect it in a
:class:`Deltas` (bytes and files per share key) and hand it to the :class:`SpaceTracker`
(se.space's accounting) on the same thread, written through before the request is answered.

Only regular files count (``lstat``: a symlink is never followed nor counted; directories
count nothing); names reserved for the server (``.se-*``) and upload temp files are skipped,
so a walk here and the deltas of the write paths agree by construction.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat as stat_mod
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from se.errors import InsufficientStorage
from se.storage.paths import DavPath, is_reserved, is_temp_name

__all__ = [
    "CHANGE_KEY",
    "DELETE_KEY",
    "Deltas",
    "SpaceTracker",
    "dir_locked",
    "file_usage",
    "tree_usage",
    "walk_files",
]

# The start of the key of a pending delete (:meth:`SpaceTracker.admit`); an upload's key is
# its temp file's path.
DELETE_KEY = "delete:"
# The start of the key of a change in flight (:meth:`SpaceTracker.begin_change`).
CHANGE_KEY = "change:"


@contextlib.contextmanager
def dir_locked(directory: str) -> Iterator[None]:
    """An exclusive flock on a directory, for every thread and process (and host, where the
    filesystem shares locks): changes to its members are counted and made in turn, and a
    reconciliation or recovery judging a pending change waits until it is made.  Where the
    filesystem has no such locks, nothing (a race is then left to the reconciliation)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # No locks here (or none on directories: NFS): go on without.
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class SpaceTracker(Protocol):
    """Called on the I/O thread of a write, with exact deltas (se.space.Accounting)."""

    def share_key(self, path: DavPath) -> str | None:
        """The share a path counts in (None: in none)."""
        ...

    def nested(self, path: DavPath) -> bool:
        """Whether another share's path lies strictly below ``path`` (then a tree below it
        must be attributed file by file)."""
        ...

    def admit(self, deltas: Deltas, pending: tuple[str, str] | None = None, ino: int = 0) -> None:
        """Apply ``deltas`` if no share with a limit goes over it; else raise
        InsufficientStorage naming the share (and apply nothing).  ``pending``: the (temp
        file, target) of an upload about to be renamed into place, remembered with the
        deltas until :meth:`settle`, so that a writer killed in between can be told apart;
        or (:data:`DELETE_KEY` + an id, target) with the ``ino`` of a file about to be
        unlinked."""

    def admit_many(
        self, uploads: Sequence[tuple[Deltas, tuple[str, str]]]
    ) -> list[InsufficientStorage | None]:
        """:meth:`admit` for several uploads (deltas, (temp file, target)) about to be put in
        place together, each admitted or refused on its own: None or its refusal."""
        ...

    def apply(self, deltas: Deltas, settle: str | None = None) -> None:
        """Apply ``deltas`` unconditionally (what has already happened on disk); ``settle``:
        and forget the pending upload of that temp file (its deltas taken back)."""

    def settle(self, pending: tuple[str, str]) -> None:
        """The pending upload is in place."""

    def abandoned(self, temp: str, ino: int) -> None:
        """The temp file ``temp`` (inode ``ino``) of an upload whose writer is gone is about
        to be removed by the sweep: what the upload counted is taken back, unless it was
        linked into place (then only forgotten).  Without this, a writer still dying when
        the recovery looked (it held its lock) and gone when the sweep came would keep its
        count."""

    def begin_change(self) -> str:
        """Mark a change in flight whose count comes with or after its effect on disk (a
        tree deleted, copied or moved): until ``apply(deltas, settle=key)`` ends it, a
        reconciliation does not set totals from a walk that may have seen half of it.  The
        mark's key."""
        ...


class Deltas:
    """Bytes and files gained (negative: lost) per share key."""

    __slots__ = ("by_share",)

    def __init__(self) -> None:
        self.by_share: dict[str, list[int]] = {}

    def add(self, key: str | None, nbytes: int, files: int) -> None:
        if key is None or (nbytes == 0 and files == 0):
            return
        cur = self.by_share.setdefault(key, [0, 0])
        cur[0] += nbytes
        cur[1] += files

    def merge(self, other: Deltas, sign: int = 1) -> None:
        for key, (nbytes, files) in other.by_share.items():
            self.add(key, sign * nbytes, sign * files)

    def items(self) -> Iterator[tuple[str, int, int]]:
        for key, (nbytes, files) in self.by_share.items():
            if nbytes or files:
                yield key, nbytes, files

    def __bool__(self) -> bool:
        return any(True for _ in self.items())

    def __repr__(self) -> str:
        return f"Deltas({dict(self.by_share)!r})"


def file_usage(fs: str) -> int | None:
    """The size of the regular file at ``fs`` (not following a symlink); None otherwise."""
    try:
        st = os.lstat(fs)
    except OSError:
        return None
    return st.st_size if stat_mod.S_ISREG(st.st_mode) else None


def walk_files(
    fs: str, rel: tuple[str, ...], skip: Callable[[tuple[str, ...]], bool] | None = None
) -> Iterator[tuple[tuple[str, ...], int, int]]:
    """(segments of a directory, bytes, files of its own regular files) for ``fs`` and every
    directory below it, never following a symlink; unreadable directories count nothing, nor
    do those (and what is below them) for which ``skip(segments)`` is true."""
    todo = [(fs, rel)]
    for _ in range(1 << 62):  # bounded by the tree: each directory is visited once
        if not todo:
            return
        here, segs = todo.pop()
        nbytes = files = 0
        try:
            it = os.scandir(here)
        except OSError:
            continue
        with it:
            for de in it:
                name = de.name
                if is_reserved(name) or is_temp_name(name):
                    continue
                try:
                    st = de.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat_mod.S_ISDIR(st.st_mode):
                    sub = (*segs, name)
                    if skip is None or not skip(sub):
                        todo.append((de.path, sub))
                elif stat_mod.S_ISREG(st.st_mode):
                    nbytes += st.st_size
                    files += 1
        yield segs, nbytes, files


def tree_usage(
    fs: str,
    path: DavPath,
    tracker: SpaceTracker,
    key_of: Callable[[DavPath], str | None] | None = None,
) -> Deltas:
    """What the file or tree at ``fs`` (namespace ``path``) holds, per share: by the share of
    each directory when another share lies inside, else all in ``path``'s share.  With
    ``key_of`` (a path of the tree -> the key it counts in) every directory is attributed by
    it: a move attributes a tree to the shares of its new place this way."""
    out = Deltas()
    size = file_usage(fs)
    if size is not None:
        out.add((key_of or tracker.share_key)(path), size, 1)
        return out
    try:
        if not stat_mod.S_ISDIR(os.lstat(fs).st_mode):
            return out  # a symlink or a special file: nothing
    except OSError:
        return out
    if key_of is None and not tracker.nested(path):
        key = tracker.share_key(path)
        if key is None:
            return out
        for _segs, nbytes, files in walk_files(fs, path.segments):
            out.add(key, nbytes, files)
        return out
    key_of = key_of or tracker.share_key
    for segs, nbytes, files in walk_files(fs, path.segments):
        out.add(key_of(DavPath(segs)), nbytes, files)
    return out
