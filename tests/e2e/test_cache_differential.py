"""Differential test of the caches: a server with them on answers exactly as one without.

Two live servers share one data tree: ``cached`` (small-file and listing caches on, with a
short settle time so that they really keep things) and ``plain`` (both caches off).  A
hypothesis state machine changes the tree through HTTP (PUT, MOVE, COPY, DELETE, PROPPATCH,
sent to either server) and straight on the filesystem (renames, replacements, in-place
writes through hard links in another directory), waits now and then so that what was
written becomes old enough to be cached, and after every read (GET, HEAD, GET with
Want-Digest, PROPFIND Depth 0 and 1) compares the two answers: status, body, ETag, Digest,
Last-Modified, and the whole listing.  Collections start with enough members for their
listing fragments to be kept.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from tests.conftest import BASE_CONFIG
from tests.support import SEProcess

PROP_ETAG = (
    '<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:getetag/>'
    "<D:getlastmodified/></D:prop></D:propfind>"
)

SETTLE = 0.05  # storage.cache_settle_time of the cached server (the smallest allowed)
CACHED = f"{BASE_CONFIG}\n[storage]\ncache_settle_time = {SETTLE}\n"
PLAIN = f"{BASE_CONFIG}\n[storage]\nfile_cache_bytes = 0\n[webdav]\nlisting_cache_dirs = 0\n"
FILLERS = 32  # members each collection starts with: enough for its fragments to be kept

# A small namespace, so that random sequences often hit the same names again; "/d0/s" is
# two levels down, so that renaming "/d0" moves a collection whose own parent stays put.
DIRS = ["/d0", "/d0/s", "/d1"]
FILES = ["/d0/f", "/d0/s/f", "/d0/s/g", "/d1/f"]
NAMES = DIRS + FILES + ["/d2"]
# Same-size pairs on purpose: a rewrite that keeps the size must still be seen.
BODIES = [b"", b"aaaa", b"bbbb", b"cc", b"dddddddd"]
PROP = (
    '<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z">'
    "<D:set><D:prop><Z:colour>{}</Z:colour></D:prop></D:set></D:propertyupdate>"
)

paths = st.sampled_from(NAMES)
collections = st.sampled_from(["/d0", "/d0/s", "/d1", "/d2"])
files = st.sampled_from(FILES)
dirs = st.sampled_from(["/", *DIRS, "/hl"])
bodies = st.sampled_from(BODIES)


@pytest.fixture
def servers(se_factory: Callable[..., SEProcess], tmp_path: Path) -> tuple[SEProcess, SEProcess]:
    root = tmp_path / "data"
    root.mkdir()
    return se_factory(config=CACHED, root=root), se_factory(config=PLAIN, root=root)


def _fresh_tree(root: Path) -> None:
    for child in root.iterdir():
        if child.name.startswith(".se-"):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    for d in DIRS:
        (root / d.lstrip("/")).mkdir()
        for i in range(FILLERS):
            (root / d.lstrip("/") / f"z{i:02d}").write_bytes(b"filler %d" % i)
    for f in FILES:
        (root / f.lstrip("/")).write_bytes(f.encode())
    (root / "hl").mkdir()


def test_cached_server_answers_like_the_uncached_one(
    servers: tuple[SEProcess, SEProcess],
) -> None:
    cached, plain = servers
    root = cached.root
    sessions = {cached.url: requests.Session(), plain.url: requests.Session()}

    def send(srv: SEProcess, method: str, path: str, **kw: object) -> requests.Response:
        return sessions[srv.url].request(method, srv.url + path, timeout=30, **kw)  # type: ignore[arg-type]

    def both(method: str, path: str, **kw: object) -> tuple[requests.Response, ...]:
        return send(cached, method, path, **kw), send(plain, method, path, **kw)

    class Machine(RuleBasedStateMachine):
        links: list[Path]

        @initialize()
        def setup(self) -> None:
            _fresh_tree(root)
            self.links = []
            time.sleep(SETTLE * 1.5)

        # -- changes through HTTP, to either server ------------------------------------
        @rule(to_cached=st.booleans(), path=files, body=bodies)
        def put(self, to_cached: bool, path: str, body: bytes) -> None:
            r = send(cached if to_cached else plain, "PUT", path, data=body)
            assert r.status_code < 500, r.text

        @rule(to_cached=st.booleans(), src=paths, dst=paths, copy=st.booleans())
        def move_or_copy(self, to_cached: bool, src: str, dst: str, copy: bool) -> None:
            srv = cached if to_cached else plain
            r = send(srv, "COPY" if copy else "MOVE", src, headers={"Destination": srv.url + dst})
            assert r.status_code < 500, r.text

        @rule(how=st.sampled_from(["cached", "plain", "fs"]), src=collections, dst=collections)
        def rename_collection(self, how: str, src: str, dst: str) -> None:
            """Collections renamed often: what was cached below them must not outlive it."""
            if how == "fs":
                self.fs_rename(src, dst)
            else:
                self.move_or_copy(how == "cached", src, dst, False)

        @rule(to_cached=st.booleans(), path=paths)
        def delete(self, to_cached: bool, path: str) -> None:
            r = send(cached if to_cached else plain, "DELETE", path)
            assert r.status_code < 500, r.text

        @rule(to_cached=st.booleans(), path=paths, colour=st.sampled_from(["red", "blue"]))
        def proppatch(self, to_cached: bool, path: str, colour: str) -> None:
            r = send(cached if to_cached else plain, "PROPPATCH", path, data=PROP.format(colour))
            assert r.status_code < 500, r.text

        # -- changes straight on the filesystem ----------------------------------------
        @rule(src=paths, dst=paths)
        def fs_rename(self, src: str, dst: str) -> None:
            with contextlib.suppress(OSError):
                os.rename(root / src.lstrip("/"), root / dst.lstrip("/"))

        @rule(path=files, body=bodies)
        def fs_replace(self, path: str, body: bytes) -> None:
            target = root / path.lstrip("/")
            tmp = root / "hl" / f"tmp{time.monotonic_ns()}"
            tmp.write_bytes(body)
            try:
                os.replace(tmp, target)
            except OSError:
                tmp.unlink()

        @rule(path=files)
        def fs_link(self, path: str) -> None:
            link = root / "hl" / f"l{len(self.links)}"
            try:
                os.link(root / path.lstrip("/"), link)
            except OSError:
                return
            self.links.append(link)

        @rule(which=st.integers(0, 7), body=bodies)
        def fs_write_through_link(self, which: int, body: bytes) -> None:
            if not self.links:
                return
            link = self.links[which % len(self.links)]
            try:
                with open(link, "r+b") as fh:  # in place: same inode as the linked file
                    fh.write(body)
                    fh.truncate(len(body))
            except OSError:
                pass

        @rule()
        def wait(self) -> None:
            """Let everything become old enough to be cached."""
            time.sleep(SETTLE * 1.5)

        # -- reads: both servers must answer the same ----------------------------------
        @rule(path=paths, method=st.sampled_from(["GET", "HEAD"]), digest=st.booleans())
        def read(self, path: str, method: str, digest: bool = False) -> None:
            headers = {"Want-Digest": "adler32"} if digest else {}
            a, b = both(method, path, headers=headers)
            for r in (a, b):
                assert r.status_code < 500, r.text
            seen = [
                (
                    r.status_code,
                    r.content,
                    *(r.headers.get(h) for h in ("ETag", "Digest", "Last-Modified")),
                    r.headers.get("Content-Length"),
                )
                for r in (a, b)
            ]
            assert seen[0] == seen[1], f"{method} {path} {headers}"

        @rule(path=dirs)
        def listing(self, path: str) -> None:
            a, b = both("PROPFIND", path, headers={"Depth": "1"})
            assert a.status_code == b.status_code, path
            texts = [r.text.replace(srv.url, "") for r, srv in ((a, cached), (b, plain))]
            assert texts[0] == texts[1], f"PROPFIND {path}"

        @rule(path=paths, allprop=st.booleans())
        def depth0(self, path: str, allprop: bool) -> None:
            body = "" if allprop else PROP_ETAG
            a, b = both("PROPFIND", path, headers={"Depth": "0"}, data=body)
            assert a.status_code == b.status_code, path
            texts = [r.text.replace(srv.url, "") for r, srv in ((a, cached), (b, plain))]
            assert texts[0] == texts[1], f"PROPFIND Depth 0 {path}"

        @rule()
        def read_everything(self) -> None:
            """Every name read and every collection listed: what the cache keeps now is
            what a later change must not let it answer with."""
            for path in [*FILES, *DIRS]:
                self.read(path, "GET")
                self.depth0(path, True)
            for path in ["/", *DIRS]:
                self.listing(path)

    try:
        run_state_machine_as_test(  # type: ignore[no-untyped-call]
            Machine,
            settings=settings(
                max_examples=25,
                stateful_step_count=30,
                deadline=None,
                database=None,
                # a failure is reported with its steps as found: shrinking re-runs
                # hundreds of HTTP sequences and would take minutes
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        for s in sessions.values():
            s.close()
