"""Delegation never widens: server-issued tokens, tape requests and repeated bearer headers.

Issue 12, findings 6, 7 and 13, against a real server that takes WLCG tokens only (keys in a
``jwks_file``) with the tape API on:

* a macaroon is issued only for what the caller holds on the whole path it covers (a token
  for ``/a`` gets no READ_METADATA macaroon for ``/``), and the caveats a client asks for
  (``before:``, ``activity:``) are honoured or refused with a 400;
* a stage request is acted on only by callers whose grant covers all of its paths for that
  operation, owner or not (a READ_METADATA macaroon of the owner cannot touch it);
* two identical ``Authorization`` headers are one credential, two different ones a 400.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest

from tests.e2e.jwt_issuer import JWTIssuer
from tests.e2e.test_tape import ISSUER, STUCK, auth_config, data_root, tape_config
from tests.support import SEProcess

pytestmark = [pytest.mark.timeout(90)]

API = "/api/v1"
MACAROON = "application/macaroon-request"


class Client:
    def __init__(self, srv: SEProcess) -> None:
        u = urlsplit(srv.url)
        assert u.hostname is not None and u.port is not None
        self.host, self.port = u.hostname, u.port

    def call(
        self,
        method: str,
        path: str,
        tokens: tuple[str, ...] = (),
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=20)
        try:
            conn.putrequest(method, path)
            for token in tokens:  # one header per token: repeats are sent as given
                conn.putheader("Authorization", f"Bearer {token}")
            if content_type is not None:
                conn.putheader("Content-Type", content_type)
            conn.putheader("Content-Length", str(len(body or b"")))
            conn.endheaders(body or b"")
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def macaroon(
        self, path: str, token: str, caveats: list[str], validity: str | None = None
    ) -> tuple[int, Any]:
        request: dict[str, Any] = {"caveats": caveats}
        if validity is not None:
            request["validity"] = validity
        status, body = self.call("POST", path, (token,), json.dumps(request).encode(), MACAROON)
        return status, (json.loads(body) if status == 200 else body)


@pytest.fixture
def keys(tmp_path: Path) -> JWTIssuer:
    return JWTIssuer(tmp_path / "issuer", issuer=ISSUER)


@pytest.fixture
def srv(se_factory: Callable[..., SEProcess], tmp_path: Path, keys: JWTIssuer) -> SEProcess:
    config = tape_config(STUCK) + auth_config(keys.write_jwks())
    server = se_factory(config, root=data_root(tmp_path))
    for name in ("a", "b"):
        (server.root / name).mkdir()
        (server.root / name / "f").write_bytes(b"data " + name.encode())
    return server


# --------------------------------------------------------------------------- finding 6


def test_macaroon_is_never_wider_than_the_token(srv: SEProcess, keys: JWTIssuer) -> None:
    client = Client(srv)
    token = keys.mint(scope="storage.read:/a")
    # The token may stat "/" (an ancestor of /a), but not everything below it.
    status, _ = client.macaroon("/", token, ["activity:READ_METADATA"])
    assert status == 403
    status, _ = client.macaroon("/a/f", token, ["activity:READ_METADATA", "path:/"])
    assert status in (200, 403)  # the path caveat never widens past the URL
    status, doc = client.macaroon("/a", token, ["activity:READ_METADATA"])
    assert status == 200, doc
    mac = doc["macaroon"]
    assert client.call("HEAD", "/a/f", (mac,))[0] == 200
    assert client.call("HEAD", "/b/f", (mac,))[0] == 403
    # Activities the token does not hold are dropped; none left is a 403.
    status, doc = client.macaroon("/a", token, ["activity:DOWNLOAD,UPLOAD,DELETE"])
    assert status == 200 and doc["activities"] == ["DOWNLOAD"], doc
    assert client.macaroon("/a", token, ["activity:UPLOAD"])[0] == 403


def test_requested_caveats_are_honoured_or_refused(srv: SEProcess, keys: JWTIssuer) -> None:
    client = Client(srv)
    token = keys.mint(scope="storage.read:/ storage.modify:/a")
    before = int(time.time()) + 120
    stamp = datetime.fromtimestamp(before, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status, doc = client.macaroon("/a", token, ["activity:DOWNLOAD", f"before:{stamp}"], "PT60M")
    assert status == 200, doc
    assert 0 < doc["expires_in"] <= 120
    claims = jwt.decode(doc["macaroon"], options={"verify_signature": False})
    assert claims["exp"] <= before
    # Activity caveats narrow each other.
    status, doc = client.macaroon("/a", token, ["activity:DOWNLOAD,LIST", "activity:LIST"])
    assert status == 200 and doc["activities"] == ["LIST"], doc
    # Refused with a reason: a time in the past, a malformed time, unknown caveats.
    past = datetime.fromtimestamp(time.time() - 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for caveats in (
        [f"before:{past}"],
        ["before:tomorrow"],
        ["ip:127.0.0.1"],
        ["activity:DOWNLOAD", "activity:UPLOAD"],
        ["path:/a/x", "path:/a/y"],
    ):
        status, body = client.macaroon("/a", token, caveats)
        assert status == 400, (caveats, status, body)
        assert body.strip() and b"\n" not in body.strip(), body


# --------------------------------------------------------------------------- finding 7


def test_stage_requests_need_a_grant_covering_their_paths(srv: SEProcess, keys: JWTIssuer) -> None:
    client = Client(srv)
    admin = keys.mint(scope="storage.modify:/", sub="admin")
    assert client.call("PUT", "/tape/f", (admin,), b"to tape")[0] in (201, 204)
    for switch in ({"flush": True}, {"evict": True}):  # /tape/f: on tape only
        status, answer = client.call(
            "POST",
            "/.well-known/se/tape",
            (admin,),
            json.dumps(switch).encode(),
            "application/json",
        )
        assert status == 200, answer
    owner = keys.mint(scope="storage.stage:/tape storage.read:/b", sub="alice")
    body = json.dumps({"files": [{"path": "/tape/f"}]}).encode()
    status, answer = client.call("POST", f"{API}/stage", (owner,), body, "application/json")
    assert status == 201, answer
    rid = json.loads(answer)["requestId"]
    paths = json.dumps({"paths": ["/tape/f"]}).encode()
    # The owner's READ_METADATA macaroon for an unrelated path: same subject, no rights.
    status, doc = client.macaroon("/b", owner, ["activity:READ_METADATA"])
    assert status == 200, doc
    mac = doc["macaroon"]
    assert client.call("GET", f"{API}/stage/{rid}", (mac,))[0] == 404
    cancel = client.call("POST", f"{API}/stage/{rid}/cancel", (mac,), paths, "application/json")
    assert cancel[0] == 404
    release = client.call("POST", f"{API}/release/{rid}", (mac,), paths, "application/json")
    assert release[0] == 403
    assert client.call("DELETE", f"{API}/stage/{rid}", (mac,))[0] == 404
    # Another subject whose grant covers the paths may see it; one whose grant does not
    # cannot, and cannot tell it from a request that does not exist.
    other = keys.mint(scope="storage.stage:/tape", sub="bob")
    assert client.call("GET", f"{API}/stage/{rid}", (other,))[0] == 200
    narrow = keys.mint(scope="storage.stage:/tape/sub", sub="alice")
    assert client.call("GET", f"{API}/stage/{rid}", (narrow,))[0] == 404
    assert client.call("GET", f"{API}/stage/no-such-id", (narrow,))[0] == 404
    # Untouched: still there, still SUBMITTED, for the owner's stage token.
    status, answer = client.call("GET", f"{API}/stage/{rid}", (owner,))
    assert status == 200, answer
    assert json.loads(answer)["files"][0]["state"] == "SUBMITTED"


# --------------------------------------------------------------------------- finding 13


def test_a_repeated_identical_bearer_token_is_one_credential(
    srv: SEProcess, keys: JWTIssuer
) -> None:
    client = Client(srv)
    reader = keys.mint(scope="storage.read:/")
    writer = keys.mint(scope="storage.modify:/")
    # Judged once: a read-only token may not DELETE (403), a modify token may MKCOL.
    assert client.call("DELETE", "/a/f", (reader, reader))[0] == 403
    assert client.call("MKCOL", "/a/new", (writer, writer))[0] == 201
    assert client.call("DELETE", "/a/new", (writer, writer))[0] in (200, 204)
    # Two different tokens are ambiguous.
    status, body = client.call("DELETE", "/a/f", (reader, writer))
    assert status == 400 and b"more than one bearer token" in body, (status, body)
    assert (srv.root / "a" / "f").exists()
