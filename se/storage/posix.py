"""The POSIX backend: the only module that touches the data tree.

Everything a handler needs from the filesystem goes through :class:`PosixBackend`.  Cheap
metadata calls (open, fstat, a small read, an xattr get) run inline on the event loop,
because on a local filesystem they cost microseconds and a thread hop would cost more (the
small-GET benchmark decides this); bulk work (uploads, listings, checksum computation,
recursive copy/delete, fsync) runs on the I/O thread pool.  OS errors are translated into
``se.errors`` here, in :func:`map_oserror`, and nowhere else.

Uploads are atomic: bytes go to a hidden temp file in the target directory (its name has a
hash of the target's name, so :meth:`PosixBackend.writing` tells a write in progress from any
process) while every configured checksum is updated, then fsync, checksum xattrs, and a
rename (or a link when overwriting is forbidden), then an fsync of the directory, shared by
the uploads that commit into it at the same moment (a group commit,
:meth:`PosixBackend.put_in_place`).  A body within one write batch is written, fsynced and
put in place by one job.  Any failure unlinks the temp file; temp files orphaned by a crash
are swept at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import select
import shutil
import stat as stat_mod
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from se.config import Config, checksum_algorithms, state_dir
from se.errors import (
    BadRequest,
    ChecksumMismatch,
    Conflict,
    Forbidden,
    InsufficientStorage,
    MethodNotAllowed,
    NotFound,
    PreconditionFailed,
    SEError,
    ServiceUnavailable,
)
from se.storage import beneath, checksums, xattrs
from se.storage.dirwatch import DirWatch, Token
from se.storage.paths import RESERVED_PREFIX, TEMP_PREFIX, DavPath, is_reserved, is_temp_name
from se.storage.statcache import FileCache
from se.storage.types import CachedFile, DirEntry, Identity, OpenFile, Stat, identity_of
from se.storage.usage import (
    DELETE_KEY,
    Deltas,
    SpaceTracker,
    dir_locked,
    file_usage,
    tree_usage,
)

__all__ = [
    "PosixBackend",
    "Upload",
    "UploadResult",
    "map_oserror",
]

log = logging.getLogger("se.storage")
# Symlinks followed while resolving one path before it is refused (the kernel's limit).
MAX_SYMLINKS = 40
# Linux's clock id (not exported by the time module) for the clock file times come from.
CLOCK_REALTIME_COARSE = 5
# flock errors meaning "this filesystem has no locks".
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL)
T = TypeVar("T")
# Bytes read from the socket at a time by a direct upload: small enough to stay in a core's L2
# cache from the read through the checksum to the write (4 MiB ran 1.5x slower here).
RECV_BUFFER = 256 * 1024
# A listing caller's "I already have this member as it is now" test (see list_dir).


def map_oserror(exc: OSError, what: str) -> SEError:
    """The one errno -> domain error table."""
    code = exc.errno
    if code == errno.ENOENT:
        return NotFound(f"{what}: not found")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return Forbidden(f"{what}: permission denied")
    if code in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(f"{what}: insufficient storage")
    if code in (errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.EINVAL):
        return Conflict(f"{what}: {exc.strerror.lower() if exc.strerror else 'conflict'}")
    if code == errno.ENAMETOOLONG:
        return BadRequest(f"{what}: name too long")
    return SEError(f"{what}: I/O error ({exc.strerror})")


def _guarded_paths(cfg: Config, root_prefix: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The server's own state (directory; token secret and tape database files) where it
    lies inside the root under a name that is not reserved: never served, whatever path
    or symlink leads there.  Paths relative to the root, resolved."""

    def below(path: str) -> str | None:
        real = os.path.realpath(os.path.abspath(path))
        return real[len(root_prefix) :] if real.startswith(root_prefix) else None

    dirs = [below(str(state_dir(cfg)))]
    files = [below(cfg.tpc.macaroon_secret_file) if cfg.tpc.macaroon_secret_file else None]
    if cfg.tape.database and "://" not in cfg.tape.database:
        files.append(below(cfg.tape.database))  # also its -wal/-shm/-journal files
    if cfg.space.database and "://" not in cfg.space.database:
        files.append(below(cfg.space.database))
    return tuple(d for d in dirs if d), tuple(f for f in files if f)


def _temp_prefix(target_name: str) -> str:
    """The start of the temp file names of writes into ``target_name`` (in its directory):
    a short hash of the name, so that another process can tell a write is in progress."""
    tag = hashlib.blake2b(os.fsencode(target_name), digest_size=8).hexdigest()
    return f"{TEMP_PREFIX}{tag}-"


def _create_temp(directory: str, target_name: str, dir_fd: int | None = None) -> tuple[str, int]:
    """Create a new upload temp file for ``target_name`` in ``directory`` and hold an
    exclusive flock on it for as long as it is open: a temp file that can be locked has no
    live writer (its process is gone), so the start-up sweep removes it at once.  Returns
    (path, fd)."""
    name = f"{_temp_prefix(target_name)}{uuid.uuid4().hex}"
    path = os.path.join(directory, name)
    where = name if dir_fd is not None else path
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(where, flags, 0o644, dir_fd=dir_fd)
    try:
        # Blocking: the only other holder can be a sweep looking at it for a moment.
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        if exc.errno in _NO_LOCKS:  # the sweep then relies on stale_upload_age alone
            return path, fd
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(where, dir_fd=dir_fd)
        raise
    return path, fd


def _copy_data(src: int, dst: int) -> None:
    """Copy a whole file between two fds, in the kernel (copy_file_range, which may share
    extents; sendfile where that is refused, e.g. across filesystems)."""
    offset = 0
    try:
        while n := os.copy_file_range(src, dst, 1 << 30, offset, offset):
            offset += n
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    os.lseek(dst, offset, os.SEEK_SET)
    while n := os.sendfile(dst, src, offset, 1 << 30):
        offset += n


@dataclass(frozen=True, slots=True)
class UploadResult:
    created: bool
    stat: Stat
    digests: dict[str, bytes]


