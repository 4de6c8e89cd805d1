"""Server-issued bearer tokens: request parsing, issuing, verification, the secret file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from pathlib import Path

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from se.auth import macaroons
from se.auth.policy import Op
from se.errors import BadRequest, Unauthorized
from se.storage.paths import DavPath

SECRET = b"k" * 64
PATH = DavPath(("data", "f"))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("PT60M", 3600), ("PT1H", 3600), ("P1D", 86400), ("P1DT2H3M4S", 93784), ("PT0.5S", 0.5)],
)
def test_duration(text: str, seconds: float) -> None:
    assert macaroons.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "P", "PT", "60M", "PT60", "P1DT", "1h", "PT-5M"])
def test_bad_duration(text: str) -> None:
    with pytest.raises(BadRequest):
        macaroons.parse_duration(text)


def test_parse_gfal2_request() -> None:
    body = b'{"caveats": ["activity:LIST,DOWNLOAD,MANAGE,UPLOAD,DELETE"], "validity": "PT130M"}'
    req = macaroons.parse_request(body)
    assert req.activities == ("LIST", "DOWNLOAD", "MANAGE", "UPLOAD", "DELETE")
    assert req.validity == 130 * 60
    assert req.path is None


def test_parse_path_caveat_and_empty_body() -> None:
    req = macaroons.parse_request(b'{"caveats": ["path:/a/b", "activity:DOWNLOAD"]}')
    assert req.path == DavPath(("a", "b"))
    assert req.validity is None
    assert macaroons.parse_request(b"").activities == ()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"caveats": "activity:LIST"}',
        b'{"caveats": ["activity:FLY"]}',
        b'{"caveats": ["ip:1.2.3.4"]}',
        b'{"caveats": ["nocolon"]}',
        b'{"caveats": ["path:/a/../b"]}',
        b'{"validity": 60}',
        b'{"validity": "PT0S"}',
    ],
)
def test_bad_requests(body: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        macaroons.parse_request(body)
    assert "\n" not in info.value.reason


@given(st.binary(max_size=300))
def test_parse_request_only_raises_bad_request(body: bytes) -> None:
    with contextlib.suppress(BadRequest):
        macaroons.parse_request(body)


def test_issue_and_verify() -> None:
    token = macaroons.issue(SECRET, PATH, ("DOWNLOAD", "UPLOAD"), 600, "alice")
    assert macaroons.is_ours(token)
    grant = macaroons.verify(SECRET, token)
    (rule,) = grant.rules
    assert rule.path == PATH
    assert rule.ops == {Op.STAT, Op.READ, Op.MKDIR, Op.CREATE}
    assert grant.subject == "alice"
    assert time.time() + 590 < grant.expires <= time.time() + 600


def test_expired_token_is_refused() -> None:
    token = macaroons.issue(SECRET, PATH, ("DOWNLOAD",), 10, "a", now=time.time() - 100)
    with pytest.raises(Unauthorized) as info:
        macaroons.verify(SECRET, token)
    assert "expired" in info.value.reason
    assert 'error="invalid_token"' in info.value.headers["WWW-Authenticate"]


def test_wrong_secret_or_tampered_token_is_refused() -> None:
    token = macaroons.issue(SECRET, PATH, ("DOWNLOAD",), 600, "a")
    with pytest.raises(Unauthorized):
        macaroons.verify(b"x" * 64, token)
    # Widen the path in the payload, keep the signature: refused.
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["path"] = "/"
    forged = jwt.encode(claims, b"y" * 64, algorithm="HS256")
    head, _payload, sig = token.split(".")
    spliced = ".".join([head, forged.split(".")[1], sig])
    with pytest.raises(Unauthorized):
        macaroons.verify(SECRET, spliced)


def test_alg_none_is_not_ours_and_not_valid() -> None:
    claims = {"iss": macaroons.ISSUER, "path": "/", "activities": "DOWNLOAD", "exp": 2**40}
    token = jwt.encode(claims, "", algorithm="none")
    assert not macaroons.is_ours(token)
    with pytest.raises(Unauthorized):
        macaroons.verify(SECRET, token)


def test_foreign_jwt_is_not_ours() -> None:
    token = jwt.encode({"iss": "https://iam.example.org/", "exp": 2**40}, SECRET, "HS256")
    assert not macaroons.is_ours(token)
    assert not macaroons.is_ours("not-a-jwt")


def test_secret_file_created_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "state" / "macaroon.secret"
    first = macaroons.load_secret(path)
    assert len(first) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert macaroons.load_secret(path) == first
    assert asyncio.run(macaroons.SecretStore(path).get()) == first
    assert sorted(os.listdir(path.parent)) == ["macaroon.secret"]  # no temp file left


def test_short_secret_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_text("short")
    with pytest.raises(ValueError):
        macaroons.load_secret(path)
