"""Crash safety and concurrency against a real ``se`` process.

The kill test drives every upload itself over raw sockets so that the moment of the
SIGKILL is chosen, not guessed: some uploads have completed, some are provably half way
through (their temp file exists on disk and holds data), and a few race at full speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import random
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.conftest import BASE_CONFIG
from tests.support import SEProcess, poll_async, temp_files

MiB = 1024 * 1024
TEMP_PREFIX = ".se-upload-"
CKS_XATTR = "user.se.checksum.adler32"

CRASH_CONFIG = (
    BASE_CONFIG
    + """
[storage]
stale_upload_age = 0
fsync = true
chunk_size = 65536
"""
)

StartSE = Callable[..., SEProcess]


# --------------------------------------------------------------------------- helpers


def adler32_hex(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def stored_adler32(path: Path) -> str:
    """The checksum xattr of a file, checked to describe the file as it is now."""
    raw = os.getxattr(path, CKS_XATTR).decode("ascii")
    hexval, size, mtime_ns = raw.split(";")
    st = path.stat()
    assert int(size) == st.st_size, f"{path}: xattr size {size} != {st.st_size}"
    assert int(mtime_ns) == st.st_mtime_ns, f"{path}: xattr mtime {mtime_ns} is stale"
    return hexval


async def get_checked(session: aiohttp.ClientSession, url: str, body: bytes) -> None:
    """GET with Want-Digest: byte-exact body and the right adler32."""
    async with session.get(url, headers={"Want-Digest": "adler32"}) as resp:
        got = await resp.read()
        assert resp.status == 200, f"GET {url}: {resp.status}"
        assert resp.headers.get("Digest") == f"adler32={adler32_hex(body)}", url
    assert len(got) == len(body), f"GET {url}: {len(got)} bytes, want {len(body)}"
    assert got == body, f"GET {url}: content differs"


# --------------------------------------------------------------------------- kill test


@dataclass
class RawUpload:
    index: int
    mode: str  # "before": completes before the kill; "paused": half sent; "racing"
    chunked: bool
    body: bytes = field(repr=False)
    half_sent: asyncio.Event = field(default_factory=asyncio.Event)
    status: int | None = None
    error: str | None = None

    @property
    def dir(self) -> str:
        return f"u{self.index:02d}"

    @property
    def url_path(self) -> str:
        return f"/crash/{self.dir}/file{self.index:02d}.bin"


def _frame(piece: bytes, chunked: bool) -> bytes:
    return b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece


async def _send(writer: asyncio.StreamWriter, data: bytes, chunked: bool, pause: float) -> None:
    piece = 256 * 1024
    for start in range(0, len(data), piece):
        writer.write(_frame(data[start : start + piece], chunked))
        await writer.drain()
        if pause:
            await asyncio.sleep(pause)


async def _read_status(reader: asyncio.StreamReader) -> int:
    line = await reader.readline()
    if not line:
        raise ConnectionResetError("connection closed without a response")
    status = int(line.split()[1])
    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
        pass
    return status


async def _run_raw_upload(u: RawUpload, port: int, go: asyncio.Event, race: asyncio.Event) -> None:
    if u.mode == "racing":
        await race.wait()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        framing = "Transfer-Encoding: chunked" if u.chunked else f"Content-Length: {len(u.body)}"
        head = (
            f"PUT {u.url_path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"{framing}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode("ascii"))
        if u.mode == "paused":
            half = len(u.body) // 2
            await _send(writer, u.body[:half], u.chunked, 0.002)
            u.half_sent.set()
            await go.wait()
            await _send(writer, u.body[half:], u.chunked, 0)
        else:
            await _send(writer, u.body, u.chunked, 0.002 if u.mode == "before" else 0)
        if u.chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        u.status = await _read_status(reader)
    except (OSError, EOFError) as exc:
        u.error = repr(exc)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_sigkill_mid_upload_leaves_only_complete_files(se_factory: StartSE) -> None:
    rng = random.Random(20240611)
    modes = ["before"] * 5 + ["paused"] * 10 + ["racing"] * 5
    uploads = [
        RawUpload(
            index=i,
            mode=mode,
            chunked=i % 2 == 1,
            body=rng.randbytes(rng.randint(1 * MiB, 16 * MiB)),
        )
        for i, mode in enumerate(modes)
    ]
    srv = se_factory(CRASH_CONFIG)
    root = srv.root
    go, race = asyncio.Event(), asyncio.Event()
    tasks = {u.index: asyncio.create_task(_run_raw_upload(u, srv.port, go, race)) for u in uploads}
    by_mode = {m: [u for u in uploads if u.mode == m] for m in ("before", "paused", "racing")}
    try:
        async with asyncio.timeout(120):
            # 1. The "before" uploads finish while the paused ones stream their first half.
            await asyncio.gather(*(tasks[u.index] for u in by_mode["before"]))
            await asyncio.gather(*(u.half_sent.wait() for u in by_mode["paused"]))

            # 2. The server is provably mid-upload: each paused upload has a non-empty temp.
            def paused_on_disk() -> bool:
                for u in by_mode["paused"]:
                    temps = list((root / "crash" / u.dir).glob(f"{TEMP_PREFIX}*"))
                    if len(temps) != 1 or temps[0].stat().st_size == 0:
                        return False
                return True

            assert await poll_async(paused_on_disk, 20), "paused uploads never reached the disk"

            # 3. Let the racers go at full speed and kill as soon as the first one is done.
            race.set()
            racing = [tasks[u.index] for u in by_mode["racing"]]
            await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
            srv.kill()
            go.set()
            await asyncio.gather(*tasks.values())
    finally:
        go.set()
        race.set()
        for t in tasks.values():
            t.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)

    for u in by_mode["before"]:
        assert u.status == 201, f"{u.url_path}: {u.status} {u.error}"
    for u in by_mode["paused"]:
        assert u.status is None and u.error is not None, f"{u.url_path} was not interrupted"
        assert not (root / u.url_path.lstrip("/")).exists(), f"{u.url_path}: partial file"
        # The crash left its temp file behind: the restart's sweep has work to do.
        assert list((root / "crash" / u.dir).glob(f"{TEMP_PREFIX}*")), u.url_path
    succeeded = [u for u in uploads if u.status is not None]
    failed = [u for u in uploads if u.status is None]
    assert succeeded and failed
    for u in succeeded:
        assert u.status == 201, f"{u.url_path}: {u.status}"

    srv2 = se_factory(CRASH_CONFIG, root=root)
    assert await poll_async(lambda: not temp_files(root), 10), f"left over: {temp_files(root)}"

    expected = {root / u.url_path.lstrip("/"): u for u in uploads}
    on_disk = {
        p for p in root.rglob("*") if p.is_file() and ".se-state" not in p.relative_to(root).parts
    }
    assert on_disk <= set(expected), f"unexpected files: {on_disk - set(expected)}"

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for path, u in sorted(expected.items()):
            if u.status is not None:
                assert path.exists(), f"{u.url_path}: acknowledged upload lost"
            if not path.exists():
                async with session.get(srv2.url + u.url_path) as resp:
                    assert resp.status == 404, f"{u.url_path}: {resp.status}"
                continue
            data = path.read_bytes()
            assert len(data) == len(u.body), f"{u.url_path}: {len(data)} of {len(u.body)} bytes"
            assert data == u.body, f"{u.url_path}: content differs"
            assert stored_adler32(path) == adler32_hex(u.body), u.url_path
            await get_checked(session, srv2.url + u.url_path, u.body)


# --------------------------------------------------------------------------- concurrency


async def test_50_concurrent_puts_and_gets(se: SEProcess) -> None:
    rng = random.Random(50)
    sizes = [0, 1, 100, 65535, 65536, 65537, MiB, 2 * MiB]
    sizes += [rng.randint(1, 2 * MiB) for _ in range(50 - len(sizes))]
    bodies = {f"/many/d{i % 5}/f{i:02d}.dat": rng.randbytes(n) for i, n in enumerate(sizes)}

    async def one(session: aiohttp.ClientSession, path: str, body: bytes) -> None:
        url = se.url + path
        async with session.put(
            url, data=io.BytesIO(body), headers={"Want-Digest": "adler32"}
        ) as resp:
            await resp.read()
            assert resp.status == 201, f"PUT {path}: {resp.status}"
            assert resp.headers.get("Digest") == f"adler32={adler32_hex(body)}", path
        await get_checked(session, url, body)

    connector = aiohttp.TCPConnector(limit=50)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(one(session, p, b) for p, b in bodies.items()))

    for path, body in bodies.items():
        on_disk = se.root / path.lstrip("/")
        assert on_disk.read_bytes() == body, path
        assert stored_adler32(on_disk) == adler32_hex(body), path
    assert not temp_files(se.root)


async def test_concurrent_puts_to_same_path_do_not_interleave(se: SEProcess) -> None:
    rng = random.Random(10)
    bodies = [rng.randbytes(2 * MiB) for _ in range(10)]
    target_dir = se.root / "same"
    target_dir.mkdir()
    all_started = asyncio.Event()
    piece = 128 * 1024

    async def stream(body: bytes) -> AsyncIterator[bytes]:
        yield body[:piece]
        await all_started.wait()
        for start in range(piece, len(body), piece):
            yield body[start : start + piece]
            await asyncio.sleep(0.001)

    async def put(session: aiohttp.ClientSession, body: bytes) -> int:
        async with session.put(se.url + "/same/target.bin", data=stream(body)) as resp:
            await resp.read()
            return resp.status

    connector = aiohttp.TCPConnector(limit=10)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        puts = [asyncio.create_task(put(session, b)) for b in bodies]
        try:
            # Every upload is open on the server at the same time before any may finish.
            ok = await poll_async(lambda: len(list(target_dir.glob(f"{TEMP_PREFIX}*"))) == 10, 20)
            assert ok, "the 10 uploads never overlapped"
            all_started.set()
            statuses = await asyncio.gather(*puts)
        finally:
            all_started.set()
            for t in puts:
                t.cancel()
            await asyncio.gather(*puts, return_exceptions=True)

        assert set(statuses) <= {201, 204} and 201 in statuses, statuses
        target = target_dir / "target.bin"
        data = target.read_bytes()
        assert data in bodies, "the stored file is not any one of the uploaded bodies"
        assert stored_adler32(target) == adler32_hex(data)
        await get_checked(session, se.url + "/same/target.bin", data)
    assert sorted(p.name for p in target_dir.iterdir()) == ["target.bin"]
    assert not temp_files(se.root)


async def test_two_workers_serve_40_concurrent_large_gets(se_factory: StartSE) -> None:
    srv = se_factory(BASE_CONFIG, extra_args=["--workers", "2"])
    body = random.Random(40).randbytes(20 * MiB)
    want_sha = hashlib.sha256(body).hexdigest()
    url = srv.url + "/big/file20m.bin"
    timeout = aiohttp.ClientTimeout(total=180)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.put(url, data=io.BytesIO(body)) as resp,
    ):
        await resp.read()
        assert resp.status == 201
    assert (srv.root / "big" / "file20m.bin").read_bytes() == body

    async def fetch(session: aiohttp.ClientSession) -> tuple[int, int, str, str | None]:
        sha = hashlib.sha256()
        n = 0
        async with session.get(url, headers={"Want-Digest": "adler32"}) as resp:
            async for chunk in resp.content.iter_chunked(MiB):
                sha.update(chunk)
                n += len(chunk)
            return resp.status, n, sha.hexdigest(), resp.headers.get("Digest")

    # One connection per GET, so the kernel spreads them over both workers.
    connector = aiohttp.TCPConnector(limit=40, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        results = await asyncio.gather(*(fetch(session) for _ in range(40)))
    digest = f"adler32={adler32_hex(body)}"
    for status, n, sha, got_digest in results:
        assert status == 200
        assert n == len(body)
        assert sha == want_sha
        assert got_digest == digest
