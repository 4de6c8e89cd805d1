"""Large PUTs read straight from the socket, past aiohttp's parser, land whole or not at all."""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Callable

import aiohttp
import pytest

from tests.conftest import BASE_CONFIG
from tests.e2e.test_http import RawConn
from tests.support import SEProcess, poll, temp_files

MiB = 1024 * 1024
DIRECT = BASE_CONFIG + "[storage]\ndirect_put_min = 65536\nchunk_size = 65536\n"


@pytest.fixture
def srv(se_factory: Callable[..., SEProcess]) -> SEProcess:
    return se_factory(config=DIRECT)


def stored_adler32(path: os.PathLike[str]) -> str:
    return os.getxattr(path, "user.se.checksum.adler32").decode().split(";")[0]


async def test_large_put_is_exact_and_closes_the_connection(srv: SEProcess) -> None:
    data = os.urandom(5 * MiB + 123)
    want = f"{zlib.adler32(data):08x}"
    async with aiohttp.ClientSession(srv.url) as client:
        headers = {"Digest": f"adler32={want}", "Want-Digest": "adler32"}
        async with client.put("/d/big.bin", data=io.BytesIO(data), headers=headers) as r:
            assert r.status == 201, await r.text()
            assert r.headers["Digest"] == f"adler32={want}"
            assert r.headers.get("Connection", "").lower() == "close"
        # the next request simply opens a new connection
        async with client.get("/d/big.bin") as r:
            assert r.status == 200
            assert await r.read() == data
        # a small PUT keeps the aiohttp path and keep-alive
        async with client.put("/d/small.bin", data=b"s" * 1000) as r:
            assert r.status == 201
            assert r.headers.get("Connection", "").lower() != "close"
    assert (srv.root / "d" / "big.bin").read_bytes() == data
    assert stored_adler32(srv.root / "d" / "big.bin") == want
    assert not temp_files(srv.root)


async def test_large_put_with_wrong_digest_stores_nothing(srv: SEProcess) -> None:
    data = os.urandom(3 * MiB)
    async with aiohttp.ClientSession(srv.url) as client:
        headers = {"Digest": "adler32=00000001"}
        async with client.put("/bad.bin", data=io.BytesIO(data), headers=headers) as r:
            body = await r.text()
            assert r.status == 400
            assert "00000001" in body and f"{zlib.adler32(data):08x}" in body
    assert not (srv.root / "bad.bin").exists()
    assert poll(lambda: not temp_files(srv.root)), temp_files(srv.root)


def test_large_put_cut_short_leaves_nothing(srv: SEProcess) -> None:
    conn = RawConn(srv)
    try:
        conn.send(
            f"PUT /short.bin HTTP/1.1\r\nHost: {conn.host}\r\n"
            f"Content-Length: {4 * MiB}\r\n\r\n".encode()
            + os.urandom(MiB)
        )
        # The upload has really started (its temp file has data) before the client goes.
        assert poll(lambda: any(p.stat().st_size > 0 for p in temp_files(srv.root)))
    finally:
        conn.close()
    assert poll(lambda: not temp_files(srv.root)), temp_files(srv.root)
    assert not (srv.root / "short.bin").exists()


def test_large_put_with_expect_100_continue(srv: SEProcess, tmp_path: os.PathLike[str]) -> None:
    data = os.urandom(2 * MiB)
    conn = RawConn(srv)
    try:
        conn.send(
            f"PUT /e.bin HTTP/1.1\r\nHost: {conn.host}\r\nContent-Length: {len(data)}\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        interim = conn.read_response(head_only=True)
        assert interim.status == 100
        conn.send(data)
        final = conn.read_response()
        assert final.status == 201, final.body
    finally:
        conn.close()
    assert (srv.root / "e.bin").read_bytes() == data
