"""The lean GET/HEAD path (se.web.fastpath) answers exactly as the full path does.

Two real servers share one data tree: one with the shipped default (lean path on), one
with ``server.lean_path = false``.  Every request of a battery (what the lean path takes,
and all it must hand over) gets the same status, header fields (but Date) and body from
both; the lean server's metrics show that it did answer the requests it covers.  Then:
pipelined requests mixing both paths on one connection answer in order, a client that
does not read cannot make the server buffer without bound, and the access log has one
line per request in the same form from either path.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from se.auth import issuer
from tests.support import SEProcess

ACCESS_ON = '[logging]\naccess_log = true\nlevel = "info"\n'
LEAN_OFF = "[server]\nlean_path = false\n"

SMALL = os.urandom(4096)
BIG = os.urandom(65536 + 1)  # one byte above storage.inline_read_max


def _tree(root: Path) -> None:
    root.mkdir()
    (root / "small.bin").write_bytes(SMALL)
    (root / "big.bin").write_bytes(BIG)
    (root / "with space.txt").write_bytes(b"spaced\n")
    (root / "page.html").write_bytes(b"<p>hi</p>\n")
    (root / "empty").write_bytes(b"")
    (root / "dir").mkdir()
    (root / "dir" / "inner.dat").write_bytes(b"inner")
    os.mkfifo(root / "fifo")
    os.symlink("/etc/hostname", root / "escape")
    os.symlink("small.bin", root / "link.bin")


@pytest.fixture
def pair(se_factory: Callable[..., SEProcess], tmp_path: Path) -> tuple[SEProcess, SEProcess]:
    root = tmp_path / "tree"
    _tree(root)
    lean = se_factory(config=ACCESS_ON, root=root)
    full = se_factory(config=ACCESS_ON + LEAN_OFF, root=root)
    return lean, full


def _ask(
    srv: SEProcess, method: str, target: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request on a new connection, its head and body in one send (one segment, so
    that what the lean path takes does not depend on timing), and its answer: status,
    header fields but Date, body."""
    # One Host for both servers: it is in the hrefs of PROPFIND answers.
    fields = {"Host": "se.example:1094", **headers}
    if body:
        fields["Content-Length"] = str(len(body))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        answer = resp.read()
        got = [(k, v) for k, v in resp.getheaders() if k.lower() != "date"]
        resp.close()
        return resp.status, got, answer


