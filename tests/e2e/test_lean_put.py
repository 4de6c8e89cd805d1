"""The lean PUT (se.dav.handlers.lean_put) stores and answers exactly as the full path does.

Two real servers on two identical trees: one with the shipped default (lean path on), one
with ``server.lean_path = false``.  The same PUTs (what the lean path takes, and all it must
hand over, including those whose I/O job fails and is answered by the full path) get the
same status, header fields (but Date; an ETag must name what was stored) and body from
both, and leave the same trees (names, bytes, stored checksums).  Then: answers stay in
order when a request arrives while a PUT's job runs, a client that leaves meanwhile does
not disturb the server, and a verified token is honoured as on the full path.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from se.auth import issuer
from tests.e2e.test_lean_path import LEAN_OFF, _ask, _lean_count, _read_answers
from tests.support import SEProcess

BODY = os.urandom(4096)
MD5_OF_BODY = base64.b64encode(hashlib.md5(BODY).digest()).decode()


def _tree(root: Path) -> None:
    root.mkdir()
    (root / "old.bin").write_bytes(b"old content")
    (root / "dir").mkdir()
    (root / "dir" / "inner.dat").write_bytes(b"inner")
    (root / "file").write_bytes(b"a file, not a collection")
    os.mkfifo(root / "fifo")
    os.symlink("/tmp", root / "out")
    os.symlink("old.bin", root / "link.bin")


@pytest.fixture
def pair(se_factory: Callable[..., SEProcess], tmp_path: Path) -> tuple[SEProcess, SEProcess]:
    lean_root, full_root = tmp_path / "lean", tmp_path / "full"
    _tree(lean_root)
    _tree(full_root)
    return se_factory(root=lean_root), se_factory(config=LEAN_OFF, root=full_root)


def _put(
    srv: SEProcess, target: str, headers: dict[str, str], body: bytes
) -> tuple[int, list[tuple[str, str]], bytes]:
    # (Head and body go in one segment, as most clients send a small PUT.)
    return _ask(srv, "PUT", target, headers, body)


def _etag_of(srv: SEProcess, target: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request("HEAD", target)
        resp = conn.getresponse()
        resp.read()
        return resp.getheader("ETag") or ""
    finally:
        conn.close()


# (target, headers, body, answered by the lean path)
CASES: list[tuple[str, dict[str, str], bytes, bool]] = [
    ("/new.bin", {}, BODY, True),
    ("/new.bin", {}, b"replaced", True),  # 204
    ("/old.bin", {"Overwrite": "T"}, BODY, True),
    ("/dir/new%20name.bin", {}, BODY, True),
    ("/empty", {}, b"", True),
    ("/made/on/the/way.bin", {}, BODY, True),  # storage.create_parents
    ("/dir/inner.dat", {"Overwrite": "F"}, BODY, False),  # 412: the job fails, handed over
    ("/dir", {}, BODY, False),  # 409 collection
    ("/file/below", {}, BODY, False),  # 409 parent is a file
    ("/fifo", {}, BODY, True),  # a FIFO is replaced (it is never opened)
    ("/out/escaped", {}, BODY, False),  # 403 symlink out of the root
    ("/link.bin", {}, b"through a link", True),
    ("/.se-state/x", {}, BODY, False),
    ("/", {}, BODY, False),
    ("/new.bin", {"Overwrite": "maybe"}, BODY, False),
    ("/md5.bin", {"Content-MD5": MD5_OF_BODY}, BODY, False),
    ("/md5bad.bin", {"Content-MD5": "AAAAAAAAAAAAAAAAAAAAAA=="}, BODY, False),
    ("/adler.bin", {"Digest": "adler32=00000001"}, BODY, False),
    ("/want.bin", {"Want-Digest": "adler32"}, BODY, False),
    ("/range.bin", {"Content-Range": "bytes 0-3/4"}, b"abcd", False),
    ("/query.bin?x=1", {}, BODY, False),
    ("/close.bin", {"Connection": "close"}, BODY, False),
    ("/bad%ZZ", {}, BODY, True),
    ("/dir/../up.bin", {}, BODY, False),
]


def _listing(root: Path) -> dict[str, tuple[bytes, dict[str, bytes]]]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".se-")]
        for name in filenames:
            p = Path(dirpath) / name
            if name.startswith(".se-") or p.is_symlink() or not p.is_file():
                continue
            # Stored checksums, without the size and time they were taken at.
            attrs = {
                k: os.getxattr(p, k).split(b";")[0]
                for k in os.listxattr(p)
                if k != "user.XrdCks.adler32"  # (binary, with a time)
            }
            found[str(p.relative_to(root))] = (p.read_bytes(), attrs)
    return found


def test_every_put_stores_and_answers_as_the_full_path(
    pair: tuple[SEProcess, SEProcess], tmp_path: Path
) -> None:
    lean, full = pair
    for target, headers, body, by_lean in CASES:
        before = _lean_count(lean)
        got = _put(lean, target, headers, body)
        assert _lean_count(lean) - before == by_lean, (target, headers)
        want = _put(full, target, headers, body)
        if got[0] in (201, 204):
            # An ETag names the stored file on each server (inode and time differ).
            for srv, answer in ((lean, got), (full, want)):
                etag = dict(answer[1])["Etag"]
                assert etag == _etag_of(srv, target), (target, srv.url)
            got = (got[0], [(k, "-" if k == "Etag" else v) for k, v in got[1]], got[2])
            want = (want[0], [(k, "-" if k == "Etag" else v) for k, v in want[1]], want[2])
        assert got == want, (target, headers)
    assert _listing(tmp_path / "lean") == _listing(tmp_path / "full")
    assert _lean_count(full) == 0
    # No temp file is left behind by a job that failed.
    assert not [p for p in (tmp_path / "lean").rglob(".se-upload-*")]


def test_a_request_that_arrives_while_a_put_is_stored_is_answered_after_it(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    srv = se_factory()
    put = b"PUT /f HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
    get = b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(50):
            body = b"version %d" % i
            # The GET follows in its own segment, at once or a little later, while the
            # PUT's job may still run: it must see what the PUT stored.
            sock.sendall(put % len(body) + body)
            time.sleep((i % 4) * 0.0005)
            sock.sendall(get)
            answers = _read_answers(sock, 2, [False, False], 10)
            assert answers == [(201 if i == 0 else 204, b""), (200, body)], i
        # PUT, GET, PUT, GET in one segment: the first PUT is not the last request, so
        # the full path takes them in order; the last GET follows the second PUT.
        two = b"two"
        sock.sendall(put % 3 + b"one" + get + put % 3 + two + get)
        answers = _read_answers(sock, 4, [False] * 4, 10)
        assert answers == [(204, b""), (200, b"one"), (204, b""), (200, two)]
    assert _lean_count(srv) >= 25  # PUTs and GETs that arrived alone


def test_a_client_gone_before_its_answer_leaves_the_server_well(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    srv = se_factory()
    for i in range(20):
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall(b"PUT /gone%d HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody" % i)
            # Reset at close: the answer, if written meanwhile, finds no reader.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    deadline = time.monotonic() + 10
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    while True:  # every body was whole: each was stored (as the full path would)
        got = []
        for i in range(20):
            conn.request("GET", f"/gone{i}")
            resp = conn.getresponse()
            got.append((resp.status, resp.read()))
        if got == [(200, b"body")] * 20 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert got == [(200, b"body")] * 20
    conn.close()
    srv.stop()
    assert srv.stderr_path is not None
    assert "Traceback" not in srv.stderr_path.read_text()


ISS = "https://issuer.test/"
ANY = "https://wlcg.cern.ch/jwt/v1/any"


def test_a_put_with_a_verified_token_is_judged_as_on_the_full_path(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    key_path, jwks = issuer.keygen(tmp_path / "keys")
    key = issuer.load_key(key_path)
    auth = f'[auth]\nanonymous = "none"\n[[auth.issuers]]\nissuer = "{ISS}"\njwks_file = "{jwks}"\n'
    lean = se_factory(config=auth)

    def bearer(scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {issuer.issue(key, ISS, scope, [ANY], 600, 'alice')}"}

    writer = bearer("storage.create:/ storage.read:/")
    reader = bearer("storage.read:/")
    modifier = bearer("storage.modify:/dir")
    assert _put(lean, "/a", writer, b"1")[0] == 201  # verified by the full path
    assert _put(lean, "/b", writer, b"2")[0] == 201  # then lean
    assert _put(lean, "/b", writer, b"3")[0] == 403  # create-only: no replacing
    assert _put(lean, "/c", reader, b"4")[0] == 403
    assert _put(lean, "/c", reader, b"4")[0] == 403
    assert _put(lean, "/c", {}, b"5")[0] == 401
    assert _put(lean, "/dir/d", modifier, b"6")[0] == 201
    assert _put(lean, "/dir/d", modifier, b"7")[0] == 204
    assert _lean_count(lean, reader) == 2  # /b and the second /dir/d
