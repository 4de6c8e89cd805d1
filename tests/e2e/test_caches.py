"""The listing and small-file caches never answer with anything older than the tree."""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import BASE_CONFIG
from tests.support import SEProcess

N = 60  # above the size from which listings are cached


# What davix sends for a listing (gfal-ls, davix-ls): quota included.
DAVIX_BODY = (
    b'<?xml version="1.0" encoding="utf-8" ?><D:propfind xmlns:D="DAV:" xmlns:L="LCGDM:">'
    b"<D:prop><D:displayname/><D:getlastmodified/><D:creationdate/><D:getcontentlength/>"
    b"<D:quota-used-bytes/><D:resourcetype/><L:mode/><D:owner/><D:group/></D:prop>"
    b"</D:propfind>"
)


def propfind(url: str, body: bytes = b"") -> str:
    """The listing, with the collection's quota-used-bytes blanked: that is the share's
    accounting, which the start-up reconciliation of this tree (written behind se's back)
    may move between two requests; these tests are about the members."""
    req = urllib.request.Request(url, data=body or None, method="PROPFIND", headers={"Depth": "1"})
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 207
        text = str(resp.read().decode())
    return re.sub(
        r"<D:quota-used-bytes>\d+</D:quota-used-bytes>",
        "<D:quota-used-bytes>N</D:quota-used-bytes>",
        text,
    )


def entry(body: str, name: str) -> str:
    m = re.search(rf"<D:response><D:href>[^<]*/{re.escape(name)}/?</D:href>.*?</D:response>", body)
    assert m, f"{name} not listed"
    return m.group(0)


def size_of(body: str, name: str) -> int:
    m = re.search(r"<D:getcontentlength>(\d+)<", entry(body, name))
    assert m
    return int(m.group(1))


@pytest.fixture(params=[True, False], ids=["cache", "nocache"])
def server(
    request: pytest.FixtureRequest, se_factory: Callable[..., SEProcess], tmp_path: Path
) -> SEProcess:
    root = tmp_path / "data"
    d = root / "big"
    (d / "sub").mkdir(parents=True)
    for i in range(N):
        (d / f"f{i}").write_bytes(b"x" * i)
    cfg = BASE_CONFIG + ("" if request.param else "[webdav]\nlisting_cache_dirs = 0\n")
    return se_factory(config=cfg, root=root)


@pytest.mark.parametrize("asked", [b"", DAVIX_BODY], ids=["allprop", "davix"])
def test_listing_follows_every_kind_of_change(server: SEProcess, asked: bytes) -> None:
    url = server.url + "/big/"
    d = server.root / "big"
    first = propfind(url, asked)
    assert propfind(url, asked) == first
    assert first.count("<D:response>") == N + 2
    # a file grows in place (no change to the directory's own mtime)
    with open(d / "f3", "ab") as fh:
        fh.write(b"more")
    assert size_of(propfind(url, asked), "f3") == 7
    # a file appears and another goes, behind the server's back
    (d / "new").write_bytes(b"1")
    os.unlink(d / "f0")
    body = propfind(url, asked)
    assert "/big/new<" in body and "/big/f0<" not in body
    if asked:
        # quota is shown on the collection asked about, not on its members
        assert "quota-used-bytes>" in entry(propfind(url, asked), "big")
        assert "quota-used-bytes>" not in entry(propfind(url, asked), "sub")
        return
    # a dead property set through PROPPATCH shows up
    patch = (
        b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z">'
        b"<D:set><D:prop><Z:colour>blue</Z:colour></D:prop></D:set></D:propertyupdate>"
    )
    req = urllib.request.Request(url + "f5", data=patch, method="PROPPATCH")
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 207
    assert "blue" in entry(propfind(url, asked), "f5")
    # a change inside a subcollection changes the subcollection's listed etag
    before = entry(propfind(url, asked), "sub")
    (d / "sub" / "inner").write_bytes(b"z")
    after = entry(propfind(url, asked), "sub")
    assert before != after


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code), b""


@pytest.fixture(params=[True, False], ids=["cache", "nocache"])
def small_server(
    request: pytest.FixtureRequest, se_factory: Callable[..., SEProcess], tmp_path: Path
) -> SEProcess:
    root = tmp_path / "data"
    (root / "d").mkdir(parents=True)
    cfg = BASE_CONFIG + ("" if request.param else "[storage]\nfile_cache_bytes = 0\n")
    return se_factory(config=cfg, root=root)


def test_small_file_reads_follow_every_kind_of_change(small_server: SEProcess) -> None:
    f = small_server.root / "d" / "f.txt"
    url = small_server.url + "/d/f.txt"
    f.write_bytes(b"one")
    assert get(url) == (200, b"one")
    assert get(url) == (200, b"one")
    # rewritten in place, same size, behind the server's back
    with open(f, "r+b") as fh:
        fh.write(b"two")
    assert get(url) == (200, b"two")
    # replaced by rename
    tmp = f.with_name("new")
    tmp.write_bytes(b"three!")
    os.replace(tmp, f)
    assert get(url) == (200, b"three!")
    # ranged reads of the cached bytes
    req = urllib.request.Request(url, headers={"Range": "bytes=1-3"})
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 206 and resp.read() == b"hre"
    # removed
    f.unlink()
    assert get(url)[0] == 404
    # a new upload through the server is seen at once
    put = urllib.request.Request(url, data=b"four", method="PUT")
    with urllib.request.urlopen(put) as resp:
        assert resp.status == 201
    assert get(url) == (200, b"four")
