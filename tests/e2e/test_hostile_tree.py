"""A hostile data tree: symlinks and special files placed straight on disk under the root.

Whoever can write to the served directory by other means (a local account, an NFS client,
a careless admin) may leave symlinks that lead out of the root, into the server's own state
(``.se-state``: the macaroon secret, the tape database), onto reserved names, or round in
loops, and FIFOs, sockets or device nodes.  Whatever the tree holds, ``se`` must never
serve a byte from outside the root or from its state, never change anything outside the
root, and never block a worker on a special file.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest

from se.config import load_mapping
from se.errors import SEError
from se.storage import beneath
from se.storage.paths import confine
from se.storage.posix import PosixBackend
from se.storage.types import OpenFile
from tests.conftest import BASE_CONFIG
from tests.support import SEProcess

OUTSIDE = b"OUTSIDE-THE-ROOT-4f1c9e"
STATE = b"SERVER-STATE-SECRET-77a2"
TEMP = b"IN-FLIGHT-UPLOAD-9b3d"
PASSWD_MARK = b"root:x:0:0"
MARKERS = (OUTSIDE, STATE, TEMP, PASSWD_MARK)
OUTSIDE_NAME = "outside-only-name.txt"

CONFIG = (
    BASE_CONFIG
    + """
[webdav]
allow_depth_infinity = true
"""
)
PROPFIND_ALL = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'


@pytest.fixture
def tree(se_factory: object, tmp_path: Path) -> Iterator[tuple[SEProcess, Path, Path]]:
    root = tmp_path / "data"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / OUTSIDE_NAME).write_bytes(OUTSIDE)
    (outside / "sub").mkdir()
    (outside / "sub" / "deep.txt").write_bytes(OUTSIDE)
    root.mkdir()
    state = root / ".se-state"
    state.mkdir()
    (state / "canary").write_bytes(STATE)
    (root / ".se-upload-inflight").write_bytes(TEMP)
    (root / "pub").mkdir()
    (root / "pub" / "f.txt").write_bytes(b"public")
    links = {
        "l_passwd": "/etc/passwd",
        "l_out": f"../outside/{OUTSIDE_NAME}",
        "l_outdir": "../outside",
        "l_abs_outdir": str(outside),
        "l_state": ".se-state",
        "l_canary": ".se-state/canary",
        "l_state_abs": str(state / "canary"),
        "l_temp": ".se-upload-inflight",
        "l_dotdot": "pub/../../outside",
        "loop1": "loop2",
        "loop2": "loop1",
        "self": "self",
        "dirloop": ".",
        "l_in": "pub/f.txt",
        "l_indir": "pub",
        "pub/l_canary_rel": "../.se-state/canary",
        "pub/l_up": f"../../outside/{OUTSIDE_NAME}",
    }
    for name, target in links.items():
        os.symlink(target, root / name)
    # A collection whose members are of every hostile kind, for COPY/MOVE/DELETE.
    t = root / "tree"
    t.mkdir()
    (t / "ok.txt").write_bytes(b"ok")
    os.symlink("/etc/passwd", t / "passwd")
    os.symlink(f"../../outside/{OUTSIDE_NAME}", t / "up")
    os.symlink(str(outside), t / "outdir")
    os.symlink("../.se-state", t / "state")
    os.symlink("ok.txt", t / "inner")
    os.mkfifo(t / "fifo")
    os.mkfifo(root / "fifo")
    srv_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv_sock.bind(str(root / "sock"))
    if os.geteuid() == 0:
        os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    srv = se_factory(CONFIG, root=root)  # type: ignore[operator]
    try:
        yield srv, root, outside
    finally:
        # Release any reader an old server left blocked on a FIFO.
        for fifo in (root / "fifo", t / "fifo"):
            try:
                fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
            except OSError:
                continue
            os.close(fd)
        srv_sock.close()


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every entry below ``directory`` (not following links) with its content."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirs, files in os.walk(directory):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(directory))
            out[rel] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
            out[rel + "#xattrs"] = ",".join(sorted(os.listxattr(p, follow_symlinks=False))).encode()
    return out


def state_snapshot(root: Path) -> dict[str, bytes | None]:
    """The server's state directory, but for the space accounting's database (which every
    write that lands legitimately changes)."""
    return {
        k: v for k, v in snapshot(root / ".se-state").items() if not k.startswith("space.sqlite")
    }


def assert_clean(body: bytes, what: str, listing: bool = False) -> None:
    """No byte from outside the root or from the state; a listing names nothing there."""
    for mark in MARKERS:
        assert mark not in body, f"{what}: served {mark!r}"
    if listing:
        assert OUTSIDE_NAME.encode() not in body, f"{what}: listed a name from outside the root"
        assert b"canary" not in body and b"deep.txt" not in body, what


def served_files(root: Path) -> Iterator[Path]:
    """Regular files in the tree (not following links), the server's state excluded."""
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".se-")]
        for name in files:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink() and not name.startswith(".se-"):
                yield p


