"""The POSIX backend's atomic upload, without HTTP: :meth:`PosixBackend.begin_upload`, then
:meth:`Upload.feed` / :meth:`Upload.write_at` and :meth:`Upload.commit` or :meth:`Upload.abort`
(what a PUT and a TPC pull do), and the sweep of temp files a crash left behind.

The backend is built as ``se.app`` builds it, on a fresh data directory, with a small
``chunk_size`` so that a few KiB already span several write batches.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from se.config import load_mapping
from se.errors import ChecksumMismatch, Conflict, MethodNotAllowed, PreconditionFailed
from se.space.accounting import Accounting
from se.storage.paths import TEMP_PREFIX, confine
from se.storage.posix import PosixBackend, Upload

CHUNK = 4096
DATA = os.urandom(5 * CHUNK + 123)  # several batches, the last one short
XRD_STRUCT = struct.Struct(">16sqihbb64s")

MakeBackend = Callable[..., PosixBackend]


@pytest.fixture
def make_backend(tmp_path: Path) -> Iterator[MakeBackend]:
    """Backends on ``tmp_path/data`` (``storage`` keys override the test defaults)."""
    executors: list[ThreadPoolExecutor] = []

    def make(**storage: Any) -> PosixBackend:
        section = {"root": str(tmp_path / "data"), "chunk_size": CHUNK, **storage}
        cfg = load_mapping({"storage": section})
        os.makedirs(cfg.storage.root, exist_ok=True)
        executor = ThreadPoolExecutor(2, thread_name_prefix="se-test-io")
        executors.append(executor)
        return PosixBackend(cfg, executor, None)

    yield make
    for executor in executors:
        executor.shutdown(wait=True)


@pytest.fixture
def backend(make_backend: MakeBackend) -> PosixBackend:
    return make_backend()


def root_of(backend: PosixBackend) -> Path:
    return Path(backend.root)


def temps(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith(TEMP_PREFIX))


def adler32(data: bytes) -> bytes:
    return (zlib.adler32(data) & 0xFFFFFFFF).to_bytes(4, "big")


async def feed_all(upload: Upload, data: bytes, step: int = 1000) -> None:
    for i in range(0, len(data), step):
        await upload.feed(data[i : i + step])


async def put(backend: PosixBackend, rel: str, data: bytes, overwrite: bool = True) -> None:
    upload = await backend.begin_upload(confine("/" + rel), overwrite)
    await feed_all(upload, data)
    await upload.commit({})


E = TypeVar("E", bound=Exception)


async def failing(step: Awaitable[Any], error: type[E]) -> E:
    """Await ``step``, which must raise ``error``; returns the exception."""
    with pytest.raises(error) as info:
        await step
    return info.value


# -- commit ---------------------------------------------------------------------------------
async def test_file_appears_only_at_commit(backend: PosixBackend) -> None:
    root = root_of(backend)
    upload = await backend.begin_upload(confine("/f.bin"), overwrite=True)
    (temp,) = temps(root)
    await feed_all(upload, DATA)
    assert not (root / "f.bin").exists()
    assert temps(root) == [temp]
    result = await upload.commit({})
    assert (root / "f.bin").read_bytes() == DATA
    assert temps(root) == []
    assert result.created
    assert result.stat.size == len(DATA) == upload.received
    assert result.digests == {"adler32": adler32(DATA)}
    assert result.stat.ino == (root / "f.bin").stat().st_ino


async def test_commit_over_an_existing_file(backend: PosixBackend) -> None:
    root = root_of(backend)
    (root / "f.bin").write_bytes(b"old")
    upload = await backend.begin_upload(confine("/f.bin"), overwrite=True)
    await feed_all(upload, DATA)
    assert (root / "f.bin").read_bytes() == b"old"
    result = await upload.commit({})
    assert not result.created
    assert (root / "f.bin").read_bytes() == DATA
    assert temps(root) == []


async def test_empty_upload(backend: PosixBackend) -> None:
    root = root_of(backend)
    upload = await backend.begin_upload(confine("/empty"), overwrite=True)
    await upload.feed(b"")
    result = await upload.commit({"adler32": bytes.fromhex("00000001")})
    assert (root / "empty").read_bytes() == b""
    assert result.digests["adler32"] == bytes.fromhex("00000001")


async def test_matching_expected_checksums_commit(backend: PosixBackend) -> None:
    md5 = hashlib.md5(DATA).digest()
    upload = await backend.begin_upload(confine("/f.bin"), True, ("md5",))
    await feed_all(upload, DATA)
    result = await upload.commit({"adler32": adler32(DATA), "md5": md5})
    assert result.digests == {"adler32": adler32(DATA), "md5": md5}
    assert (root_of(backend) / "f.bin").read_bytes() == DATA


async def test_positional_writes_are_checksummed_at_commit(backend: PosixBackend) -> None:
    upload = await backend.begin_upload(confine("/parts.bin"), overwrite=True)
    half = len(DATA) // 2
    await upload.write_at(half, DATA[half:])  # out of order, as multi-stream pulls write
    await upload.write_at(0, DATA[:half])
    assert await upload.digests() == {"adler32": adler32(DATA)}
    result = await upload.commit({"adler32": adler32(DATA)})
    assert result.stat.size == len(DATA)
    assert (root_of(backend) / "parts.bin").read_bytes() == DATA


async def test_abort_after_commit_changes_nothing(backend: PosixBackend) -> None:
    upload = await backend.begin_upload(confine("/f.bin"), overwrite=True)
    await feed_all(upload, DATA)
    await upload.commit({})
    await upload.abort()
    assert (root_of(backend) / "f.bin").read_bytes() == DATA


# -- abort and failed commits ---------------------------------------------------------------
async def test_abort_leaves_neither_file_nor_temp(backend: PosixBackend) -> None:
    root = root_of(backend)
    upload = await backend.begin_upload(confine("/sub/f.bin"), overwrite=True)
    await feed_all(upload, DATA)
    assert len(temps(root / "sub")) == 1
    await upload.abort()
    assert os.listdir(root / "sub") == []
    await upload.abort()  # twice is harmless


async def test_abort_keeps_the_file_it_would_have_replaced(backend: PosixBackend) -> None:
    root = root_of(backend)
    (root / "f.bin").write_bytes(b"old")
    upload = await backend.begin_upload(confine("/f.bin"), overwrite=True)
    await feed_all(upload, DATA)
    await upload.abort()
    assert os.listdir(root) == ["f.bin"]
    assert (root / "f.bin").read_bytes() == b"old"


async def test_checksum_mismatch_stores_nothing(backend: PosixBackend) -> None:
    root = root_of(backend)
    upload = await backend.begin_upload(confine("/f.bin"), overwrite=True)
    await feed_all(upload, DATA)
    exc = await failing(upload.commit({"adler32": bytes.fromhex("00000000")}), ChecksumMismatch)
    assert "00000000" in exc.reason and adler32(DATA).hex() in exc.reason
    assert not (root / "f.bin").exists()
    await upload.abort()  # what every caller does after a failed commit
    assert os.listdir(root) == []


async def test_checksum_mismatch_keeps_the_old_file(backend: PosixBackend) -> None:
    root = root_of(backend)
    (root / "f.bin").write_bytes(b"old")
    before = (root / "f.bin").stat()
    upload = await backend.begin_upload(confine("/f.bin"), True, ("md5",))
    await feed_all(upload, DATA)
    await failing(upload.commit({"md5": hashlib.md5(b"other").digest()}), ChecksumMismatch)
    await upload.abort()
    after = (root / "f.bin").stat()
    assert (root / "f.bin").read_bytes() == b"old"
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert os.listdir(root) == ["f.bin"]


async def test_overwrite_false_on_an_existing_file_is_refused(backend: PosixBackend) -> None:
    root = root_of(backend)
    (root / "f.bin").write_bytes(b"old")
    await failing(backend.begin_upload(confine("/f.bin"), overwrite=False), PreconditionFailed)
    assert os.listdir(root) == ["f.bin"]
    with pytest.raises(PreconditionFailed):
        backend.check_upload(confine("/f.bin"), overwrite=False)


async def test_overwrite_false_loses_a_race_at_commit(backend: PosixBackend) -> None:
    root = root_of(backend)
    upload = await backend.begin_upload(confine("/f.bin"), overwrite=False)
    await feed_all(upload, DATA)
    (root / "f.bin").write_bytes(b"first")  # another writer got there in between
    await failing(upload.commit({}), PreconditionFailed)
    await upload.abort()
    assert os.listdir(root) == ["f.bin"]
    assert (root / "f.bin").read_bytes() == b"first"


async def test_upload_onto_a_collection_or_the_root_is_refused(backend: PosixBackend) -> None:
    root = root_of(backend)
    (root / "coll").mkdir()
    (root / "file").write_bytes(b"f")
    await failing(backend.begin_upload(confine("/coll"), overwrite=True), Conflict)
    await failing(backend.begin_upload(confine("/file/child"), overwrite=True), Conflict)
    await failing(backend.begin_upload(confine("/"), overwrite=True), MethodNotAllowed)
    assert sorted(os.listdir(root)) == ["coll", "file"]
    assert os.listdir(root / "coll") == []


# -- parents, xattrs ------------------------------------------------------------------------
async def test_missing_parents_are_created(backend: PosixBackend) -> None:
    root = root_of(backend)
    upload = await backend.begin_upload(confine("/a/b/c/f.bin"), overwrite=True)
    assert (root / "a" / "b" / "c").is_dir()  # at once: the temp file lives there
    assert len(temps(root / "a" / "b" / "c")) == 1
    await feed_all(upload, DATA)
    await upload.commit({})
    assert os.listdir(root / "a" / "b" / "c") == ["f.bin"]


async def test_missing_parents_refused_without_create_parents(make_backend: MakeBackend) -> None:
    backend = make_backend(create_parents=False)
    root = root_of(backend)
    await failing(backend.begin_upload(confine("/a/f.bin"), overwrite=True), Conflict)
    assert os.listdir(root) == []
    await put(backend, "f.bin", b"top level is fine")
    assert (root / "f.bin").read_bytes() == b"top level is fine"


async def test_checksum_xattrs_are_stored(backend: PosixBackend) -> None:
    upload = await backend.begin_upload(confine("/f.bin"), True, ("md5",))
    await feed_all(upload, DATA)
    result = await upload.commit({})
    path = root_of(backend) / "f.bin"
    st = path.stat()
    assert result.stat.mtime_ns == st.st_mtime_ns
    own = os.getxattr(path, "user.se.checksum.adler32").decode()
    assert own == f"{adler32(DATA).hex()};{len(DATA)};{st.st_mtime_ns}"
    md5 = os.getxattr(path, "user.se.checksum.md5").decode()
    assert md5 == f"{hashlib.md5(DATA).hexdigest()};{len(DATA)};{st.st_mtime_ns}"
    # XRootD's struct as well (checksums.write_xrootd defaults to true).
    name, fm_time, _cs, _r1, _r2, length, value = XRD_STRUCT.unpack(
        os.getxattr(path, "user.XrdCks.adler32")
    )
    assert name.rstrip(b"\0") == b"adler32"
    assert fm_time == st.st_mtime_ns // 1_000_000_000
    assert value[:length] == adler32(DATA)


# -- the stale-temp sweep -------------------------------------------------------------------
async def test_sweep_removes_only_stale_temp_files(make_backend: MakeBackend) -> None:
    backend = make_backend(stale_upload_age=60.0)
    root = root_of(backend)
    old = time.time() - 3600
    stale = [root / f"{TEMP_PREFIX}crashed", root / "d" / "e" / f"{TEMP_PREFIX}deep"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
        os.utime(path, (old, old))
    fresh = root / "d" / f"{TEMP_PREFIX}running"
    fresh.write_bytes(b"in flight")
    kept = root / "d" / "old-but-not-a-temp"
    kept.write_bytes(b"data")
    os.utime(kept, (old, old))
    live = await backend.begin_upload(confine("/d/live.bin"), overwrite=True)
    (live_temp,) = (n for n in temps(root / "d") if n != fresh.name)
    found = sorted(backend.iter_temp_files())
    assert found == sorted(str(p) for p in [*stale, fresh, root / "d" / live_temp])
    assert await backend.run(backend.sweep_temp_files) == 2
    assert not any(p.exists() for p in stale)
    assert fresh.read_bytes() == b"in flight"
    assert kept.read_bytes() == b"data"
    await feed_all(live, DATA)  # an upload in progress is not disturbed
    await live.commit({})
    assert (root / "d" / "live.bin").read_bytes() == DATA
    assert await backend.run(backend.sweep_temp_files) == 0


# -- group commit ---------------------------------------------------------------------------
class SyncRecordingBackend(PosixBackend):
    """A real backend that also records, for every directory fsync once it has returned, the
    names the directory held when it started (what that fsync made durable)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.synced: list[frozenset[str]] = []
        self._synced_lock = threading.Lock()

    def fsync_dir(self, path: str) -> None:
        names = frozenset(os.listdir(path))
        super().fsync_dir(path)
        with self._synced_lock:
            self.synced.append(names)