ETAG_OF_SMALL = "etag-of-small"  # replaced by the real one in the test
ALLPROP = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
PROPNAME = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:propname/></D:propfind>'
# What davix asks for in a stat (gfal-stat, FTS).
DAVIX_PROPS = (
    b'<?xml version="1.0" encoding="utf-8" ?><D:propfind xmlns:D="DAV:"><D:prop>'
    b"<D:getlastmodified/><D:getcontentlength/><D:resourcetype/><D:quota-used-bytes/>"
    b"</D:prop></D:propfind>"
)
PLAIN_PROPS = (
    b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:getcontentlength/>'
    b"<D:getetag/><D:creationdate/><D:displayname/><D:getcontenttype/><D:nothing-like-it/>"
    b"</D:prop></D:propfind>"
)
CHECKSUMS = (
    b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:d="http://www.dcache.org/2013/'
    b'webdav"><D:prop><d:Checksums/></D:prop></D:propfind>'
)
CASES: list[tuple[str, str, dict[str, str]] | tuple[str, str, dict[str, str], bytes]] = [
    ("GET", "/small.bin", {}),
    ("HEAD", "/small.bin", {}),
    ("GET", "/small.bin", {"User-Agent": 'agent "quoted"', "Referer": "http://x/"}),
    ("PROPFIND", "/small.bin", {"Depth": "0"}),
    ("PROPFIND", "/small.bin", {"Depth": "0"}, ALLPROP),
    ("PROPFIND", "/with%20space.txt", {"Depth": "0"}, PROPNAME),
    ("PROPFIND", "/small.bin", {"Depth": "0", "Host": "a&b<c>:1"}, PLAIN_PROPS),
    ("PROPFIND", "/page.html", {"Depth": " 0 ", "Content-Type": "text/xml"}, PLAIN_PROPS),
    ("GET", "/with%20space.txt", {}),
    ("HEAD", "/with%20space.txt", {}),
    ("GET", "/page.html", {}),
    ("GET", "/empty", {}),
    ("HEAD", "/empty", {}),
    ("GET", "/link.bin", {}),
    ("GET", "//small.bin", {}),
    ("GET", "/dir/../small.bin", {}),
    ("GET", "/big.bin", {}),
    ("HEAD", "/big.bin", {}),
    ("GET", "/dir", {}),
    ("GET", "/dir/", {}),
    ("HEAD", "/dir", {}),
    ("GET", "/missing", {}),
    ("HEAD", "/missing", {}),
    ("GET", "/fifo", {}),
    ("HEAD", "/fifo", {}),
    ("GET", "/escape", {}),
    ("GET", "/.se-state/macaroon.secret", {}),
    ("GET", "/.well-known/wlcg-tape-rest-api", {}),
    ("GET", "/small.bin?x=1", {}),
    ("GET", "/small.bin", {"Range": "bytes=0-9"}),
    ("GET", "/small.bin", {"If-None-Match": ETAG_OF_SMALL}),
    ("GET", "/small.bin", {"If-Match": '"nope"'}),
    ("GET", "/small.bin", {"Want-Digest": "adler32"}),
    ("HEAD", "/small.bin", {"Want-Digest": "md5"}),
    ("GET", "/small.bin", {"Authorization": "Bearer not-a-token"}),
    ("GET", "/small.bin", {"Connection": "close"}),
    ("GET", "/small.bin#frag", {}),
    ("GET", "/%ZZ", {}),
    ("PROPFIND", "/small.bin", {"Depth": "0"}, DAVIX_PROPS),
    ("PROPFIND", "/small.bin", {"Depth": "0"}, CHECKSUMS),
    ("PROPFIND", "/small.bin", {"Depth": "1"}),
    ("PROPFIND", "/small.bin", {}),
    ("PROPFIND", "/small.bin", {"Depth": "zero"}),
    ("PROPFIND", "/small.bin", {"Depth": "0"}, b"<not-xml"),
    ("PROPFIND", "/small.bin", {"Depth": "0"}, b"<?xml version='1.0'?><D:x xmlns:D='DAV:'/>"),
    ("PROPFIND", "/dir", {"Depth": "0"}),
    ("PROPFIND", "/missing", {"Depth": "0"}),
    ("PROPFIND", "/fifo", {"Depth": "0"}),
    ("PROPFIND", "/small.bin", {"Depth": "0", "Authorization": "Bearer x"}),
    ("PROPFIND", "/small.bin?authz=x", {"Depth": "0"}),
    ("PROPFIND", "/small.bin", {"Depth": "0"}, b" " * 70000),
]
LEAN_CASES = 16  # the first sixteen are what the lean path answers itself


def test_every_answer_is_the_full_paths(pair: tuple[SEProcess, SEProcess]) -> None:
    lean, full = pair
    etag = dict(_ask(full, "HEAD", "/small.bin", {})[1])["Etag"]
    for case in CASES:
        method, target, headers = case[:3]
        body = case[3] if len(case) == 4 else b""
        headers = {k: (etag if v == ETAG_OF_SMALL else v) for k, v in headers.items()}
        got = _ask(lean, method, target, headers, body)
        want = _ask(full, method, target, headers, body)
        assert got == want, (method, target, headers)
    # The lean server did answer the ones it covers (and the other never did).
    assert _lean_count(lean) == LEAN_CASES
    assert _lean_count(full) == 0


def _lean_count(srv: SEProcess, headers: dict[str, str] | None = None) -> float:
    text = _ask(srv, "GET", "/.well-known/se/metrics", headers or {})[2].decode()
    m = re.search(r"^se_http_lean_requests_total (\S+)$", text, re.M)
    assert m is not None, text[:2000]
    return float(m.group(1))


def _read_answers(
    sock: socket.socket, count: int, heads: list[bool], timeout: float
) -> list[tuple[int, bytes]]:
    """``count`` answers from a raw socket (heads[i]: the i-th was a HEAD)."""
    sock.settimeout(timeout)
    buf = b""
    out: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        assert time.monotonic() < deadline, f"only {len(out)} of {count} answers"
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            chunk = sock.recv(1 << 20)
            assert chunk, f"closed after {len(out)} of {count} answers"
            buf += chunk
            continue
        head = buf[:end].decode("latin-1")
        status = int(head.split(" ", 2)[1])
        m = re.search(r"(?im)^content-length: *(\d+)", head)
        length = 0 if heads[len(out)] or m is None else int(m.group(1))
        while len(buf) < end + 4 + length:
            chunk = sock.recv(1 << 20)
            assert chunk, "closed inside a body"
            buf += chunk
        out.append((status, buf[end + 4 : end + 4 + length]))
        buf = buf[end + 4 + length :]
    return out