BAD = [
    "l_passwd",
    "l_out",
    "l_outdir",
    f"l_outdir/{OUTSIDE_NAME}",
    "l_abs_outdir",
    f"l_abs_outdir/{OUTSIDE_NAME}",
    "l_abs_outdir/sub/deep.txt",
    "l_state",
    "l_state/canary",
    "l_canary",
    "l_state_abs",
    "l_temp",
    "l_dotdot",
    f"l_dotdot/{OUTSIDE_NAME}",
    "loop1",
    "self",
    "pub/l_canary_rel",
    "pub/l_up",
    "l_indir/l_canary_rel",
    "dirloop/l_canary",
    "tree/passwd",
    "tree/up",
    "tree/outdir",
    "tree/state/canary",
]


async def test_links_out_of_the_root_or_into_state_serve_nothing(
    tree: tuple[SEProcess, Path, Path],
) -> None:
    srv, _root, outside = tree
    before_out = snapshot(outside)
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        for path in BAD:
            url = f"{srv.url}/{path}"
            for method in ("GET", "HEAD"):
                async with s.request(method, url, headers={"Want-Digest": "adler32"}) as r:
                    body = await r.read()
                    assert r.status in (403, 404), f"{method} /{path}: {r.status}"
                    assert_clean(body, f"{method} /{path}")
                    assert "Digest" not in r.headers, f"{method} /{path}"
            for depth in ("0", "1"):
                headers = {"Depth": depth}
                async with s.request("PROPFIND", url, data=PROPFIND_ALL, headers=headers) as r:
                    body = await r.read()
                    assert r.status in (403, 404), f"PROPFIND {depth} /{path}: {r.status}"
                    assert_clean(body, f"PROPFIND /{path}")
        # Links that stay inside the root (and off reserved names) still work.
        async with s.get(f"{srv.url}/l_in") as r:
            assert r.status == 200 and await r.read() == b"public"
        async with s.get(f"{srv.url}/l_indir/f.txt") as r:
            assert r.status == 200 and await r.read() == b"public"
        # Listings, down to any depth, never show what lies behind a bad link.
        for depth in ("1", "infinity"):
            for path in ("", "pub", "tree", "l_indir"):
                async with s.request(
                    "PROPFIND", f"{srv.url}/{path}", data=PROPFIND_ALL, headers={"Depth": depth}
                ) as r:
                    body = await r.read()
                    assert r.status == 207, f"PROPFIND {depth} /{path}: {r.status} {body[:200]!r}"
                    assert_clean(body, f"PROPFIND {depth} /{path}", listing=True)
                    assert b".se-" not in body
                    for hidden in (b"/l_passwd", b"/l_state", b"/l_canary", b"/l_out<"):
                        assert hidden not in body, f"PROPFIND {depth} /{path} lists {hidden!r}"
            async with s.get(f"{srv.url}/", headers={"Accept": "application/json"}) as r:
                assert r.status == 200
                assert_clean(await r.read(), "GET / listing", listing=True)
    assert snapshot(outside) == before_out


