"""WLCG JWT authorization end to end: real ``se`` servers, a real test issuer.

The issuer (tests/e2e/jwt_issuer.py) serves OIDC discovery and its JWKS over HTTPS from a
thread and mints RS256/ES256 tokens.  Each server maps the issuer to the storage area
``/wlcg`` and reproduces the policy of the WLCG JWT compliance suite
(indigo-iam/wlcg-jwt-compliance-tests) as the suite states it, with a deny rule:

- ``/wlcg``: read, create and modify on ``/``, except create and modify on ``/protected``;
- ``/wlcg/test``: read, create and modify on ``/protected`` (a member of both groups
  writes there: a deny weighs only against its own group's rules).

Anonymous access is "none" (apart from one public rule), so everything that works, works
because of a token.  Two deployments run the same compliance table and negative cases: one
fetching the keys by OIDC discovery (``ca_file`` = the test CA), one reading a
``jwks_file``.  Then: key rotation, ``?authz=``, WWW-Authenticate, gfal2 and davix with a
token, a third-party copy between two token-protected servers, and the ``se token`` CLI.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest

from se.testing import SEServer, SEServerFactory
from se.tpc.markers import parse_stream
from tests.conftest import BASE_CONFIG, need
from tests.e2e.clients import need_gfal, random_bytes, run, run_ok
from tests.e2e.jwt_issuer import ANY_AUDIENCE, DEFAULT_SCOPE, JWTIssuer, b64url
from tests.support import SEProcess, poll, start_se

pytestmark = [pytest.mark.timeout(120)]

LEEWAY = 5.0  # seconds; small, so that expiry cases are quick and exact
JWKS_RETRY = 1.0  # at most one JWKS fetch per second per issuer
CONTENT = b"wlcg-suite-content-file"
UPLOAD = b"uploaded by the wlcg jwt compliance table\n"
FILE_ISSUER = "https://wlcg-file-issuer.example.org/"  # never fetched: its keys are a file


# --------------------------------------------------------------------------- config


def se_config(issuer: str, *, jwks_file: Path | None = None, ca_file: Path | None = None) -> str:
    """The server configuration of every deployment in this module."""
    source = (
        f"jwks_file = {json.dumps(str(jwks_file))}\n"
        if jwks_file is not None
        else f"ca_file = {json.dumps(str(ca_file))}\n"
    )
    return (
        BASE_CONFIG
        + f"""
[auth]
anonymous = "none"
leeway = {LEEWAY}
jwks_retry = {JWKS_RETRY}
jwks_refresh = 3600.0
fetch_timeout = 5.0

[[auth.public]]
path = "/wlcg/public"
allow = ["read"]

[[auth.issuers]]
issuer = {json.dumps(issuer)}
base_path = "/wlcg"
{source}
[[auth.issuers.groups]]
group = "/wlcg"
path = "/"
allow = ["read", "create", "modify"]

[[auth.issuers.groups]]
group = "/wlcg"
path = "/protected"
deny = ["create", "modify"]

