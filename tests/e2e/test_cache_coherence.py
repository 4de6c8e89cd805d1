"""The small-file, listing and PROPFIND Depth 0 caches can never answer with anything but
the tree as it is.

Each test reproduces one way the old path-keyed, inotify-invalidated caches lied: a rename of
an ancestor (the old bytes and ETag came back for a new file of the same path, and a moved
file stayed readable at its old path), a listing of a collection re-created after its
parent was renamed (ghost members), a rewrite in place through a hard link in another
directory.  The servers keep the caches on with a short settle time, and the tests wait it
out where a file must be old enough to be cached, so that the cached path is really taken.
"""

from __future__ import annotations

import os
import re
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from se.storage.paths import DavPath
from se.storage.statcache import AnswerCache, FileCache, ListingCache, settled
from se.storage.types import CachedFile, Stat
from tests.conftest import BASE_CONFIG
from tests.support import SEProcess

SETTLE = 0.2  # storage.cache_settle_time of the servers below
CACHED = f"""{BASE_CONFIG}
[storage]
cache_settle_time = {SETTLE}
"""
N = 40  # members: above the size from which listing fragments are kept


def settle() -> None:
    """Wait until everything written so far is old enough to be cached."""
    time.sleep(SETTLE * 1.5)


@pytest.fixture
def se_cached(se_factory: Callable[..., SEProcess], tmp_path: Path) -> SEProcess:
    root = tmp_path / "data"
    root.mkdir()
    return se_factory(config=CACHED, root=root)


def call(method: str, url: str, **kw: object) -> requests.Response:
    return requests.request(method, url, timeout=30, **kw)  # type: ignore[arg-type]


def put(srv: SEProcess, path: str, body: bytes) -> str:
    r = call("PUT", srv.url + path, data=body)
    assert r.status_code in (201, 204), r.text
    return r.headers["ETag"]


def move(srv: SEProcess, src: str, dst: str) -> None:
    r = call("MOVE", srv.url + src, headers={"Destination": srv.url + dst})
    assert r.status_code in (201, 204), r.text