def recording_backend(tmp_path: Path, threads: int, space: bool = False) -> SyncRecordingBackend:
    section = {"root": str(tmp_path / "data"), "chunk_size": CHUNK}
    cfg = load_mapping({"storage": section, "space": {"database": str(tmp_path / "space.sqlite")}})
    os.makedirs(cfg.storage.root, exist_ok=True)
    executor = ThreadPoolExecutor(threads, thread_name_prefix="se-test-io")
    backend = SyncRecordingBackend(cfg, executor, None)
    if space:
        backend.space = Accounting(cfg)
    return backend


async def test_concurrent_uploads_share_directory_fsyncs(tmp_path: Path) -> None:
    """32 PUTs committing into one directory at once: all land whole, and each one's
    directory entry was in a directory fsync that had returned before its commit did."""
    backend = recording_backend(tmp_path, 32)
    root = root_of(backend)
    (root / "d").mkdir()
    bodies = {f"f{i}.bin": os.urandom(100 + i) for i in range(32)}
    covered_by: dict[str, int] = {}

    async def one(name: str) -> None:
        upload = await backend.begin_upload(confine(f"/d/{name}"), overwrite=True)
        await upload.feed(bodies[name])
        await upload.commit({})
        covered_by[name] = len(backend.synced)  # the fsyncs done when it was answered

    try:
        await asyncio.wait_for(asyncio.gather(*(one(n) for n in bodies)), 60)
    finally:
        cast(ThreadPoolExecutor, backend.executor).shutdown(wait=True)
    for name, body in bodies.items():
        assert (root / "d" / name).read_bytes() == body
        assert any(name in names for names in backend.synced[: covered_by[name]]), name
    assert temps(root / "d") == []
    assert 1 <= len(backend.synced) <= len(bodies)


async def test_group_commit_counts_racing_writes_to_one_name_in_turn(tmp_path: Path) -> None:
    """Uploads to one name and to other names in the same directory at once, with the space
    accounting: the totals are those of the tree (one file per name)."""
    backend = recording_backend(tmp_path, 16, space=True)
    space = cast(Accounting, backend.space)
    key = space.share_key(confine("/d/x"))
    assert key is not None
    (root_of(backend) / "d").mkdir()
    names = ["same.bin"] * 12 + [f"other{i}.bin" for i in range(12)]

    async def one(name: str) -> None:
        upload = await backend.begin_upload(confine(f"/d/{name}"), overwrite=True)
        await upload.feed(b"x" * 1000)
        await upload.commit({})

    try:
        await asyncio.wait_for(asyncio.gather(*(one(n) for n in names)), 60)
        usage = space.usage(key)
        assert (usage.bytes, usage.files) == (13 * 1000, 13)
    finally:
        cast(ThreadPoolExecutor, backend.executor).shutdown(wait=True)
        space.close()
    assert sorted(os.listdir(root_of(backend) / "d")) == sorted(set(names))
