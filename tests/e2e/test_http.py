"""End-to-end HTTP/WebDAV behaviour of a real ``se`` process, driven by aiohttp's client.

Raw sockets are used where aiohttp's client would normalise the request (dot segments,
``Expect: 100-continue`` timing, bodies cut short, keep-alive reuse).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import socket
import struct
import subprocess
import uuid
import xml.etree.ElementTree as ET
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp
import crc32c
import pytest
from yarl import URL

from tests.conftest import BASE_CONFIG
from tests.support import SEProcess, poll, temp_files

D = "{DAV:}"
TIMEOUT = aiohttp.ClientTimeout(total=60)
TEMP_PREFIX = ".se-upload-"
MiB = 1024 * 1024


# -- helpers --------------------------------------------------------------------------------
@pytest.fixture
async def client(se: SEProcess) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=se.url, timeout=TIMEOUT) as session:
        yield session


def session_for(srv: SEProcess) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(base_url=srv.url, timeout=TIMEOUT)


def adler32_hex(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def assert_one_line_error(status: int, headers: Mapping[str, str], body: bytes) -> str:
    """Every error body is exactly one line of text/plain; returns that line."""
    assert status >= 400
    ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    assert ctype.startswith("text/plain"), ctype
    text = body.decode("utf-8")
    assert text.endswith("\n"), text
    assert text.count("\n") == 1, text
    assert text.strip(), text
    return text.strip()


async def expect_error(resp: aiohttp.ClientResponse, status: int) -> str:
    body = await resp.read()
    assert resp.status == status, (resp.status, body)
    return assert_one_line_error(resp.status, resp.headers, body)


def url(path: str) -> URL:
    """A path sent exactly as written (already percent-encoded)."""
    return URL(path, encoded=True)


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes
    head: bytes


class RawConn:
    """A plain HTTP/1.1 connection for requests aiohttp's client cannot express."""

    def __init__(self, srv: SEProcess, timeout: float = 20.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
        self.host = f"127.0.0.1:{srv.port}"
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 20)
        self.buf += chunk
        return bool(chunk)

    def read_head(self) -> tuple[int, str, dict[str, str], bytes]:
        for _ in range(10000):
            if b"\r\n\r\n" in self.buf:
                break
            if not self._fill():
                raise ConnectionError(f"closed before a full response head: {self.buf!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        _version, status, *reason = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return int(status), " ".join(reason), headers, head

    def read_response(self, head_only: bool = False) -> RawResponse:
        status, reason, headers, head = self.read_head()
        body = b""
        if not head_only and status not in (204, 304) and status >= 200:
            if "content-length" in headers:
                n = int(headers["content-length"])
                for _ in range(100000):
                    if len(self.buf) >= n:
                        break
                    if not self._fill():
                        break
                body, self.buf = self.buf[:n], self.buf[n:]
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                body = self._read_chunked()
            else:
                for _ in range(100000):
                    if not self._fill():
                        break
                body, self.buf = self.buf, b""
        return RawResponse(status, reason, headers, body, head)

    def _read_chunked(self) -> bytes:
        out = b""
        for _ in range(100000):
            while b"\r\n" not in self.buf:
                if not self._fill():
                    raise ConnectionError("closed inside a chunked body")
            size_line, _, self.buf = self.buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(self.buf) < size + 2:
                if not self._fill():
                    raise ConnectionError("closed inside a chunk")
            out += self.buf[:size]
            self.buf = self.buf[size + 2 :]
            if size == 0:
                break
        return out

    def request(
        self,
        method: str,
        target: bytes | str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        close: bool = True,
    ) -> RawResponse:
        if isinstance(target, str):
            target = target.encode()
        lines = [method.encode() + b" " + target + b" HTTP/1.1", f"Host: {self.host}".encode()]
        hdrs = dict(headers or {})
        if body or method in ("PUT",):
            hdrs.setdefault("Content-Length", str(len(body)))
        if close:
            hdrs["Connection"] = "close"
        lines += [f"{k}: {v}".encode() for k, v in hdrs.items()]
        self.send(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        return self.read_response(head_only=method == "HEAD")


def raw(
    srv: SEProcess,
    method: str,
    target: bytes | str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> RawResponse:
    with RawConn(srv) as conn:
        return conn.request(method, target, headers, body)


def propfind_body(*props: str) -> bytes:
    inner = "".join(f"<D:{p}/>" for p in props)
    return (
        '<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:">'
        f"<D:prop>{inner}</D:prop></D:propfind>"
    ).encode()


def multistatus(body: bytes) -> list[ET.Element]:
    root = ET.fromstring(body)
    assert root.tag == D + "multistatus"
    return root.findall(D + "response")


def href_path(resp: ET.Element) -> str:
    href = resp.findtext(D + "href")
    assert href is not None
    return unquote(urlsplit(href).path)


def ok_prop(resp: ET.Element) -> ET.Element:
    stats = resp.findall(D + "propstat")
    assert stats, ET.tostring(resp)
    assert stats[0].findtext(D + "status") == "HTTP/1.1 200 OK"
    prop = stats[0].find(D + "prop")
    assert prop is not None
    return prop


def is_collection(resp: ET.Element) -> bool:
    rt = ok_prop(resp).find(D + "resourcetype")
    return rt is not None and rt.find(D + "collection") is not None


# -- PUT atomicity ----------------------------------------------------------------------------
def test_put_short_body_leaves_nothing(se: SEProcess) -> None:
    conn = RawConn(se)
    try:
        conn.send(
            f"PUT /short.bin HTTP/1.1\r\nHost: {conn.host}\r\nContent-Length: 1000\r\n\r\n".encode()
            + b"x" * 500
        )
        # The upload has really started (its temp file exists) before the client goes away.
        assert poll(lambda: bool(temp_files(se.root))), "upload never started"
    finally:
        conn.close()
    assert poll(lambda: not temp_files(se.root)), temp_files(se.root)
    assert not (se.root / "short.bin").exists()
    assert sorted(n for n in os.listdir(se.root) if n != ".se-state") == []


def test_put_chunked_disconnect_leaves_nothing(se: SEProcess) -> None:
    conn = RawConn(se)
    try:
        conn.send(
            f"PUT /sub/chunked.bin HTTP/1.1\r\nHost: {conn.host}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        for _ in range(4):
            conn.send(b"1000\r\n" + b"c" * 0x1000 + b"\r\n")
        assert poll(lambda: bool(temp_files(se.root))), "upload never started"
    finally:
        conn.close()
    assert poll(lambda: not temp_files(se.root)), temp_files(se.root)
    assert not (se.root / "sub" / "chunked.bin").exists()


def test_put_chunked_complete_is_stored(se: SEProcess) -> None:
    data = b"0123456789abcdef" * 1000
    chunks = [data[i : i + 3000] for i in range(0, len(data), 3000)]
    body = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"
    with RawConn(se) as conn:
        conn.send(
            f"PUT /chunked.bin HTTP/1.1\r\nHost: {conn.host}\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        resp = conn.read_response()
    assert resp.status == 201, resp
    assert (se.root / "chunked.bin").read_bytes() == data


async def test_put_checksum_mismatch(client: aiohttp.ClientSession, se: SEProcess) -> None:
    data = b"payload with a checksum\n" * 100
    real = adler32_hex(data)
    async with client.put("/cks/bad.bin", data=data, headers={"Digest": "adler32=00000000"}) as r:
        assert 400 <= r.status < 500
        line = await expect_error(r, r.status)
    assert "00000000" in line
    assert real in line
    assert "adler32" in line
    assert not (se.root / "cks" / "bad.bin").exists()
    assert not temp_files(se.root)


async def test_put_checksum_match_is_stored(client: aiohttp.ClientSession, se: SEProcess) -> None:
    data = os.urandom(10000)
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    headers = {"Digest": f"adler32={adler32_hex(data)},md5={md5}", "Want-Digest": "adler32"}
    async with client.put("/good.bin", data=data, headers=headers) as r:
        assert r.status == 201
        assert r.headers["Digest"] == f"adler32={adler32_hex(data)}"
    assert (se.root / "good.bin").read_bytes() == data


async def test_failed_overwrite_keeps_old_file(
    client: aiohttp.ClientSession, se: SEProcess
) -> None:
    old = b"old content\n"
    async with client.put("/keep.txt", data=old) as r:
        assert r.status == 201
    before = os.stat(se.root / "keep.txt")
    new = b"new content that must not land\n"
    async with client.put("/keep.txt", data=new, headers={"Digest": "adler32=00000000"}) as r:
        assert 400 <= r.status < 500
        await expect_error(r, r.status)
    assert (se.root / "keep.txt").read_bytes() == old
    after = os.stat(se.root / "keep.txt")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    async with client.get("/keep.txt") as r:
        assert r.status == 200
        assert await r.read() == old
    assert not temp_files(se.root)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        done = subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30, check=False)


@pytest.mark.parametrize(
    ("chunk_size", "direct_put_min"), [(4 * MiB, 0), (65536, 0), (65536, 65536)]
)
async def test_put_disk_full_is_507(
    small_fs: Path, se_factory: Callable[..., SEProcess], chunk_size: int, direct_put_min: int
) -> None:
    cfg = f"[storage]\nchunk_size = {chunk_size}\ndirect_put_min = {direct_put_min}\n"
    srv = se_factory(config=BASE_CONFIG + cfg, root=small_fs)
    try:
        async with session_for(srv) as client:
            async with client.put("/ok.bin", data=b"k" * 1000) as r:
                assert r.status == 201
            status: int | None = None
            body = b""
            headers: dict[str, str] = {}
            with contextlib.suppress(aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                async with client.put("/big.bin", data=io.BytesIO(os.urandom(3 * MiB))) as r:
                    status, headers, body = r.status, dict(r.headers), await r.read()
            if status is None:
                # The server answered early and closed while the body was still streaming;
                # ask again over a raw socket, reading the answer as soon as it arrives.
                with RawConn(srv) as conn:
                    conn.send(
                        f"PUT /big.bin HTTP/1.1\r\nHost: {conn.host}\r\n"
                        f"Content-Length: {3 * MiB}\r\n\r\n".encode()
                    )
                    with contextlib.suppress(OSError):
                        conn.send(os.urandom(3 * MiB))
                    resp = conn.read_response()
                    status, headers, body = resp.status, resp.headers, resp.body
            assert status == 507, (status, body)
            assert_one_line_error(status, headers, body)
            assert poll(lambda: not temp_files(small_fs)), temp_files(small_fs)
            assert not (small_fs / "big.bin").exists()
            assert (small_fs / "ok.bin").read_bytes() == b"k" * 1000
            # The space is given back: a small upload still fits.
            async with client.put("/after.bin", data=b"a" * 100000) as r:
                assert r.status == 201
    finally:
        srv.stop()


# -- Expect: 100-continue ---------------------------------------------------------------------
def test_expect_100_continue_before_body(se: SEProcess) -> None:
    body = b"sent only after 100\n"
    with RawConn(se) as conn:
        conn.send(
            f"PUT /e/c.txt HTTP/1.1\r\nHost: {conn.host}\r\nExpect: 100-continue\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        )
        status, _reason, _h, head = conn.read_head()
        assert head.startswith(b"HTTP/1.1 100 Continue"), head
        assert status == 100
        assert not (se.root / "e" / "c.txt").exists()
        conn.send(body)
        resp = conn.read_response()
    assert resp.status == 201, resp
    assert (se.root / "e" / "c.txt").read_bytes() == body


def test_expect_100_refused_without_continue(se: SEProcess) -> None:
    (se.root / "exists.txt").write_bytes(b"original")
    with RawConn(se) as conn:
        conn.send(
            f"PUT /exists.txt HTTP/1.1\r\nHost: {conn.host}\r\nExpect: 100-continue\r\n"
            "Overwrite: F\r\nContent-Length: 10\r\n\r\n".encode()
        )
        # The final status comes first, with no 100 in front, and the body is never sent.
        resp = conn.read_response()
    assert resp.status == 412, resp
    assert b"100 Continue" not in resp.head
    assert_one_line_error(resp.status, resp.headers, resp.body)
    assert (se.root / "exists.txt").read_bytes() == b"original"


# -- PUT semantics ----------------------------------------------------------------------------
async def test_put_create_overwrite_and_overwrite_f(
    client: aiohttp.ClientSession, se: SEProcess
) -> None:
    async with client.put("/p/f.txt", data=b"one") as r:
        assert r.status == 201
        assert r.headers.get("ETag")
    async with client.put("/p/f.txt", data=b"two") as r:
        assert r.status == 204
    assert (se.root / "p" / "f.txt").read_bytes() == b"two"
    async with client.put("/p/f.txt", data=b"three", headers={"Overwrite": "F"}) as r:
        await expect_error(r, 412)
    assert (se.root / "p" / "f.txt").read_bytes() == b"two"
    async with client.put("/p/g.txt", data=b"new", headers={"Overwrite": "F"}) as r:
        assert r.status == 201
    assert not temp_files(se.root)


async def test_put_creates_missing_parents(client: aiohttp.ClientSession, se: SEProcess) -> None:
    async with client.put("/a/b/c/d.txt", data=b"deep") as r:
        assert r.status == 201
    assert (se.root / "a" / "b" / "c" / "d.txt").read_bytes() == b"deep"


async def test_put_without_create_parents_is_409(se_factory: Callable[..., SEProcess]) -> None:
    srv = se_factory(config=BASE_CONFIG + "[storage]\ncreate_parents = false\n")
    async with session_for(srv) as client:
        async with client.put("/missing/f.txt", data=b"x") as r:
            await expect_error(r, 409)
        assert not (srv.root / "missing").exists()
        async with client.request("MKCOL", "/present") as r:
            assert r.status == 201
        async with client.put("/present/f.txt", data=b"x") as r:
            assert r.status == 201
    assert (srv.root / "present" / "f.txt").read_bytes() == b"x"


async def test_put_onto_collection_is_409(client: aiohttp.ClientSession, se: SEProcess) -> None:
    (se.root / "coll").mkdir()
    async with client.put("/coll", data=b"x") as r:
        await expect_error(r, 409)
    async with client.put("/coll/", data=b"x") as r:
        await expect_error(r, 409)
    assert (se.root / "coll").is_dir()
    (se.root / "file").write_bytes(b"f")
    async with client.put("/file/child", data=b"x") as r:
        await expect_error(r, 409)
    assert (se.root / "file").read_bytes() == b"f"
    assert not temp_files(se.root)


# -- GET / HEAD -------------------------------------------------------------------------------
async def test_get_head_validators_and_conditionals(
    client: aiohttp.ClientSession, se: SEProcess
) -> None:
    data = b"conditional\n" * 10
    async with client.put("/v.txt", data=data) as r:
        assert r.status == 201
    async with client.head("/v.txt") as r:
        assert r.status == 200
        etag = r.headers["ETag"]
        last_modified = r.headers["Last-Modified"]
        assert r.headers["Content-Length"] == str(len(data))
        assert r.headers["Accept-Ranges"] == "bytes"
        assert await r.read() == b""
    assert etag.startswith('"') and etag.endswith('"')
    assert last_modified.endswith(" GMT")
    async with client.get("/v.txt") as r:
        assert r.status == 200
        assert r.headers["ETag"] == etag
        assert r.headers["Last-Modified"] == last_modified
        assert await r.read() == data
    async with client.get("/v.txt", headers={"If-None-Match": etag}) as r:
        assert r.status == 304
        assert await r.read() == b""
    async with client.get("/v.txt", headers={"If-None-Match": '"other"'}) as r:
        assert r.status == 200
        assert await r.read() == data
    async with client.get("/v.txt", headers={"If-Modified-Since": last_modified}) as r:
        assert r.status == 304
    async with client.get(
        "/v.txt", headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}
    ) as r:
        assert r.status == 200
    async with client.get("/v.txt", headers={"If-Match": '"nope"'}) as r:
        await expect_error(r, 412)
    async with client.get("/v.txt", headers={"If-Match": etag}) as r:
        assert r.status == 200
    async with client.get("/missing.txt") as r:
        await expect_error(r, 404)


async def test_get_ranges(client: aiohttp.ClientSession, se: SEProcess) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    n = len(data)
    (se.root / "r.bin").write_bytes(data)
    async with client.get("/r.bin", headers={"Range": "bytes=100-199"}) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == f"bytes 100-199/{n}"
        assert await r.read() == data[100:200]
    async with client.get("/r.bin", headers={"Range": "bytes=-10"}) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == f"bytes {n - 10}-{n - 1}/{n}"
        assert await r.read() == data[-10:]
    async with client.get("/r.bin", headers={"Range": f"bytes={n - 5}-"}) as r:
        assert r.status == 206
        assert await r.read() == data[-5:]
    async with client.get("/r.bin", headers={"Range": "bytes=0-9,5000-5009,10000-10239"}) as r:
        assert r.status == 206
        ctype = r.headers["Content-Type"]
        body = await r.read()
    assert ctype.startswith("multipart/byteranges; boundary=")
    boundary = ctype.split("boundary=", 1)[1].strip('"').encode()
    parts = body.split(b"--" + boundary)
    assert parts[0] in (b"", b"\r\n")  # RFC 2046: the first delimiter may follow a CRLF
    assert parts[-1] == b"--\r\n"
    got = []
    for part in parts[1:-1]:
        head, _, payload = part.partition(b"\r\n\r\n")
        assert payload.endswith(b"\r\n")
        cr = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-range:")
        )
        got.append((cr.decode(), payload[:-2]))
    assert got == [
        (f"bytes 0-9/{n}", data[0:10]),
        (f"bytes 5000-5009/{n}", data[5000:5010]),
        (f"bytes 10000-10239/{n}", data[10000:]),
    ]
    async with client.get("/r.bin", headers={"Range": f"bytes={n}-{n + 10}"}) as r:
        assert r.headers["Content-Range"] == f"bytes */{n}"
        await expect_error(r, 416)


async def test_large_file_sendfile_exact(client: aiohttp.ClientSession, se: SEProcess) -> None:
    data = os.urandom(5 * MiB + 123)  # far above inline_read_max: the sendfile path
    (se.root / "large.bin").write_bytes(data)
    async with client.get("/large.bin") as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == str(len(data))
        got = await r.read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    start, end = 2 * MiB + 7, 4 * MiB + 11
    async with client.get("/large.bin", headers={"Range": f"bytes={start}-{end}"}) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == f"bytes {start}-{end}/{len(data)}"
        assert await r.read() == data[start : end + 1]


def test_large_file_twice_on_one_keepalive_connection(se: SEProcess) -> None:
    data = os.urandom(5 * MiB)
    (se.root / "ka.bin").write_bytes(data)
    with RawConn(se) as conn:
        for i in range(2):
            conn.send(f"GET /ka.bin HTTP/1.1\r\nHost: {conn.host}\r\n\r\n".encode())
            resp = conn.read_response()
            assert resp.status == 200, (i, resp.status)
            assert resp.headers.get("connection", "").lower() != "close"
            assert resp.body == data, i
        conn.send(
            f"GET /ka.bin HTTP/1.1\r\nHost: {conn.host}\r\nRange: bytes=10-19\r\n\r\n".encode()
        )
        resp = conn.read_response()
        assert resp.status == 206
        assert resp.body == data[10:20]


# -- Checksums --------------------------------------------------------------------------------
async def head_digest(client: aiohttp.ClientSession, path: str, alg: str) -> str:
    async with client.head(path, headers={"Want-Digest": alg}) as r:
        assert r.status == 200
        return r.headers["Digest"]


async def test_want_digest_algorithms(client: aiohttp.ClientSession, se: SEProcess) -> None:
    data = os.urandom(300000)
    async with client.put("/d.bin", data=data) as r:
        assert r.status == 201
    expected = {
        "adler32": f"adler32={adler32_hex(data)}",
        "ADLER32": f"adler32={adler32_hex(data)}",
        "md5": "md5=" + base64.b64encode(hashlib.md5(data).digest()).decode(),
        "MD5": "md5=" + base64.b64encode(hashlib.md5(data).digest()).decode(),
        "sha-256": "sha-256=" + base64.b64encode(hashlib.sha256(data).digest()).decode(),
        "crc32c": f"crc32c={crc32c.crc32c(data):08x}",
    }
    for alg, value in expected.items():
        assert await head_digest(client, "/d.bin", alg) == value, alg
    async with client.get("/d.bin", headers={"Want-Digest": "md5;q=0.3, adler32;q=1"}) as r:
        assert r.headers["Digest"] == expected["adler32"]
        assert await r.read() == data
    async with client.head("/d.bin") as r:
        assert "Digest" not in r.headers


def _cks_xattr(path: Path) -> bytes | None:
    try:
        return os.getxattr(path, "user.se.checksum.adler32")
    except OSError:
        return None


def _need_user_xattrs(path: Path) -> None:
    probe = path / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError as exc:
        pytest.skip(f"no user xattrs on {path}: {exc.strerror}")
    finally:
        probe.unlink()


async def test_checksum_computed_cached_and_never_stale(
    client: aiohttp.ClientSession, se: SEProcess
) -> None:
    _need_user_xattrs(se.root)
    f = se.root / "direct.bin"
    data = os.urandom(200000)
    f.write_bytes(data)
    assert _cks_xattr(f) is None
    assert await head_digest(client, "/direct.bin", "adler32") == f"adler32={adler32_hex(data)}"
    cached = _cks_xattr(f)
    assert cached is not None
    assert cached.split(b";")[0] == adler32_hex(data).encode()
    assert await head_digest(client, "/direct.bin", "adler32") == f"adler32={adler32_hex(data)}"

    # Size change behind the server's back.
    data2 = data + b"appended"
    with f.open("ab") as fh:
        fh.write(b"appended")
    assert await head_digest(client, "/direct.bin", "adler32") == f"adler32={adler32_hex(data2)}"

    # Same size, new content and a different mtime.
    data3 = bytes(reversed(data2))
    st = os.stat(f)
    f.write_bytes(data3)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert os.stat(f).st_size == st.st_size
    assert await head_digest(client, "/direct.bin", "adler32") == f"adler32={adler32_hex(data3)}"
    cached = _cks_xattr(f)
    assert cached is not None
    assert cached.split(b";")[0] == adler32_hex(data3).encode()


def _xrd_value(name: str, fm_time: int, value: bytes) -> bytes:
    return struct.pack(">16sqihbb64s", name.encode(), fm_time, 0, 0, 0, len(value), value)


async def test_xrootd_checksum_xattr_is_read(client: aiohttp.ClientSession, se: SEProcess) -> None:
    _need_user_xattrs(se.root)
    data = b"xrootd wrote this file\n" * 50
    real = adler32_hex(data)
    fake = "deadbeef" if real != "deadbeef" else "cafebabe"

    fresh = se.root / "xrd-fresh.bin"
    fresh.write_bytes(data)
    mtime = int(os.stat(fresh).st_mtime)
    os.setxattr(fresh, "user.XrdCks.adler32", _xrd_value("adler32", mtime, bytes.fromhex(fake)))
    assert await head_digest(client, "/xrd-fresh.bin", "adler32") == f"adler32={fake}"

    stale = se.root / "xrd-stale.bin"
    stale.write_bytes(data)
    mtime = int(os.stat(stale).st_mtime)
    os.setxattr(
        stale, "user.XrdCks.adler32", _xrd_value("adler32", mtime - 100, bytes.fromhex(fake))
    )
    assert await head_digest(client, "/xrd-stale.bin", "adler32") == f"adler32={real}"


# -- MKCOL / DELETE ---------------------------------------------------------------------------
async def test_mkcol(client: aiohttp.ClientSession, se: SEProcess) -> None:
    async with client.request("MKCOL", "/newdir") as r:
        assert r.status == 201
    assert (se.root / "newdir").is_dir()
    async with client.request("MKCOL", "/newdir") as r:
        await expect_error(r, 405)
    async with client.request("MKCOL", "/newdir/") as r:
        await expect_error(r, 405)
    async with client.request("MKCOL", "/no/such/parent") as r:
        await expect_error(r, 409)
    assert not (se.root / "no").exists()
    async with client.request("MKCOL", "/withbody", data=b"<x/>") as r:
        await expect_error(r, 415)
    assert not (se.root / "withbody").exists()
    (se.root / "afile").write_bytes(b"")
    async with client.request("MKCOL", "/afile") as r:
        await expect_error(r, 405)


async def test_delete(client: aiohttp.ClientSession, se: SEProcess) -> None:
    (se.root / "f.txt").write_bytes(b"x")
    async with client.delete("/f.txt") as r:
        assert r.status == 204
    assert not (se.root / "f.txt").exists()
    async with client.delete("/f.txt") as r:
        await expect_error(r, 404)
    tree = se.root / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_bytes(b"1")
    (tree / "g").write_bytes(b"2")
    async with client.delete("/tree/") as r:
        assert r.status == 204
    assert not tree.exists()
    assert se.root.is_dir()


# -- MOVE / COPY ------------------------------------------------------------------------------
async def test_move(client: aiohttp.ClientSession, se: SEProcess) -> None:
    base = se.url
    (se.root / "m1").write_bytes(b"first")
    async with client.request("MOVE", "/m1", headers={"Destination": base + "/m2"}) as r:
        assert r.status == 201
    assert not (se.root / "m1").exists()
    assert (se.root / "m2").read_bytes() == b"first"
    (se.root / "m3").write_bytes(b"third")
    async with client.request("MOVE", "/m3", headers={"Destination": base + "/m2"}) as r:
        assert r.status == 204
    assert (se.root / "m2").read_bytes() == b"third"
    (se.root / "m4").write_bytes(b"fourth")
    hdrs = {"Destination": base + "/m2", "Overwrite": "F"}
    async with client.request("MOVE", "/m4", headers=hdrs) as r:
        await expect_error(r, 412)
    assert (se.root / "m2").read_bytes() == b"third"
    assert (se.root / "m4").read_bytes() == b"fourth"
    async with client.request("MOVE", "/m4", headers={"Destination": base + "/nope/m4"}) as r:
        await expect_error(r, 409)
    assert (se.root / "m4").exists()
    hdrs = {"Destination": "http://other.example.org/m4"}
    async with client.request("MOVE", "/m4", headers=hdrs) as r:
        await expect_error(r, 502)
    assert (se.root / "m4").exists()
    # Collections move with their content.
    (se.root / "dir" / "sub").mkdir(parents=True)
    (se.root / "dir" / "sub" / "f").write_bytes(b"in dir")
    async with client.request("MOVE", "/dir/", headers={"Destination": base + "/dir2/"}) as r:
        assert r.status == 201
    assert (se.root / "dir2" / "sub" / "f").read_bytes() == b"in dir"
    assert not (se.root / "dir").exists()


async def test_copy(client: aiohttp.ClientSession, se: SEProcess) -> None:
    base = se.url
    (se.root / "c1").write_bytes(b"copy me")
    async with client.request("COPY", "/c1", headers={"Destination": base + "/c2"}) as r:
        assert r.status == 201
    assert (se.root / "c2").read_bytes() == b"copy me"
    assert (se.root / "c1").read_bytes() == b"copy me"
    (se.root / "c1").write_bytes(b"copy me again")
    async with client.request("COPY", "/c1", headers={"Destination": base + "/c2"}) as r:
        assert r.status == 204
    assert (se.root / "c2").read_bytes() == b"copy me again"
    hdrs = {"Destination": base + "/c2", "Overwrite": "F"}
    async with client.request("COPY", "/c1", headers=hdrs) as r:
        await expect_error(r, 412)

    tree = se.root / "t"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "f").write_bytes(b"nested")
    (tree / "g").write_bytes(b"top")
    hdrs = {"Destination": base + "/t0/", "Depth": "0"}
    async with client.request("COPY", "/t/", headers=hdrs) as r:
        assert r.status == 201
    assert (se.root / "t0").is_dir()
    assert list((se.root / "t0").iterdir()) == []
    hdrs = {"Destination": base + "/tinf/", "Depth": "infinity"}
    async with client.request("COPY", "/t/", headers=hdrs) as r:
        assert r.status == 201
    assert (se.root / "tinf" / "a" / "f").read_bytes() == b"nested"
    assert (se.root / "tinf" / "g").read_bytes() == b"top"
    async with client.request("COPY", "/t/", headers={"Destination": base + "/tinf/"}) as r:
        assert r.status == 204
    assert (se.root / "tinf" / "a" / "f").read_bytes() == b"nested"
    assert not temp_files(se.root)


async def test_remote_copy_to_unknown_host_fails_in_the_marker_stream(
    client: aiohttp.ClientSession, se: SEProcess
) -> None:
    (se.root / "src").write_bytes(b"s")
    for hdrs, path in (
        ({"Destination": "https://nowhere.invalid:2880/x"}, "/src"),
        ({"Source": "https://nowhere.invalid:2880/x"}, "/dst"),
    ):
        async with client.request("COPY", path, headers=hdrs) as r:
            assert r.status == 202
            assert r.headers["Content-Type"] == "text/perf-marker-stream"
            body = await r.text()
        last = body.rstrip("\n").rsplit("\n", 1)[-1]
        assert last.startswith("failure: "), body
        assert "nowhere.invalid" in last
    assert not (se.root / "dst").exists()
    assert sorted(n for n in os.listdir(se.root) if n != ".se-state") == ["src"]


# -- Confinement over the wire ----------------------------------------------------------------
@pytest.mark.parametrize(
    "target",
    [
        b"/../etc/passwd",
        b"/../../../../etc/passwd",
        b"/%2e%2e/%2e%2e/etc/passwd",
        b"/a/%2E%2e/%2e%2E/etc/passwd",
        b"/a/%00",
        b"/etc%2fpasswd",
        b"/%2fetc/passwd",
        b"/..%2f..%2fetc/passwd",
        b"/.se-upload-x",
    ],
)
def test_confinement_raw_request_lines(se: SEProcess, target: bytes) -> None:
    (se.root / "a").mkdir(exist_ok=True)
    resp = raw(se, "GET", target)
    assert 400 <= resp.status < 500, resp.status
    assert b"root:" not in resp.body
    if resp.headers.get("server", "").startswith("se/"):
        assert_one_line_error(resp.status, resp.headers, resp.body)


def test_destination_with_undecodable_bytes(se: SEProcess) -> None:
    (se.root / "src").write_bytes(b"s")
    for method in ("MOVE", "COPY"):
        dest = f"http://127.0.0.1:{se.port}/\xff".encode("latin-1")
        with RawConn(se) as conn:
            conn.send(
                method.encode()
                + b" /src HTTP/1.1\r\nHost: "
                + conn.host.encode()
                + b"\r\nDestination: "
                + dest
                + b"\r\nConnection: close\r\n\r\n"
            )
            resp = conn.read_response()
        assert 400 <= resp.status < 500, (method, resp.status, resp.body)
    assert sorted(n for n in os.listdir(se.root) if n != ".se-state") == ["src"]


@pytest.mark.parametrize("dest", ["/../escaped", "/%2e%2e/escaped", "/a/../../escaped"])
async def test_move_copy_destination_confined(
    client: aiohttp.ClientSession, se: SEProcess, dest: str
) -> None:
    (se.root / "src").write_bytes(b"s")
    for method in ("MOVE", "COPY"):
        hdrs = {"Destination": se.url + dest}
        async with client.request(method, "/src", headers=hdrs) as r:
            assert 400 <= r.status < 500, (method, r.status)
            await expect_error(r, r.status)
    assert not (se.root.parent / "escaped").exists()
    assert (se.root / "src").read_bytes() == b"s"


async def test_symlink_out_of_root(
    client: aiohttp.ClientSession, se: SEProcess, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"top secret")
    os.symlink("/etc", se.root / "esc")
    os.symlink(outside, se.root / "out")
    os.symlink(outside / "secret", se.root / "secret-link")
    probe = f"se-test-{uuid.uuid4().hex}"
    try:
        async with client.get("/esc/passwd") as r:
            body = await r.read()
            assert 400 <= r.status < 500
            assert b"root:" not in body
        async with client.head("/esc/passwd") as r:
            assert 400 <= r.status < 500
        async with client.get("/secret-link") as r:
            assert 400 <= r.status < 500
            assert b"top secret" not in await r.read()
        async with client.get("/out/secret") as r:
            assert 400 <= r.status < 500
            assert b"top secret" not in await r.read()
        async with client.put(f"/esc/{probe}", data=b"x") as r:
            assert 400 <= r.status < 500
        async with client.put("/out/new", data=b"x") as r:
            assert 400 <= r.status < 500
        async with client.put("/out/secret", data=b"overwritten") as r:
            assert 400 <= r.status < 500
        async with client.request("MKCOL", "/out/newdir") as r:
            assert 400 <= r.status < 500
        async with client.delete("/out/secret") as r:
            assert 400 <= r.status < 500
        hdrs = {"Destination": se.url + "/stolen"}
        async with client.request("COPY", "/out/secret", headers=hdrs) as r:
            assert 400 <= r.status < 500
        async with client.request("PROPFIND", "/out/", headers={"Depth": "1"}) as r:
            assert 400 <= r.status < 500
        async with client.request("PROPFIND", "/", headers={"Depth": "1"}) as r:
            assert r.status == 207
            names = {href_path(x) for x in multistatus(await r.read())}
        assert not any(n.startswith(("/esc", "/out", "/secret-link")) for n in names), names
        assert not (Path("/etc") / probe).exists()
        assert sorted(os.listdir(outside)) == ["secret"]
        assert (outside / "secret").read_bytes() == b"top secret"
        assert not (se.root / "stolen").exists()
        assert not temp_files(outside)
    finally:
        with contextlib.suppress(FileNotFoundError):
            (Path("/etc") / probe).unlink()


async def test_symlink_inside_root_works(client: aiohttp.ClientSession, se: SEProcess) -> None:
    (se.root / "real").mkdir()
    (se.root / "real" / "f.txt").write_bytes(b"through the link")
    os.symlink(se.root / "real", se.root / "link")
    async with client.get("/link/f.txt") as r:
        assert r.status == 200
        assert await r.read() == b"through the link"
    async with client.put("/link/g.txt", data=b"written via link") as r:
        assert r.status == 201
    assert (se.root / "real" / "g.txt").read_bytes() == b"written via link"


# -- PROPFIND ---------------------------------------------------------------------------------
async def test_propfind_depths(client: aiohttp.ClientSession, se: SEProcess) -> None:
    (se.root / "pd" / "sub").mkdir(parents=True)
    (se.root / "pd" / "a.txt").write_bytes(b"12345")
    (se.root / "pd" / "sub" / "deep.txt").write_bytes(b"deep")
    (se.root / "pd" / f"{TEMP_PREFIX}inflight").write_bytes(b"partial")
    body = propfind_body("resourcetype", "getcontentlength", "getlastmodified")
    async with client.request("PROPFIND", "/pd/", data=body, headers={"Depth": "0"}) as r:
        assert r.status == 207
        assert r.headers["Content-Type"].startswith("application/xml")
        (only,) = multistatus(await r.read())
    assert href_path(only) == "/pd/"
    assert is_collection(only)

    async with client.request("PROPFIND", "/pd", data=body, headers={"Depth": "1"}) as r:
        assert r.status == 207
        responses = multistatus(await r.read())
    assert href_path(responses[0]) == "/pd/"
    assert is_collection(responses[0])
    children = {href_path(x): x for x in responses[1:]}
    assert set(children) == {"/pd/a.txt", "/pd/sub/"}
    assert ok_prop(children["/pd/a.txt"]).findtext(D + "getcontentlength") == "5"
    assert not is_collection(children["/pd/a.txt"])
    assert is_collection(children["/pd/sub/"])
    assert ok_prop(children["/pd/a.txt"]).findtext(D + "getlastmodified", "").endswith(" GMT")

    # Empty body (rclone) = allprop.
    async with client.request("PROPFIND", "/pd/a.txt", headers={"Depth": "0"}) as r:
        assert r.status == 207
        (file_resp,) = multistatus(await r.read())
    assert href_path(file_resp) == "/pd/a.txt"
    assert ok_prop(file_resp).findtext(D + "getcontentlength") == "5"

    async with client.request("PROPFIND", "/pd/", headers={"Depth": "infinity"}) as r:
        assert r.status == 403
        err = ET.fromstring(await r.read())
    assert err.tag == D + "error"
    assert err.find(D + "propfind-finite-depth") is not None
    async with client.request("PROPFIND", "/pd/") as r:  # no Depth header = infinity
        assert r.status == 403

    async with client.request("PROPFIND", "/nope", headers={"Depth": "0"}) as r:
        await expect_error(r, 404)
    async with client.request("PROPFIND", "/pd/", data=b"<broken", headers={"Depth": "0"}) as r:
        await expect_error(r, 400)


async def test_propfind_depth_infinity_enabled(se_factory: Callable[..., SEProcess]) -> None:
    srv = se_factory(config=BASE_CONFIG + "[webdav]\nallow_depth_infinity = true\n")
    (srv.root / "t" / "a" / "b").mkdir(parents=True)
    (srv.root / "t" / "a" / "b" / "f").write_bytes(b"f")
    (srv.root / "t" / "g").write_bytes(b"g")
    async with (
        session_for(srv) as client,
        client.request("PROPFIND", "/t/", headers={"Depth": "infinity"}) as r,
    ):
        assert r.status == 207
        responses = multistatus(await r.read())
    paths = [href_path(x) for x in responses]
    assert paths[0] == "/t/"
    assert set(paths) == {"/t/", "/t/a/", "/t/a/b/", "/t/a/b/f", "/t/g"}
    assert len(paths) == 5


async def test_propfind_quota(client: aiohttp.ClientSession, se: SEProcess) -> None:
    (se.root / "q").mkdir()
    async with client.put("/q/f", data=b"x" * 100) as r:  # through se: accounted
        assert r.status == 201
    body = propfind_body("quota-used-bytes", "quota-available-bytes")
    async with client.request("PROPFIND", "/q/", data=body, headers={"Depth": "1"}) as r:
        assert r.status == 207
        coll, f = multistatus(await r.read())
    prop = ok_prop(coll)
    used = int(prop.findtext(D + "quota-used-bytes") or "-1")
    avail = int(prop.findtext(D + "quota-available-bytes") or "-1")
    vfs = os.statvfs(se.root)
    assert used == 100  # the share's accounting (the implicit share: the whole namespace)
    assert 0 < avail <= vfs.f_blocks * vfs.f_frsize
    # Never on files (davix would take it as the file size).
    stats = f.findall(D + "propstat")
    assert [s.findtext(D + "status") for s in stats] == ["HTTP/1.1 404 Not Found"]


async def test_propfind_odd_names_are_well_formed(
    client: aiohttp.ClientSession, se: SEProcess
) -> None:
    names = ["a&b", "<x>", "sp ace", "q'uote", 'd"q', "caf\u00e9", "100%", "h#sh"]
    (se.root / "odd").mkdir()
    for n in names:
        (se.root / "odd" / n).write_bytes(n.encode())
    async with client.request("PROPFIND", "/odd/", headers={"Depth": "1"}) as r:
        assert r.status == 207
        responses = multistatus(await r.read())
    assert {href_path(x) for x in responses[1:]} == {f"/odd/{n}" for n in names}
    for x in responses[1:]:
        name = href_path(x).rsplit("/", 1)[1]
        assert ok_prop(x).findtext(D + "displayname") == name


async def test_propfind_xml_body_limit(se_factory: Callable[..., SEProcess]) -> None:
    srv = se_factory(config=BASE_CONFIG + "[webdav]\nmax_xml_body = 4096\n")
    body = propfind_body(*(f"p{i}" for i in range(1000)))
    assert len(body) > 4096
    async with (
        session_for(srv) as client,
        client.request("PROPFIND", "/", data=body, headers={"Depth": "0"}) as r,
    ):
        assert 400 <= r.status < 500, r.status
        await expect_error(r, r.status)


# -- Listings ---------------------------------------------------------------------------------
async def test_html_and_json_listing(client: aiohttp.ClientSession, se: SEProcess) -> None:
    data = b"listed file\n" * 40  # 480 bytes
    async with client.put("/ls/file.txt", data=data) as r:
        assert r.status == 201
    async with client.request("MKCOL", "/ls/subdir") as r:
        assert r.status == 201
    (se.root / "ls" / f"{TEMP_PREFIX}hidden").write_bytes(b"tmp")
    async with client.get("/ls/", headers={"Accept": "text/html"}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/html")
        page = await r.text()
    assert "file.txt" in page
    assert "subdir/" in page
    assert "480 B" in page
    assert f"adler32={adler32_hex(data)}" in page
    assert TEMP_PREFIX not in page

    async with client.get("/ls/", headers={"Accept": "application/json"}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/json")
        doc = json.loads(await r.read())
    assert doc["path"] == "/ls"
    entries = {e["name"]: e for e in doc["entries"]}
    assert set(entries) == {"file.txt", "subdir"}
    assert entries["file.txt"]["type"] == "file"
    assert entries["file.txt"]["size"] == len(data)
    assert entries["file.txt"]["checksums"]["adler32"] == adler32_hex(data)
    assert entries["subdir"]["type"] == "collection"


# -- Misc -------------------------------------------------------------------------------------
async def test_options_and_unknown_method(client: aiohttp.ClientSession) -> None:
    async with client.options("/") as r:
        assert r.status == 200
        allow = {m.strip() for m in r.headers["Allow"].split(",")}
        assert {"COPY", "MOVE", "MKCOL", "PROPFIND", "DELETE", "PUT", "GET"} <= allow
        assert r.headers["DAV"].split(",")[0].strip() == "1"
    async with client.request("LOCK", "/x") as r:
        await expect_error(r, 405)
        assert "Allow" in r.headers