[[auth.issuers.groups]]
group = "/wlcg/test"
path = "/protected"
allow = ["read", "create", "modify"]
"""
    )


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def call(
    method: str,
    url: str,
    token: str | None = None,
    body: bytes | None = None,
    headers: Sequence[tuple[str, str]] = (),
    timeout: float = 15.0,
) -> Reply:
    """One request on a fresh connection (repeated header names are kept)."""
    u = urlsplit(url)
    assert u.hostname is not None and u.port is not None
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.putrequest(method, u.path + (f"?{u.query}" if u.query else ""))
        all_headers = list(headers)
        if token is not None:
            all_headers.append(("Authorization", f"Bearer {token}"))
        if body is not None or method in ("PUT", "POST"):
            all_headers.append(("Content-Length", str(len(body or b""))))
        for name, value in all_headers:
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def assert_invalid_token(reply: Reply, token: str) -> None:
    assert reply.status == 401, (reply.status, reply.body[:300])
    challenge = reply.headers.get("www-authenticate", "")
    assert challenge.startswith("Bearer"), challenge
    assert 'error="invalid_token"' in challenge, challenge
    assert "error_description=" in challenge, challenge
    # The token is never echoed back (neither its payload nor its signature).
    for part in token.split("."):
        if len(part) > 16:
            assert part.encode() not in reply.body
            assert part not in challenge


# --------------------------------------------------------------------------- deployments


@dataclass
class Deployment:
    name: str
    se: SEProcess
    issuer: JWTIssuer
    config: str
    suite: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def sa(self) -> str:
        return self.se.url + "/wlcg"

    @property
    def s(self) -> str:
        return f"{self.sa}/wlcg-jwt-compliance/{self.suite}"

    def mint(self, scope: str | None = DEFAULT_SCOPE, **kwargs: Any) -> str:
        return self.issuer.mint(scope, **kwargs)


def _start(workdir: Path, name: str, issuer: JWTIssuer, config: str) -> Deployment:
    root = workdir / "data"
    (root / "wlcg" / "protected").mkdir(parents=True)
    (root / "wlcg" / "public").mkdir()
    (root / "wlcg" / "public" / "readme").write_bytes(b"public\n")
    (root / "wlcg" / "data.txt").write_bytes(b"data\n")
    srv = start_se(workdir, root=root, config=config)
    dep = Deployment(name, srv, issuer, config)
    try:
        _suite_setup(dep)
    except BaseException:
        srv.stop()
        raise
    return dep


def _suite_setup(dep: Deployment) -> None:
    """As the compliance suite does, with the default token: HEAD, MKCOL on 404, HEAD."""
    token = dep.mint()
    for url in (dep.sa + "/wlcg-jwt-compliance", dep.s):
        head = call("HEAD", url, token)
        if head.status == 404:
            made = call("MKCOL", url, token)
            assert made.status in (200, 201), (url, made.status, made.body[:300])
        else:
            assert head.status == 200, (url, head.status)
        assert call("HEAD", url, token).status == 200


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JWTIssuer]:
    with JWTIssuer(tmp_path_factory.mktemp("issuer")).serve() as iss:
        yield iss


@pytest.fixture(scope="module")
def discovery_deployment(
    issuer: JWTIssuer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    config = se_config(issuer.issuer, ca_file=issuer.ca_pem)
    dep = _start(tmp_path_factory.mktemp("se-discovery"), "discovery", issuer, config)
    yield dep
    dep.se.stop()


@pytest.fixture(scope="module")
def jwks_file_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp("se-jwks-file")
    file_issuer = JWTIssuer(workdir / "issuer", issuer=FILE_ISSUER)  # not served
    config = se_config(FILE_ISSUER, jwks_file=file_issuer.write_jwks())
    dep = _start(workdir, "jwks_file", file_issuer, config)
    yield dep
    dep.se.stop()


@pytest.fixture(params=["discovery", "jwks_file"])
def deployment(request: pytest.FixtureRequest) -> Deployment:
    dep = request.getfixturevalue(f"{request.param}_deployment")
    assert isinstance(dep, Deployment)
    return dep


# --------------------------------------------------------------------------- §10 table


@dataclass(frozen=True)
class Tok:
    scope: str | None = DEFAULT_SCOPE
    aud: str | tuple[str, ...] = ANY_AUDIENCE  # may hold {endpoint} and {rand}
    groups: tuple[str, ...] | None = None


DEFAULT = Tok()
OK_PUT = (200, 201)
OK_DELETE = (200, 204)


@dataclass(frozen=True)
class Step:
    method: str
    path: str  # {SA}, {S}, {u} (this case's uuid), {u1} ({u} minus its last character)
    token: Tok
    expect: tuple[int, ...]
    content: bytes | None = None  # the response body must contain this
    body: bytes | None = None  # request body (PUT); default UPLOAD


@dataclass(frozen=True)
class Case:
    num: int
    name: str
    steps: tuple[Step, ...]
    foobar: bool = False  # set up <S>/foobar/file with the default token, tear it down after


def _foobar_read(path: str, expect: tuple[int, ...]) -> Step:
    scope = "storage.read:/wlcg-jwt-compliance/{suite}" + path
    ok = 200 in expect
    return Step("GET", "{S}/foobar/file", Tok(scope), expect, CONTENT if ok else None)


MISSING = "{S}/not-found-{u}"
PROTECTED = "{SA}/protected/protected-{u}"
AUD_SCOPE = "openid storage.read:/"
WRONG_AUDS = ("https://fake.audience:8443", "{rand}")
GROUPS_WLCG = Tok("openid wlcg.groups:/wlcg", groups=("/wlcg",))

# fmt: off
CASES: tuple[Case, ...] = (
    Case(1, "random audience rejected (permissive)", (
        Step("GET", "{S}/audience-test-{u}", Tok(AUD_SCOPE, "{rand}"), (401, 403, 404)),
    )),
    Case(2, "random audience rejected (strict)", (
        Step("GET", "{S}/audience-test-{u}", Tok(AUD_SCOPE, "{rand}"), (401,)),
    )),
    Case(3, "correct audience accepted", (
        Step("GET", MISSING, Tok(AUD_SCOPE, "{endpoint}"), (404,)),
    )),
    Case(4, "correct audience among several accepted", (
        Step("GET", MISSING, Tok(AUD_SCOPE, ("{endpoint}", "{rand}")), (404,)),
    )),
    Case(5, "invalid multiple audiences rejected (permissive)", (
        Step("GET", MISSING, Tok(AUD_SCOPE, WRONG_AUDS), (401, 403, 404)),
    )),
    Case(6, "invalid multiple audiences rejected (strict)", (
        Step("GET", MISSING, Tok(AUD_SCOPE, WRONG_AUDS), (401,)),
    )),
    Case(7, "read denied to minimum privileged token", (
        Step("GET", "{S}/robot-test-{u}", Tok("openid"), (403,)),
    )),
    Case(8, "write denied to minimum privileged token", (
        Step("PUT", "{S}/robot-write-access-denied-{u}", Tok("openid"), (403,)),
    )),
    Case(9, "read granted to wlcg.groups", (
        Step("GET", MISSING, GROUPS_WLCG, (404,)),
    )),
    Case(10, "write granted to wlcg.groups", (
        Step("PUT", "{S}/groups-write-{u}", GROUPS_WLCG, OK_PUT),
    )),
    Case(11, "write granted to storage.modify:/", (
        Step("PUT", "{S}/modify-write-{u}", DEFAULT, OK_PUT),
    )),
    Case(12, "delete granted to storage.modify:/", (
        Step("PUT", "{S}/modify-delete-{u}", DEFAULT, OK_PUT),
        Step("DELETE", "{S}/modify-delete-{u}", DEFAULT, OK_DELETE),
    )),
    Case(13, "create dir granted to storage.modify:/", (
        Step("MKCOL", "{S}/create-dir-{u}", DEFAULT, OK_PUT),
    )),
    Case(14, "read granted with storage.read:/", (
        Step("GET", MISSING, Tok("storage.read:/"), (404,)),
    )),
    Case(15, "write denied with storage.read:/", (
        Step("PUT", "{S}/read-only-{u}", Tok("storage.read:/"), (403,)),
    )),
    Case(16, "storage.modify does not imply storage.read", (
        Step("PUT", "{S}/found-{u}", DEFAULT, OK_PUT),
        Step("GET", "{S}/found-{u}", Tok("storage.modify:/"), (403,)),
    )),
    Case(17, "storage.create does not imply storage.read", (
        Step("PUT", "{S}/found-{u}", DEFAULT, OK_PUT),
        Step("GET", "{S}/found-{u}", Tok("storage.create:/"), (403,)),
    )),
    Case(18, "storage.create does not allow overwriting files", (
        Step("PUT", "{S}/found-{u}", DEFAULT, OK_PUT),
        Step("PUT", "{S}/found-{u}", Tok("storage.create:/"), (403,)),
    )),
    Case(19, "storage.create does not allow deleting files", (
        Step("PUT", "{S}/found-{u}", DEFAULT, OK_PUT),
        Step("DELETE", "{S}/found-{u}", Tok("storage.create:/"), (403,)),
    )),
    Case(20, "default groups do not grant write access to /protected", (
        Step("GET", PROTECTED, Tok("openid wlcg.groups", groups=("/wlcg",)), (404,)),
        Step("PUT", PROTECTED, Tok("openid wlcg.groups", groups=("/wlcg",)), (403,)),
    )),
    Case(21, "/wlcg/test grants full access to /protected", (
        Step("GET", PROTECTED, Tok("wlcg.groups:/wlcg/test", groups=("/wlcg/test", "/wlcg")),
             (404,)),
        Step("PUT", PROTECTED, Tok("wlcg.groups:/wlcg/test", groups=("/wlcg/test", "/wlcg")),
             OK_PUT),
        Step("DELETE", PROTECTED,
             Tok("wlcg.groups:/wlcg/test", groups=("/wlcg/test", "/wlcg")), OK_DELETE),
    )),
    Case(22, "path enforced on storage.read", (
        Step("GET", "{SA}/not-found-{u}", Tok("storage.read:/wlcg-jwt-compliance"), (403,)),
        Step("GET", MISSING, Tok("storage.read:/wlcg-jwt-compliance"), (404,)),
    )),
    Case(23, "path enforced on storage.modify", (
        Step("PUT", "{SA}/not-found-{u}", Tok("storage.modify:/wlcg-jwt-compliance"), (403,)),
        Step("PUT", MISSING, Tok("storage.modify:/wlcg-jwt-compliance"), OK_PUT),
    )),
    Case(24, "storage.read:/foobar reads into /foobar", (
        _foobar_read("/foobar", (200,)),
    ), foobar=True),
    Case(25, "storage.read:/foo does not read into /foobar", (
        _foobar_read("/foo", (403,)),
    ), foobar=True),
    Case(26, "create directory allowed with storage.create", (
        Step("MKCOL", "{S}/create-dir-{u}", DEFAULT, OK_PUT),
        Step("MKCOL", "{S}/create-dir-{u}/foobar",
             Tok("storage.create:/wlcg-jwt-compliance/{suite}/create-dir-{u}"), OK_PUT),
    )),
    Case(27, "create directory denied with storage.create on a partial path", (
        Step("MKCOL", "{S}/create-dir-{u}", DEFAULT, OK_PUT),
        Step("MKCOL", "{S}/create-dir-{u}/foobar",
             Tok("storage.create:/wlcg-jwt-compliance/{suite}/create-dir-{u1}"), (403,)),
    )),
    Case(28, "storage.read on paths outside the SA's suite dir", (
        Step("GET", "{S}/foobar/file", Tok("storage.read:/foobar"), (403,)),
        Step("GET", "{S}/foobar/file", Tok("storage.read:/foo"), (403,)),
    ), foobar=True),
    Case(29, "trailing slash reads into a directory (24 wins: no slash also allowed)", (
        _foobar_read("/foobar/", (200,)),
        _foobar_read("/foo/", (403,)),
        _foobar_read("/foobar", (200,)),
    ), foobar=True),
)
# fmt: on
assert [c.num for c in CASES] == list(range(1, 30))

FOOBAR_SETUP = (
    Step("MKCOL", "{S}/foobar", DEFAULT, OK_PUT),
    Step("PUT", "{S}/foobar/file", DEFAULT, OK_PUT, body=CONTENT),
)
FOOBAR_TEARDOWN = (
    Step("DELETE", "{S}/foobar/file", DEFAULT, OK_DELETE),
    Step("DELETE", "{S}/foobar", DEFAULT, OK_DELETE),
)


def _mint_tok(dep: Deployment, tok: Tok, names: dict[str, str]) -> str:
    aud: str | list[str] = (
        tok.aud.format(**names)
        if isinstance(tok.aud, str)
        else [a.format(**names) for a in tok.aud]
    )
    scope = tok.scope.format(**names) if tok.scope is not None else None
    return dep.mint(scope, aud=aud, groups=tok.groups)


def _run_step(dep: Deployment, step: Step, names: dict[str, str], where: str) -> None:
    url = step.path.format(**names)
    token = _mint_tok(dep, step.token, names)
    body = (step.body or UPLOAD) if step.method == "PUT" else None
    reply = call(step.method, url, token, body)
    assert reply.status in step.expect, (
        f"{where}: {step.method} {url} with scope {step.token.scope!r} aud {step.token.aud!r}"
        f" groups {step.token.groups!r}: got {reply.status}, expected {step.expect}:"
        f" {reply.body[:200]!r}"
    )
    if step.content is not None:
        assert step.content in reply.body, f"{where}: body {reply.body[:200]!r}"
    if reply.status == 401:
        assert reply.headers.get("www-authenticate", "").startswith("Bearer")


@pytest.mark.parametrize("case", CASES, ids=[f"{c.num:02d}" for c in CASES])
def test_compliance(deployment: Deployment, case: Case) -> None:
    """The 29 cases of the WLCG JWT compliance suite, strict variants, exact statuses."""
    u = str(uuid.uuid4())
    names = {
        "SA": deployment.sa,
        "S": deployment.s,
        "suite": deployment.suite,
        "u": u,
        "u1": u[:-1],
        "endpoint": deployment.se.url,
        "rand": str(uuid.uuid4()),
    }
    where = f"case {case.num} ({case.name}, {deployment.name})"
    steps = (*FOOBAR_SETUP, *case.steps, *FOOBAR_TEARDOWN) if case.foobar else case.steps
    try:
        for i, step in enumerate(steps):
            _run_step(deployment, step, names, f"{where} step {i}")
    finally:
        if case.foobar:  # best effort, so that the next foobar case starts clean
            token = deployment.mint()
            call("DELETE", deployment.s + "/foobar/file", token)
            call("DELETE", deployment.s + "/foobar", token)


# --------------------------------------------------------------------------- negative cases


Minter = Callable[[JWTIssuer, str], str]  # (issuer, server url) -> token


def _tampered(iss: JWTIssuer, _url: str) -> str:
    """A valid signature over other claims: the payload widened after signing."""
    token = iss.mint("storage.read:/")
    head, _payload, sig = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["scope"] = "storage.read:/ storage.modify:/"
    payload = b64url(json.dumps(claims).encode())
    return f"{head}.{payload}.{sig}"


NOW: Callable[[], float] = time.time
READ = "storage.read:/"

# Every one must be refused with 401 invalid_token (the request: GET of an existing file
# that a valid token with this scope could read).
INVALID: dict[str, Minter] = {
    "alg-none": lambda i, _: i.mint(READ, alg="none"),
    "hs256-with-rsa-public-pem": lambda i, _: i.mint(READ, alg="HS256"),
    "unknown-kid": lambda i, _: i.mint(READ, kid="no-such-kid"),
    "no-kid": lambda i, _: i.mint(READ, omit=("kid",)),
    "tampered-payload": _tampered,
    "expired-1s-beyond-leeway": lambda i, _: i.mint(READ, iat=NOW() - 600, exp=NOW() - LEEWAY - 1),
    "nbf-in-future": lambda i, _: i.mint(READ, nbf=NOW() + 30),
    "iat-in-future": lambda i, _: i.mint(READ, iat=NOW() + 30),
    "aud-list-without-ours": lambda i, _: i.mint(
        READ, aud=["https://other.example.org:8443", str(uuid.uuid4())]
    ),
    "aud-missing": lambda i, _: i.mint(READ, aud=None),
    "aud-other-port": lambda i, url: i.mint(READ, aud=url.rsplit(":", 1)[0] + ":1"),
    "iss-without-trailing-slash": lambda i, _: i.mint(READ, iss=i.issuer.rstrip("/")),
    "iss-with-extra-slash": lambda i, _: i.mint(READ, iss=i.issuer + "/"),
    "iss-unknown": lambda i, _: i.mint(READ, iss="https://issuer.invalid/"),
    "wlcg-ver-2.0": lambda i, _: i.mint(READ, wlcg_ver="2.0"),
    "wlcg-ver-missing": lambda i, _: i.mint(READ, wlcg_ver=None),
    "exp-missing": lambda i, _: i.mint(READ, omit=("exp",)),
    "jti-missing": lambda i, _: i.mint(READ, omit=("jti",)),
    "sub-missing": lambda i, _: i.mint(READ, omit=("sub",)),
    "scope-dotdot": lambda i, _: i.mint("storage.read:/a/../b"),
    "scope-dotdot-beside-valid": lambda i, _: i.mint("storage.read:/ storage.read:/a/../b"),
    "scope-percent-dotdot": lambda i, _: i.mint("storage.read:/%2e%2e/x"),
    "scope-double-percent-dotdot": lambda i, _: i.mint("storage.read:/%252e%252e/x"),
    "not-a-jwt": lambda _i, _u: "not.a.jwt",
    "garbage": lambda _i, _u: "eyJhbGciOiJSUzI1NiJ9.eyJ.x",
}

# Controls: these must be accepted (same request: 200).
VALID: dict[str, Minter] = {
    "rs256": lambda i, _: i.mint(READ, alg="RS256"),
    "es256": lambda i, _: i.mint(READ, alg="ES256"),
    "wlcg-ver-1.3": lambda i, _: i.mint(READ, wlcg_ver="1.3"),
    "expired-within-leeway": lambda i, _: i.mint(READ, iat=NOW() - 600, exp=NOW() - 2),
    "nbf-within-leeway": lambda i, _: i.mint(READ, nbf=NOW() + 2),
    "nbf-absent": lambda i, _: i.mint(READ, omit=("nbf",)),
    "aud-endpoint-string": lambda i, url: i.mint(READ, aud=url),
    "aud-endpoint-in-list": lambda i, url: i.mint(READ, aud=["urn:x", url]),
    "unknown-claims-ignored": lambda i, _: i.mint(
        READ, extra_claims={"storage": "modify", "acr": "x", "eduperson_assurance": ["y"]}
    ),
    "groups-only-no-scope-claim": lambda i, _: i.mint(None, groups=["/wlcg"]),
    "12-KiB-token": lambda i, _: i.mint(READ, extra_claims={"pad": "p" * 9000}),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_token_is_401(deployment: Deployment, name: str) -> None:
    token = INVALID[name](deployment.issuer, deployment.se.url)
    reply = call("GET", deployment.sa + "/data.txt", token)
    assert_invalid_token(reply, token)
    assert b"data" not in reply.body


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_token_is_accepted(deployment: Deployment, name: str) -> None:
    token = VALID[name](deployment.issuer, deployment.se.url)
    reply = call("GET", deployment.sa + "/data.txt", token)
    assert reply.status == 200, (reply.status, reply.headers, reply.body[:300])
    assert reply.body == b"data\n"


def test_huge_token_is_refused_and_server_survives(deployment: Deployment) -> None:
    token = deployment.mint(READ, extra_claims={"pad": "p" * 20 * 1024})
    assert len(token) > 20 * 1024
    reply = call("GET", deployment.sa + "/data.txt", token)
    assert 400 <= reply.status < 500, reply.status
    if reply.status == 401:
        assert_invalid_token(reply, token)
    via_query = call("GET", f"{deployment.sa}/data.txt?authz={token}")
    assert 400 <= via_query.status < 500, via_query.status
    assert call("GET", deployment.sa + "/data.txt", deployment.mint(READ)).status == 200


def test_authz_query_parameter(deployment: Deployment) -> None:
    url = deployment.sa + "/data.txt"
    token = deployment.mint(READ)
    alone = call("GET", f"{url}?authz={token}")
    assert alone.status == 200 and alone.body == b"data\n"
    prefixed = call("GET", f"{url}?authz=Bearer%20{token}")
    assert prefixed.status == 200
    # Copies of one token are one credential (the WLCG compliance suite repeats the
    # header); two different tokens are a malformed request.
    both = call("GET", f"{url}?authz={token}", token)
    assert both.status == 200, both.status
    two_headers = call("GET", url, headers=[("Authorization", f"Bearer {token}")] * 2)
    assert two_headers.status == 200, two_headers.status
    two_params = call("GET", f"{url}?authz={token}&authz={token}")
    assert two_params.status == 200, two_params.status
    other = deployment.mint(READ)
    assert call("GET", f"{url}?authz={token}", other).status == 400
    assert call("GET", f"{url}?authz={token}&authz={other}").status == 400
    mixed = [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {other}")]
    assert call("GET", url, headers=mixed).status == 400
    empty = call("GET", url, headers=[("Authorization", "Bearer ")])
    assert empty.status in (400, 401), empty.status
    # An invalid ?authz= token is a 401, never a silent anonymous request.
    bad = deployment.mint(READ, wlcg_ver="2.0")
    assert_invalid_token(call("GET", f"{deployment.sa}/public/readme?authz={bad}"), bad)


def test_www_authenticate_and_decision_order(deployment: Deployment) -> None:
    sa = deployment.sa
    # No credential, area not anonymous: 401 with a Bearer challenge, even for missing paths.
    for method, path in (("GET", "/data.txt"), ("GET", "/missing"), ("PUT", "/missing")):
        reply = call(method, sa + path, body=b"x" if method == "PUT" else None)
        assert reply.status == 401, (method, path, reply.status)
        challenge = reply.headers.get("www-authenticate", "")
        assert challenge.startswith("Bearer"), challenge
        assert "realm=" in challenge, challenge
        assert "invalid_token" not in challenge
    # The public rule: anonymous read there, nothing more.
    assert call("GET", sa + "/public/readme").status == 200
    assert call("PUT", sa + "/public/new", body=b"x").status == 401
    # A valid token without the permission: 403 before any existence check (no 404 oracle).
    narrow = deployment.mint("storage.read:/wlcg-jwt-compliance")
    for method in ("GET", "PUT", "DELETE", "MKCOL"):
        body = b"x" if method == "PUT" else None
        reply = call(method, sa + "/missing-dir/missing-file", narrow, body)
        assert reply.status == 403, (method, reply.status)
    reply = call("PROPFIND", sa + "/missing", deployment.mint("openid"), headers=[("Depth", "0")])
    assert reply.status == 403, reply.status
    # The same token where it may read: the missing path is now a 404.
    assert call("GET", deployment.s + "/missing", narrow).status == 404


def test_scopes_map_to_webdav_operations(deployment: Deployment) -> None:
    """Stat of ancestors, listing needs read, mkdir -p under create, dir-only scopes."""
    s, suite = deployment.s, deployment.suite
    base = f"/wlcg-jwt-compliance/{suite}"
    u = uuid.uuid4().hex
    create = deployment.mint(f"storage.create:{base}/ops-{u}/deep")
    # Ancestors of a create scope: stat yes, listing no; MKCOL of the missing chain yes.
    assert call("HEAD", s, create).status == 200
    depth0 = call("PROPFIND", s, create, headers=[("Depth", "0")])
    assert depth0.status == 207, depth0.status
    assert call("PROPFIND", s, create, headers=[("Depth", "1")]).status == 403
    assert call("MKCOL", f"{s}/ops-{u}", create).status == 201
    assert call("MKCOL", f"{s}/ops-{u}/deep", create).status == 201
    assert call("PUT", f"{s}/ops-{u}/deep/f", create, UPLOAD).status == 201
    # ... but no file at an ancestor, and nothing beside the scope path.
    assert call("PUT", f"{s}/ops-{u}/other", create, UPLOAD).status == 403
    assert call("MKCOL", f"{s}/ops-{u}/deeper", create).status == 403
    # Listing needs read.
    read = deployment.mint(f"storage.read:{base}/ops-{u}")
    listing = call("PROPFIND", f"{s}/ops-{u}/deep", read, headers=[("Depth", "1")])
    assert listing.status == 207 and b"/deep/f" in listing.body
    # A directory-only scope: files below it, never a file at it.
    dir_only = deployment.mint(f"storage.create:{base}/ops-{u}/box/")
    assert call("PUT", f"{s}/ops-{u}/box", dir_only, UPLOAD).status == 403
    assert call("MKCOL", f"{s}/ops-{u}/box", dir_only).status == 201
    assert call("PUT", f"{s}/ops-{u}/box/x", dir_only, UPLOAD).status == 201
    # modify = create + overwrite + delete, without read.
    modify = deployment.mint(f"storage.modify:{base}/ops-{u}")
    assert call("PUT", f"{s}/ops-{u}/box/x", modify, b"again").status == 204
    assert call("GET", f"{s}/ops-{u}/box/x", modify).status == 403
    assert call("DELETE", f"{s}/ops-{u}/box/x", modify).status == 204


def test_key_rotation(deployment: Deployment) -> None:
    """A key added at the issuer after the server loaded the keys works after one refresh."""
    url = deployment.sa + "/data.txt"
    iss = deployment.issuer
    assert call("GET", url, deployment.mint(READ)).status == 200  # keys are loaded
    before = iss.jwks_fetches
    kid = iss.add_key("ES256")
    if deployment.name == "jwks_file":
        iss.write_jwks()  # the same file the server was configured with
    token = iss.mint(READ, kid=kid)
    statuses: list[int] = []

    def accepted() -> bool:
        statuses.append(call("GET", url, token).status)
        return statuses[-1] == 200

    assert poll(accepted, timeout=3 * JWKS_RETRY + 5, step=0.25), statuses
    assert set(statuses) <= {200, 401}, statuses
    if deployment.name == "discovery":
        assert iss.jwks_fetches > before
    # Old keys keep working.
    assert call("GET", url, deployment.mint(READ)).status == 200


def test_unknown_kid_refresh_is_rate_limited(discovery_deployment: Deployment) -> None:
    dep = discovery_deployment
    url = dep.sa + "/data.txt"
    time.sleep(JWKS_RETRY + 0.1)  # let the retry window of earlier tests pass
    before = dep.issuer.jwks_fetches
    started = time.monotonic()
    for n in range(8):
        token = dep.mint(READ, kid=f"unknown-{n}")
        assert_invalid_token(call("GET", url, token), token)
    elapsed = time.monotonic() - started
    fetched = dep.issuer.jwks_fetches - before
    assert 1 <= fetched <= 1 + int(elapsed / JWKS_RETRY) + 1, (fetched, elapsed)


def test_discovery_fetches_only_configured_issuer(discovery_deployment: Deployment) -> None:
    """An attacker-chosen iss never makes the server fetch anything; the test issuer's
    discovery document was read (jwks_uri over https, verified with ca_file)."""
    dep = discovery_deployment
    assert dep.issuer.discovery_fetches >= 1
    assert dep.issuer.jwks_fetches >= 1
    token = dep.mint(READ, iss="https://127.0.0.1:1/")
    assert_invalid_token(call("GET", dep.sa + "/data.txt", token), token)


def test_issuer_trailing_slash_is_significant(
    issuer: JWTIssuer, se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    """iss is compared as an exact string, and discovery must name the configured issuer."""
    root = tmp_path / "data"
    (root / "wlcg").mkdir(parents=True)
    (root / "wlcg" / "data.txt").write_bytes(b"data\n")
    # A local JWKS under an issuer string without the slash: only that spelling works.
    no_slash = "https://wlcg-no-slash.example.org"
    keys = JWTIssuer(tmp_path / "keys", issuer=no_slash)
    srv = se_factory(config=se_config(no_slash, jwks_file=keys.write_jwks()), root=root)
    url = srv.url + "/wlcg/data.txt"
    assert call("GET", url, keys.mint(READ)).status == 200
    token = keys.mint(READ, iss=no_slash + "/")
    assert_invalid_token(call("GET", url, token), token)
    # Discovery for the test issuer configured without its slash: the document names
    # "https://127.0.0.1:PORT/", not the configured string, so no key is ever trusted.
    unslashed = issuer.issuer.rstrip("/")
    config = se_config(unslashed, ca_file=issuer.ca_pem)
    srv2 = se_factory(config=config, root=root)
    url2 = srv2.url + "/wlcg/data.txt"
    discovered = issuer.discovery_fetches
    for token in (issuer.mint(READ, iss=unslashed), issuer.mint(READ)):
        assert_invalid_token(call("GET", url2, token), token)
    assert issuer.discovery_fetches > discovered  # it did look, and refused the document


# --------------------------------------------------------------------------- clients


@pytest.mark.clients
def test_gfal_with_bearer_token(discovery_deployment: Deployment, tmp_path: Path) -> None:
    need_gfal("gfal-ls", "gfal-rm")
    dep = discovery_deployment
    u = uuid.uuid4().hex
    (dep.se.root / "wlcg" / f"gfal-{u}").mkdir()
    base = f"{dep.sa}/gfal-{u}"
    token = dep.mint(f"storage.read:/gfal-{u} storage.modify:/gfal-{u}")
    env = {"BEARER_TOKEN": token}
    data = random_bytes(3 * 1024 * 1024 + 5, 41)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    # Anonymous access is denied, so whatever works below works because of the token.
    denied = run(["gfal-ls", base])
    assert denied.returncode != 0, denied.stdout
    run_ok(["gfal-copy", src.as_uri(), f"{base}/up.bin"], env)
    assert (dep.se.root / "wlcg" / f"gfal-{u}" / "up.bin").read_bytes() == data
    listing = run_ok(["gfal-ls", base], env)
    assert listing.stdout.split() == ["up.bin"]
    back = tmp_path / "back.bin"
    run_ok(["gfal-copy", f"{base}/up.bin", back.as_uri()], env)
    assert back.read_bytes() == data
    # Outside the token's path: refused.
    outside = run(["gfal-copy", src.as_uri(), f"{dep.sa}/data-{u}.bin"], env)
    assert outside.returncode != 0
    assert not (dep.se.root / "wlcg" / f"data-{u}.bin").exists()
    run_ok(["gfal-rm", f"{base}/up.bin"], env)
    assert not (dep.se.root / "wlcg" / f"gfal-{u}" / "up.bin").exists()


@pytest.mark.clients
def test_davix_with_bearer_token(discovery_deployment: Deployment, tmp_path: Path) -> None:
    need("davix-put", "davix-get", "davix-ls", "davix-rm")
    dep = discovery_deployment
    u = uuid.uuid4().hex
    (dep.se.root / "wlcg" / f"davix-{u}").mkdir()
    base = f"{dep.sa}/davix-{u}"
    token = dep.mint(f"storage.read:/davix-{u} storage.modify:/davix-{u}", alg="ES256")
    auth = ["--retry", "0", "-H", f"Authorization: Bearer {token}"]
    data = random_bytes(1024 * 1024 + 3, 42)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    anonymous = run(["davix-get", "--retry", "0", f"{dep.sa}/data.txt", tmp_path / "x"])
    assert anonymous.returncode != 0 and "401" in anonymous.stderr + anonymous.stdout
    run_ok(["davix-put", *auth, src, f"{base}/put.bin"])
    assert (dep.se.root / "wlcg" / f"davix-{u}" / "put.bin").read_bytes() == data
    back = tmp_path / "back.bin"
    run_ok(["davix-get", *auth, f"{base}/put.bin", back])
    assert back.read_bytes() == data
    assert run_ok(["davix-ls", *auth, base]).stdout.split() == ["put.bin"]
    run_ok(["davix-rm", *auth, f"{base}/put.bin"])
    assert not (dep.se.root / "wlcg" / f"davix-{u}" / "put.bin").exists()
    wrong = run(["davix-get", *auth, f"{dep.sa}/data.txt", tmp_path / "y"])
    assert wrong.returncode != 0 and "403" in wrong.stderr + wrong.stdout


# --------------------------------------------------------------------------- TPC


def _curl_copy(url: str, headers: Sequence[str]) -> tuple[int, str]:
    """curl -X COPY; the HTTP status and the body (the perf-marker stream)."""
    args = ["curl", "-sS", "-N", "--max-time", "60", "-X", "COPY", "-w", "\n%{http_code}\n"]
    for h in headers:
        args += ["-H", h]
    res = run_ok([*args, url])
    body, _, code = res.stdout.rstrip("\n").rpartition("\n")
    return int(code), body


@pytest.mark.clients
def test_tpc_pull_between_token_protected_servers(
    se_issuer: JWTIssuer, se_server_factory: SEServerFactory, tmp_path: Path
) -> None:
    """Two servers from the se.testing plugin, trusting its issuer (a JWKS file) for /wlcg."""
    need("curl")
    config = {"auth": {"anonymous": "none"}, "tpc": {"marker_period": 0.3}}
    src_root, dst_root = tmp_path / "src", tmp_path / "dst"
    data = random_bytes(2 * 1024 * 1024 + 1, 43)
    (src_root / "wlcg" / "tpc").mkdir(parents=True)
    (src_root / "wlcg" / "tpc" / "f.bin").write_bytes(data)
    (dst_root / "wlcg" / "tpc").mkdir(parents=True)
    started = [
        se_server_factory(config, root=root, issuer_config={"base_path": "/wlcg"})
        for root in (src_root, dst_root)
    ]
    try:
        source, dest = started
        _tpc_pull(se_issuer, source, dest, data)
    finally:
        for srv in started:
            srv.stop()


def _tpc_pull(issuer: JWTIssuer, source: SEServer, dest: SEServer, data: bytes) -> None:
    """Pull /wlcg/tpc/f.bin from source to dest with curl: with both tokens, without the
    source's, and with a destination token that may not write."""
    dst_root = dest.root
    src_token = issuer.mint("storage.read:/tpc/f.bin", aud=source.url)
    dst_token = issuer.mint("storage.create:/tpc", aud=dest.url)
    src_url = source.url + "/wlcg/tpc/f.bin"
    common = [f"Source: {src_url}", f"Authorization: Bearer {dst_token}", "Credential: none"]
    code, body = _curl_copy(
        dest.url + "/wlcg/tpc/copy.bin",
        [*common, f"TransferHeaderAuthorization: Bearer {src_token}"],
    )
    assert code == 202, (code, body)
    _markers, result = parse_stream(body)
    assert result is not None and result.kind == "success", body
    assert (dst_root / "wlcg" / "tpc" / "copy.bin").read_bytes() == data
    # Without the source's token the source refuses the remote GET: a failure naming 401.
    code, body = _curl_copy(dest.url + "/wlcg/tpc/copy2.bin", common)
    assert code == 202, (code, body)
    _markers, result = parse_stream(body)
    assert result is not None and result.kind == "failure", body
    assert "401" in result.message, result.message
    assert not (dst_root / "wlcg" / "tpc" / "copy2.bin").exists()
    # The destination's own token decides locally: a read-only one may not write there.
    read_only = issuer.mint("storage.read:/", aud=dest.url)
    code, body = _curl_copy(
        dest.url + "/wlcg/tpc/copy3.bin",
        [
            f"Source: {src_url}",
            f"Authorization: Bearer {read_only}",
            f"TransferHeaderAuthorization: Bearer {src_token}",
        ],
    )
    assert code == 403, (code, body)
    assert not (dst_root / "wlcg" / "tpc" / "copy3.bin").exists()
    for srv in (source, dest):
        assert src_token.split(".")[2] not in srv.log()
        assert dst_token.split(".")[2] not in srv.log()