async def test_writes_through_links_change_nothing_outside(
    tree: tuple[SEProcess, Path, Path],
) -> None:
    srv, root, outside = tree
    before_out = snapshot(outside)
    before_state = state_snapshot(root)
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        for path in (
            "l_outdir/new.txt",
            "l_abs_outdir/sub/new.txt",
            "l_dotdot/new.txt",
            "l_state/new.txt",
            "l_out",
            "l_passwd",
            "l_canary",
            "tree/outdir/new.txt",
        ):
            async with s.put(f"{srv.url}/{path}", data=b"written-by-client") as r:
                assert r.status in (201, 204, 403, 404, 409), f"PUT /{path}: {r.status}"
        for path in ("l_outdir/newdir", "l_state/newdir", "l_abs_outdir/x"):
            async with s.request("MKCOL", f"{srv.url}/{path}") as r:
                assert r.status in (403, 404, 409), f"MKCOL /{path}: {r.status}"
        proppatch = (
            b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z">'
            b"<D:set><D:prop><Z:x>1</Z:x></D:prop></D:set></D:propertyupdate>"
        )
        for path in ("l_out", "l_outdir", "l_canary", "l_state"):
            async with s.request("PROPPATCH", f"{srv.url}/{path}", data=proppatch) as r:
                assert r.status in (403, 404), f"PROPPATCH /{path}: {r.status}"
        # COPY of a collection whose members lead outside: nothing from outside is copied.
        async with s.request(
            "COPY", f"{srv.url}/tree", headers={"Destination": f"{srv.url}/copied"}
        ) as r:
            body = await r.read()
            assert r.status in (201, 207), f"COPY /tree: {r.status} {body!r}"
            assert_clean(body, "COPY /tree")
        assert (root / "copied" / "ok.txt").read_bytes() == b"ok"
        for name in ("passwd", "up", "outdir", "state", "fifo"):
            p = root / "copied" / name
            assert not p.exists() or p.is_symlink(), f"copied/{name} was followed"
        for path in ("l_out", "l_outdir", "l_canary", "tree/up", "tree/passwd"):
            async with s.request(
                "COPY", f"{srv.url}/{path}", headers={"Destination": f"{srv.url}/c_{path[-4:]}"}
            ) as r:
                assert r.status in (403, 404), f"COPY /{path}: {r.status}"
        # MOVE a collection holding bad links somewhere else: links still lead nowhere.
        async with s.request(
            "MOVE", f"{srv.url}/copied", headers={"Destination": f"{srv.url}/pub/moved"}
        ) as r:
            assert r.status in (201, 204), f"MOVE /copied: {r.status}"
        async with s.request(
            "MOVE", f"{srv.url}/l_outdir", headers={"Destination": f"{srv.url}/pub/l_moved"}
        ) as r:
            assert r.status in (201, 204, 403), f"MOVE /l_outdir: {r.status}"
        for path in ("pub/l_moved", f"pub/l_moved/{OUTSIDE_NAME}", "pub/moved/up"):
            async with s.get(f"{srv.url}/{path}") as r:
                assert r.status in (403, 404), f"GET /{path}: {r.status}"
                assert_clean(await r.read(), f"GET /{path}")
        # DELETE removes links, never what they point at.
        for path in ("l_abs_outdir", "l_out", "tree", "pub"):
            async with s.delete(f"{srv.url}/{path}") as r:
                assert r.status in (204, 207, 403), f"DELETE /{path}: {r.status}"
    assert snapshot(outside) == before_out
    assert state_snapshot(root) == before_state
    assert Path("/etc/passwd").read_bytes().startswith(PASSWD_MARK)
    for p in served_files(root):
        assert_clean(p.read_bytes(), str(p))


