"""The POSIX backend: the only module that touches the data tree.

Everything a handler needs from the filesystem goes through :class:`PosixBackend`.  Cheap
metadata calls (open, fstat, a small read, an xattr get) run inline on the event loop,
because on a local filesystem they cost microseconds and a thread hop would cost more (the
small-GET benchmark decides this); bulk work (uploads, listings, checksum computation,
recursive copy/delete, fsync) runs on the I/O thread pool.  OS errors are translated into
``se.errors`` here, in :func:`map_oserror`, and nowhere else.

Uploads are atomic: bytes go to a hidden temp file in the target directory while every
configured checksum is updated, then fsync, checksum xattrs, and a rename (or a link when
overwriting is forbidden).  Any failure unlinks the temp file; temp files orphaned by a
crash are swept at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import shutil
import stat as stat_mod
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from se.config import Config, checksum_algorithms
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
)
from se.storage import checksums, xattrs
from se.storage.paths import TEMP_PREFIX, DavPath, is_reserved, is_temp_name
from se.storage.types import CachedFile, DirEntry, OpenFile, Stat
from se.storage.watchcache import WatchedCache

__all__ = [
    "PosixBackend",
    "Upload",
    "UploadResult",
    "map_oserror",
]

log = logging.getLogger("se.storage")
# A client that sends no body byte for this long has its upload dropped (direct path).
RECEIVE_STALL_TIMEOUT = 300.0
T = TypeVar("T")


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


@dataclass(frozen=True, slots=True)
class UploadResult:
    created: bool
    stat: Stat
    digests: dict[str, bytes]


class Upload:
    """One PUT in progress: feed bytes, then commit or abort.

    Writes are batched to ``chunk_size`` and handed to the thread pool one batch at a time,
    so the next batch is received while the previous one is hashed and written.
    """

    def __init__(
        self,
        backend: PosixBackend,
        path: DavPath,
        target: str,
        temp: str,
        fd: int,
        algorithms: tuple[str, ...],
        overwrite: bool,
    ) -> None:
        self.backend = backend
        self.path = path
        self._target = target
        self._temp = temp
        self._fd = fd
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

    def _write_batch_locked(self, batch: list[bytes]) -> None:
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
            buf = bytearray(self.backend.chunk_size)
            view = memoryview(buf)
            poller = select.poll()
            poller.register(sock_fd, select.POLLIN)
            last = time.monotonic()
            while count > 0:
                if stop.is_set():
                    raise ConnectionAbortedError("upload cancelled")
                try:
                    n = os.readv(sock_fd, [view[: min(len(buf), count)]])
                except BlockingIOError:
                    poller.poll(500)
                    if time.monotonic() - last > RECEIVE_STALL_TIMEOUT:
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
            if self._fd < 0:
                raise ConnectionAbortedError("upload already finished")
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
        await self._settle()
        if self._positional:
            await self.backend.run(self._rehash_sync)
        result = await self.backend.run(self._commit_sync, expected)
        self._done = True
        await self.backend.notify("written", self.path, result.stat.size)
        return result

    def _commit_sync(self, expected: dict[str, bytes]) -> UploadResult:
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
            os.close(self._fd)
            self._fd = -1
            created = not os.path.lexists(self._target)
            if self._overwrite:
                if os.path.isdir(self._target):
                    raise Conflict(f"{self.path}: is a collection")
                os.rename(self._temp, self._target)
            else:
                try:
                    os.link(self._temp, self._target)
                except FileExistsError:
                    raise PreconditionFailed(f"{self.path} exists and Overwrite is F") from None
                os.unlink(self._temp)
            self.backend.fsync_dir(os.path.dirname(self._target))
        except OSError as exc:
            raise map_oserror(exc, str(self.path)) from None
        return UploadResult(created, st, digests)

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
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp)


class StorageObserver(Protocol):
    """Told about every change a backend made (after it is done): the tape catalogue."""

    async def written(self, path: DavPath, size: int) -> None: ...

    async def removed(self, path: DavPath) -> None: ...

    async def renamed(self, src: DavPath, dst: DavPath) -> None: ...

    async def copied(self, dst: DavPath, size: int | None) -> None: ...


class PosixBackend:
    """File operations below one root directory."""

    observer: StorageObserver | None = None

    def __init__(
        self, cfg: Config, executor: Executor, file_cache: WatchedCache[CachedFile] | None = None
    ) -> None:
        self.file_cache = file_cache if file_cache is not None and file_cache.enabled else None
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
        self._computing: dict[
            tuple[int, int, int, int, tuple[str, ...]], asyncio.Future[dict[str, bytes]]
        ] = {}

    # -- helpers ---------------------------------------------------------------------
    async def run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, *args)

    def fs_path(self, p: DavPath) -> str:
        return os.path.join(self.root, p.rel) if p.segments else self.root

    def _inside(self, real: str) -> bool:
        return real == self.root_real or real.startswith(self.root_real + os.sep)

    def _checked(self, p: DavPath) -> str:
        """The filesystem path of p, refusing symlinks that lead out of the root."""
        fs = self.fs_path(p)
        if not self._inside(os.path.realpath(fs)):
            raise Forbidden(f"{p}: leads outside the storage root")
        return fs

    def real_path(self, p: DavPath) -> str:
        """The resolved filesystem path of p (inside the root, or Forbidden)."""
        real = os.path.realpath(self.fs_path(p))
        if not self._inside(real):
            raise Forbidden(f"{p}: leads outside the storage root")
        return real

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
        Stat of a collection.  Small files read here are kept until their directory changes.
        """
        cache = self.file_cache
        if not use_cache or cache is None or not p.segments:
            return self._open_read(p)
        parent = self.fs_path(p.parent)
        hit = cache.get(parent, p.name)
        if hit is not None:
            return hit
        token = cache.begin(parent)  # watch first, so a change from now on is seen
        opened = self._open_read(p)
        if token is None or not isinstance(opened, OpenFile):
            return opened
        st = opened.stat
        if st.size > self.inline_read_max:
            return opened
        try:
            data = os.pread(opened.fd, st.size, 0)
            now = Stat.of(os.stat(self.fs_path(p)))  # the path still names this same file
        except OSError:
            return opened
        if len(data) != st.size or now != st:
            return opened
        opened.close()
        cached = CachedFile(st, p, data)
        cache.store(parent, p.name, token, cached, st.size + 256)
        return cached

    def _open_read(self, p: DavPath) -> OpenFile | Stat:
        fs = self.fs_path(p)
        try:
            fd = os.open(fs, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{p}: not found") from None
        except OSError as exc:
            raise map_oserror(exc, str(p)) from None
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
            if not self._inside(real):
                raise Forbidden(f"{p}: leads outside the storage root")
            st = os.fstat(fd)
            if stat_mod.S_ISDIR(st.st_mode):
                os.close(fd)
                return Stat.of(st)
            if not stat_mod.S_ISREG(st.st_mode):
                raise Forbidden(f"{p}: not a regular file")
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
        self, p: DavPath, with_xattrs: bool, depth_limit: int = 1, max_entries: int = 100000
    ) -> list[DirEntry]:
        return await self.run(self._list_sync, p, with_xattrs, depth_limit, max_entries)

    def _entry(self, p: DavPath, fs: str, with_xattrs: bool) -> DirEntry | None:
        try:
            st = Stat.of(os.stat(fs))
        except OSError:
            return None
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
        self, p: DavPath, with_xattrs: bool, depth_limit: int, max_entries: int
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
                if de.is_symlink() and not self._inside(os.path.realpath(de.path)):
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
                if entry.stat.is_dir and level < depth_limit:
                    walk(entry.path, de.path, level + 1)

        fs = self._checked(p)
        walk(p, fs, 1)
        return out

    def entry(self, p: DavPath, with_xattrs: bool) -> DirEntry | None:
        fs = self._checked(p)
        return self._entry(p, fs, with_xattrs)

    # -- writes ----------------------------------------------------------------------
    async def begin_upload(
        self, p: DavPath, overwrite: bool, extra_algorithms: tuple[str, ...] = ()
    ) -> Upload:
        return await self.run(self._begin_upload_sync, p, overwrite, extra_algorithms)

    def check_upload(self, p: DavPath, overwrite: bool) -> None:
        """The checks a PUT can fail before any byte is read (used for 100-continue)."""
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
            return
        parent = os.path.dirname(fs)
        try:
            pst = os.stat(parent)
        except (FileNotFoundError, NotADirectoryError):
            if not self.create_parents:
                raise Conflict(f"{p.parent}: parent collection does not exist") from None
            return
        if not stat_mod.S_ISDIR(pst.st_mode):
            raise Conflict(f"{p.parent}: parent is not a collection")

    def _begin_upload_sync(self, p: DavPath, overwrite: bool, extra: tuple[str, ...]) -> Upload:
        self.check_upload(p, overwrite)
        target = self.fs_path(p)
        parent = os.path.dirname(target)
        try:
            if self.create_parents:
                os.makedirs(parent, exist_ok=True)
            temp = os.path.join(parent, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except (FileExistsError, NotADirectoryError):
            raise Conflict(f"{p.parent}: parent is not a collection") from None
        except OSError as exc:
            raise map_oserror(exc, str(p)) from None
        algs = tuple(dict.fromkeys((*self.algorithms, *extra)))
        return Upload(self, p, target, temp, fd, algs, overwrite)

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
        fs = self._checked(p)
        if not os.path.lexists(fs):
            raise NotFound(f"{p}: not found")
        try:
            return await self.run(self._delete_sync, p, fs)
        finally:
            await self.notify("removed", p)

    def _delete_sync(self, p: DavPath, fs: str) -> list[tuple[DavPath, SEError]]:
        failures: list[tuple[DavPath, SEError]] = []
        if os.path.islink(fs) or not os.path.isdir(fs):
            try:
                os.unlink(fs)
            except OSError as exc:
                raise map_oserror(exc, str(p)) from None
            return failures

        def onerror(exc: BaseException) -> None:
            if not isinstance(exc, OSError):
                raise exc
            bad = exc.filename if isinstance(exc.filename, str) else fs
            rel = os.path.relpath(bad, self.root)
            failures.append((DavPath(tuple(rel.split(os.sep))), map_oserror(exc, rel)))

        shutil.rmtree(fs, onerror=lambda _f, _p, ei: onerror(ei[1]))
        return failures

    def _prepare_target(self, dst: DavPath, overwrite: bool) -> tuple[str, bool]:
        """Check a MOVE/COPY destination; remove it when overwriting.  Returns (path, existed)."""
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
                shutil.rmtree(fs)
            else:
                os.unlink(fs)
        return fs, existed

    async def move(self, src: DavPath, dst: DavPath, overwrite: bool) -> bool:
        """Rename src to dst; True when dst was created (did not exist before)."""
        created = await self.run(self._move_sync, src, dst, overwrite)
        await self.notify("renamed", src, dst)
        return created

    def _move_sync(self, src: DavPath, dst: DavPath, overwrite: bool) -> bool:
        src_fs = self._checked(src)
        if src.is_root:
            raise Forbidden("the root collection cannot be moved")
        if not os.path.lexists(src_fs):
            raise NotFound(f"{src}: not found")
        if src == dst:
            raise Forbidden("source and destination are the same")
        if dst.is_within(src):
            raise Conflict("cannot move a collection into itself")
        try:
            dst_fs, existed = self._prepare_target(dst, overwrite)
            os.rename(src_fs, dst_fs)
            self.fsync_dir(os.path.dirname(dst_fs))
        except OSError as exc:
            raise map_oserror(exc, str(dst)) from None
        return not existed

    async def copy(self, src: DavPath, dst: DavPath, overwrite: bool, recursive: bool) -> bool:
        created = await self.run(self._copy_sync, src, dst, overwrite, recursive)
        if self.observer is not None:
            st = self.stat(dst)
            await self.notify("copied", dst, None if st is None or st.is_dir else st.size)
        return created

    async def notify(self, event: str, *args: Any) -> None:
        """Tell the observer about a change that is done; its failure does not undo it."""
        if self.observer is None:
            return
        try:
            await getattr(self.observer, event)(*args)
        except Exception:
            log.exception("storage observer failed on %s%s", event, args)

    def _copy_sync(self, src: DavPath, dst: DavPath, overwrite: bool, recursive: bool) -> bool:
        src_fs = self._checked(src)
        if not os.path.lexists(src_fs):
            raise NotFound(f"{src}: not found")
        if src == dst:
            raise Forbidden("source and destination are the same")
        if dst.is_within(src) and os.path.isdir(src_fs):
            raise Forbidden("cannot copy a collection into itself")
        try:
            dst_fs, existed = self._prepare_target(dst, overwrite)
            if os.path.isdir(src_fs):
                self._copy_tree(src_fs, dst_fs, recursive)
            else:
                self._copy_file(src_fs, dst_fs)
        except OSError as exc:
            raise map_oserror(exc, str(dst)) from None
        return not existed

    def _copy_file(self, src_fs: str, dst_fs: str) -> None:
        temp = os.path.join(os.path.dirname(dst_fs), f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        try:
            st = Stat.of(os.stat(src_fs))
            known = xattrs.read_checksums(src_fs, st.size, st.mtime_ns)
            shutil.copyfile(src_fs, temp)
            xattrs.copy_dead_props(src_fs, temp)
            if self.fsync:
                fd = os.open(temp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            new = Stat.of(os.stat(temp))
            if known and new.size == st.size:
                xattrs.write_checksums(temp, known, new.size, new.mtime_ns, self.write_xrootd)
            os.rename(temp, dst_fs)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def _copy_tree(self, src_fs: str, dst_fs: str, recursive: bool) -> None:
        os.mkdir(dst_fs, 0o755)
        xattrs.copy_dead_props(src_fs, dst_fs)
        if not recursive:
            return
        with os.scandir(src_fs) as it:
            children = list(it)
        for de in children:
            if is_reserved(de.name):
                continue
            target = os.path.join(dst_fs, de.name)
            if de.is_dir(follow_symlinks=False):
                self._copy_tree(de.path, target, True)
            elif de.is_file():
                self._copy_file(de.path, target)

    def quota(self, p: DavPath) -> tuple[int, int]:
        """(used, available) bytes of the filesystem holding p (RFC 4331)."""
        vfs = os.statvfs(self._checked(p))
        return (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize, vfs.f_bavail * vfs.f_frsize

    # -- dead properties -------------------------------------------------------------
    def set_prop(self, p: DavPath, key: str, element: bytes) -> bool:
        return xattrs.set_dead_prop(self._checked(p), key, element)

    def remove_prop(self, p: DavPath, key: str) -> None:
        xattrs.remove_dead_prop(self._checked(p), key)

    # -- maintenance -----------------------------------------------------------------
    def iter_temp_files(self) -> Iterator[str]:
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if is_temp_name(name):
                    yield os.path.join(dirpath, name)

    def sweep_temp_files(self) -> int:
        """Remove upload temp files older than ``stale_upload_age``; returns how many."""
        cutoff = time.time() - self._stale_age
        removed = 0
        for path in self.iter_temp_files():
            try:
                if os.lstat(path).st_mtime <= cutoff:
                    os.unlink(path)
                    removed += 1
            except OSError:
                continue
        return removed
