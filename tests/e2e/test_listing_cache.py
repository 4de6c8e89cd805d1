"""The PROPFIND listing cache never answers with a listing older than the tree."""

from __future__ import annotations

import os
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import BASE_CONFIG
from tests.support import SEProcess

N = 60  # above the size from which listings are cached


def propfind(url: str) -> str:
    req = urllib.request.Request(url, method="PROPFIND", headers={"Depth": "1"})
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 207
        return str(resp.read().decode())


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


def test_listing_follows_every_kind_of_change(server: SEProcess) -> None:
    url = server.url + "/big/"
    d = server.root / "big"
    first = propfind(url)
    assert propfind(url) == first
    assert first.count("<D:response>") == N + 2
    # a file grows in place (no change to the directory's own mtime)
    with open(d / "f3", "ab") as fh:
        fh.write(b"more")
    assert size_of(propfind(url), "f3") == 7
    # a file appears and another goes, behind the server's back
    (d / "new").write_bytes(b"1")
    os.unlink(d / "f0")
    body = propfind(url)
    assert "/big/new<" in body and "/big/f0<" not in body
    # a dead property set through PROPPATCH shows up
    patch = (
        b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z">'
        b"<D:set><D:prop><Z:colour>blue</Z:colour></D:prop></D:set></D:propertyupdate>"
    )
    req = urllib.request.Request(url + "f5", data=patch, method="PROPPATCH")
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 207
    assert "blue" in entry(propfind(url), "f5")
    # a change inside a subcollection changes the subcollection's listed etag
    before = entry(propfind(url), "sub")
    (d / "sub" / "inner").write_bytes(b"z")
    after = entry(propfind(url), "sub")
    assert before != after