async def test_special_files_are_refused_without_blocking(
    tree: tuple[SEProcess, Path, Path],
) -> None:
    srv, root, _outside = tree
    timeout = aiohttp.ClientTimeout(total=30)
    specials = ["fifo", "tree/fifo", "sock"] + (["null"] if os.geteuid() == 0 else [])
    async with aiohttp.ClientSession(timeout=timeout) as s:

        async def status(method: str, path: str, **kw: object) -> int:
            async with s.request(method, f"{srv.url}/{path}", **kw) as r:  # type: ignore[arg-type]
                await r.read()
                return r.status

        # The FIFO is asked for first; a normal GET on the same (only) worker still answers.
        fifo_get = asyncio.ensure_future(status("GET", "fifo"))
        await asyncio.sleep(0.3)
        async with asyncio.timeout(5):
            assert await status("GET", "pub/f.txt") == 200, "the worker is blocked"
        async with asyncio.timeout(5):
            assert await fifo_get == 403
        for path in specials:
            async with asyncio.timeout(5):
                assert await status("GET", path) == 403, f"GET /{path}"
                assert await status("HEAD", path) == 403, f"HEAD /{path}"
                want = {"Want-Digest": "adler32"}
                assert await status("GET", path, headers=want) == 403, f"GET digest /{path}"
                depth0 = {"Depth": "0"}
                assert await status("PROPFIND", path, headers=depth0) == 403, f"PROPFIND /{path}"
                dest = {"Destination": f"{srv.url}/pub/copy-of-special"}
                assert await status("COPY", path, headers=dest) == 403, f"COPY /{path}"
        assert not (root / "pub" / "copy-of-special").exists()
        # Listings leave special files out; deleting one works and does not block.
        async with s.request("PROPFIND", f"{srv.url}/", headers={"Depth": "1"}) as r:
            body = await r.read()
            assert r.status == 207
            assert b"/fifo<" not in body and b"/sock<" not in body
        async with asyncio.timeout(5):
            assert await status("DELETE", "fifo") == 204
        assert not (root / "fifo").exists()


@pytest.mark.parametrize("use_openat2", [True, False], ids=["openat2", "walk"])
def test_both_ways_of_opening_confine_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_openat2: bool
) -> None:
    """openat2(RESOLVE_BENEATH) and the fallback walk (kernels without it) agree."""
    if use_openat2 and not beneath.available():
        pytest.skip("openat2 not available here")
    monkeypatch.setattr(beneath, "_state", use_openat2 and beneath.available())
    root, out = tmp_path / "data", tmp_path / "out"
    (root / ".se-state").mkdir(parents=True)
    (root / "pub").mkdir()
    out.mkdir()
    (root / ".se-state" / "c").write_bytes(STATE)
    (root / "pub" / "f").write_bytes(b"public")
    (out / "o").write_bytes(OUTSIDE)
    links = {
        "to_state": ".se-state/c",
        "rel_out": "../out/o",
        "in": "pub/f",
        "abs_in": str(root / "pub" / "f"),
        "abs_out": str(out / "o"),
        "self": "self",
        "dir_in": "pub",
        "dir_out": "../out",
    }
    for name, target in links.items():
        os.symlink(target, root / name)
    os.mkfifo(root / "fifo")
    cfg = load_mapping({"storage": {"root": str(root)}})
    with ThreadPoolExecutor(1) as pool:
        backend = PosixBackend(cfg, pool, None)
        got: dict[str, object] = {}
        for path in [*links, "fifo", "dir_in/f", "dir_out/o", "pub/f"]:
            try:
                opened = backend.open_read(confine("/" + path), use_cache=False)
            except SEError as exc:
                got[path] = exc.status
                continue
            if isinstance(opened, OpenFile):
                got[path] = os.pread(opened.fd, 100, 0)
                opened.close()
            else:
                got[path] = "dir"
    assert got == {
        "to_state": 403,
        "rel_out": 403,
        "in": b"public",
        "abs_in": b"public",
        "abs_out": 403,
        "self": 403,
        "dir_in": "dir",
        "dir_out": 403,
        "fifo": 403,
        "dir_in/f": b"public",
        "dir_out/o": 403,
        "pub/f": b"public",
    }