class Upload:
    """One PUT in progress: feed bytes, then commit or abort.

    Writes are batched to ``chunk_size`` and handed to the thread pool one batch at a time,
    so the next batch is received while the previous one is hashed and written.  A body
    within one batch (a small PUT) is written, fsynced and put in place by one job, its
    commit.
    """

    def __init__(
        self,
        backend: PosixBackend,
        path: DavPath,
        target: str,
        algorithms: tuple[str, ...],
        overwrite: bool,
    ) -> None:
        self.backend = backend
        self.path = path
        self._target = target
        self._temp = ""  # made by _open_locked (at begin_upload)
        self._fd = -1
        self._closed = False  # committed or aborted: no more writes
        self._hasher = checksums.MultiHasher(algorithms)
        self._overwrite = overwrite
        self._batch: list[bytes] = []
        self._batch_len = 0
        self._inflight: asyncio.Future[None] | None = None
        self.received = 0
        self._done = False
        self._positional = False  # written with write_at: checksums computed at the end
        # Held by whichever pool thread is writing, so that an abort (after a cancellation
        # whose thread is still running) never closes the file under it.
        self._io_lock = threading.Lock()

    def _write_batch(self, batch: list[bytes]) -> None:
        """Hash and write one batch (on the I/O pool; one batch at a time per upload)."""
        with self._io_lock:
            self._write_batch_locked(batch)

    def _open_locked(self) -> None:
        """Make the temp file (and missing parents) if it is not there yet."""
        if self._closed:
            raise ConnectionAbortedError("upload already finished")
        if self._fd >= 0:
            return
        parent, name = os.path.split(self._target)
        try:
            try:
                self._temp, self._fd = _create_temp(parent, name)
            except FileNotFoundError:
                if not self.backend.create_parents:
                    raise
                os.makedirs(parent, exist_ok=True)
                self._temp, self._fd = _create_temp(parent, name)
        except (FileExistsError, NotADirectoryError):
            raise Conflict(f"{self.path.parent}: parent is not a collection") from None
        except OSError as exc:
            raise map_oserror(exc, str(self.path)) from None

    def _open_sync(self) -> None:
        with self._io_lock:
            self._open_locked()

    def _write_batch_locked(self, batch: list[bytes]) -> None:
        self._open_locked()
        for chunk in batch:
            self._hasher.update(chunk)
        try:
            written = os.writev(self._fd, batch)
            total = sum(len(c) for c in batch)
            if written < total:  # short writes are rare on regular files; finish them
                rest = memoryview(b"".join(batch))[written:]
                while rest:
                    rest = rest[os.write(self._fd, rest) :]
        except OSError as exc:
            raise map_oserror(exc, str(self.path)) from None

    async def _flush(self) -> None:
        if self._inflight is not None:
            fut, self._inflight = self._inflight, None
            await fut
        if self._batch:
            batch, self._batch, self._batch_len = self._batch, [], 0
            self._inflight = asyncio.ensure_future(self.backend.run(self._write_batch, batch))

    async def _settle(self) -> None:
        """Write out everything fed so far and wait until it is on the file."""
        await self._flush()
        if self._inflight is not None:
            fut, self._inflight = self._inflight, None
            await fut

    async def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.received += len(chunk)
        self._batch.append(chunk)
        self._batch_len += len(chunk)
        if self._batch_len >= self.backend.chunk_size or len(self._batch) >= 512:
            await self._flush()

    async def receive_from_socket(self, sock_fd: int, count: int, stop: threading.Event) -> None:
        """Take ``count`` more body bytes straight from a (non-blocking) socket on the pool.

        The thread owns and closes ``sock_fd`` (a duplicate of the connection's socket, so
        the number can never be recycled under it).
        """
        await self._settle()
        await self.backend.run(self._receive_sync, sock_fd, count, stop)

    def _receive_sync(self, sock_fd: int, count: int, stop: threading.Event) -> None:
        with self._io_lock:
            self._receive_locked(sock_fd, count, stop)

    def _receive_locked(self, sock_fd: int, count: int, stop: threading.Event) -> None:
        # After a write error (a full disk) the rest of the body is still read and dropped,
        # so that the client, still sending, gets to read the error response.
        failed: OSError | None = None
        try:
            self._open_locked()
            buf = bytearray(min(self.backend.chunk_size, RECV_BUFFER))
            view = memoryview(buf)
            poller = select.poll()
            poller.register(sock_fd, select.POLLIN)
            last = time.monotonic()
            stall = self.backend.body_stall_timeout
            wait_ms = max(10, min(500, int(stall * 250)))
            while count > 0:
                if stop.is_set():
                    raise ConnectionAbortedError("upload cancelled")
                try:
                    n = os.readv(sock_fd, [view[: min(len(buf), count)]])
                except BlockingIOError:
                    poller.poll(wait_ms)
                    if time.monotonic() - last > stall:
                        raise TimeoutError("client stopped sending") from None
                    continue
                if n == 0:
                    raise ConnectionResetError("client closed the connection")
                last = time.monotonic()
                count -= n
                if failed is not None:
                    continue
                data = view[:n]
                self._hasher.update(data)
                try:
                    while data:
                        data = data[os.write(self._fd, data) :]
                except OSError as exc:
                    failed = exc
                self.received += n
        finally:
            os.close(sock_fd)
        if failed is not None:
            raise map_oserror(failed, str(self.path))

    async def write_at(self, offset: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``offset`` (multi-stream transfers fill one file out of order).

        Checksums of a file written this way are computed from the assembled file at
        :meth:`digests` / :meth:`commit`.
        """
        self._positional = True
        await self.backend.run(self._pwrite_sync, offset, data)
        self.received += len(data)

    def _pwrite_sync(self, offset: int, data: bytes | memoryview) -> None:
        with self._io_lock:
            self._open_locked()
            view = memoryview(data)
            try:
                while view:
                    n = os.pwrite(self._fd, view, offset)
                    view = view[n:]
                    offset += n
            except OSError as exc:
                raise map_oserror(exc, str(self.path)) from None

    async def digests(self) -> dict[str, bytes]:
        """The checksums of everything written so far (before :meth:`commit`)."""
        await self._settle()
        if self._positional:
            await self.backend.run(self._rehash_sync)
        return self._hasher.digests()

    def _rehash_sync(self) -> None:
        with self._io_lock:
            self._open_locked()
            hasher = checksums.MultiHasher(self._hasher.algorithms)
            offset = 0
            while True:
                data = os.pread(self._fd, self.backend.chunk_size, offset)
                if not data:
                    break
                hasher.update(data)
                offset += len(data)
            self._hasher = hasher
            self._positional = False

    async def commit(self, expected: dict[str, bytes]) -> UploadResult:
        # The last batch is written by the commit's own job: a small upload costs two
        # thread hops (begin, commit), not three.
        if self._inflight is not None:
            fut, self._inflight = self._inflight, None
            await fut
        batch, self._batch, self._batch_len = self._batch, [], 0
        if self._positional:
            await self.backend.run(self._rehash_sync)
        result = await self.backend.run(self._commit_sync, expected, batch)
        self._done = True
        await self.backend.notify("written", self.path, result.stat.size)
        return result

    def _commit_sync(self, expected: dict[str, bytes], batch: list[bytes]) -> UploadResult:
        if batch:
            self._write_batch(batch)
        else:
            self._open_sync()  # an empty body: the file is made here
        digests = self._hasher.digests()
        for alg, want in expected.items():
            got = digests.get(alg)
            if got is not None and got != want:
                raise ChecksumMismatch(checksums.describe_mismatch(alg, want, got))
        try:
            if self.backend.fsync:
                os.fsync(self._fd)
            st = Stat.of(os.fstat(self._fd))
            xattrs.write_checksums(
                self._fd, digests, st.size, st.mtime_ns, self.backend.write_xrootd
            )
            created = not os.path.lexists(self._target)
            self.backend.put_in_place(self, st.size)
            self._closed = True
            os.close(self._fd)
            self._fd = -1
        except OSError as exc:
            raise map_oserror(exc, str(self.path)) from None
        return UploadResult(created, st, digests)

    def _place_sync(self) -> None:
        """Rename (or link) the temp file into place; raises what refuses it.  Renamed while
        still open, so still locked: a start-up sweep never sees it lockable (writer gone)
        before it is in place."""
        if self._overwrite:
            if os.path.isdir(self._target):
                raise Conflict(f"{self.path}: is a collection")
            os.rename(self._temp, self._target)
        else:
            try:
                os.link(self._temp, self._target)
            except FileExistsError:
                raise PreconditionFailed(f"{self.path} exists and Overwrite is F") from None

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        if self._inflight is not None:
            with contextlib.suppress(Exception):  # the upload is being dropped anyway
                await self._inflight
            self._inflight = None
        await self.backend.run(self._abort_sync)

    def _abort_sync(self) -> None:
        with self._io_lock:
            self._abort_locked()

    def _abort_locked(self) -> None:
        self._closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._temp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._temp)


# A directory opened to be read or locked, never through a symlink.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _named(exc: OSError, path: str) -> OSError:
    """``exc`` naming ``path`` (an operation relative to a directory names only the member)."""
    exc.filename = path
    return exc


@contextlib.contextmanager
def _dirs_locked(space: SpaceTracker | None, dirs: Sequence[str]) -> Iterator[None]:
    """:func:`dir_locked` on each of ``dirs`` (a file MOVE's two parents, a file COPY's
    destination parent), so that writes to the names involved are counted in turn with the
    operation.  Each directory once (by identity: two spellings of one directory would lock
    against each other) and in one order everywhere, so two holders never wait on each
    other; one that cannot be opened is left unlocked (the operation then fails on it).
    Without space accounting, nothing."""
    if space is None:
        yield
        return
    fds: dict[tuple[int, int], int] = {}
    try:
        for d in dirs:
            try:
                fd = os.open(d, _DIR_FLAGS)
            except OSError:
                continue
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in fds:
                os.close(fd)
            else:
                fds[(st.st_dev, st.st_ino)] = fd
        for key in sorted(fds):
            with contextlib.suppress(OSError):  # no locks here: go on without
                fcntl.flock(fds[key], fcntl.LOCK_EX)
        yield
    finally:
        for fd in fds.values():
            os.close(fd)


def _mapped(exc: BaseException, item: _Placing) -> BaseException:
    """One upload's own error for a failure of its group (an OSError named by its path)."""
    if isinstance(exc, OSError):
        return map_oserror(exc, str(item.upload.path))
    return exc


def _undo(space: SpaceTracker, deltas: Deltas, pending: str | None = None) -> None:
    """Take back deltas that were admitted for a change that then did not happen."""
    back = Deltas()
    back.merge(deltas, -1)
    try:
        space.apply(back, pending)
    except Exception:
        log.exception("space accounting: cannot take back %r", deltas)


def _settle(space: SpaceTracker, pending: tuple[str, str]) -> None:
    """An upload is in place; a failure to say so only leaves work for the recovery."""
    try:
        space.settle(pending)
    except Exception:
        log.exception("space accounting: cannot settle %s", pending[0])


@contextlib.contextmanager
def _counted_after(space: SpaceTracker | None) -> Iterator[Deltas]:
    """A change whose count comes with or after its effect on disk (a tree deleted, copied
    or moved; what an overwriting MOVE or COPY removes): marked in flight for as long as it
    runs (a reconciliation meanwhile waits rather than walk half of it), and the deltas the
    caller adds to the yielded :class:`Deltas` recorded with the end of the mark, in one
    transaction, however the block ends.  A failure to record is logged, not raised: the
    change stands, and the next reconciliation corrects the totals."""
    if space is None:
        yield Deltas()
        return
    key: str | None = None
    try:
        key = space.begin_change()
    except Exception:
        log.exception("space accounting: cannot mark a change in flight")
    counted = Deltas()
    try:
        yield counted
    finally:
        try:
            space.apply(counted, settle=key)
        except Exception:
            log.exception("space accounting: cannot record %r", counted)
            if key is not None:  # at least the mark goes (batched, retried)
                with contextlib.suppress(Exception):
                    space.settle((key, ""))


class _Placing:
    """One upload waiting for its directory's group commit (see PosixBackend.put_in_place)."""

    __slots__ = ("done", "error", "lead", "size", "upload")

    def __init__(self, upload: Upload, size: int) -> None:
        self.upload = upload
        self.size = size
        self.done = threading.Event()
        self.lead = False  # woken to lead the next group, not with a result
        self.error: BaseException | None = None


class StorageObserver(Protocol):
    """Told about every change a backend made (after it is done): the tape catalogue."""

    async def written(self, path: DavPath, size: int) -> None: ...

    async def removed(self, path: DavPath) -> None: ...

    async def renamed(self, src: DavPath, dst: DavPath) -> None: ...

    async def copied(self, dst: DavPath, size: int | None) -> None: ...


class PosixBackend:
    """File operations below one root directory."""

    observer: StorageObserver | None = None
    # Space accounting (se.space), told the exact deltas of every write on the I/O thread.
    space: SpaceTracker | None = None

    def __init__(
        self,
        cfg: Config,
        executor: Executor,
        file_cache: FileCache | None = None,
        dirwatch: DirWatch | None = None,
    ) -> None:
        self.file_cache = file_cache
        self.dirwatch = dirwatch
        self.root = os.path.abspath(cfg.storage.root)
        self.root_real = os.path.realpath(self.root)
        self.executor = executor
        self.chunk_size = cfg.storage.chunk_size
        self.inline_read_max = cfg.storage.inline_read_max
        self.fsync = cfg.storage.fsync
        self.create_parents = cfg.storage.create_parents
        self.write_xrootd = cfg.checksums.write_xrootd
        self.algorithms = checksum_algorithms(cfg)
        self._stale_age = cfg.storage.stale_upload_age
        self.body_stall_timeout = cfg.storage.body_stall_timeout
        # Temp files last written before this instant, and lockable, belong to a writer
        # that is gone (see sweep_temp_files).  The coarse clock is the one file times are
        # taken from, so a file written after this instant never has an earlier mtime.
        self._started_ns = time.clock_gettime_ns(CLOCK_REALTIME_COARSE)
        self._root_prefix = self.root_real.rstrip(os.sep) + os.sep
        self._guarded_dirs, self._guarded_files = _guarded_paths(cfg, self._root_prefix)
        self._root_fd = -1
        self._root_lock = threading.Lock()
        # Group commits in progress: directory -> uploads waiting for the next group there
        # (present while a leader is at work there; see put_in_place).
        self._groups: dict[str, list[_Placing]] = {}
        self._groups_lock = threading.Lock()
        self._computing: dict[
            tuple[int, int, int, int, tuple[str, ...]], asyncio.Future[dict[str, bytes]]
        ] = {}

    # -- helpers ---------------------------------------------------------------------
    async def run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        try:
            job = loop.run_in_executor(self.executor, fn, *args)
        except RuntimeError:  # the I/O threads are gone: a request that outlived the stop
            raise ServiceUnavailable("server is stopping") from None
        return await job

    def fs_path(self, p: DavPath) -> str:
        return os.path.join(self.root, p.rel) if p.segments else self.root

    # -- confinement: no symlink leads out of the root, onto a reserved name or into
    # the server's own state, whatever the tree holds ---------------------------------
    def _resolve(self, segments: Sequence[str], follow: bool, what: object) -> list[str]:
        """Resolve a path below the root one component at a time, following symlinks as
        the kernel would, and refuse (Forbidden) any that leads out of the root, onto a
        reserved ``.se-*`` name or into the server's state.  The result (components below
        ``root_real``) names no symlink, except the last component when ``follow`` is
        False; components that do not exist (yet) are kept as they are.
        """
        prefix = self._root_prefix
        real: list[str] = []
        todo = list(reversed(segments))
        links = 0
        while todo:
            name = todo.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if not real:
                    raise Forbidden(f"{what}: leads outside the storage root")
                real.pop()
                continue
            if is_reserved(name):
                raise Forbidden(f"{what}: leads to a name reserved for the server")
            real.append(name)
            if not todo and not follow:
                break
            here = prefix + "/".join(real)
            try:
                if not stat_mod.S_ISLNK(os.lstat(here).st_mode):
                    continue
                target = os.readlink(here)
            except OSError:  # missing, or below a non-directory: no link further on
                continue
            links += 1
            if links > MAX_SYMLINKS:
                raise Forbidden(f"{what}: too many levels of symbolic links")
            real.pop()
            if target.startswith("/"):
                for base in (self.root_real, self.root):
                    if target == base or target.startswith(base.rstrip(os.sep) + os.sep):
                        target = target[len(base) :]
                        break
                else:
                    raise Forbidden(f"{what}: leads outside the storage root")
                real = []
            todo.extend(reversed(target.split("/")))
        if self._guarded(real):
            raise Forbidden(f"{what}: leads into the server's state")
        return real

    def _guarded(self, real: Sequence[str]) -> bool:
        """Whether components below the root name the state dir/files (when inside)."""
        if not (self._guarded_dirs or self._guarded_files):
            return False
        rel = "/".join(real)
        return any(rel == d or rel.startswith(d + "/") for d in self._guarded_dirs) or any(
            rel.startswith(f) for f in self._guarded_files
        )

    def _allowed_real(self, real: str) -> bool:
        """Whether a resolved absolute path may be served (the check on an open fd)."""
        if real == self.root_real:
            return True
        if not real.startswith(self._root_prefix):
            return False
        rel = real[len(self._root_prefix) :]
        if rel.startswith(RESERVED_PREFIX) or "/" + RESERVED_PREFIX in rel:
            return False
        return not self._guarded(rel.split("/"))

    def _checked(self, p: DavPath, follow: bool = True) -> str:
        """The filesystem path of p with every parent resolved and checked (see _resolve).

        The last component is left as it is (so that unlink and rename act on a link, not
        on its target); with ``follow`` a symlink there must also lead somewhere allowed.
        """
        real = self._resolve(p.segments, False, p)
        if not real:
            return self.root_real
        fs = self._root_prefix + "/".join(real)
        if follow:
            try:
                is_link = stat_mod.S_ISLNK(os.lstat(fs).st_mode)
            except OSError:
                is_link = False
            if is_link:
                self._resolve(real, True, p)
        return fs

    def real_path(self, p: DavPath) -> str:
        """The resolved filesystem path of p (inside the root, or Forbidden)."""
        real = self._resolve(p.segments, True, p)
        return self._root_prefix + "/".join(real) if real else self.root_real

    def _rootfd(self) -> int:
        if self._root_fd < 0:
            with self._root_lock:
                if self._root_fd < 0:
                    fd = os.open(self.root_real, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                    weakref.finalize(self, os.close, fd)
                    self._root_fd = fd
        return self._root_fd

    def _open_beneath(self, p: DavPath, flags: int) -> int:
        """Open p without ever leaving the root or following a magic link, never blocking
        (O_NONBLOCK: a FIFO opens at once), and check what was opened (its path, read back
        from /proc) is neither reserved nor the server's state."""
        flags |= os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
        try:
            fd = -1
            if beneath.available():
                try:
                    fd = beneath.openat2(
                        self._rootfd(),
                        p.rel,
                        flags,
                        beneath.RESOLVE_BENEATH | beneath.RESOLVE_NO_MAGICLINKS,
                    )
                except OSError as exc:
                    # EXDEV: an absolute symlink (maybe into the root) or a way out; ELOOP:
                    # a loop or a magic link.  The walk decides and says why.
                    if exc.errno not in (errno.EXDEV, errno.ELOOP):
                        raise
            if fd < 0:
                fd = beneath.open_components(
                    self._rootfd(), self._resolve(p.segments, True, p), flags
                )
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{p}: not found") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Forbidden(f"{p}: symbolic link changed while being opened") from None
            if exc.errno in (errno.ENXIO, errno.ENODEV):  # a socket, a device without driver
                raise Forbidden(f"{p}: not a regular file or collection") from None
            raise map_oserror(exc, str(p)) from None
        try:
            if not self._allowed_real(os.readlink(f"/proc/self/fd/{fd}")):
                raise Forbidden(f"{p}: leads outside the storage root or into its state")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def put_in_place(self, upload: Upload, size: int) -> None:
        """Rename an upload's temp file (fsynced, xattrs written) into place, count it in its
        share, and fsync the directory; raises what refused it (nothing then in place).

        Group commit: uploads committing into one directory at the same moment are put in
        place together by one of their threads (the leader): one directory flock, one
        accounting transaction, the renames, then one directory fsync for all of them, made
        after the last of their renames, before any of them is answered.  The others wait
        (their file data already fsynced, each in its own thread, all in flight at once); a
        leader does one group and hands the lead to the first upload that arrived meanwhile.
        """
        if self.space is None and not self.fsync:  # nothing to share: no lock, no fsync
            upload._place_sync()
            return
        item = _Placing(upload, size)
        parent = os.path.dirname(upload._target)
        with self._groups_lock:
            queue = self._groups.get(parent)
            lead = queue is None
            if queue is None:
                queue = self._groups[parent] = []
            queue.append(item)
        if not lead:
            item.done.wait()
        if lead or item.lead:
            with self._groups_lock:
                group = self._groups[parent]
                self._groups[parent] = []
            done: list[_Placing] = []
            placed: list[_Placing] = []
            try:
                done, placed = self._place_group(parent, group)
            finally:
                # The next group may rename while this one's directory fsync is in flight.
                with self._groups_lock:
                    queue = self._groups[parent]
                    if queue:
                        queue[0].lead = True
                        queue[0].done.set()
                    else:
                        del self._groups[parent]
                try:
                    if placed:
                        self.fsync_dir(parent)  # after the last rename of the group
                except BaseException as exc:
                    for each in placed:
                        each.error = each.error or _mapped(exc, each)
                finally:
                    for each in done:
                        each.done.set()
        if item.error is not None:
            raise item.error

    def _place_group(
        self, parent: str, group: list[_Placing]
    ) -> tuple[list[_Placing], list[_Placing]]:
        """Put ``group`` (uploads into ``parent``) in place, each with its error if it was
        refused; never raises.  (The uploads decided, those of them now in place.)"""
        # Two writes racing for one name are counted in turn: the later ones go to the
        # next group (each reads the size it replaces after the previous one is in place).
        seen: set[str] = set()
        now: list[_Placing] = []
        later: list[_Placing] = []
        for item in group:
            target = item.upload._target
            (later if target in seen else now).append(item)
            seen.add(target)
        if later:
            with self._groups_lock:
                self._groups[parent][:0] = later
        placed: list[_Placing] = []
        try:
            # Space: the size each replaces, counted (and, for a share with a limit, admitted:
            # InsufficientStorage) before it is in place, taken back if it does not get there;
            # under the directory's lock, so that writes racing for one name (from any
            # process) count in turn.
            space = self.space
            with dir_locked(parent) if space is not None else contextlib.nullcontext():
                admitted = now
                pending: list[tuple[str, str]] = []
                deltas: list[Deltas] = []
                if space is not None:
                    for item in now:
                        up = item.upload
                        old = file_usage(up._target) if up._overwrite else None
                        d = Deltas()
                        d.add(space.share_key(up.path), item.size - (old or 0), int(old is None))
                        deltas.append(d)
                        pending.append((up._temp, up._target))
                    refused = space.admit_many(list(zip(deltas, pending, strict=True)))
                    admitted = []
                    for item, why in zip(now, refused, strict=True):
                        if why is None:
                            admitted.append(item)
                        else:
                            item.error = why
                    kept = {id(item) for item in admitted}
                    deltas = [d for d, item in zip(deltas, now, strict=True) if id(item) in kept]
                    pending = [p for p, item in zip(pending, now, strict=True) if id(item) in kept]
                for i, item in enumerate(admitted):
                    try:
                        item.upload._place_sync()
                    except BaseException as exc:
                        item.error = exc if isinstance(exc, SEError) else _mapped(exc, item)
                        if space is not None and deltas[i]:
                            _undo(space, deltas[i], item.upload._temp)
                        continue
                    if space is not None and deltas[i]:
                        _settle(space, pending[i])
                    placed.append(item)
                for item in placed:
                    if not item.upload._overwrite:
                        try:
                            os.unlink(item.upload._temp)
                        except OSError as exc:
                            item.error = map_oserror(exc, str(item.upload.path))
        except BaseException as exc:
            for item in now:
                if item.error is None:
                    item.error = _mapped(exc, item)
        return now, [item for item in placed if item.error is None]

    def fsync_dir(self, path: str) -> None:
        if not self.fsync:
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- reads -----------------------------------------------------------------------
    def stat(self, p: DavPath) -> Stat | None:
        fs = self._checked(p)
        try:
            return Stat.of(os.stat(fs))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise map_oserror(exc, str(p)) from None

    def open_read(self, p: DavPath, use_cache: bool = True) -> OpenFile | CachedFile | Stat:
        """Open a file for reading (or take it from the small-file cache), or return the
        Stat of a collection.

        A cached file is handed out only if one stat of the path, made now, gives exactly
        the Stat (device, inode, size, mtime, ctime) it was read with (se.storage.statcache
        says why that cannot serve old bytes); any difference is a miss that opens the file
        through the confinement checks of :meth:`_open_read`.
        """
        cache = self.file_cache
        if not use_cache or cache is None or not p.segments:
            return self._open_read(p)
        key = p.segments
        if cache.peek(key) is not None:
            hit = cache.get(key, self.identity(p))
            if hit is not None:
                return hit
        opened = self._open_read(p)
        if not isinstance(opened, OpenFile):
            return opened
        st = opened.stat
        if st.size > self.inline_read_max or not cache.storable(st):
            return opened
        try:
            data = os.pread(opened.fd, st.size, 0)
            after = Stat.of(os.fstat(opened.fd))  # no write while reading
        except OSError:
            return opened
        if len(data) != st.size or after != st:
            return opened
        opened.close()
        cached = CachedFile(st, p, data)
        cache.put(key, cached)  # refused if it changed less than settle_ns before now
        return cached

    def identity(self, p: DavPath) -> Identity | None:
        """The identity of what ``p`` names now (None if nothing), by one stat relative to
        the root's descriptor: what a cached answer about ``p`` is checked against (see
        se.storage.statcache for why that is enough)."""
        try:
            return identity_of(os.stat(p.rel, dir_fd=self._rootfd()))
        except OSError:
            return None

    def _open_read(self, p: DavPath) -> OpenFile | Stat:
        """Open p (a regular file) for reading, or the Stat of a collection; anything else
        (FIFO, socket, device) is Forbidden, found out without blocking."""
        fd = self._open_beneath(p, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISDIR(st.st_mode):
                os.close(fd)
                return Stat.of(st)
            if not stat_mod.S_ISREG(st.st_mode):
                raise Forbidden(f"{p}: not a regular file or collection")
        except BaseException:
            os.close(fd)
            raise
        return OpenFile(fd, Stat.of(st), p)

    def read_small(self, f: OpenFile | CachedFile, offset: int, length: int) -> bytes:
        if isinstance(f, CachedFile):
            return f.data[offset : offset + length]
        return os.pread(f.fd, length, offset)

    async def read_range(self, f: OpenFile | CachedFile, offset: int, length: int) -> bytes:
        if isinstance(f, CachedFile):
            return f.data[offset : offset + length]
        return await self.run(os.pread, f.fd, length, offset)

    def cached_checksums(self, target: int | str, st: Stat) -> dict[str, bytes]:
        try:
            return xattrs.read_checksums(target, st.size, st.mtime_ns)
        except OSError:
            return {}

    async def checksums(self, f: OpenFile, wanted: tuple[str, ...]) -> dict[str, bytes]:
        """Checksums of an open file: the cached ones, computing (and caching) what is missing."""
        have = self.cached_checksums(f.fd, f.stat)
        missing = tuple(a for a in wanted if a not in have)
        if missing:
            st = f.stat
            key = (st.dev, st.ino, st.mtime_ns, st.size, missing)
            fut = self._computing.get(key)
            if fut is None:
                fut = asyncio.ensure_future(self.run(self._compute, f.fd, st, missing))
                self._computing[key] = fut
                fut.add_done_callback(lambda _f: self._computing.pop(key, None))
            have.update(await asyncio.shield(fut))
        return have

    def _compute(self, fd: int, st: Stat, algs: tuple[str, ...]) -> dict[str, bytes]:
        hasher = checksums.MultiHasher(algs)
        offset = 0
        while True:
            data = os.pread(fd, self.chunk_size, offset)
            if not data:
                break
            hasher.update(data)
            offset += len(data)
        digests = hasher.digests()
        now = Stat.of(os.fstat(fd))
        if (now.size, now.mtime_ns) == (st.size, st.mtime_ns) and offset == st.size:
            try:
                xattrs.write_checksums(fd, digests, st.size, st.mtime_ns, self.write_xrootd)
            except OSError as exc:
                log.warning("cannot cache checksum: %s", exc.strerror)
        return digests

    async def list_dir(
        self,
        p: DavPath,
        with_xattrs: bool,
        depth_limit: int = 1,
        max_entries: int = 100000,
    ) -> list[DirEntry]:
        """The members of a collection (sorted by name; ``depth_limit`` levels deep), each
        stat'ed now."""
        return await self.run(self._list_sync, p, with_xattrs, depth_limit, max_entries)

    def _entry(self, p: DavPath, fs: str, with_xattrs: bool) -> DirEntry | None:
        try:
            raw = os.stat(fs)
        except OSError:
            return None
        if not (stat_mod.S_ISREG(raw.st_mode) or stat_mod.S_ISDIR(raw.st_mode)):
            return None  # FIFOs, sockets, devices are not resources (GET refuses them)
        st = Stat.of(raw)
        # The stat comes first: an xattr changed after it changes the ctime, so what is
        # read below is never kept under an identity it does not belong to.
        if not with_xattrs:
            return DirEntry(p, st)
        try:
            names = os.listxattr(fs)
        except OSError:
            names = []
        if not names:
            return DirEntry(p, st)
        cks = {} if st.is_dir else xattrs.read_checksums(fs, st.size, st.mtime_ns, names)
        return DirEntry(p, st, cks, xattrs.get_dead_props(fs, names))

    def _list_sync(
        self,
        p: DavPath,
        with_xattrs: bool,
        depth_limit: int,
        max_entries: int,
    ) -> list[DirEntry]:
        out: list[DirEntry] = []

        def walk(dp: DavPath, fs: str, level: int) -> None:
            try:
                it = os.scandir(fs)
            except OSError as exc:
                raise map_oserror(exc, str(dp)) from None
            with it:
                children = sorted(it, key=lambda e: e.name)
            for de in children:
                if is_reserved(de.name):
                    continue
                if de.is_symlink() and not self._link_allowed(de.path):
                    continue
                try:
                    name = de.name
                    name.encode("utf-8")
                except UnicodeEncodeError:
                    continue  # undecodable names cannot be addressed over HTTP
                entry = self._entry(dp.child(name), de.path, with_xattrs)
                if entry is None:
                    continue
                if len(out) >= max_entries:
                    raise Forbidden("listing exceeds the configured entry limit")
                out.append(entry)
                # A linked collection is listed, not descended into (no loops).
                if entry.stat.is_dir and level < depth_limit and not de.is_symlink():
                    walk(entry.path, de.path, level + 1)

        fs = self.real_path(p)
        walk(p, fs, 1)
        return out

    async def member_identities(
        self, p: DavPath, watch: bool = False
    ) -> tuple[list[tuple[str, Identity | None]], Token | None]:
        """The listable members of collection ``p`` in name order, each with the identity
        of its Stat (None for a symlink, whose entry must be built through the checks of
        :meth:`entries`).  One read of the directory and one ``lstat`` relative to the open
        directory per member, no objects made: the cheap half of a listing whose rendered
        members are kept by identity.

        With ``watch`` (and a :attr:`dirwatch`), the inodes read are watched as they are
        read, and the token returned stays current (:meth:`listing_current`) until one of
        them changes; None when the listing cannot be watched (see se.storage.dirwatch)."""
        return await self.run(self._member_identities_sync, p, watch)

    def _member_identities_sync(
        self, p: DavPath, watch: bool
    ) -> tuple[list[tuple[str, Identity | None]], Token | None]:
        fd = self._open_beneath(p, os.O_RDONLY | os.O_DIRECTORY)
        try:
            watcher = self.dirwatch if watch else None
            token = watcher.begin(fd, os.fstat(fd)) if watcher is not None else None
            if watcher is not None and token is not None:
                with os.scandir(fd) as it:
                    found = [(d.name, d.inode(), d.is_dir(follow_symlinks=False)) for d in it]
                found.sort()
                watcher.sync()
            else:
                found = [(name, 0, False) for name in os.listdir(fd)]
                found.sort()
            out: list[tuple[str, Identity | None]] = []
            append = out.append
            lstat = os.lstat
            s_isdir, s_isreg, s_islnk = stat_mod.S_ISDIR, stat_mod.S_ISREG, stat_mod.S_ISLNK
            for name, inode, was_dir in found:
                if name.startswith(RESERVED_PREFIX):
                    continue
                try:
                    name.encode("utf-8")
                except UnicodeEncodeError:
                    continue  # undecodable names cannot be addressed over HTTP
                if token is not None and not token.stale:
                    # Watched before it is read (see se.storage.dirwatch); a symlink or a
                    # special file ends the watching of this listing.
                    assert watcher is not None
                    watcher.attach(token, fd, name, inode, was_dir)
                try:
                    raw = lstat(name, dir_fd=fd)
                except OSError:
                    if token is not None:
                        token.stale = True
                    continue  # gone meanwhile
                mode = raw.st_mode
                if token is not None and not token.stale:
                    assert watcher is not None
                    watcher.confirm(token, inode, raw, was_dir)
                if s_islnk(mode):
                    append((name, None))
                    continue
                is_dir = s_isdir(mode)
                if not (is_dir or s_isreg(mode)):
                    continue  # FIFOs, sockets, devices are not resources
                append((name, identity_of(raw)))
            if token is not None and token.stale:
                assert watcher is not None
                watcher.release(token)
                token = None
            return out, token
        finally:
            os.close(fd)

    def listing_current(self, token: Token, directory: Stat) -> bool:
        """True when nothing the listing kept with ``token`` read has changed since, and the
        listed path (stat-ed for this request as ``directory``) still names that directory."""
        return self.dirwatch is not None and self.dirwatch.current(
            token, (directory.dev, directory.ino)
        )

    def release_listing(self, token: Token) -> None:
        if self.dirwatch is not None:
            self.dirwatch.release(token)

    async def entries(
        self, p: DavPath, names: Sequence[str], with_xattrs: bool
    ) -> dict[str, DirEntry]:
        """The entries of the named members of collection ``p`` (as :meth:`list_dir` makes
        them: symlinks checked, special files and vanished members left out)."""
        return await self.run(self._entries_sync, p, names, with_xattrs)

    def _entries_sync(
        self, p: DavPath, names: Sequence[str], with_xattrs: bool
    ) -> dict[str, DirEntry]:
        base = self.real_path(p)
        out: dict[str, DirEntry] = {}
        for name in names:
            if is_reserved(name) or "/" in name:
                continue
            fs = os.path.join(base, name)
            if os.path.islink(fs) and not self._link_allowed(fs):
                continue
            entry = self._entry(p.child(name), fs, with_xattrs)
            if entry is not None:
                out[name] = entry
        return out

    def _link_allowed(self, fs: str) -> bool:
        """Whether the symlink at ``fs`` (a path below the root) leads somewhere allowed."""
        try:
            self._resolve(fs[len(self._root_prefix) :].split("/"), True, fs)
        except Forbidden:
            return False
        return True

    def entry(self, p: DavPath, with_xattrs: bool) -> DirEntry | None:
        fs = self._checked(p)
        found = self._entry(p, fs, with_xattrs)
        if found is None and os.path.exists(fs):
            raise Forbidden(f"{p}: not a regular file or collection")
        return found

    # -- writes ----------------------------------------------------------------------
    async def begin_upload(
        self, p: DavPath, overwrite: bool, extra_algorithms: tuple[str, ...] = ()
    ) -> Upload:
        # On the pool: creating a file can wait for the directory's lock or the journal
        # (ext4 under load: 16% of the event loop's time when this was made inline).
        return await self.run(self._begin_upload_sync, p, overwrite, extra_algorithms)

    def _begin_upload_sync(self, p: DavPath, overwrite: bool, extra: tuple[str, ...]) -> Upload:
        target = self._check_upload(p, overwrite)  # parents resolved: nothing below follows a link
        algs = tuple(dict.fromkeys((*self.algorithms, *extra)))
        upload = Upload(self, p, target, algs, overwrite)
        upload._open_sync()
        return upload

    def put_whole(self, p: DavPath, overwrite: bool, body: bytes) -> UploadResult:
        """A body that arrived whole, stored by one job on the calling (pool) thread: the
        upload begun, written, fsynced and put in place as :meth:`begin_upload` and
        :meth:`Upload.commit` do it (the lean PUT path, se.dav.handlers.lean_put).  On any
        failure nothing is stored and the error is raised."""
        upload = self._begin_upload_sync(p, overwrite, ())
        try:
            result = upload._commit_sync({}, [body] if body else [])
        except BaseException:
            upload._abort_sync()
            raise
        upload._done = True
        return result

    def check_upload(self, p: DavPath, overwrite: bool) -> None:
        """The checks a PUT can fail before any byte is read (used for 100-continue)."""
        self._check_upload(p, overwrite)

    def _check_upload(self, p: DavPath, overwrite: bool) -> str:
        """:meth:`check_upload`; the target's path (its parents resolved)."""
        if p.is_root:
            raise MethodNotAllowed("cannot PUT to the root collection")
        fs = self._checked(p)
        try:
            st = os.stat(fs)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        except OSError as exc:
            raise map_oserror(exc, str(p)) from None
        if st is not None:
            if stat_mod.S_ISDIR(st.st_mode):
                raise Conflict(f"{p}: is a collection")
            if not overwrite:
                raise PreconditionFailed(f"{p} exists and Overwrite is F")
            return fs
        parent = os.path.dirname(fs)
        try:
            pst = os.stat(parent)
        except (FileNotFoundError, NotADirectoryError):
            if not self.create_parents:
                raise Conflict(f"{p.parent}: parent collection does not exist") from None
            return fs
        if not stat_mod.S_ISDIR(pst.st_mode):
            raise Conflict(f"{p.parent}: parent is not a collection")
        return fs

    async def mkcol(self, p: DavPath) -> None:
        fs = self._checked(p)
        if p.is_root or os.path.lexists(fs):
            raise MethodNotAllowed(f"{p}: already exists")
        parent = os.path.dirname(fs)
        if not os.path.isdir(parent):
            raise Conflict(f"{p.parent}: parent collection does not exist")
        try:
            os.mkdir(fs, 0o755)
        except FileExistsError:
            raise MethodNotAllowed(f"{p}: already exists") from None
        except OSError as exc:
            raise map_oserror(exc, str(p)) from None

    async def delete(self, p: DavPath) -> list[tuple[DavPath, SEError]]:
        """Delete a file or a whole collection; returns the members that could not go."""
        if p.is_root:
            raise Forbidden("the root collection cannot be deleted")
        fs = self._checked(p, follow=False)  # a symlink is removed, never what it names
        if not os.path.lexists(fs):
            raise NotFound(f"{p}: not found")
        try:
            return await self.run(self._delete_sync, p, fs)
        finally:
            await self.notify("removed", p)

    def _delete_sync(self, p: DavPath, fs: str) -> list[tuple[DavPath, SEError]]:
        failures: list[tuple[DavPath, SEError]] = []
        space = self.space
        if os.path.islink(fs) or not os.path.isdir(fs):
            # Counted first, taken back if the unlink fails: a process killed in between
            # leaves the totals off for as short a time as a commit does.
            if space is None:
                try:
                    os.unlink(fs)
                except OSError as exc:
                    raise map_oserror(exc, str(p)) from None
                return failures
            with dir_locked(os.path.dirname(fs)):  # in turn with writes to this name
                # Counted (with the inode, as pending) before the unlink, taken back if it
                # fails; a process killed in between is told apart by the recovery.
                gone = Deltas()
                key = f"{DELETE_KEY}{uuid.uuid4().hex}"
                try:
                    st = os.lstat(fs)
                except OSError:
                    st = None
                if st is not None and stat_mod.S_ISREG(st.st_mode):
                    gone.add(space.share_key(p), -st.st_size, -1)
                    try:
                        space.admit(gone, (key, fs), st.st_ino)
                    except Exception:
                        log.exception("space accounting: cannot record the delete of %s", p)
                        gone = Deltas()
                try:
                    os.unlink(fs)
                except OSError as exc:
                    if gone:
                        _undo(space, gone, key)
                    raise map_oserror(exc, str(p)) from None
                if gone:
                    _settle(space, (key, fs))
            return failures

        def onerror(exc: OSError) -> None:
            bad = exc.filename if isinstance(exc.filename, str) else fs
            rel = os.path.relpath(bad, self.root_real)
            failures.append((DavPath(tuple(rel.split(os.sep))), map_oserror(exc, rel)))

        self._remove_tree(fs, p, onerror, lock=True)
        return failures

    def _remove_tree(
        self, fs: str, p: DavPath, onerror: Callable[[OSError], None], lock: bool
    ) -> None:
        """Remove the tree at ``fs`` (namespace ``p``; not a symlink), never following a
        symlink; what cannot go is handed to ``onerror`` (the path as its filename), which
        may raise to stop.  Counted file by file as each is unlinked (with space accounting),
        whatever happens.

        With ``lock``, each directory's own files are removed under its lock (the one a PUT
        or DELETE holds from its count to its rename or unlink): a PUT into the tree
        meanwhile is counted before (its file then removed and uncounted here) or after (its
        rename fails: nothing counted), never lost nor counted twice.  A caller that already
        holds directory locks (a file MOVE or COPY onto a tree) passes False: waiting for
        more could deadlock with another MOVE."""
        if self.space is None:

            def failed(_fn: Any, _path: str, info: Any) -> None:
                if not isinstance(info[1], OSError):
                    raise info[1]
                onerror(info[1])

            shutil.rmtree(fs, onerror=failed)
            return
        with _counted_after(self.space) as counted:
            key = self.space.share_key(p)
            try:
                fd = os.open(fs, _DIR_FLAGS)
            except OSError as exc:
                onerror(_named(exc, fs))
                return
            try:
                self._empty_counted(fd, fs, p.segments, key, True, counted, onerror, lock)
            finally:
                os.close(fd)
            try:
                os.rmdir(fs)
            except OSError as exc:
                onerror(_named(exc, fs))

    def _empty_counted(
        self,
        fd: int,
        here: str,
        segs: tuple[str, ...],
        key: str | None,
        counting: bool,
        counted: Deltas,
        onerror: Callable[[OSError], None],
        lock: bool,
    ) -> None:
        """Empty the open directory ``fd`` (at ``here``, namespace ``segs``, counting in
        share ``key``; nothing when not ``counting``: a reserved tree): subdirectories first,
        then its own members (see :meth:`_remove_tree`)."""
        assert self.space is not None
        nested = self.space.nested(DavPath(segs))
        try:
            with os.scandir(fd) as it:
                subdirs = [de.name for de in it if de.is_dir(follow_symlinks=False)]
        except OSError as exc:
            onerror(_named(exc, here))
            return
        for name in subdirs:
            path = os.path.join(here, name)
            sub_segs = (*segs, name)
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                onerror(_named(exc, path))
                continue
            try:
                sub_key = self.space.share_key(DavPath(sub_segs)) if nested else key
                own = counting and not (is_reserved(name) or is_temp_name(name))
                self._empty_counted(sub, path, sub_segs, sub_key, own, counted, onerror, lock)
            finally:
                os.close(sub)
            try:
                os.rmdir(name, dir_fd=fd)
            except OSError as exc:
                onerror(_named(exc, path))
        if lock:
            with contextlib.suppress(OSError):  # no locks here: go on without
                fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            names = os.listdir(fd)
        except OSError as exc:
            onerror(_named(exc, here))
            names = []
        try:
            for name in names:
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if stat_mod.S_ISDIR(st.st_mode):
                        continue  # made meanwhile: this directory's rmdir reports it
                    os.unlink(name, dir_fd=fd)
                except OSError as exc:
                    onerror(_named(exc, os.path.join(here, name)))
                    continue
                if (
                    counting
                    and stat_mod.S_ISREG(st.st_mode)
                    and not (is_reserved(name) or is_temp_name(name))
                ):
                    counted.add(key, -st.st_size, -1)
        finally:
            if lock:
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)

    def _prepare_target(self, dst: DavPath, overwrite: bool, locked: bool) -> tuple[str, bool]:
        """Check a MOVE/COPY destination; remove it when overwriting (``locked``: the caller
        holds directory locks, see :meth:`_remove_tree`).  Returns (path, existed)."""
        if dst.is_root:
            raise Forbidden("cannot replace the root collection")
        fs = self._checked(dst)
        if not os.path.isdir(os.path.dirname(fs)):
            raise Conflict(f"{dst.parent}: destination parent collection does not exist")
        existed = os.path.lexists(fs)
        if existed:
            if not overwrite:
                raise PreconditionFailed(f"{dst} exists and Overwrite is F")
            if os.path.isdir(fs) and not os.path.islink(fs):

                def stop(exc: OSError) -> None:
                    raise exc

                self._remove_tree(fs, dst, stop, lock=not locked)
            else:
                with _counted_after(self.space) as counted:
                    size = file_usage(fs) if self.space is not None else None
                    os.unlink(fs)
                    if self.space is not None and size is not None:
                        counted.add(self.space.share_key(dst), -size, -1)
        return fs, existed

    async def move(self, src: DavPath, dst: DavPath, overwrite: bool) -> bool:
        """Rename src to dst; True when dst was created (did not exist before)."""
        created = await self.run(self._move_sync, src, dst, overwrite)
        await self.notify("renamed", src, dst)
        return created

    def _move_sync(self, src: DavPath, dst: DavPath, overwrite: bool) -> bool:
        src_fs = self._checked(src, follow=False)  # a symlink is renamed as it is
        if src.is_root:
            raise Forbidden("the root collection cannot be moved")
        if not os.path.lexists(src_fs):
            raise NotFound(f"{src}: not found")
        if src == dst:
            raise Forbidden("source and destination are the same")
        if dst.is_within(src):
            raise Conflict("cannot move a collection into itself")
        # Marked in flight even within one share: a walk meanwhile could see a tree twice
        # (before and after the rename) or not at all.  A file is moved under both parents'
        # locks: a PUT or DELETE of either name is counted before or after it, not between
        # its measure and its rename.
        is_tree = os.path.isdir(src_fs) and not os.path.islink(src_fs)
        try:
            parents = (
                () if is_tree else (os.path.dirname(src_fs), os.path.dirname(self._checked(dst)))
            )
            with _dirs_locked(self.space, parents), _counted_after(self.space):
                dst_fs, existed = self._prepare_target(dst, overwrite, not is_tree)
                moved = self._moved_usage(src, dst, src_fs)
                if moved:
                    assert self.space is not None
                    self.space.admit(moved)  # into a share with a limit: 507 when over it
                try:
                    os.rename(src_fs, dst_fs)
                except BaseException:
                    if moved:
                        assert self.space is not None
                        _undo(self.space, moved)
                    raise
                self.fsync_dir(os.path.dirname(dst_fs))
        except OSError as exc:
            raise map_oserror(exc, str(dst)) from None
        return not existed

    def _moved_usage(self, src: DavPath, dst: DavPath, src_fs: str) -> Deltas:
        """What a rename of src to dst carries from share to share (nothing within one)."""
        space = self.space
        if space is None:
            return Deltas()
        same = space.share_key(src) == space.share_key(dst)
        if same and not space.nested(src) and not space.nested(dst):
            return Deltas()
        cut = len(src.segments)

        def key_at_dst(d: DavPath) -> str | None:
            return space.share_key(DavPath(dst.segments + d.segments[cut:]))

        moved = tree_usage(src_fs, src, space, key_at_dst)
        moved.merge(tree_usage(src_fs, src, space, space.share_key), -1)
        return moved

    async def copy(
        self, src: DavPath, dst: DavPath, overwrite: bool, recursive: bool
    ) -> tuple[bool, list[tuple[DavPath, SEError]]]:
        """Copy src to dst: (dst was created, the members of a collection not copied).

        Nothing is read through a symlink: a symlink member is copied as a link if, from
        its new place, it still leads somewhere allowed (else it is left out and reported);
        FIFOs, sockets and devices are left out and reported.
        """
        created, failures = await self.run(self._copy_sync, src, dst, overwrite, recursive)
        if self.observer is not None:
            st = self.stat(dst)
            await self.notify("copied", dst, None if st is None or st.is_dir else st.size)
        return created, failures

    async def notify(self, event: str, *args: Any) -> None:
        """Tell the observer about a change that is done; its failure does not undo it."""
        if self.observer is None:
            return
        try:
            await getattr(self.observer, event)(*args)
        except Exception:
            log.exception("storage observer failed on %s%s", event, args)

    def _copy_sync(
        self, src: DavPath, dst: DavPath, overwrite: bool, recursive: bool
    ) -> tuple[bool, list[tuple[DavPath, SEError]]]:
        if src == dst:
            raise Forbidden("source and destination are the same")
        fd = self._open_beneath(src, os.O_RDONLY)
        failures: list[tuple[DavPath, SEError]] = []
        try:
            mode = os.fstat(fd).st_mode
            is_dir = stat_mod.S_ISDIR(mode)
            if not (is_dir or stat_mod.S_ISREG(mode)):
                raise Forbidden(f"{src}: not a regular file or collection")
            if dst.is_within(src) and is_dir:
                raise Forbidden("cannot copy a collection into itself")
            # A file is copied under its destination parent's lock: a PUT of that name is
            # counted before or after it, not between the removal of the old file and the
            # copy put in place.
            try:
                parents = () if is_dir else (os.path.dirname(self._checked(dst)),)
                with _dirs_locked(self.space, parents), _counted_after(self.space) as copied:
                    dst_fs, existed = self._prepare_target(dst, overwrite, not is_dir)
                    parent, name = os.path.split(dst_fs)
                    parent_fd = os.open(parent, _DIR_FLAGS)
                    space = self.space
                    try:
                        if is_dir:
                            self._copy_tree(fd, parent_fd, name, dst, recursive, failures, copied)
                        else:
                            admitted = Deltas()  # a file's size is known: admitted first
                            if space is not None:
                                admitted.add(space.share_key(dst), os.fstat(fd).st_size, 1)
                                space.admit(admitted)
                            try:
                                self._copy_file(fd, parent_fd, name)
                            except BaseException:
                                if space is not None and admitted:
                                    _undo(space, admitted)
                                raise
                    finally:
                        os.close(parent_fd)
            except OSError as exc:
                raise map_oserror(exc, str(dst)) from None
        finally:
            os.close(fd)
        return not existed, failures

    def _copy_file(self, src_fd: int, dir_fd: int, name: str) -> int:
        """Copy the open regular file src_fd to ``name`` in dir_fd, atomically; its size."""
        temp, out = _create_temp("", name, dir_fd)
        try:
            st = os.fstat(src_fd)
            known = xattrs.read_checksums(src_fd, st.st_size, st.st_mtime_ns)
            _copy_data(src_fd, out)
            xattrs.copy_dead_props(src_fd, out)
            if self.fsync:
                os.fsync(out)
            new = os.fstat(out)
            if known and new.st_size == st.st_size:
                xattrs.write_checksums(out, known, new.st_size, new.st_mtime_ns, self.write_xrootd)
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return new.st_size
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
            raise
        finally:
            os.close(out)

    def _copy_tree(
        self,
        src_fd: int,
        parent_fd: int,
        name: str,
        dst: DavPath,
        recursive: bool,
        failures: list[tuple[DavPath, SEError]],
        copied: Deltas,
    ) -> None:
        """Copy the open directory src_fd to ``name`` in parent_fd without following any
        link: each member is opened relative to its directory with O_NOFOLLOW.  Each file
        copied is added to ``copied`` (by the share of its new place)."""
        os.mkdir(name, 0o755, dir_fd=parent_fd)
        out = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        try:
            xattrs.copy_dead_props(src_fd, out)
            if not recursive:
                return
            with os.scandir(src_fd) as it:
                children = sorted(it, key=lambda e: e.name)
            for de in children:
                if is_reserved(de.name):
                    continue
                member = dst.child(de.name)
                mode = de.stat(follow_symlinks=False).st_mode
                if stat_mod.S_ISLNK(mode):
                    self._copy_link(src_fd, out, de.name, member, failures)
                    continue
                if not (stat_mod.S_ISDIR(mode) or stat_mod.S_ISREG(mode)):
                    failures.append(
                        (member, Forbidden(f"{member}: not a regular file; not copied"))
                    )
                    continue
                flags = _DIR_FLAGS if stat_mod.S_ISDIR(mode) else os.O_RDONLY | os.O_CLOEXEC
                try:
                    child = os.open(de.name, flags | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=src_fd)
                except OSError as exc:  # replaced meanwhile (ELOOP: by a symlink)
                    failures.append((member, map_oserror(exc, str(member))))
                    continue
                try:
                    now = os.fstat(child).st_mode
                    if stat_mod.S_ISDIR(now):
                        self._copy_tree(child, out, de.name, member, True, failures, copied)
                    elif stat_mod.S_ISREG(now):
                        size = self._copy_file(child, out, de.name)
                        if self.space is not None:
                            copied.add(self.space.share_key(member), size, 1)
                    else:
                        failures.append(
                            (member, Forbidden(f"{member}: not a regular file; not copied"))
                        )
                finally:
                    os.close(child)
        finally:
            os.close(out)

    def _copy_link(
        self,
        src_fd: int,
        out_fd: int,
        name: str,
        member: DavPath,
        failures: list[tuple[DavPath, SEError]],
    ) -> None:
        """Copy a symlink as a link, kept only if from its new place it still leads
        somewhere allowed (inside the root, off reserved names and the state)."""
        target = os.readlink(name, dir_fd=src_fd)
        os.symlink(target, name, dir_fd=out_fd)
        here = os.readlink(f"/proc/self/fd/{out_fd}")
        if self._allowed_real(here) and self._link_allowed(os.path.join(here, name)):
            return
        os.unlink(name, dir_fd=out_fd)
        failures.append((member, Forbidden(f"{member}: symbolic link leads out; not copied")))

    def quota(self, p: DavPath) -> tuple[int, int]:
        """(used, available) bytes of the filesystem holding p (RFC 4331)."""
        vfs = os.statvfs(self._checked(p))
        return (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize, vfs.f_bavail * vfs.f_frsize

    # -- dead properties -------------------------------------------------------------
    async def patch_props(
        self, p: DavPath, updates: list[tuple[str, bytes | None]]
    ) -> tuple[int, int, str] | None:
        """A PROPPATCH's updates (``(key, element)``, None removes), all or nothing, on the
        I/O pool.  None when all were applied; else, with every update rolled back, the
        index of the one that failed, its status (507 no room for it, 403 not permitted)
        and the reason.  Other errors raise (nothing applied either)."""
        return await self.run(self._patch_props_sync, p, updates)

    def _patch_props_sync(
        self, p: DavPath, updates: list[tuple[str, bytes | None]]
    ) -> tuple[int, int, str] | None:
        try:
            xattrs.patch_dead_props(self._checked(p), updates)
        except xattrs.PatchRefused as exc:
            reason = exc.error.strerror or str(exc.error)
            log.warning(  # one line per request, whatever the number of updates
                "PROPPATCH %s: update %d of %d (%s) refused: %s; none kept",
                p,
                exc.index + 1,
                len(updates),
                updates[exc.index][0][:200],
                reason,
            )
            if exc.no_room:
                return exc.index, 507, reason
            if exc.error.errno in (errno.EPERM, errno.EACCES):
                return exc.index, 403, reason
            raise map_oserror(exc.error, str(p)) from None
        return None

    def writing(self, p: DavPath) -> bool:
        """Whether a write into p (PUT, TPC pull, COPY) is in progress in any process: a
        temp file named for p in p's directory that a live writer holds locked (a temp
        file left by a dead writer can be locked, and does not count).  Blocking: on the
        pool."""
        if p.is_root:
            return False
        try:
            directory, name = os.path.split(self._checked(p))
            prefix = _temp_prefix(name)
            with os.scandir(directory) as it:
                temps = [de.name for de in it if de.name.startswith(prefix)]
        except (SEError, OSError):
            return False
        cutoff_ns = time.time_ns() - int(self._stale_age * 1e9)
        for temp in temps:
            try:
                fd = os.open(
                    os.path.join(directory, temp),
                    os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                )
            except OSError:
                continue  # renamed into place or removed meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in _NO_LOCKS:  # EWOULDBLOCK: its writer holds it
                    return True
                if os.fstat(fd).st_mtime_ns > cutoff_ns:  # no locks: recent means live
                    return True
            finally:
                os.close(fd)
        return False

    # -- maintenance -----------------------------------------------------------------
    def iter_temp_files(self) -> Iterator[str]:
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if is_temp_name(name):
                    yield os.path.join(dirpath, name)

    def sweep_temp_files(self) -> int:
        """Remove the temp files of uploads whose writer is gone; returns how many.

        Every upload holds an exclusive flock on its temp file for as long as it lives.  A
        temp file that can be locked and was last written before this server started was
        left by a process that is gone (a crash, a SIGKILL): it goes at once, whatever its
        age.  One that cannot be locked is being written, and stays.  Where the filesystem
        has no locks, files older than ``stale_upload_age`` go (the backstop).
        """
        cutoff_ns = time.time_ns() - int(self._stale_age * 1e9)
        removed = 0
        for path in self.iter_temp_files():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                if not stat_mod.S_ISREG(st.st_mode):
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    gone = st.st_mtime_ns < self._started_ns
                except OSError as exc:
                    if exc.errno not in _NO_LOCKS:  # EWOULDBLOCK: a live upload holds it
                        continue
                    gone = False
                if not gone and st.st_mtime_ns > cutoff_ns:
                    continue
                now = os.lstat(path)
                if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                    if self.space is not None:
                        try:
                            real = os.path.join(self.root_real, os.path.relpath(path, self.root))
                            self.space.abandoned(real, st.st_ino)
                        except Exception:  # the count waits for a reconciliation
                            log.exception("space accounting: cannot settle %s", path)
                    os.unlink(path)
                    removed += 1
            except OSError:
                continue
            finally:
                os.close(fd)
        return removed
