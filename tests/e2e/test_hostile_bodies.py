"""Request bodies that arrive slowly: every endpoint that takes a body reads it to its end.

A body sent in many TCP segments (here: one byte per segment, with pauses, over a raw
socket) must be read whole, with ``Content-Length`` and chunked; a body past the endpoint's
limit is a 413 however it arrives.  The JWKS fetch reads a slowly served document whole too.
Issue 12, finding 2: each body used to be read with one ``StreamReader.read(n)``, which
returns what has arrived so far.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from se.auth.keys import KeyStore
from se.config import IssuerConfig
from tests.e2e.jwt_issuer import JWTIssuer
from tests.e2e.test_tape import STUCK, data_root, tape_config
from tests.support import SEProcess

pytestmark = [pytest.mark.timeout(120)]

PAUSE = 0.002  # seconds between two segments
XML_LIMIT = 4096
PROPFIND = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:propfind xmlns:D="DAV:"><D:prop><D:getcontentlength/></D:prop></D:propfind>'
)
PROPPATCH = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:se-test"><D:set><D:prop>'
    b"<Z:colour>blue</Z:colour></D:prop></D:set></D:propertyupdate>"
)


async def _send(
    port: int,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
    segment: int = 1,
) -> tuple[int, bytes]:
    """One request over a fresh connection, its body ``segment`` bytes per TCP segment;
    the status and the response body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        for start in range(0, len(body), segment):
            piece = body[start : start + segment]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            await writer.drain()
            await asyncio.sleep(PAUSE)
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, rest


@pytest.fixture
def srv(se_factory: Callable[..., SEProcess], tmp_path: Path) -> SEProcess:
    """Anonymous read-write on loopback, the tape API on, a small XML limit."""
    extra = f"\n[webdav]\nmax_xml_body = {XML_LIMIT}\n"
    server = se_factory(tape_config(STUCK, extra), root=data_root(tmp_path))
    (server.root / "tape" / "f").write_bytes(b"tape file")
    (server.root / "other" / "f").write_bytes(b"disk file")
    return server


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_every_body_endpoint_reads_a_dribbled_body_whole(
    srv: SEProcess, chunked: bool
) -> None:
    port = srv.port

    async def call(method: str, path: str, body: bytes, **headers: str) -> tuple[int, bytes]:
        return await _send(port, method, path, body, headers, chunked)

    xml = {"Content-Type": "application/xml"}
    status, body = await call("PROPFIND", "/other/f", PROPFIND, Depth="0", **xml)
    assert status == 207 and b"getcontentlength" in body, (status, body[:300])
    status, body = await call("PROPPATCH", "/other/f", PROPPATCH, **xml)
    assert status == 207 and b"200" in body, (status, body[:300])

    request = json.dumps({"caveats": ["activity:DOWNLOAD,LIST"], "validity": "PT10M"})
    status, body = await call(
        "POST", "/other/f", request.encode(), **{"Content-Type": "application/macaroon-request"}
    )
    assert status == 200 and json.loads(body)["macaroon"], (status, body[:300])

    js = {"Content-Type": "application/json"}
    stage = json.dumps({"files": [{"path": "/tape/f"}, {"path": "/tape/g"}]}).encode()
    status, body = await call("POST", "/api/v1/stage", stage, **js)
    assert status == 201, (status, body[:300])
    rid = json.loads(body)["requestId"]
    paths = json.dumps({"paths": ["/tape/f"]}).encode()
    status, body = await call("POST", "/api/v1/archiveinfo", paths, **js)
    assert status == 200 and json.loads(body)[0]["path"] == "/tape/f", (status, body[:300])
    status, body = await call("POST", f"/api/v1/stage/{rid}/cancel", paths, **js)
    assert status == 200, (status, body[:300])
    status, body = await call("POST", f"/api/v1/release/{rid}", paths, **js)
    assert status == 200, (status, body[:300])
    status, body = await call("POST", "/.well-known/se/tape", b'{"unreachable": false}', **js)
    assert status == 200, (status, body[:300])


async def test_a_large_stage_request_in_many_segments(srv: SEProcess) -> None:
    """The curl case: a stage of 2000 files, 512 bytes per segment."""
    files = [{"path": f"/tape/f{i:05d}"} for i in range(2000)]
    body = json.dumps({"files": files}).encode()
    for chunked in (False, True):
        status, answer = await _send(
            srv.port,
            "POST",
            "/api/v1/stage",
            body,
            {"Content-Type": "application/json"},
            chunked,
            segment=512,
        )
        assert status == 201, (status, answer[:300])


async def test_oversized_bodies_are_413(srv: SEProcess) -> None:
    big = b"<!--" + b"x" * XML_LIMIT + b"-->"
    for chunked in (False, True):
        status, body = await _send(
            srv.port, "PROPFIND", "/other/f", big, {"Depth": "0"}, chunked, segment=1024
        )
        assert status == 413, (chunked, status, body[:300])
        assert b"\n" not in body.strip(), body
    request = b'{"caveats": [' + b'"activity:LIST", ' * 300 + b'"activity:LIST"]}'
    status, body = await _send(
        srv.port,
        "POST",
        "/other/f",
        request,
        {"Content-Type": "application/macaroon-request"},
        chunked=True,
        segment=1024,
    )
    assert status == 413, (status, body[:300])


# --------------------------------------------------------------------------- the JWKS fetch


async def test_jwks_served_one_byte_at_a_time_is_read_whole(tmp_path: Path) -> None:
    keys = JWTIssuer(tmp_path / "issuer")
    ca = trustme.CA()
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    documents: dict[bytes, bytes] = {}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            body = documents.get(path, b"")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
            )
            for i in range(len(body)):
                writer.write(body[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.0005)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    issuer = f"https://127.0.0.1:{port}/"
    documents[b"/.well-known/openid-configuration"] = json.dumps(
        {"issuer": issuer, "jwks_uri": f"https://127.0.0.1:{port}/jwks"}
    ).encode()
    documents[b"/jwks"] = json.dumps(keys.jwks()).encode()
    store = KeyStore(
        (IssuerConfig(issuer=issuer, ca_file=str(ca_pem)),),
        ("RS256", "ES256"),
        refresh=600.0,
        retry=0.0,
        timeout=60.0,
        ca_dir="",
    )
    try:
        key = await store.key(issuer, keys.default_kid)
        assert key.key_id == keys.default_kid
    finally:
        await store.close()
        server.close()
        await server.wait_closed()
