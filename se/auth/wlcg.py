"""WLCG JWT bearer tokens (common JWT profile 1.3): validation and the grant they carry.

Pipeline, in this order: size; the unverified header and claims (``alg``, ``kid``,
``iss``); the issuer looked up by exact string; ``alg`` in the allow-list (never ``none``
or ``HS*``); the key by ``kid`` (see :mod:`se.auth.keys`), its algorithm pinned; signature,
``exp``/``nbf``/``iat`` with leeway, required ``sub``/``jti``; ``aud`` (one of ours, or
the "any" audience); ``wlcg.ver`` 1.x; scopes (a malformed scope path rejects the token).
Every failure is a 401 ``invalid_token`` with a short description.  Verified tokens are
kept by the caller (:mod:`se.auth.cache`).  Capabilities (``storage.*``/``compute.*``)
decide alone when present; otherwise the issuer's group rules apply to ``wlcg.groups``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

import jwt

from se.auth import scopes
from se.auth.keys import KeyStore, NoKey
from se.auth.policy import Grant, Rule, named_rules, ops_named
from se.config import AuthConfig, IssuerConfig
from se.errors import Unauthorized
from se.storage.paths import DavPath, confine

__all__ = ["ANY_AUDIENCE", "TokenVerifier", "grant_from_claims", "invalid_token"]

log = logging.getLogger("se.auth")
ANY_AUDIENCE = "https://wlcg.cern.ch/jwt/v1/any"
_VERSION = re.compile(r"1\.[0-9]+")


def invalid_token(description: str) -> Unauthorized:
    description = description.replace('"', "'")
    return Unauthorized(
        f"invalid token: {description}",
        headers={
            "WWW-Authenticate": (
                f'Bearer realm="se", error="invalid_token", error_description="{description}"'
            )
        },
    )


def _join(base: DavPath, segments: tuple[str, ...]) -> DavPath:
    return DavPath(base.segments + segments)


def grant_from_claims(
    claims: dict[str, Any], issuer: IssuerConfig, stage_implies_read: bool
) -> Grant:
    """The rules a verified token grants (paths made absolute with the issuer's base)."""
    base = confine(issuer.base_path)
    try:
        caps, any_capability = scopes.parse_scope(str(claims.get("scope", "")))
    except scopes.InvalidScope as exc:
        raise invalid_token(str(exc)) from None
    rules: list[Rule] = []
    if any_capability:
        for cap in caps:
            ops = ops_named((cap.authz,), stage_implies_read)
            rules.append(Rule(_join(base, cap.path), ops, cap.dir_only))
    else:
        groups = set(scopes.parse_groups(claims.get("wlcg.groups")))
        for rule in issuer.groups:
            if rule.group in groups:
                path = _join(base, confine(rule.path).segments)
                who = f"group {rule.group}"
                rules += named_rules(path, rule.allow, rule.deny, who, stage_implies_read)
    subject = f"{claims.get('sub', '')}@{issuer.issuer}"
    return Grant.of(rules, subject, float(claims.get("exp", 0)))


class TokenVerifier:
    """Validates WLCG tokens against the configured issuers; one per worker."""

    def __init__(self, auth: AuthConfig, ca_dir: str) -> None:
        self._auth = auth
        self._issuers = {i.issuer: i for i in auth.issuers}
        self.keys = KeyStore(
            auth.issuers,
            auth.algorithms,
            auth.jwks_refresh,
            auth.jwks_retry,
            auth.fetch_timeout,
            ca_dir,
        )

    async def close(self) -> None:
        await self.keys.close()

    async def verify(self, token: str, own_audiences: Iterable[str]) -> Grant:
        auth = self._auth
        if len(token) > auth.max_token_bytes:
            raise invalid_token(f"token larger than {auth.max_token_bytes} bytes")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise invalid_token("not a JWT") from None
        iss = unverified.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise invalid_token("unknown issuer")
        alg = header.get("alg")
        if alg not in auth.algorithms:
            raise invalid_token(f"algorithm {str(alg)[:20]} not allowed")
        kid = header.get("kid")
        try:
            key = await self.keys.key(issuer.issuer, kid if isinstance(kid, str) else None)
        except NoKey as exc:
            raise invalid_token(str(exc)) from None
        if key.algorithm_name != alg:
            raise invalid_token("algorithm does not match the key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=issuer.issuer,
                leeway=auth.leeway,
                options={"require": ["exp", "iat", "iss", "sub", "jti"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise invalid_token("token has expired") from None
        except jwt.ImmatureSignatureError:
            raise invalid_token("token is not yet valid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise invalid_token(f"missing claim {exc.claim}") from None
        except jwt.PyJWTError:
            raise invalid_token("signature or claims are not valid") from None
        version = claims.get("wlcg.ver")
        if not isinstance(version, str) or _VERSION.fullmatch(version) is None:
            raise invalid_token("unsupported wlcg.ver")
        aud = claims.get("aud")
        auds = frozenset([aud] if isinstance(aud, str) else aud if isinstance(aud, list) else [])
        if not all(isinstance(a, str) for a in auds):
            raise invalid_token("malformed aud")
        if not self._audience_ok(auds, (*own_audiences, *issuer.audiences)):
            raise invalid_token("audience not accepted")
        grant = grant_from_claims(claims, issuer, auth.stage_implies_read)
        log.info(
            "token accepted: iss=%s sub=%s jti=%s rules=%d",
            issuer.issuer,
            str(claims.get("sub"))[:255],
            str(claims.get("jti"))[:64],
            len(grant.rules),
        )
        return grant

    def _audience_ok(self, auds: frozenset[str], own: Iterable[str]) -> bool:
        if self._auth.accept_any_audience and ANY_AUDIENCE in auds:
            return True
        accepted = {*self._auth.audiences, *own}
        return bool(auds & accepted)