# --------------------------------------------------------------------------- se token CLI


def _thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638: SHA-256 over the required members, sorted, without whitespace."""
    members = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def _se(*args: str | Path) -> str:
    return run_ok([sys.executable, "-m", "se", *args], timeout=60).stdout


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_token_cli_keygen_issue_roundtrip(
    alg: str, se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    _se("token", "keygen", "--out", keys, "--alg", alg)
    key = keys / "signing-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    jwks = json.loads((keys / "jwks.json").read_text())
    assert len(jwks["keys"]) == 1
    jwk = jwks["keys"][0]
    assert "d" not in jwk  # public part only
    assert jwk["kid"] == _thumbprint(jwk)
    root = tmp_path / "data"
    (root / "wlcg" / "cli").mkdir(parents=True)
    (root / "wlcg" / "f.txt").write_bytes(b"cli\n")
    iss = "https://se-cli-issuer.example.org/"
    srv = se_factory(config=se_config(iss, jwks_file=keys / "jwks.json"), root=root)
    token = _se(
        "token", "issue", "--key", key, "--issuer", iss,
        "--scope", "storage.read:/ storage.create:/cli",
        "--aud", srv.url, "--lifetime", "10m", "--sub", "cli-user",
    ).strip()  # fmt: skip
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header["kid"] == jwk["kid"] and header["alg"] == alg
    assert claims["iss"] == iss and claims["sub"] == "cli-user"
    assert claims["wlcg.ver"] == "1.0" and claims["jti"]
    assert claims["exp"] - claims["iat"] == 600
    assert claims["aud"] in (srv.url, [srv.url])
    url = srv.url + "/wlcg"
    assert call("GET", url + "/f.txt").status == 401
    assert call("GET", url + "/f.txt", token).body == b"cli\n"
    assert call("PUT", url + "/cli/new", token, UPLOAD).status == 201
    assert call("PUT", url + "/cli/new", token, UPLOAD).status == 403  # create: no overwrite
    assert call("DELETE", url + "/cli/new", token).status == 403
    assert call("PUT", url + "/elsewhere", token, UPLOAD).status == 403
    # Groups only (no storage capability): the issuer's group rules decide.
    grouped = _se(
        "token", "issue", "--key", key, "--issuer", iss, "--scope", "openid",
        "--groups", "/wlcg,/wlcg/test", "--aud", srv.url,
    ).strip()  # fmt: skip
    assert jwt.decode(grouped, options={"verify_signature": False})["wlcg.groups"] == [
        "/wlcg",
        "/wlcg/test",
    ]
    assert call("GET", url + "/f.txt", grouped).status == 200
    assert call("PUT", url + "/protected/by-group", grouped, UPLOAD).status == 201
    wlcg_only = _se(
        "token", "issue", "--key", key, "--issuer", iss, "--scope", "openid",
        "--groups", "/wlcg", "--aud", srv.url,
    ).strip()  # fmt: skip
    assert call("PUT", url + "/protected/by-wlcg", wlcg_only, UPLOAD).status == 403
    assert call("PUT", url + "/by-wlcg", wlcg_only, UPLOAD).status == 201
    # A token of another key (same issuer string) is refused.
    other = tmp_path / "other"
    _se("token", "keygen", "--out", other, "--alg", alg)
    forged = _se(
        "token", "issue", "--key", other / "signing-key.pem", "--issuer", iss,
        "--scope", "storage.read:/", "--aud", srv.url,
    ).strip()  # fmt: skip
    assert_invalid_token(call("GET", url + "/f.txt", forged), forged)
