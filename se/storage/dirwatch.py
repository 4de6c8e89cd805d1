"""Knowing that a listed collection has not changed without a stat per member: inotify.

A Depth 1 PROPFIND of an unchanged collection would otherwise cost one ``lstat`` per member
on every request (the listing cache of :mod:`se.storage.statcache` validates each kept
fragment against a fresh Stat): about 5 ms for 1000 members on a VM where a system call
costs a microsecond.  Instead, while a listing is built, every inode it depends on is
watched with Linux inotify (the directory, and each member file and subdirectory), and the
rendered body is kept with a :class:`Token` that any event on those inodes marks stale.

What makes a kept body exact (not "probably fresh"):

* **Watch first, read after.**  The directory's watch is placed before it is read, and each
  member's watch is attached to the token before the member is ``lstat``-ed, so every change
  after the state that was read queues an event the token will see.
* **Events are queued by the kernel inside the changing system call.**  The check drains the
  inotify descriptor (one non-blocking ``read``) before trusting a token, so a change that a
  client completed before sending its request is always seen by that request.
* **Inodes, not paths.**  A member file's own watch sees writes and attribute changes made
  through any hard link, and the link count changing (``link`` elsewhere); the directory's
  watch sees names created, removed or renamed; a subdirectory's watch sees what changes its
  own mtime.  The caller checks, per request, that the listed path still resolves (through
  the confinement checks) to the watched directory: a rename of an ancestor is a miss.
* **Only where inotify sees every change**: the collection and each member on the device of
  the storage root, and that device a local filesystem (:data:`LOCAL_FILESYSTEMS`).  On a
  network or cluster filesystem a change made on another host queues no event; there, and
  for listings holding a symlink (whose target may live anywhere), the per-member Stat
  validation is used, as before.
* **Overflow and limits.**  A full event queue (``IN_Q_OVERFLOW``) makes every token stale.
  A process never holds more than ``budget`` watches (``webdav.listing_watches``); a
  listing that would need more is simply not kept this way.

Known blind spot, shared with the stat validation it replaces: a write through a shared
``mmap`` queues no inotify event (and updates mtime only lazily).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat as stat_mod
import struct
import threading
from collections.abc import Callable

__all__ = [
    "LOCAL_FILESYSTEMS",
    "DirWatch",
    "Token",
    "filesystem_type",
    "parse_events",
]

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000

# What changes a name in a directory (and so the directory's mtime).
NAMESPACE = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
# A directory's watch: its names, its own attributes, itself moved or removed.  No
# IN_MODIFY: writes into member files (uploads' temp files included) are seen by the
# files' own watches, so an upload in progress does not flood the queue.
DIR_MASK = NAMESPACE | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF
# A file's watch: its bytes, its attributes (mode, times, xattrs, link count), its end.
FILE_MASK = IN_MODIFY | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF

# Filesystems on which every change is made through this kernel, so inotify sees it.
LOCAL_FILESYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs", "bcachefs", "jfs"}
)

_EVENT = struct.Struct("iIII")
_READ_SIZE = 64 * 1024


def parse_events(buf: bytes) -> list[tuple[int, int, str]]:
    """The (watch descriptor, mask, name) of each event in a buffer read from an inotify
    descriptor; the name is empty for an event about the watched inode itself."""
    out: list[tuple[int, int, str]] = []
    pos, end = 0, len(buf)
    size = _EVENT.size
    while pos + size <= end:
        wd, mask, _cookie, length = _EVENT.unpack_from(buf, pos)
        raw = buf[pos + size : pos + size + length].split(b"\0", 1)[0]
        out.append((wd, mask, os.fsdecode(raw) if raw else ""))
        pos += size + length
    return out


def filesystem_type(dev: int, mountinfo: str) -> str | None:
    """The type of the filesystem whose device number is ``dev``, from the text of
    ``/proc/self/mountinfo`` (None when no line names that device)."""
    want = f"{os.major(dev)}:{os.minor(dev)}"
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[2] != want or "-" not in fields:
            continue
        rest = fields[fields.index("-") + 1 :]
        if rest:
            return rest[0]
    return None


class Token:
    """The promise that a listing is unchanged: stale once any inode it read changes."""

    __slots__ = ("dir", "stale", "wds")

    def __init__(self, directory: tuple[int, int]) -> None:
        self.dir = directory  # (device, inode) of the listed directory
        self.stale = False
        self.wds: list[int] = []


class _Inotify:
    """The three calls of the C library, through ctypes."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._init1 = libc.inotify_init1
        self._add = libc.inotify_add_watch
        self._add.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = (ctypes.c_int, ctypes.c_int)

    def open(self) -> int:
        fd = int(self._init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return fd

    def add(self, fd: int, path: str, mask: int) -> int:
        wd = int(self._add(fd, os.fsencode(path), mask))
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return wd

    def rm(self, fd: int, wd: int) -> None:
        self._rm(fd, wd)


def _system_limit() -> int:
    try:
        with open("/proc/sys/fs/inotify/max_user_watches", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 8192


class DirWatch:
    """The watches of one process, shared by the listings it keeps.

    Built from pool threads (:meth:`begin`, :meth:`attach`) and checked from the event loop
    (:meth:`current`), so every state change happens under one lock.
    """

    def __init__(
        self, device: int, budget: int, ignore: Callable[[str], bool], api: _Inotify
    ) -> None:
        self.device = device
        self.budget = budget
        self._ignore = ignore  # names never listed (reserved): their events change no listing
        self._api = api
        self._lock = threading.Lock()
        self._fd = -1
        self._pid = 0
        self._wd_of: dict[tuple[int, int], int] = {}  # (device, inode) -> watch
        self._inode_of: dict[int, tuple[int, int]] = {}
        self._deps: dict[int, set[Token]] = {}
        self.overflows = 0

    @classmethod
    def for_root(cls, root: str, budget: int, ignore: Callable[[str], bool]) -> DirWatch | None:
        """A watcher for the storage root, or None when inotify cannot see every change
        there (not Linux, no inotify, a network filesystem) or ``budget`` is 0; -1 means
        an eighth of the system's per-user limit (``fs.inotify.max_user_watches``)."""
        if budget < 0:
            budget = _system_limit() // 8
        if budget <= 0:
            return None
        try:
            device = os.stat(root).st_dev
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                fstype = filesystem_type(device, f.read())
            api = _Inotify()
            os.close(api.open())
        except (OSError, AttributeError):
            return None
        if fstype not in LOCAL_FILESYSTEMS:
            return None
        return cls(device, budget, ignore, api)

    @property
    def watches(self) -> int:
        """How many inodes this process watches now."""
        return len(self._inode_of)

    # -- building a token (pool threads) --------------------------------------------------
    def begin(self, dir_fd: int, st: os.stat_result) -> Token | None:
        """A token for the directory open as ``dir_fd`` (whose fstat is ``st``), with the
        directory's own watch in place; None when it cannot be watched.  Call before the
        directory is read."""
        if st.st_dev != self.device:
            return None
        token = Token((st.st_dev, st.st_ino))
        with self._lock:
            if not self._ready():
                return None
            # Events queued so far tell of changes made before this listing reads anything:
            # applied before the token holds a watch, they do not make it stale.
            self._drain()
            wd = self._watch(f"/proc/self/fd/{dir_fd}", DIR_MASK | IN_ONLYDIR, token.dir)
            if wd is None:
                return None
            self._hold(token, wd)
        return token

    def sync(self) -> None:
        """Apply the queued events.  Call after the directory was read and before members
        are attached: a watch whose inode is gone (its number maybe reused by a member just
        read) is ended by then, since the kernel queues that before freeing the number."""
        with self._lock:
            if self._fd >= 0 and self._pid == os.getpid():
                self._drain()

    def attach(self, token: Token, dir_fd: int, name: str, inode: int, is_dir: bool) -> bool:
        """Make ``token`` depend on member ``name`` (inode number ``inode``, from the
        directory entry) of the directory open as ``dir_fd``.  Call before the member is
        stat-ed; False (and ``token`` abandoned) when it cannot be watched."""
        key = (self.device, inode)
        with self._lock:
            if token.stale:
                return False
            wd = self._wd_of.get(key)
            if wd is None:
                mask = (DIR_MASK | IN_ONLYDIR) if is_dir else FILE_MASK
                wd = self._watch(f"/proc/self/fd/{dir_fd}/{name}", mask | IN_DONT_FOLLOW, key)
                if wd is None:
                    token.stale = True
                    return False
            self._hold(token, wd)
        return True

    def confirm(self, token: Token, inode: int, st: os.stat_result, is_dir: bool) -> bool:
        """After the member's ``lstat``: it is still the inode that was attached, of the
        kind whose mask was used, on the root's device.  Otherwise the token is abandoned."""
        mode = st.st_mode
        same = (
            st.st_ino == inode
            and st.st_dev == self.device
            and (stat_mod.S_ISDIR(mode) if is_dir else stat_mod.S_ISREG(mode))
        )
        if not same:
            token.stale = True
        return same

    def _ready(self) -> bool:
        pid = os.getpid()
        if self._fd >= 0 and self._pid == pid:
            return True
        # First use in this process (a forked worker must not share its parent's queue).
        self._wd_of.clear()
        self._inode_of.clear()
        self._deps.clear()
        try:
            self._fd = self._api.open()
        except OSError:
            self._fd = -1
            return False
        self._pid = pid
        return True

    def _watch(self, path: str, mask: int, key: tuple[int, int]) -> int | None:
        if len(self._inode_of) >= self.budget and key not in self._wd_of:
            return None
        try:
            wd = self._api.add(self._fd, path, mask)
        except OSError:
            return None  # gone meanwhile, a symlink now, out of watches (ENOSPC)
        known = self._inode_of.get(wd)
        if known is not None and known != key:  # a stale number reused: forget the old
            self._end(wd)
        self._wd_of[key] = wd
        self._inode_of[wd] = key
        return wd

    def _hold(self, token: Token, wd: int) -> None:
        token.wds.append(wd)
        self._deps.setdefault(wd, set()).add(token)

    # -- checking and dropping (event loop) -----------------------------------------------
    def current(self, token: Token, directory: tuple[int, int]) -> bool:
        """True when nothing ``token`` depends on has changed and the listed path still
        names the same directory (``directory``: its device and inode now)."""
        if token.stale or token.dir != directory:
            return False
        with self._lock:
            if self._fd >= 0 and self._pid == os.getpid():
                self._drain()
            else:
                token.stale = True
        return not token.stale

    def release(self, token: Token) -> None:
        """The listing kept with ``token`` was dropped: end the watches nothing else needs."""
        token.stale = True
        with self._lock:
            if self._pid != os.getpid():
                return
            for wd in token.wds:
                deps = self._deps.get(wd)
                if deps is None:
                    continue
                deps.discard(token)
                if not deps:
                    self._end(wd)
                    self._api.rm(self._fd, wd)
            token.wds = []

    def _end(self, wd: int) -> None:
        for token in self._deps.pop(wd, ()):
            token.stale = True
        key = self._inode_of.pop(wd, None)
        if key is not None and self._wd_of.get(key) == wd:
            del self._wd_of[key]

    def _drain(self) -> None:
        while True:
            try:
                buf = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not buf:
                return
            self._apply(parse_events(buf))

    def _apply(self, events: list[tuple[int, int, str]]) -> None:
        for wd, mask, name in events:
            if mask & IN_Q_OVERFLOW:  # events were lost: nothing kept can be trusted
                self.overflows += 1
                for held in self._deps.values():
                    for token in held:
                        token.stale = True
                continue
            if mask & (IN_IGNORED | IN_UNMOUNT | IN_DELETE_SELF):
                self._end(wd)
                continue
            deps = self._deps.get(wd)
            if not deps:
                continue
            if name and self._ignore(name):
                # A reserved name (an upload's temp file): never a member, but creating or
                # removing it changes this directory's mtime, which a parent's listing shows.
                if not mask & NAMESPACE:
                    continue
                for token in deps:
                    if token.dir != self._inode_of.get(wd):
                        token.stale = True
                continue
            for token in deps:
                token.stale = True
