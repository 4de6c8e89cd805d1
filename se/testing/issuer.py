"""A test OIDC token issuer: signing keys, a JWKS, OIDC discovery over HTTPS, and minting.

:class:`JWTIssuer` holds RS256 (RSA 2048) and ES256 (P-256) signing keys and mints
WLCG-profile access tokens with pyjwt.  :meth:`JWTIssuer.serve` runs a small aiohttp app
on ``127.0.0.1:0`` over HTTPS (a throwaway ``trustme`` CA, whose PEM is
:attr:`JWTIssuer.ca_pem`, for the server's ``ca_file``; ``trustme`` is imported only
then: ``pip install se[testing]``) from a background thread:

- ``/.well-known/openid-configuration`` -> ``{"issuer": <issuer, trailing "/">,
  "jwks_uri": "https://127.0.0.1:PORT/jwks"}``;
- ``/jwks`` -> the published keys (counted: :attr:`JWTIssuer.jwks_fetches`).

Keys can be added while it serves (rotation).  Without :meth:`serve` the issuer only
mints, for a server that reads its keys from :meth:`JWTIssuer.write_jwks` (``jwks_file``).
Hostile tokens the server must refuse are minted the same way: ``alg="none"`` gives an
unsigned token, ``alg="HS256"`` one whose HMAC key is the RSA public key PEM (the
algorithm-confusion attack).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

if TYPE_CHECKING:
    import trustme

__all__ = ["ANY_AUDIENCE", "DEFAULT_SCOPE", "JWTIssuer", "SigningKey", "b64url"]

ANY_AUDIENCE = "https://wlcg.cern.ch/jwt/v1/any"
# What the compliance suite's "Get token" asks for (no audience: IAM gives the "any" one).
DEFAULT_SCOPE = "storage.read:/ storage.modify:/ openid"
START_TIMEOUT = 10.0


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _json_b64(value: Mapping[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str  # RS256 or ES256
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self) -> dict[str, Any]:
        pub = self.private.public_key()
        if isinstance(pub, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(pub, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(pub, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}


class JWTIssuer:
    """Keys, a JWKS and token minting for one issuer; optionally served over HTTPS."""

    def __init__(self, workdir: Path, issuer: str = "") -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.issuer = issuer  # set by serve() when empty: https://127.0.0.1:PORT/
        self._lock = threading.Lock()
        self._keys: dict[str, SigningKey] = {}
        self._published: list[str] = []
        self._jwks_fetches = 0
        self._discovery_fetches = 0
        self._ca_made: trustme.CA | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.port = 0
        self.default_kid = self.add_key("RS256")
        self.add_key("ES256")

    # ------------------------------------------------------------------ keys

    def add_key(self, alg: str = "RS256", publish: bool = True) -> str:
        """A new signing key (published in the JWKS at once unless ``publish`` is false)."""
        private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if alg == "RS256":
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(f"unsupported signing algorithm {alg}")
        with self._lock:
            kid = f"{alg.lower()}-{len(self._keys) + 1}-{uuid.uuid4().hex[:8]}"
            self._keys[kid] = SigningKey(kid, alg, private)
            if publish:
                self._published.append(kid)
        return kid

    def publish(self, kid: str) -> None:
        with self._lock:
            if kid not in self._published:
                self._published.append(kid)

    def key(self, kid: str) -> SigningKey:
        with self._lock:
            return self._keys[kid]

    def kid_for(self, alg: str) -> str:
        """The newest published key of an algorithm."""
        with self._lock:
            for kid in reversed(self._published):
                if self._keys[kid].alg == alg:
                    return kid
        raise KeyError(alg)

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [self._keys[kid].jwk() for kid in self._published]}

    def write_jwks(self, path: Path | None = None) -> Path:
        """The published keys as an RFC 7517 file (for the server's ``jwks_file``)."""
        path = path or self.workdir / "jwks.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.jwks(), indent=1))
        tmp.replace(path)
        return path

    @property
    def jwks_fetches(self) -> int:
        with self._lock:
            return self._jwks_fetches

    @property
    def discovery_fetches(self) -> int:
        with self._lock:
            return self._discovery_fetches

    # ------------------------------------------------------------------ tokens

    def mint(
        self,
        scope: str | None = DEFAULT_SCOPE,
        aud: str | Sequence[str] | None = ANY_AUDIENCE,
        groups: Iterable[str] | None = None,
        lifetime: float = 600,
        iat: float | None = None,
        nbf: float | None = None,
        exp: float | None = None,
        kid: str | None = None,
        alg: str | None = None,
        extra_claims: Mapping[str, Any] | None = None,
        omit: Iterable[str] = (),
        wlcg_ver: str | None = "1.0",
        sub: str = "test-user",
        iss: str | None = None,
        *,
        scopes: str | Iterable[str] | None = None,
    ) -> str:
        """A WLCG-profile access token; every claim can be bent for negative tests.

        ``scopes`` (a list such as ``["storage.read:/", "storage.create:/data"]``, or one
        space-separated string) sets the ``scope`` claim when given, overriding ``scope``.
        ``kid`` defaults to the newest published key of ``alg`` (default: the first RSA
        key); ``alg`` defaults to that key's algorithm.  ``alg="none"`` makes an unsigned
        token, ``alg="HS256"`` an HMAC over the key's public PEM.  ``omit`` drops claims
        (``"kid"`` drops the header's kid); ``None`` for scope/aud/wlcg_ver drops those too.
        """
        if scopes is not None:
            scope = scopes if isinstance(scopes, str) else " ".join(scopes)
        now = time.time()
        if kid is None:
            kid = self.kid_for(alg) if alg in ("RS256", "ES256") else self.default_kid
        signer = self.key(kid) if kid in self._keys else self.key(self.default_kid)
        alg = alg or signer.alg
        iat = now if iat is None else iat
        claims: dict[str, Any] = {
            "iss": self.issuer if iss is None else iss,
            "sub": sub,
            "iat": int(iat),
            "nbf": int(now - 60 if nbf is None else nbf),
            "exp": int(iat + lifetime if exp is None else exp),
            "jti": str(uuid.uuid4()),
            "client_id": "se-tests",
        }
        if aud is not None:
            claims["aud"] = aud if isinstance(aud, str) else list(aud)
        if scope is not None:
            claims["scope"] = scope
        if wlcg_ver is not None:
            claims["wlcg.ver"] = wlcg_ver
        if groups is not None:
            claims["wlcg.groups"] = list(groups)
        claims.update(extra_claims or {})
        drop = set(omit)
        for name in drop:
            claims.pop(name, None)
        header: dict[str, Any] = {"typ": "JWT", "kid": kid}
        if "kid" in drop:
            del header["kid"]
        if alg == "none":
            return f"{_json_b64({**header, 'alg': 'none'})}.{_json_b64(claims)}."
        if alg.startswith("HS"):
            digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
            signing_input = f"{_json_b64({**header, 'alg': alg})}.{_json_b64(claims)}"
            mac = hmac.new(signer.public_pem(), signing_input.encode(), digest[alg]).digest()
            return f"{signing_input}.{b64url(mac)}"
        return jwt.encode(claims, signer.private, algorithm=alg, headers=header)

    # ------------------------------------------------------------------ HTTPS

    @property
    def _ca(self) -> trustme.CA:
        if self._ca_made is None:
            import trustme  # a test extra: only an issuer served over HTTPS needs it

            self._ca_made = trustme.CA()
            self._ca_made.cert_pem.write_to_path(str(self.workdir / "issuer-ca.pem"))
        return self._ca_made

    @property
    def ca_pem(self) -> Path:
        """The CA of the HTTPS server (made on first use), for the server's ``ca_file``."""
        _ = self._ca
        return self.workdir / "issuer-ca.pem"

    def serve(self) -> JWTIssuer:
        """Serve discovery and the JWKS over HTTPS on 127.0.0.1:0 from a thread."""
        assert self._thread is None, "already serving"
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        if not self.issuer:
            self.issuer = f"https://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name="jwt-issuer", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or self._error is not None:
            self.close()
            raise RuntimeError(f"test issuer did not start: {self._error!r}")
        return self

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
        return ctx

    def _app(self) -> web.Application:
        async def discovery(_request: web.Request) -> web.Response:
            with self._lock:
                self._discovery_fetches += 1
            return web.json_response({"issuer": self.issuer, "jwks_uri": f"{self.url}/jwks"})

        async def jwks(_request: web.Request) -> web.Response:
            with self._lock:
                self._jwks_fetches += 1
            return web.json_response(self.jwks())

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks", jwks)
        return app

    def _run(self, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        try:
            loop.run_until_complete(runner.setup())
            site = web.SockSite(runner, sock, ssl_context=self._ssl_context())
            loop.run_until_complete(site.start())
        except BaseException as exc:
            self._error = exc
            sock.close()
            self._ready.set()
            loop.run_until_complete(runner.cleanup())
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            sock.close()

    def close(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if loop is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop has just closed
                loop.call_soon_threadsafe(loop.stop)
        thread.join(START_TIMEOUT)
        self._thread = None

    def __enter__(self) -> JWTIssuer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