def adler32(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def listed(srv: SEProcess, path: str) -> list[str]:
    r = call("PROPFIND", srv.url + path, headers={"Depth": "1"})
    assert r.status_code == 207, r.text
    hrefs = re.findall(r"<D:href>([^<]*)</D:href>", r.text)
    return sorted(h.rstrip("/").rsplit("/", 1)[1] for h in hrefs[1:])


def test_ancestor_move_then_new_file_at_the_old_path(se_cached: SEProcess) -> None:
    srv = se_cached
    put(srv, "/data/run1/f", b"old body")
    settle()
    for _ in range(2):  # the second read comes from the cache
        r = call("GET", srv.url + "/data/run1/f")
        assert r.content == b"old body"
    move(srv, "/data", "/archive")
    etag = put(srv, "/data/run1/f", b"new body")  # same size, new inode
    r = call("GET", srv.url + "/data/run1/f")
    assert (r.status_code, r.content, r.headers["ETag"]) == (200, b"new body", etag)
    r = call("GET", srv.url + "/data/run1/f", headers={"Want-Digest": "adler32"})
    assert r.content == b"new body"
    assert r.headers["Digest"] == "adler32=" + adler32(b"new body")
    assert call("GET", srv.url + "/archive/run1/f").content == b"old body"


def test_moved_file_is_gone_from_its_old_path(se_cached: SEProcess) -> None:
    srv = se_cached
    put(srv, "/gq/sub/f", b"content")
    settle()
    for _ in range(2):
        assert call("GET", srv.url + "/gq/sub/f").status_code == 200
    move(srv, "/gq", "/gqold")
    assert call("GET", srv.url + "/gq/sub/f").status_code == 404
    assert call("HEAD", srv.url + "/gq/sub/f").status_code == 404
    assert call("GET", srv.url + "/gqold/sub/f").content == b"content"


def test_listing_after_an_ancestor_is_renamed(se_cached: SEProcess) -> None:
    srv = se_cached
    d = srv.root / "lst" / "d"
    d.mkdir(parents=True)
    for i in range(N):
        (d / f"old{i:02d}").write_bytes(b"x" * i)
    settle()
    want = sorted(f"old{i:02d}" for i in range(N))
    assert listed(srv, "/lst/d/") == want
    assert listed(srv, "/lst/d/") == want  # from the kept fragments
    move(srv, "/lst", "/lst2")
    for i in range(N):
        put(srv, f"/lst/d/new{i:02d}", b"y" * i)
    assert listed(srv, "/lst/d/") == sorted(f"new{i:02d}" for i in range(N))
    assert listed(srv, "/lst2/d/") == want
    # the same again behind the server's back, with members that are old enough to keep
    settle()
    listed(srv, "/lst/d/")
    os.rename(srv.root / "lst", srv.root / "lst3")
    (srv.root / "lst" / "d").mkdir(parents=True)
    (srv.root / "lst" / "d" / "only").write_bytes(b"1")
    assert listed(srv, "/lst/d/") == ["only"]


def test_in_place_rewrite_through_a_hard_link_elsewhere(se_cached: SEProcess) -> None:
    srv = se_cached
    (srv.root / "a").mkdir()
    (srv.root / "b").mkdir()
    f = srv.root / "a" / "f"
    f.write_bytes(b"first version")
    os.link(f, srv.root / "b" / "f")
    settle()
    for _ in range(2):
        assert call("GET", srv.url + "/a/f").content == b"first version"
    with open(srv.root / "b" / "f", "r+b") as fh:  # same size, in place, another directory
        fh.write(b"other version")
    r = call("GET", srv.url + "/a/f")
    assert r.content == b"other version"
    assert r.headers["ETag"] == call("HEAD", srv.url + "/b/f").headers["ETag"]


def test_same_size_rewrite_on_disk_with_the_old_mtime(se_cached: SEProcess) -> None:
    """Size and mtime kept (as a tool that restores times would): only the ctime tells."""
    srv = se_cached
    (srv.root / "a").mkdir()
    (srv.root / "b").mkdir()
    f = srv.root / "a" / "g"
    f.write_bytes(b"AAAA")
    os.link(f, srv.root / "b" / "g")
    settle()
    before = f.stat()
    for _ in range(2):
        assert call("GET", srv.url + "/a/g").content == b"AAAA"
    with open(srv.root / "b" / "g", "r+b") as fh:
        fh.write(b"BBBB")
    os.utime(srv.root / "b" / "g", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert f.stat().st_mtime_ns == before.st_mtime_ns
    assert call("GET", srv.url + "/a/g").content == b"BBBB"


def test_listing_shows_a_change_made_through_a_hard_link(se_cached: SEProcess) -> None:
    srv = se_cached
    d = srv.root / "many"
    d.mkdir()
    (srv.root / "elsewhere").mkdir()
    for i in range(N):
        (d / f"f{i:02d}").write_bytes(b"z")
    os.link(d / "f07", srv.root / "elsewhere" / "f07")
    settle()
    listed(srv, "/many/")
    listed(srv, "/many/")
    with open(srv.root / "elsewhere" / "f07", "ab") as fh:
        fh.write(b"grown")
    r = call("PROPFIND", srv.url + "/many/", headers={"Depth": "1"})
    m = re.search(r"/many/f07</D:href>.*?<D:getcontentlength>(\d+)<", r.text)
    assert m and int(m.group(1)) == 6


# -- the kept listing body (inotify, se.storage.dirwatch), changed behind the server's back --

WATCHES_OFF = CACHED + "[webdav]\nlisting_watches = 0\n"


def member_props(srv: SEProcess, path: str, name: str) -> str:
    r = call("PROPFIND", srv.url + path, headers={"Depth": "1"})
    assert r.status_code == 207, r.text
    m = re.search(rf"<D:response><D:href>[^<]*/{name}/?</D:href>.*?</D:response>", r.text, re.S)
    assert m, r.text
    return m.group(0)


def many(srv: SEProcess, name: str) -> Path:
    d = srv.root / name
    d.mkdir()
    for i in range(N):
        (d / f"f{i:02d}").write_bytes(b"z")
    (d / "sub").mkdir()
    return d


@pytest.mark.parametrize("config", [CACHED, WATCHES_OFF], ids=["watched", "stat-validated"])
def test_kept_listing_sees_a_link_made_later_and_written_through(
    se_factory: Callable[..., SEProcess], tmp_path: Path, config: str
) -> None:
    root = tmp_path / "data"
    root.mkdir()
    srv = se_factory(config=config, root=root)
    d = many(srv, "m")
    settle()
    for _ in range(3):
        assert "<D:getcontentlength>1<" in member_props(srv, "/m/", "f05")
    os.link(d / "f05", srv.root / "hidden-link")  # made after the listing was kept
    with open(srv.root / "hidden-link", "ab") as fh:
        fh.write(b"grown")
    assert "<D:getcontentlength>6<" in member_props(srv, "/m/", "f05")


def test_kept_listing_sees_times_and_subdirectories_change(se_cached: SEProcess) -> None:
    srv = se_cached
    d = many(srv, "t")
    settle()
    before_file = member_props(srv, "/t/", "f03")
    before_sub = member_props(srv, "/t/", "sub")
    assert member_props(srv, "/t/", "f03") == before_file
    os.utime(d / "f03", (1_000_000_000, 1_000_000_000))  # same size, an old mtime
    after_file = member_props(srv, "/t/", "f03")
    assert after_file != before_file and "2001" in after_file
    (d / "sub" / "x").write_bytes(b"")  # the subdirectory's mtime, shown in t's listing
    os.utime(d / "sub", ns=(10**18, 10**18))
    assert member_props(srv, "/t/", "sub") != before_sub


def test_kept_listing_after_a_put_and_a_delete_through_the_server(se_cached: SEProcess) -> None:
    srv = se_cached
    many(srv, "p")
    settle()
    listed(srv, "/p/")
    put(srv, "/p/zz", b"new")
    assert "zz" in listed(srv, "/p/")
    assert call("DELETE", srv.url + "/p/f00").status_code == 204
    assert "f00" not in listed(srv, "/p/")
    assert "zz" in listed(srv, "/p/")


def props(srv: SEProcess, path: str, body: str = "") -> str:
    """PROPFIND Depth 0 of a file (the lean path's cached answer when it is old enough)."""
    r = call("PROPFIND", srv.url + path, headers={"Depth": "0"}, data=body)
    assert r.status_code == 207, r.text
    return r.text


ETAG_ONLY = (
    '<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:getetag/>'
    "<D:getcontentlength/></D:prop></D:propfind>"
)


@pytest.mark.parametrize("body", ["", ETAG_ONLY])
def test_depth0_answers_follow_every_change(
    se_factory: Callable[..., SEProcess], tmp_path: Path, body: str
) -> None:
    """A PROPFIND Depth 0 of a file, asked again and again (as FTS does), from a server
    that keeps its answers and from one that keeps nothing, on one tree: after each change,
    made through the server or behind its back, both answer the same."""
    root = tmp_path / "data"
    root.mkdir()
    srv = se_factory(config=CACHED, root=root)
    bare = se_factory(config=CACHED + "file_cache_bytes = 0\n", root=root)

    def same() -> str:
        text = props(srv, "/d0/f", body)
        assert props(srv, "/d0/f", body) == text  # the second one from the cache
        assert text.replace(srv.url, "") == props(bare, "/d0/f", body).replace(bare.url, "")
        return text

    (root / "d0").mkdir()
    (root / "d0" / "other").mkdir()
    f = root / "d0" / "f"
    f.write_bytes(b"AAAA")
    os.link(f, root / "d0" / "other" / "f")
    settle()
    same()
    # same size, in place, through a hard link in another directory, mtime put back
    before = f.stat()
    with open(root / "d0" / "other" / "f", "r+b") as fh:
        fh.write(b"BBBB")
    os.utime(root / "d0" / "other" / "f", ns=(before.st_atime_ns, before.st_mtime_ns))
    same()
    settle()
    same()
    # replaced by a rename of another file (another inode, same size)
    (root / "d0" / "new").write_bytes(b"CCCC")
    os.rename(root / "d0" / "new", f)
    third = same()
    settle()
    assert same() == third
    # an ancestor renamed and a new file of another size put at the old path
    move(srv, "/d0", "/d0old")
    put(srv, "/d0/f", b"DDDDDD")
    assert "<D:getcontentlength>6<" in same()
    settle()
    same()
    # a dead property set: in the allprop answer at once
    r = call(
        "PROPPATCH",
        srv.url + "/d0/f",
        data='<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z">'
        "<D:set><D:prop><Z:color>blue</Z:color></D:prop></D:set></D:propertyupdate>",
    )
    assert r.status_code == 207, r.text
    assert ("blue" in same()) == (body == "")
    # gone
    call("DELETE", srv.url + "/d0/f")
    r = call("PROPFIND", srv.url + "/d0/f", headers={"Depth": "0"}, data=body)
    assert r.status_code == 404


# -- the rule against timestamp granularity, on the caches themselves --------------------
def _stat(mtime_ns: int, ctime_ns: int, size: int = 3) -> Stat:
    return Stat(False, size, mtime_ns, ctime_ns, 7, 1)


def test_recently_changed_files_are_never_kept() -> None:
    now = time.time_ns()
    cache = FileCache(1 << 20, settle_ns=2_000_000_000)
    fresh = CachedFile(_stat(now - 10**9, now - 10**9), DavPath(("f",)), b"abc")
    assert not cache.put("/x/f", fresh)  # a same-tick rewrite could keep size/mtime/ctime
    future = CachedFile(_stat(now + 10**12, now - 10**10), DavPath(("f",)), b"abc")
    assert not cache.put("/x/f", future)
    old = CachedFile(_stat(now - 10**10, now - 3 * 10**9), DavPath(("f",)), b"abc")
    assert cache.put("/x/f", old)
    assert cache.get("/x/f", old.stat.identity) is old
    # any field of the identity differing is a miss, and drops the entry
    assert cache.get("/x/f", _stat(now - 10**10, now - 3 * 10**9 + 1).identity) is None
    assert cache.get("/x/f", old.stat.identity) is None
    assert not settled(fresh.stat, now, 2_000_000_000)
    listing = ListingCache(4, settle_ns=2_000_000_000)
    assert not listing.keepable(fresh.stat, now) and listing.keepable(old.stat, now)


def test_depth0_answers_of_recently_changed_files_are_never_kept() -> None:
    now = time.time_ns()
    cache = AnswerCache(1 << 20, settle_ns=2_000_000_000)
    fresh = _stat(now - 10**9, now - 10**9)
    assert not cache.put("k", fresh, b"<x/>", now)
    old = _stat(now - 10**10, now - 3 * 10**9)
    assert cache.put("k", old, b"<x/>", now) and "k" in cache
    assert cache.get("k", old.identity) == b"<x/>"
    assert cache.get("k", _stat(now - 10**10, now - 3 * 10**9 + 1).identity) is None
    assert "k" not in cache  # a miss drops it
    assert cache.get("k", old.identity) is None
    small = AnswerCache(16 * 1024, settle_ns=2_000_000_000)  # a bound in bytes, oldest out
    for i in range(64):
        small.put(i, old, b"y" * 100, now)
    assert 0 < len(small) < 64 and 63 in small and 0 not in small
