"""Protocol edges (issue 12, finding 11), over raw sockets against a real server.

Request lines that are not HTTP/1.x, ``OPTIONS *`` and ``CONNECT``; paths too deep or too
long (never a 500); control characters refused in new names while names already on disk
that hold them stay readable, deletable, and well-formed in PROPFIND XML.
"""

from __future__ import annotations

from xml.etree import ElementTree

from tests.support import SEProcess, exchange

DAV = "{DAV:}"


def request(
    port: int, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    lines = [f"{method} {target} HTTP/1.1", "Host: t", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "PUT":
        lines.append(f"Content-Length: {len(body)}")
    answer = exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    head, _, payload = answer.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    assert status_line.startswith("HTTP/1.1 "), status_line
    parsed = {}
    for f in fields:
        k, _, v = f.partition(":")
        parsed[k.strip().lower()] = v.strip()
    return int(status_line.split()[1]), parsed, payload


def test_request_lines(se: SEProcess) -> None:
    no_version = exchange(se.port, b"GET /\r\n\r\n")
    assert no_version.startswith(b"HTTP/1.0 400 "), no_version[:60]
    assert b"200" not in no_version.split(b"\r\n", 1)[0]
    two = exchange(se.port, b"GET / HTTP/2.0\r\nHost: t\r\n\r\n")
    assert two.startswith(b"HTTP/1.0 505 "), two[:60]
    # HTTP/1.0 and 1.1 are served as before.
    assert exchange(se.port, b"GET / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200 ")

    status, headers, _ = request(se.port, "OPTIONS", "*")
    assert status == 200
    assert "PROPFIND" in headers["allow"] and headers["dav"]
    connect = exchange(
        se.port, b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n"
    )
    assert connect.split(b"\r\n", 1)[0].split(b" ", 2)[1] == b"405", connect[:80]
    assert b"\r\nAllow: " in connect
    assert "Traceback" not in se.stderr()


def test_deep_and_long_paths_are_refused_not_500(se: SEProcess) -> None:
    deep = "/a" * 2040
    status, _, body = request(se.port, "PUT", deep, body=b"x")
    assert status == 414, body
    assert request(se.port, "MKCOL", "/a" * 300)[0] == 414
    assert request(se.port, "GET", "/a" * 300)[0] == 414
    long = "/" + "/".join(["d" * 250] * 17)  # 4267 bytes
    assert request(se.port, "PUT", long, body=b"x")[0] == 414
    # What is allowed still works: 200 levels of parents created by one PUT.
    status, _, body = request(se.port, "PUT", "/b" * 200, body=b"deep")
    assert status == 201, body
    assert request(se.port, "GET", "/b" * 200)[2] == b"deep"
    assert "Traceback" not in se.stderr()
    assert "RecursionError" not in se.stderr()


def test_control_characters_refused_in_new_names(se: SEProcess) -> None:
    assert request(se.port, "PUT", "/ok", body=b"data")[0] == 201
    for target in ("/a%0Ab", "/c%0Dd", "/t%09x", "/x%01y", "/del%7F"):
        status, _, body = request(se.port, "PUT", target, body=b"x")
        assert status == 400, (target, body)
        assert b"control characters" in body
        assert request(se.port, "MKCOL", target)[0] == 400
    dest = {"Destination": f"http://127.0.0.1:{se.port}/new%0Aname"}
    assert request(se.port, "MOVE", "/ok", dest)[0] == 400
    assert request(se.port, "COPY", "/ok", dest)[0] == 400
    pull = {"Source": f"http://127.0.0.1:{se.port}/ok"}
    assert request(se.port, "COPY", "/pulled%0D", pull)[0] == 400
    assert sorted(p.name for p in se.root.iterdir() if p.name != ".se-state") == ["ok"]
    # Percent signs and ordinary odd characters stay allowed ("%250A" is "%0A" as text).
    assert request(se.port, "PUT", "/100%25%20sure%250A", body=b"x")[0] == 201


def test_odd_names_on_disk_stay_usable(se: SEProcess) -> None:
    for name in ("l\nf", "c\rr", "x\x01y", "t\tz"):
        (se.root / name).write_bytes(name.encode())
    (se.root / "d\ne").mkdir()
    for encoded, name in (("l%0Af", "l\nf"), ("c%0Dr", "c\rr"), ("x%01y", "x\x01y")):
        status, _, body = request(se.port, "GET", "/" + encoded)
        assert (status, body) == (200, name.encode())
    status, _, body = request(se.port, "PROPFIND", "/", {"Depth": "1"})
    assert status == 207
    tree = ElementTree.fromstring(body)  # well-formed XML whatever the names
    hrefs = {r.findtext(f"{DAV}href") for r in tree.iter(f"{DAV}response")}
    names = {r.findtext(f".//{DAV}displayname") for r in tree.iter(f"{DAV}response")}
    for encoded in ("l%0Af", "c%0Dr", "x%01y", "t%09z", "d%0Ae/"):
        assert any(h is not None and h.endswith("/" + encoded) for h in hrefs), (encoded, hrefs)
    assert {"l\nf", "c\rr", "t\tz", "x%01y"} <= names
    assert b"\r" not in body and b"\x01" not in body
    status, _, body = request(se.port, "PROPFIND", "/d%0Ae/", {"Depth": "0"})
    assert status == 207
    ElementTree.fromstring(body)
    assert request(se.port, "GET", "/")[0] == 200  # the HTML listing
    for encoded in ("l%0Af", "c%0Dr", "x%01y", "t%09z", "d%0Ae"):
        assert request(se.port, "DELETE", "/" + encoded)[0] == 204, encoded
    assert [p for p in se.root.iterdir() if p.name != ".se-state"] == []
