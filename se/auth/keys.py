"""Issuer signing keys: a JWKS per configured issuer, from OIDC discovery or a local file.

Only configured issuers are ever fetched (an attacker-chosen ``iss`` never makes this
server connect anywhere).  A JWKS is kept for ``jwks_refresh`` seconds and then fetched
again; a ``kid`` not in it triggers a fetch at once, but at most one per ``jwks_retry``
seconds per issuer (so unknown kids cannot make it hammer the issuer); failed fetches keep
the keys already known.  Discovery: ``<issuer>/.well-known/openid-configuration`` (the
issuer without its trailing ``/``), whose ``issuer`` must equal the configured string and
whose ``jwks_uri`` must be https; bodies are capped at 1 MiB, fetches at ``fetch_timeout``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import aiofiles
import aiohttp
import jwt

from se.config import IssuerConfig

__all__ = ["KeyStore", "NoKey", "parse_jwks"]

log = logging.getLogger("se.auth")
MAX_BODY = 1 << 20
_KTY_ALG = {"RSA": "RS256", "EC": "ES256"}


class NoKey(Exception):
    """No usable key for a token; the message says why (it becomes error_description)."""


def parse_jwks(data: Any, allowed: tuple[str, ...]) -> dict[str, jwt.PyJWK]:
    """kid -> key for the signing keys of a JWKS document whose algorithm is allowed.

    Keys without ``alg`` get it from their type (RSA: RS256, EC P-256: ES256); keys for
    another use than signing, without a kid, or unreadable are skipped.
    """
    keys: dict[str, jwt.PyJWK] = {}
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWKS document")
    for entry in data["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        alg = entry.get("alg") or _KTY_ALG.get(str(entry.get("kty")))
        if not isinstance(kid, str) or alg not in allowed:
            continue
        try:
            keys[kid] = jwt.PyJWK(entry, algorithm=alg)
        except (jwt.PyJWTError, ValueError, TypeError):
            continue
    return keys


@dataclass
class _Entry:
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    fetched: float = 0.0  # last successful fetch (monotonic)
    attempted: float = -1e9  # last attempt (monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class KeyStore:
    def __init__(
        self,
        issuers: tuple[IssuerConfig, ...],
        allowed: tuple[str, ...],
        refresh: float,
        retry: float,
        timeout: float,
        ca_dir: str,
    ) -> None:
        self._issuers = {i.issuer: i for i in issuers}
        self._allowed = allowed
        self._refresh = refresh
        self._retry = retry
        self._timeout = timeout
        self._ca_dir = ca_dir
        self._entries: dict[str, _Entry] = {}
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _ssl(self, issuer: IssuerConfig) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if self._ca_dir:
            ctx.load_verify_locations(capath=self._ca_dir)
        if issuer.ca_file:
            ctx.load_verify_locations(cafile=issuer.ca_file)
        return ctx

    async def key(self, issuer: str, kid: str | None) -> jwt.PyJWK:
        cfg = self._issuers[issuer]
        entry = self._entries.setdefault(issuer, _Entry())
        if self._wanted(entry, kid):
            # One fetch at a time per issuer; whoever waited for it re-checks its result.
            async with entry.lock:
                if self._wanted(entry, kid) and time.monotonic() - entry.attempted >= self._retry:
                    entry.attempted = time.monotonic()
                    try:
                        entry.keys = await self._load(cfg)
                        entry.fetched = time.monotonic()
                    except Exception as exc:  # keep serving what we had
                        log.warning("cannot load the keys of %s: %s", issuer, exc)
        if kid is None:
            if len(entry.keys) == 1:  # lenient: the only key an issuer publishes
                return next(iter(entry.keys.values()))
            raise NoKey("token has no kid")
        found = entry.keys.get(kid)
        if found is None:
            raise NoKey(f"unknown key id {kid[:40]!r} for this issuer")
        return found

    def _wanted(self, entry: _Entry, kid: str | None) -> bool:
        stale = time.monotonic() - entry.fetched > self._refresh
        return stale or (kid is not None and kid not in entry.keys) or not entry.keys

    async def _load(self, cfg: IssuerConfig) -> dict[str, jwt.PyJWK]:
        if cfg.jwks_file:
            # A small file read now and then: off the event loop, its cost does not matter.
            async with aiofiles.open(cfg.jwks_file, encoding="utf-8") as fh:
                text = await fh.read()
            return parse_jwks(json.loads(text), self._allowed)
        base = cfg.issuer.rstrip("/")
        meta = await self._get_json(cfg, base + "/.well-known/openid-configuration")
        if not isinstance(meta, dict) or meta.get("issuer") != cfg.issuer:
            raise ValueError("discovery document names another issuer")
        jwks_uri = meta.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
            raise ValueError("discovery document has no https jwks_uri")
        return parse_jwks(await self._get_json(cfg, jwks_uri), self._allowed)

    async def _get_json(self, cfg: IssuerConfig, url: str) -> Any:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        async with self._session.get(url, ssl=self._ssl(cfg), allow_redirects=False) as resp:
            if resp.status != 200:
                raise ValueError(f"{url} answered {resp.status}")
            if resp.content_length is not None and resp.content_length > MAX_BODY:
                raise ValueError(f"{url}: document larger than 1 MiB")
            # read(n) returns what has arrived so far: read to the end, bounded.
            chunks: list[bytes] = []
            total = 0
            while chunk := await resp.content.read(MAX_BODY + 1 - total):
                total += len(chunk)
                if total > MAX_BODY:
                    raise ValueError(f"{url}: document larger than 1 MiB")
                chunks.append(chunk)
        return json.loads(b"".join(chunks))
