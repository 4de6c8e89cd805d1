"""Handler edge cases, in process: the real application (tests/inproc.py) behind
pytest-aiohttp's test client.  Each test costs a request or a few, not a server start.

These pin what the server answers today (statuses, the headers clients read, what is left on
disk); the wire-level and multi-process behaviours stay in tests/e2e/test_http.py.
"""

from __future__ import annotations

import asyncio
import os
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp
import pytest

from tests.inproc import InProcessSE, MakeInProcessSE

D = "{DAV:}"
TEMP_PREFIX = ".se-upload-"
DATA = bytes(range(256)) * 4  # 1024 bytes


# -- helpers --------------------------------------------------------------------------------
async def expect_error(resp: aiohttp.ClientResponse, status: int) -> str:
    """The response is ``status`` with one line of text/plain; returns that line."""
    body = await resp.read()
    assert resp.status == status, (resp.status, body)
    assert resp.headers.get("Content-Type", "").startswith("text/plain"), resp.headers
    text = body.decode("utf-8")
    assert text.endswith("\n") and text.count("\n") == 1 and text.strip(), text
    return text.strip()


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def adler32_hex(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def place(se: InProcessSE, rel: str, data: bytes = DATA) -> Path:
    """A file put straight into the data directory."""
    path = se.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def multistatus(body: bytes) -> list[str]:
    """The hrefs (as decoded paths) of a 207 body, in order."""
    root = ET.fromstring(body)
    assert root.tag == D + "multistatus", body[:200]
    return [unquote(urlsplit(r.findtext(D + "href") or "").path) for r in root.iter(D + "response")]


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    for _ in range(int(timeout / 0.01)):
        if cond():
            return True
        await asyncio.sleep(0.01)
    return cond()


# -- OPTIONS and unknown methods ------------------------------------------------------------
async def test_options_headers(inproc: InProcessSE) -> None:
    async with inproc.client.options("/anything") as r:
        assert r.status == 200
        assert r.headers["DAV"] == "1"
        assert r.headers["Accept-Ranges"] == "bytes"
        assert r.headers["MS-Author-Via"] == "DAV"
        assert r.headers["Server"].startswith("se/")
        allow = {m.strip() for m in r.headers["Allow"].split(",")}
    assert allow == {
        "OPTIONS",
        "GET",
        "HEAD",
        "PUT",
        "DELETE",
        "MKCOL",
        "COPY",
        "MOVE",
        "PROPFIND",
        "PROPPATCH",
        "POST",
    }


async def test_unknown_method_is_405_with_allow(inproc: InProcessSE) -> None:
    async with inproc.client.request("LOCK", "/x") as r:
        line = await expect_error(r, 405)
        assert "PROPFIND" in r.headers["Allow"]
    assert "LOCK" in line


# -- GET / HEAD -----------------------------------------------------------------------------
async def test_get_and_head_of_missing_file_are_404(inproc: InProcessSE) -> None:
    async with inproc.client.get("/missing.txt") as r:
        line = await expect_error(r, 404)
    assert "/missing.txt" in line
    async with inproc.client.head("/missing.txt") as r:
        assert r.status == 404
        assert await r.read() == b""


async def test_if_none_match(inproc: InProcessSE) -> None:
    place(inproc, "v.bin")
    async with inproc.client.head("/v.bin") as r:
        etag = r.headers["ETag"]
    for value in (etag, "*", f'"other", {etag}', f"W/{etag}"):
        async with inproc.client.get("/v.bin", headers={"If-None-Match": value}) as r:
            assert r.status == 304, value
            assert r.headers["ETag"] == etag
            assert "Content-Type" not in r.headers
            assert await r.read() == b""
    async with inproc.client.get("/v.bin", headers={"If-None-Match": '"other"'}) as r:
        assert r.status == 200
        assert await r.read() == DATA


async def test_if_match_and_if_unmodified_since(inproc: InProcessSE) -> None:
    place(inproc, "v.bin")
    async with inproc.client.head("/v.bin") as r:
        etag = r.headers["ETag"]
    async with inproc.client.get("/v.bin", headers={"If-Match": '"nope"'}) as r:
        line = await expect_error(r, 412)
    assert "precondition" in line
    for value in (etag, "*"):
        async with inproc.client.get("/v.bin", headers={"If-Match": value}) as r:
            assert r.status == 200, value
    past = "Mon, 01 Jan 2001 00:00:00 GMT"
    async with inproc.client.get("/v.bin", headers={"If-Unmodified-Since": past}) as r:
        await expect_error(r, 412)
    # If-Match given: If-Unmodified-Since is not evaluated (RFC 9110 §13.2.2).
    headers = {"If-Match": etag, "If-Unmodified-Since": past}
    async with inproc.client.get("/v.bin", headers=headers) as r:
        assert r.status == 200


async def test_if_modified_since(inproc: InProcessSE) -> None:
    place(inproc, "v.bin")
    async with inproc.client.head("/v.bin") as r:
        last_modified = r.headers["Last-Modified"]
    async with inproc.client.get("/v.bin", headers={"If-Modified-Since": last_modified}) as r:
        assert r.status == 304
    past = "Mon, 01 Jan 2001 00:00:00 GMT"
    async with inproc.client.get("/v.bin", headers={"If-Modified-Since": past}) as r:
        assert r.status == 200


async def test_range_unsatisfiable_is_416(inproc: InProcessSE) -> None:
    place(inproc, "r.bin")
    n = len(DATA)
    for value in (f"bytes={n}-", f"bytes={n}-{n + 10}", "bytes=-0", f"bytes={n + 5}-,{n}-"):
        async with inproc.client.get("/r.bin", headers={"Range": value}) as r:
            await expect_error(r, 416)
            assert r.headers["Content-Range"] == f"bytes */{n}", value


async def test_range_of_an_empty_file_is_416(inproc: InProcessSE) -> None:
    place(inproc, "empty", b"")
    async with inproc.client.get("/empty", headers={"Range": "bytes=0-"}) as r:
        await expect_error(r, 416)
        assert r.headers["Content-Range"] == "bytes */0"


async def test_suffix_ranges(inproc: InProcessSE) -> None:
    place(inproc, "r.bin")
    n = len(DATA)
    async with inproc.client.get("/r.bin", headers={"Range": "bytes=-10"}) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == f"bytes {n - 10}-{n - 1}/{n}"
        assert r.headers["Content-Length"] == "10"
        assert await r.read() == DATA[-10:]
    # A suffix longer than the file is the whole file, still as a 206.
    async with inproc.client.get("/r.bin", headers={"Range": f"bytes=-{n * 3}"}) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == f"bytes 0-{n - 1}/{n}"
        assert await r.read() == DATA
    # An end past the file is clamped.
    async with inproc.client.get("/r.bin", headers={"Range": f"bytes=1000-{n * 2}"}) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == f"bytes 1000-{n - 1}/{n}"
        assert await r.read() == DATA[1000:]


def parse_parts(ctype: str, body: bytes) -> list[tuple[str, bytes]]:
    """(Content-Range, data) of each part of a multipart/byteranges body."""
    assert ctype.startswith("multipart/byteranges; boundary="), ctype
    boundary = ctype.split("boundary=", 1)[1].encode()
    chunks = body.split(b"\r\n--" + boundary)
    assert chunks[0] == b"" and chunks[-1] == b"--\r\n", body[:200]
    parts = []
    for chunk in chunks[1:-1]:
        head, _, data = chunk.partition(b"\r\n\r\n")
        fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n") if line)
        parts.append((fields[b"Content-Range"].decode(), data))
    return parts


async def test_multi_range(inproc: InProcessSE) -> None:
    place(inproc, "r.bin")
    n = len(DATA)
    async with inproc.client.get("/r.bin", headers={"Range": "bytes=0-9,500-509,-4"}) as r:
        assert r.status == 206
        assert "Content-Range" not in r.headers
        ctype = r.headers["Content-Type"]
        body = await r.read()
        assert int(r.headers["Content-Length"]) == len(body)
    assert parse_parts(ctype, body) == [
        (f"bytes 0-9/{n}", DATA[:10]),
        (f"bytes 500-509/{n}", DATA[500:510]),
        (f"bytes {n - 4}-{n - 1}/{n}", DATA[-4:]),
    ]


async def test_multi_range_overlapping_is_merged(inproc: InProcessSE) -> None:
    place(inproc, "r.bin")
    n = len(DATA)
    # Two requested ranges that overlap: one multipart part covering both, in file order.
    async with inproc.client.get("/r.bin", headers={"Range": "bytes=20-29,0-24"}) as r:
        assert r.status == 206
        parts = parse_parts(r.headers["Content-Type"], await r.read())
    assert parts == [(f"bytes 0-29/{n}", DATA[:30])]
    # Repeating the whole file never sends more than the file.
    async with inproc.client.get("/r.bin", headers={"Range": "bytes=0-,0-,0-"}) as r:
        parts = parse_parts(r.headers["Content-Type"], await r.read())
    assert parts == [(f"bytes 0-{n - 1}/{n}", DATA)]


async def test_invalid_or_stale_range_sends_the_whole_file(inproc: InProcessSE) -> None:
    place(inproc, "r.bin")
    for headers in (
        {"Range": "bytes=9-2"},  # last < first: the header is ignored
        {"Range": "lines=0-9"},  # another unit
        {"Range": "bytes=0-9", "If-Range": '"stale-etag"'},
    ):
        async with inproc.client.get("/r.bin", headers=headers) as r:
            assert r.status == 200, headers
            assert await r.read() == DATA


async def test_want_digest_adler32(inproc: InProcessSE) -> None:
    path = place(inproc, "d.bin")
    want = f"adler32={adler32_hex(DATA)}"
    async with inproc.client.head("/d.bin", headers={"Want-Digest": "ADLER32"}) as r:
        assert r.status == 200
        assert r.headers["Digest"] == want
    # Computed once, then kept in the file's xattr with its size and mtime.
    st = path.stat()
    cached = os.getxattr(path, "user.se.checksum.adler32").decode()
    assert cached == f"{adler32_hex(DATA)};{st.st_size};{st.st_mtime_ns}"
    async with inproc.client.get("/d.bin", headers={"Want-Digest": "md5;q=0.3, adler32"}) as r:
        assert r.headers["Digest"] == want
        assert await r.read() == DATA
    async with inproc.client.get("/d.bin") as r:
        assert "Digest" not in r.headers


# -- PUT ------------------------------------------------------------------------------------
async def test_put_create_then_replace(inproc: InProcessSE) -> None:
    async with inproc.client.put("/p/f.bin", data=b"one", headers={"Want-Digest": "adler32"}) as r:
        assert r.status == 201
        assert r.headers["Digest"] == f"adler32={adler32_hex(b'one')}"
        etag = r.headers["ETag"]
    async with inproc.client.head("/p/f.bin") as r:
        assert r.headers["ETag"] == etag
    async with inproc.client.put("/p/f.bin", data=b"two") as r:
        assert r.status == 204
    assert (inproc.root / "p" / "f.bin").read_bytes() == b"two"
    assert not temp_files(inproc.root)


async def test_put_overwrite_f(inproc: InProcessSE) -> None:
    place(inproc, "f.bin", b"old")
    async with inproc.client.put("/f.bin", data=b"new", headers={"Overwrite": "F"}) as r:
        line = await expect_error(r, 412)
    assert "Overwrite" in line
    assert (inproc.root / "f.bin").read_bytes() == b"old"
    async with inproc.client.put("/g.bin", data=b"new", headers={"Overwrite": "f"}) as r:
        assert r.status == 201
    async with inproc.client.put("/g.bin", data=b"x", headers={"Overwrite": "maybe"}) as r:
        await expect_error(r, 400)
    assert (inproc.root / "g.bin").read_bytes() == b"new"
    assert not temp_files(inproc.root)


async def test_put_overwrite_f_refused_before_the_body(inproc: InProcessSE) -> None:
    place(inproc, "f.bin", b"old")
    headers = {"Overwrite": "F"}
    async with inproc.client.put("/f.bin", data=b"new", headers=headers, expect100=True) as r:
        await expect_error(r, 412)
    assert (inproc.root / "f.bin").read_bytes() == b"old"


async def test_put_wrong_digest_stores_nothing(inproc: InProcessSE) -> None:
    data = b"payload with a checksum\n" * 100
    async with inproc.client.put(
        "/cks/bad.bin", data=data, headers={"Digest": "adler32=00000000"}
    ) as r:
        line = await expect_error(r, 400)
    assert "adler32" in line and "00000000" in line and adler32_hex(data) in line
    assert not (inproc.root / "cks" / "bad.bin").exists()
    assert not temp_files(inproc.root)


async def test_put_wrong_digest_keeps_the_old_file(inproc: InProcessSE) -> None:
    old = place(inproc, "keep.bin", b"old content")
    before = old.stat()
    async with inproc.client.put(
        "/keep.bin", data=b"new content", headers={"Digest": "adler32=00000000"}
    ) as r:
        await expect_error(r, 400)
    after = old.stat()
    assert old.read_bytes() == b"old content"
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not temp_files(inproc.root)


async def test_put_malformed_digest_or_partial_put_is_400(inproc: InProcessSE) -> None:
    for headers in (
        {"Digest": "adler32=not-hex"},
        {"Content-Range": "bytes 0-2/10"},
    ):
        async with inproc.client.put("/x.bin", data=b"abc", headers=headers) as r:
            await expect_error(r, 400)
    assert os.listdir(inproc.root) == []


async def test_put_onto_a_collection_or_below_a_file_is_409(inproc: InProcessSE) -> None:
    (inproc.root / "coll").mkdir()
    place(inproc, "file", b"f")
    for target in ("/coll", "/coll/", "/file/child"):
        async with inproc.client.put(target, data=b"x") as r:
            await expect_error(r, 409)
    assert (inproc.root / "coll").is_dir()
    assert (inproc.root / "file").read_bytes() == b"f"
    assert not temp_files(inproc.root)


async def test_put_to_the_root_is_405(inproc: InProcessSE) -> None:
    async with inproc.client.put("/", data=b"x") as r:
        await expect_error(r, 405)


async def test_put_without_create_parents_is_409(inproc_factory: MakeInProcessSE) -> None:
    se = await inproc_factory(storage={"create_parents": False})
    async with se.client.put("/missing/f.bin", data=b"x") as r:
        await expect_error(r, 409)
    assert os.listdir(se.root) == []
    async with se.client.put("/top.bin", data=b"x") as r:
        assert r.status == 201


async def test_put_creates_missing_parents(inproc: InProcessSE) -> None:
    async with inproc.client.put("/a/b/c/d.bin", data=b"deep") as r:
        assert r.status == 201
    assert (inproc.root / "a" / "b" / "c" / "d.bin").read_bytes() == b"deep"


async def test_put_short_body_stores_nothing(inproc: InProcessSE) -> None:
    server = inproc.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(
            f"PUT /short.bin HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
            "Content-Length: 1000\r\n\r\n".encode()
            + b"x" * 500
        )
        await writer.drain()
        assert await wait_for(lambda: bool(temp_files(inproc.root))), "upload never started"
    finally:
        writer.close()
        await writer.wait_closed()
    assert await wait_for(lambda: not temp_files(inproc.root)), temp_files(inproc.root)
    assert os.listdir(inproc.root) == []
    assert await reader.read() == b""  # no answer to a request that never finished


# -- reserved names -------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "MKCOL", "PROPFIND"])
async def test_reserved_names_are_refused(inproc: InProcessSE, method: str) -> None:
    temp = place(inproc, f"{TEMP_PREFIX}inflight", b"partial")
    for target in (f"/{TEMP_PREFIX}inflight", "/.se-state/x", "/d/.se-anything"):
        async with inproc.client.request(
            method, target, data=b"x" if method == "PUT" else None, headers={"Depth": "0"}
        ) as r:
            line = await expect_error(r, 403)
        assert "reserved" in line
    assert temp.read_bytes() == b"partial"
    assert sorted(os.listdir(inproc.root)) == [f"{TEMP_PREFIX}inflight"]


async def test_reserved_names_refused_as_destination(inproc: InProcessSE) -> None:
    place(inproc, "src")
    for method in ("MOVE", "COPY"):
        headers = {"Destination": inproc.url(f"/{TEMP_PREFIX}x")}
        async with inproc.client.request(method, "/src", headers=headers) as r:
            await expect_error(r, 403)
    assert os.listdir(inproc.root) == ["src"]


# -- MKCOL / DELETE -------------------------------------------------------------------------
async def test_mkcol_edge_cases(inproc: InProcessSE) -> None:
    (inproc.root / "dir").mkdir()
    place(inproc, "afile", b"")
    for target in ("/dir", "/dir/", "/afile", "/"):
        async with inproc.client.request("MKCOL", target) as r:
            await expect_error(r, 405)
    async with inproc.client.request("MKCOL", "/no/such/parent") as r:
        await expect_error(r, 409)
    assert sorted(os.listdir(inproc.root)) == ["afile", "dir"]


async def test_mkcol_with_a_body_is_415(inproc: InProcessSE) -> None:
    async with inproc.client.request("MKCOL", "/withbody", data=b"<x/>") as r:
        await expect_error(r, 415)
    assert not (inproc.root / "withbody").exists()
    async with inproc.client.request("MKCOL", "/nobody") as r:
        assert r.status == 201
    assert (inproc.root / "nobody").is_dir()


async def test_delete_collection_missing_and_root(inproc: InProcessSE) -> None:
    place(inproc, "tree/a/b/f", b"1")
    place(inproc, "tree/g", b"2")
    async with inproc.client.delete("/tree/") as r:
        assert r.status == 204
    assert os.listdir(inproc.root) == []
    async with inproc.client.delete("/tree") as r:
        await expect_error(r, 404)
    async with inproc.client.delete("/") as r:
        await expect_error(r, 403)
    assert inproc.root.is_dir()


# -- MOVE / COPY ----------------------------------------------------------------------------
async def test_move_copy_bad_destination_is_400(inproc: InProcessSE) -> None:
    place(inproc, "src", b"s")
    for method in ("MOVE", "COPY"):
        for dest in (
            None,
            "",
            "ftp://127.0.0.1/x",
            "http://user@127.0.0.1/x",
            "http:///x",
            "/x#frag",
            "/bad%zz",
            "not a url",
        ):
            headers = {} if dest is None else {"Destination": dest}
            async with inproc.client.request(method, "/src", headers=headers) as r:
                line = await expect_error(r, 400)
            assert "Destination" in line, (method, dest, line)
    assert os.listdir(inproc.root) == ["src"]


async def test_move_to_another_server_is_502(inproc: InProcessSE) -> None:
    place(inproc, "src", b"s")
    headers = {"Destination": "http://other.example.org/m"}
    async with inproc.client.request("MOVE", "/src", headers=headers) as r:
        await expect_error(r, 502)
    assert (inproc.root / "src").read_bytes() == b"s"


async def test_move_copy_depth_rules(inproc: InProcessSE) -> None:
    place(inproc, "d/f", b"f")
    cases = [("MOVE", "0"), ("MOVE", "1"), ("COPY", "1"), ("COPY", "two")]
    for method, depth in cases:
        headers = {"Destination": inproc.url("/e/"), "Depth": depth}
        async with inproc.client.request(method, "/d/", headers=headers) as r:
            await expect_error(r, 400)
    assert os.listdir(inproc.root) == ["d"]


@pytest.mark.parametrize(
    ("method", "src", "dest", "overwrite", "status"),
    [
        (method, src, dest, overwrite, status)
        for method in ("MOVE", "COPY")
        for src, dest, overwrite, status in (
            ("/other", "/d/f", "F", 412),  # the destination exists
            ("/other", "/nope/x", "T", 409),  # its parent does not
            ("/other", "/other", "T", 403),  # onto itself
            ("/missing", "/x", "T", 404),
        )
    ]
    + [("MOVE", "/d/", "/d/inner/", "T", 409), ("COPY", "/d/", "/d/inner/", "T", 403)],
)
async def test_move_copy_refused(
    inproc: InProcessSE, method: str, src: str, dest: str, overwrite: str, status: int
) -> None:
    place(inproc, "d/f", b"f")
    place(inproc, "other", b"o")
    headers = {"Destination": inproc.url(dest), "Overwrite": overwrite}
    async with inproc.client.request(method, src, headers=headers) as r:
        await expect_error(r, status)
    assert sorted(os.listdir(inproc.root)) == ["d", "other"]
    assert os.listdir(inproc.root / "d") == ["f"]
    assert (inproc.root / "other").read_bytes() == b"o"


async def test_move_and_copy_with_an_absolute_path_destination(inproc: InProcessSE) -> None:
    place(inproc, "a", b"a")
    async with inproc.client.request("COPY", "/a", headers={"Destination": "/b"}) as r:
        assert r.status == 201
    async with inproc.client.request("MOVE", "/b", headers={"Destination": "/a"}) as r:
        assert r.status == 204
    assert os.listdir(inproc.root) == ["a"]
    assert (inproc.root / "a").read_bytes() == b"a"


# -- PROPFIND -------------------------------------------------------------------------------
async def test_propfind_depth_0_and_1(inproc: InProcessSE) -> None:
    place(inproc, "pd/a.txt", b"12345")
    place(inproc, "pd/sub/deep.txt", b"deep")
    place(inproc, f"pd/{TEMP_PREFIX}inflight", b"partial")
    async with inproc.client.request("PROPFIND", "/pd", headers={"Depth": "0"}) as r:
        assert r.status == 207
        assert r.headers["Content-Type"].startswith("application/xml")
        assert multistatus(await r.read()) == ["/pd/"]
    async with inproc.client.request("PROPFIND", "/pd/", headers={"Depth": "1"}) as r:
        assert r.status == 207
        assert multistatus(await r.read()) == ["/pd/", "/pd/a.txt", "/pd/sub/"]
    async with inproc.client.request("PROPFIND", "/pd/a.txt", headers={"Depth": "1"}) as r:
        assert r.status == 207
        assert multistatus(await r.read()) == ["/pd/a.txt"]


async def test_propfind_depth_infinity_refused(inproc: InProcessSE) -> None:
    (inproc.root / "pd").mkdir()
    for headers in ({"Depth": "infinity"}, {"Depth": "Infinity"}, {}):
        async with inproc.client.request("PROPFIND", "/pd/", headers=headers) as r:
            assert r.status == 403, headers
            err = ET.fromstring(await r.read())
        assert err.tag == D + "error"
        assert err.find(D + "propfind-finite-depth") is not None


async def test_propfind_depth_infinity_allowed(inproc_factory: MakeInProcessSE) -> None:
    se = await inproc_factory(webdav={"allow_depth_infinity": True})
    place(se, "t/a/b/f", b"f")
    place(se, "t/g", b"g")
    async with se.client.request("PROPFIND", "/t/", headers={"Depth": "infinity"}) as r:
        assert r.status == 207
        hrefs = multistatus(await r.read())
    assert hrefs == ["/t/", "/t/a/", "/t/a/b/", "/t/a/b/f", "/t/g"]


async def test_propfind_errors(inproc: InProcessSE) -> None:
    (inproc.root / "pd").mkdir()
    async with inproc.client.request("PROPFIND", "/nope", headers={"Depth": "0"}) as r:
        await expect_error(r, 404)
    async with inproc.client.request("PROPFIND", "/pd/", headers={"Depth": "2"}) as r:
        line = await expect_error(r, 400)
    assert "Depth" in line
    async with inproc.client.request(
        "PROPFIND", "/pd/", data=b"<broken", headers={"Depth": "0"}
    ) as r:
        await expect_error(r, 400)


async def test_propfind_xml_body_limit_is_413(inproc_factory: MakeInProcessSE) -> None:
    se = await inproc_factory(webdav={"max_xml_body": 4096})
    body = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
    padded = body + b" " * 5000
    async with se.client.request("PROPFIND", "/", data=padded, headers={"Depth": "0"}) as r:
        await expect_error(r, 413)
    async with se.client.request("PROPFIND", "/", data=body, headers={"Depth": "0"}) as r:
        assert r.status == 207
