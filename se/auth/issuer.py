"""A minimal WLCG token issuer for developers and tests (``se token``).

``keygen`` writes a signing key (PEM, mode 0600) and the matching JWKS (the key id is the
RFC 7638 thumbprint), ready for ``[[auth.issuers]] jwks_file``.  ``issue`` signs a token in
the WLCG common JWT profile: ``wlcg.ver``, ``iss``, ``sub``, ``aud``, ``iat``, ``nbf``,
``exp``, ``jti``, ``scope`` and optionally ``wlcg.groups``.  Pure apart from the file
writes in :func:`keygen`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

__all__ = ["issue", "keygen", "parse_lifetime"]

KEY_FILE = "signing-key.pem"
JWKS_FILE = "jwks.json"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _public_jwk(key: PrivateKey) -> dict[str, Any]:
    pub = key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(pub))
        jwk["alg"] = "RS256"
    else:
        jwk = json.loads(ECAlgorithm.to_jwk(pub))
        jwk["alg"] = "ES256"
    members = {k: jwk[k] for k in ("crv", "e", "kty", "n", "x", "y") if k in jwk}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    thumb = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    jwk.update({"kid": thumb, "use": "sig"})
    return jwk


def keygen(out: Path, alg: str = "ES256") -> tuple[Path, Path]:
    """Write ``signing-key.pem`` and ``jwks.json`` into ``out``; returns both paths."""
    key: PrivateKey
    if alg == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif alg == "RS256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(f"unsupported algorithm {alg} (ES256 or RS256)")
    out.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_path = out / KEY_FILE
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    jwks_path = out / JWKS_FILE
    jwks_path.write_text(json.dumps({"keys": [_public_jwk(key)]}, indent=2) + "\n")
    return key_path, jwks_path


def load_key(path: Path) -> PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: not an RSA or EC private key")
    return key


_LIFETIME = re.compile(r"(\d+)([smhd]?)")


def parse_lifetime(text: str) -> int:
    """``90``, ``90s``, ``20m``, ``1h``, ``2d`` -> seconds."""
    m = _LIFETIME.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"invalid lifetime {text!r} (e.g. 3600, 20m, 1h, 2d)")
    return int(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]


def issue(
    key: PrivateKey,
    issuer: str,
    scope: str,
    audiences: list[str],
    lifetime: int,
    subject: str,
    groups: list[str] | None = None,
    now: float | None = None,
) -> str:
    jwk = _public_jwk(key)
    now = time.time() if now is None else now
    claims: dict[str, Any] = {
        "wlcg.ver": "1.0",
        "iss": issuer,
        "sub": subject,
        "aud": audiences[0] if len(audiences) == 1 else audiences,
        "iat": int(now),
        "nbf": int(now) - 60,
        "exp": int(now) + lifetime,
        "jti": str(uuid.uuid4()),
    }
    if scope:
        claims["scope"] = scope
    if groups:
        claims["wlcg.groups"] = groups
    return jwt.encode(claims, key, algorithm=jwk["alg"], headers={"kid": jwk["kid"]})