def test_pipelined_requests_of_both_paths_answer_in_order(
    pair: tuple[SEProcess, SEProcess],
) -> None:
    lean, _full = pair
    get = b"GET /small.bin HTTP/1.1\r\nHost: x\r\n\r\n"
    put = b"PUT /dir/new.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    seq = [
        (get, False),
        (put, False),
        (get, False),
        (b"HEAD /missing HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"GET /dir/new.bin HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (b"HEAD /small.bin HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (get, False),
    ]
    with socket.create_connection(("127.0.0.1", lean.port)) as sock:
        # All at once, then again one byte at a time.
        sock.sendall(b"".join(r for r, _ in seq))
        first = _read_answers(sock, len(seq), [h for _, h in seq], 10)
        for request, _ in seq:
            for i in range(len(request)):
                sock.sendall(request[i : i + 1])
        second = _read_answers(sock, len(seq), [h for _, h in seq], 10)
    for answers in (first, second):
        assert [s for s, _ in answers] == [200, 201 if answers is first else 204, 200, 404, 200,
                                          200, 200]  # fmt: skip
        assert answers[0][1] == answers[2][1] == answers[6][1] == SMALL
        assert answers[4][1] == b"hello"
        assert answers[5][1] == b""


def test_more_pipelined_requests_with_bodies_than_the_parser_holds_answer_in_order(
    pair: tuple[SEProcess, SEProcess],
) -> None:
    """40 PROPFINDs with a body, 40 GETs and 40 PUTs sent in one go: aiohttp's parser holds
    back what follows its 32nd unanswered request, and reading a body makes aiohttp feed it
    again from inside the lean path; the requests it then released were answered before the
    one being answered (33 of 40 came out first, in reverse order)."""
    lean, full = pair
    body = (
        b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop>'
        b"<D:getcontentlength/></D:prop></D:propfind>"
    )
    names = [f"/dir/o{i}.bin" for i in range(40)]
    for i, name in enumerate(names):
        (lean.root / name.lstrip("/")).write_bytes(b"x" * i)
    requests = [
        f"PROPFIND {n} HTTP/1.1\r\nHost: x\r\nDepth: 0\r\nContent-Length: {len(body)}\r\n"
        f"\r\n".encode()
        + body
        for n in names
    ]
    requests += [f"GET {n} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for n in names]
    requests += [
        f"PUT {n}.new HTTP/1.1\r\nHost: x\r\nContent-Length: {i}\r\n\r\n".encode() + b"y" * i
        for i, n in enumerate(names)
    ]
    for srv in (lean, full):
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall(b"".join(requests))
            answers = _read_answers(sock, len(requests), [False] * len(requests), 30)
        # The two servers share one tree: the second one's PUTs replace the first one's.
        put = 201 if srv is lean else 204
        assert [s for s, _ in answers] == [207] * 40 + [200] * 40 + [put] * 40, srv.url
        for i, (_s, text) in enumerate(answers[:40]):
            assert f"{names[i]}</D:href>".encode() in text, (i, text[:300])
            assert f"<D:getcontentlength>{i}</D:getcontentlength>".encode() in text
        assert [text for _s, text in answers[40:80]] == [b"x" * i for i in range(40)]


def _rss_kib(pid: int) -> int:
    total = 0
    for child in [pid, *_children(pid)]:
        with open(f"/proc/{child}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def test_a_client_that_does_not_read_cannot_grow_the_server(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    body = os.urandom(60000)  # below inline_read_max: answered by the lean path
    (root / "f").write_bytes(body)
    srv = se_factory(root=root)
    count = 3000  # 180 MB of answers
    request = b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n"
    before = _rss_kib(srv.proc.pid)
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.settimeout(10)
        sent = 0
        sock.setblocking(False)
        deadline = time.monotonic() + 5
        data = request * count
        while sent < len(data) and time.monotonic() < deadline:
            try:
                sent += sock.send(data[sent : sent + 65536])
            except BlockingIOError:
                time.sleep(0.01)
        time.sleep(1.0)
        grown = _rss_kib(srv.proc.pid) - before
        # The answers wait in the kernel and in bounded buffers, not in the server.
        assert grown < 60 * 1024, f"server grew by {grown} KiB"
        sock.setblocking(True)
        asked = sent // len(request)
        answers = _read_answers(sock, asked, [False] * asked, 60)
    assert all(s == 200 and b == body for s, b in answers)


def test_access_log_lines_are_alike_and_none_is_lost(
    pair: tuple[SEProcess, SEProcess],
) -> None:
    lean, full = pair
    n = 400
    for srv in (lean, full):
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            req = b"GET /small.bin HTTP/1.1\r\nHost: x\r\nUser-Agent: t/1\r\n\r\n"
            sock.sendall(req * n)
            assert len(_read_answers(sock, n, [False] * n, 30)) == n
    lines = {}
    for srv in (lean, full):
        srv.stop()
        assert srv.stderr_path is not None
        text = srv.stderr_path.read_text()
        got = [ln for ln in text.splitlines() if '"GET /small.bin HTTP/1.1"' in ln]
        assert len(got) == n
        # Without the time stamps and the duration.
        lines[srv.url] = {re.sub(r"^\S+ \S+ (.*) \[[^]]*\] (.*) \d+$", r"\1 \2", ln) for ln in got}
    assert lines[lean.url] == lines[full.url]
    assert len(lines[lean.url]) == 1
    assert next(iter(lines[lean.url])).endswith('200 4338 "-" "t/1" "-"')


def test_an_idle_connection_is_closed_after_lean_answers(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    root = tmp_path / "tree"
    _tree(root)
    srv = se_factory(config="[server]\nkeepalive_timeout = 1.0\n", root=root)
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(b"GET /small.bin HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        assert [s for s, _ in _read_answers(sock, 3, [False] * 3, 10)] == [200] * 3
        assert _lean_count(srv) == 3
        sock.settimeout(10)
        began = time.monotonic()
        assert sock.recv(1) == b""  # closed by the server, as after any other answer
        assert time.monotonic() - began < 5


ISS = "https://issuer.test/"
ANY = "https://wlcg.cern.ch/jwt/v1/any"


def test_requests_with_a_verified_token_answer_alike(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    """A bearer token is verified by the full path the first time; after that, the lean
    path answers with the cached grant (and the same refusals stay the full path's)."""
    key_path, jwks = issuer.keygen(tmp_path / "keys")
    key = issuer.load_key(key_path)
    root = tmp_path / "tree"
    _tree(root)
    auth = f'[auth]\nanonymous = "none"\n[[auth.issuers]]\nissuer = "{ISS}"\njwks_file = "{jwks}"\n'
    lean = se_factory(config=ACCESS_ON + auth, root=root)
    full = se_factory(config=ACCESS_ON + LEAN_OFF + auth, root=root)

    def bearer(scope: str, subject: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {issuer.issue(key, ISS, scope, [ANY], 600, subject)}"}

    reader = bearer("storage.read:/")
    dir_only = bearer("storage.read:/dir", "bob")
    cases: list[tuple[str, str, dict[str, str], bytes]] = [
        ("GET", "/small.bin", reader, b""),
        ("HEAD", "/small.bin", reader, b""),
        ("PROPFIND", "/small.bin", {**reader, "Depth": "0"}, b""),
        ("PROPFIND", "/small.bin", {**reader, "Depth": "0"}, ALLPROP),
        ("GET", "/dir/inner.dat", dir_only, b""),
        ("GET", "/small.bin", dir_only, b""),  # 403, the full path's
        ("GET", "/small.bin", {}, b""),  # 401
        ("GET", "/small.bin", {"Authorization": "Bearer garbage"}, b""),
        ("GET", "/small.bin", {"Authorization": "Basic YTpi"}, b""),
    ]
    for method, target, headers, body in cases:
        for _ in range(2):  # the first verifies (and caches) the token
            got = _ask(lean, method, target, headers, body)
            want = _ask(full, method, target, headers, body)
            assert got == want, (method, target, headers)
    assert _ask(lean, "GET", "/small.bin", reader)[0] == 200
    # All but the first use of each token: 9 (reader: 1 + 6 + 1 last, dir_only: 1).
    assert _lean_count(lean, reader) == 9
    assert _lean_count(full, reader) == 0
    identities = set()
    for srv in (lean, full):
        srv.stop()
        assert srv.stderr_path is not None
        for line in srv.stderr_path.read_text().splitlines():
            if '"GET /small.bin HTTP/1.1" 200' in line:
                identities.add(line.rsplit('"', 2)[-2])
    assert identities == {f"alice@{ISS}"}
