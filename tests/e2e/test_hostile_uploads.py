"""Hostile or unlucky uploads: bodies that stall, and uploads killed with their server.

A PUT whose body stops arriving must not hold a connection, a descriptor and a temp file
for ever: after ``storage.body_stall_timeout`` without a byte it is dropped (408 if the
client still reads) and its temp file removed, on both body paths (aiohttp's parser, and
the direct socket path of large plain-HTTP PUTs).  Temp files of uploads whose process was
SIGKILLed go at the next start at once (each upload holds a lock on its temp file), while
the uploads of a server still running on the same tree are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import BASE_CONFIG
from tests.support import SEProcess, poll_async, temp_files

MiB = 1024 * 1024
StartSE = Callable[..., SEProcess]

STALL_CONFIG = (
    BASE_CONFIG
    + """
[storage]
body_stall_timeout = 1.0
direct_put_min = 1048576
"""
)


# Small write batches, so that a half-sent body is on disk (default stale_upload_age).
CRASH_CONFIG = (
    BASE_CONFIG
    + """
[storage]
chunk_size = 65536
"""
)


async def start_put(
    port: int, path: str, head_extra: str, body: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head_extra}\r\n"
    writer.write(head.encode("ascii") + body)
    await writer.drain()
    return reader, writer


async def read_status(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    line = await reader.readline()
    if not line:
        raise ConnectionResetError("closed without a response")
    rest = await reader.read(4096)
    return int(line.split()[1]), rest


@pytest.mark.parametrize(
    ("framing", "declared"),
    [
        ("content-length", 64 * 1024),  # aiohttp's parser
        ("chunked", None),  # aiohttp's parser, no length
        ("content-length", 8 * MiB),  # the direct socket path (>= direct_put_min)
    ],
    ids=["parsed", "chunked", "direct"],
)
async def test_stalled_put_times_out_and_leaves_nothing(
    se_factory: StartSE, framing: str, declared: int | None
) -> None:
    srv = se_factory(STALL_CONFIG)
    (srv.root / "up").mkdir()
    piece = os.urandom(32 * 1024)
    if declared is None:
        extra, first = "Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n" % (len(piece), piece)
    else:
        extra, first = f"Content-Length: {declared}\r\n", piece
    reader, writer = await start_put(srv.port, "/up/stalled.bin", extra, first)
    try:
        assert await poll_async(lambda: bool(temp_files(srv.root)), 10), "the upload never started"
        started = time.monotonic()
        # Then nothing more: the server gives up after its (1 s) stall timeout.
        async with asyncio.timeout(20):
            status, rest = await read_status(reader)
        assert status == 408, (status, rest)
        assert b"nothing stored" in rest
        assert time.monotonic() - started < 15
        assert await poll_async(lambda: not temp_files(srv.root), 10), temp_files(srv.root)
        assert not (srv.root / "up" / "stalled.bin").exists()
        # The connection is closed after the answer.
        async with asyncio.timeout(10):
            assert await reader.read() in (b"", rest[len(rest) :])
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    # A client that keeps sending, slowly but within the timeout, is not cut off.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:

        async def slow() -> object:
            for _ in range(4):
                yield piece
                await asyncio.sleep(0.4)

        async with s.put(f"{srv.url}/up/slow.bin", data=slow()) as r:
            assert r.status == 201, await r.text()
    assert (srv.root / "up" / "slow.bin").read_bytes() == piece * 4


async def test_sigkill_mid_upload_temp_files_go_at_restart(
    se_factory: StartSE, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    root.mkdir()
    # Another server on the same tree (as another worker would be) with an upload in
    # progress: the restart's sweep must leave its temp file alone.
    other = se_factory(CRASH_CONFIG, root=root)
    live_body = os.urandom(2 * MiB)
    live_r, live_w = await start_put(
        other.port, "/live/f.bin", f"Content-Length: {len(live_body)}\r\n", live_body[:MiB]
    )
    victim = se_factory(CRASH_CONFIG, root=root)
    conns = []
    try:
        # One upload on aiohttp's parser, one on the direct path (>= 16 MiB declared).
        for path, size in (("/crash/a.bin", 8 * MiB), ("/crash/b.bin", 32 * MiB)):
            conns.append(
                await start_put(
                    victim.port, path, f"Content-Length: {size}\r\n", os.urandom(2 * MiB)
                )
            )

        def crashed_temps() -> list[Path]:
            return [p for p in temp_files(root / "crash") if p.stat().st_size > 0]

        def live_temps() -> list[Path]:
            return [p for p in temp_files(root / "live") if p.stat().st_size > 0]

        assert await poll_async(lambda: len(crashed_temps()) == 2 and bool(live_temps()), 20)
        victim.kill()
        left = crashed_temps()
        assert len(left) == 2
        # The default stale_upload_age (one hour) is no longer what it takes.
        se_factory(CRASH_CONFIG, root=root)
        assert await poll_async(lambda: not any(p.exists() for p in left), 10), left
        assert live_temps(), "the sweep removed the temp file of a live upload"
        live_w.write(live_body[MiB:])
        await live_w.drain()
        async with asyncio.timeout(20):
            status, _rest = await read_status(live_r)
        assert status == 201
        assert (root / "live" / "f.bin").read_bytes() == live_body
        assert not temp_files(root)
    finally:
        for _r, w in [*conns, (live_r, live_w)]:
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()
