"""WLCG token validation without a server: keys from a JWKS file, claims -> grants."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from se.auth import issuer as test_issuer
from se.auth.keys import parse_jwks
from se.auth.policy import Op
from se.auth.wlcg import ANY_AUDIENCE, TokenVerifier, grant_from_claims
from se.config import AuthConfig, GroupRule, IssuerConfig
from se.errors import Unauthorized
from se.storage.paths import DavPath

ISS = "https://issuer.test/"
OWN = ("http://127.0.0.1:8080",)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return test_issuer.keygen(tmp_path / "keys")


def verifier(jwks: Path, **auth: Any) -> TokenVerifier:
    iss = IssuerConfig(
        issuer=ISS,
        base_path="/vo",
        jwks_file=str(jwks),
        groups=(GroupRule("/vo", "/", ("read",)), GroupRule("/vo/prod", "/data", ("modify",))),
    )
    return TokenVerifier(AuthConfig(issuers=(iss,), **auth), "")


def token(key_path: Path, **claims: Any) -> str:
    key = test_issuer.load_key(key_path)
    scope = claims.pop("scope", "storage.read:/")
    aud = claims.pop("aud", [ANY_AUDIENCE])
    tok = test_issuer.issue(key, ISS, scope, aud, 600, "alice", claims.pop("groups", None))
    if not claims:
        return tok
    body = jwt.decode(tok, options={"verify_signature": False})
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm="ES256", headers=jwt.get_unverified_header(tok))


async def test_valid_token_gives_rules_below_the_base_path(keys: tuple[Path, Path]) -> None:
    v = verifier(keys[1])
    grant = await v.verify(token(keys[0], scope="storage.read:/ storage.create:/up/"), OWN)
    assert grant.subject == f"alice@{ISS}"
    assert grant.allows(Op.READ, DavPath(("vo", "x")))
    assert not grant.allows(Op.READ, DavPath(("other",)))
    assert grant.allows(Op.CREATE, DavPath(("vo", "up", "f")))
    assert not grant.allows(Op.CREATE, DavPath(("vo", "up")))  # dir-only scope path
    assert grant.allows(Op.MKDIR, DavPath(("vo", "up")))
    await v.close()


@pytest.mark.parametrize(
    ("claims", "needle"),
    [
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"nbf": int(time.time()) + 86400}, "not yet valid"),  # (evaluated at collection)
        ({"iat": int(time.time()) + 86400}, "not yet valid"),
        ({"wlcg.ver": "2.0"}, "wlcg.ver"),
        ({"wlcg.ver": None}, "wlcg.ver"),
        ({"jti": None}, "jti"),
        ({"sub": None}, "sub"),
        ({"aud": "https://elsewhere.example"}, "audience"),
        ({"aud": ["https://elsewhere.example", "x"]}, "audience"),
        ({"iss": "https://issuer.test"}, "unknown issuer"),
        ({"scope": "storage.read:/a/../b"}, "normalised"),
        ({"scope": "storage.read:/%2e%2e/x"}, "normalised"),
    ],
)
async def test_invalid_tokens(keys: tuple[Path, Path], claims: dict[str, Any], needle: str) -> None:
    v = verifier(keys[1], leeway=0.0)
    with pytest.raises(Unauthorized) as info:
        await v.verify(token(keys[0], **claims), OWN)
    assert needle in info.value.reason
    assert 'error="invalid_token"' in info.value.headers["WWW-Authenticate"]
    await v.close()


async def test_own_url_and_configured_audiences(keys: tuple[Path, Path]) -> None:
    v = verifier(keys[1], audiences=("https://se.example:8443",), accept_any_audience=False)
    await v.verify(token(keys[0], aud=[OWN[0]]), OWN)
    await v.verify(token(keys[0], aud="https://se.example:8443"), OWN)
    with pytest.raises(Unauthorized):
        await v.verify(token(keys[0], aud=[ANY_AUDIENCE]), OWN)
    await v.close()


async def test_algorithm_confusion_and_none_are_refused(keys: tuple[Path, Path]) -> None:
    v = verifier(keys[1])
    good = token(keys[0])
    claims = jwt.decode(good, options={"verify_signature": False})
    kid = jwt.get_unverified_header(good)["kid"]
    public_pem = test_issuer.load_key(keys[0]).public_key()
    hs = jwt.encode(claims, b"x" * 32, algorithm="HS256", headers={"kid": kid})
    none = jwt.encode(claims, "", algorithm="none", headers={"kid": kid})
    for bad in (hs, none):
        with pytest.raises(Unauthorized, match="not allowed"):
            await v.verify(bad, OWN)
    other = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(claims, other, algorithm="ES256", headers={"kid": kid})
    with pytest.raises(Unauthorized, match="signature"):
        await v.verify(forged, OWN)
    assert public_pem is not None
    await v.close()


async def test_unknown_kid_and_size_limit(keys: tuple[Path, Path]) -> None:
    v = verifier(keys[1], max_token_bytes=4096)
    tok = token(keys[0])
    claims = jwt.decode(tok, options={"verify_signature": False})
    key = test_issuer.load_key(keys[0])
    unknown = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "nope"})
    with pytest.raises(Unauthorized, match="unknown key id"):
        await v.verify(unknown, OWN)
    big = jwt.encode({**claims, "pad": "x" * 5000}, key, algorithm="ES256")
    with pytest.raises(Unauthorized, match="larger"):
        await v.verify(big, OWN)
    await v.close()


def test_groups_apply_only_without_capabilities() -> None:
    iss = IssuerConfig(
        issuer=ISS,
        base_path="/vo",
        groups=(GroupRule("/vo", "/", ("read",)), GroupRule("/vo/prod", "/data", ("modify",))),
    )
    grant = grant_from_claims({"wlcg.groups": ["/vo", "/vo/prod"], "exp": 1}, iss, False)
    assert grant.allows(Op.READ, DavPath(("vo", "x")))
    assert grant.allows(Op.DELETE, DavPath(("vo", "data", "f")))
    assert not grant.allows(Op.DELETE, DavPath(("vo", "x")))
    # /vo/prod/sub does not imply /vo/prod
    grant = grant_from_claims({"wlcg.groups": ["/vo/prod/sub"]}, iss, False)
    assert grant.rules == ()
    # any capability (even compute.*) turns groups off
    grant = grant_from_claims({"scope": "compute.read", "wlcg.groups": ["/vo"]}, iss, False)
    assert grant.rules == ()
    # openid only: a valid token that allows nothing (403, not 401)
    assert grant_from_claims({"scope": "openid"}, iss, False).rules == ()


def test_parse_jwks_skips_unusable_keys(keys: tuple[Path, Path]) -> None:
    doc = json.loads(keys[1].read_text())
    (good,) = doc["keys"]
    enc = {**good, "kid": "enc", "use": "enc"}
    nokid = {k: v for k, v in good.items() if k != "kid"}
    noalg = {k: v for k, v in good.items() if k != "alg"} | {"kid": "inferred"}
    broken = {"kty": "EC", "kid": "broken", "crv": "P-256", "x": "AA", "y": "AA"}
    found = parse_jwks({"keys": [good, enc, nokid, noalg, broken, "junk"]}, ("RS256", "ES256"))
    assert set(found) == {good["kid"], "inferred"}
    assert parse_jwks({"keys": [good]}, ("RS256",)) == {}
    with pytest.raises(ValueError):
        parse_jwks({"nokeys": []}, ("ES256",))


async def test_concurrent_first_requests_wait_for_the_key_fetch(keys: tuple[Path, Path]) -> None:
    """Requests arriving while the issuer's keys are being loaded wait for that load
    instead of failing with "unknown key id" (seen under load before the fix)."""
    v = verifier(keys[1])
    tokens = [token(keys[0], jti=f"j{i}") for i in range(20)]
    grants = await asyncio.gather(*(v.verify(t, OWN) for t in tokens))
    assert all(g.allows(Op.READ, DavPath(("vo", "f"))) for g in grants)
    await v.close()
