"""Server-issued bearer tokens: what gfal2/FTS ask for before a third-party copy.

``POST <path>`` with ``Content-Type: application/macaroon-request`` and a JSON body
``{"caveats": ["activity:LIST,DOWNLOAD"], "validity": "PT60M"}`` returns
``{"macaroon": "<token>"}``.  The token is not a libmacaroons macaroon but, like StoRM's, a
signed JWT (HS256, keyed by a secret only this server knows): the protocol treats it as
opaque, and only this server ever reads it back.  It carries the path it was issued for
(the request path, or a narrower ``path:`` caveat), the granted activities and its expiry;
it is accepted afterwards as ``Authorization: Bearer`` (or ``?authz=``) and becomes a
:class:`se.auth.policy.Grant`.  Pure apart from :func:`load_secret`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import stat
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import jwt

from se.auth.policy import Grant, Op, Rule
from se.errors import BadRequest, SEError, Unauthorized
from se.storage.paths import DavPath, confine

__all__ = [
    "ACTIVITIES",
    "MacaroonRequest",
    "SecretStore",
    "issue",
    "load_secret",
    "parse_instant",
    "parse_request",
    "verify",
]

ISSUER = "se:macaroon"
MAX_REQUEST_BODY = 4096
# Activity names as XRootD and dCache use them, and the operations each allows.
ACTIVITIES: dict[str, frozenset[Op]] = {
    "READ_METADATA": frozenset({Op.STAT}),
    "LIST": frozenset({Op.STAT, Op.READ}),
    "DOWNLOAD": frozenset({Op.STAT, Op.READ}),
    "UPLOAD": frozenset({Op.STAT, Op.MKDIR, Op.CREATE}),
    "MANAGE": frozenset({Op.STAT, Op.MKDIR, Op.CREATE, Op.MODIFY}),
    "DELETE": frozenset({Op.STAT, Op.DELETE}),
    "UPDATE_METADATA": frozenset({Op.STAT, Op.MODIFY}),
}
_DURATION = re.compile(
    r"P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?",
    re.ASCII,
)


@dataclass(frozen=True, slots=True)
class MacaroonRequest:
    activities: tuple[str, ...]  # what the activity caveats leave (); none given: ()
    validity: float | None  # seconds; None when not given
    path: DavPath | None  # a narrower "path:" caveat
    before: float | None = None  # a "before:" caveat: Unix time the token must end by


def parse_duration(text: str) -> float:
    """ISO 8601 duration (``PT60M``, ``P1DT2H``) in seconds; BadRequest otherwise."""
    m = _DURATION.fullmatch(text.strip().upper())
    if m is None or text.strip().upper() in ("P", "PT") or text.strip().upper().endswith("T"):
        raise BadRequest(f"invalid validity {text[:40]!r} (expected an ISO 8601 duration)")
    days, hours, minutes = (int(m[g] or 0) for g in ("d", "h", "m"))
    return days * 86400 + hours * 3600 + minutes * 60 + float(m["s"] or 0)


def parse_instant(text: str) -> float:
    """An ISO 8601 UTC time (``2030-01-01T00:00:00Z``, or with an offset) as Unix time, as
    dCache and XRootD write ``before:`` caveats; BadRequest otherwise."""
    value = text.strip()
    try:
        when = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        raise BadRequest(
            f"invalid before caveat {text[:40]!r} (expected an ISO 8601 time)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def parse_request(body: bytes) -> MacaroonRequest:
    """The JSON body of a macaroon request; BadRequest with a one-line reason.

    Caveats, as dCache and XRootD take them: ``activity:A,B`` (several narrow each other:
    their intersection), ``path:/p`` (several must nest: the innermost), ``before:<ISO 8601
    time>`` (the earliest).  Any other caveat is refused: a restriction asked for and not
    enforced would be worse than a refusal.
    """
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("macaroon request body is not JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("macaroon request body must be a JSON object")
    caveats = data.get("caveats", [])
    if not isinstance(caveats, list) or not all(isinstance(c, str) for c in caveats):
        raise BadRequest("caveats must be a list of strings")
    activities: list[str] | None = None
    path: DavPath | None = None
    before: float | None = None
    for caveat in caveats:
        key, sep, value = caveat.partition(":")
        key = key.strip().lower()
        if not sep:
            raise BadRequest(f"malformed caveat {caveat[:40]!r}")
        if key == "activity":
            names: list[str] = []
            for name in value.split(","):
                name = name.strip().upper()
                if name not in ACTIVITIES:
                    raise BadRequest(f"unknown activity {name[:40]!r}")
                names.append(name)
            activities = names if activities is None else [a for a in activities if a in names]
            if not activities:
                raise BadRequest("the activity caveats leave no activity")
        elif key == "path":
            try:
                narrower = confine(value.strip() or "/")
            except SEError as exc:
                raise BadRequest(f"invalid path caveat: {exc.reason}") from None
            if path is None or narrower.is_within(path):
                path = narrower
            elif not path.is_within(narrower):
                raise BadRequest("the path caveats name unrelated paths")
        elif key == "before":
            instant = parse_instant(value)
            before = instant if before is None else min(before, instant)
        else:
            raise BadRequest(f"unsupported caveat {key[:40]!r}")
    validity = data.get("validity")
    seconds: float | None = None
    if validity is not None:
        if not isinstance(validity, str):
            raise BadRequest("validity must be an ISO 8601 duration string")
        seconds = parse_duration(validity)
        if seconds <= 0:
            raise BadRequest("validity must be positive")
    return MacaroonRequest(tuple(dict.fromkeys(activities or ())), seconds, path, before)


def issue(
    secret: bytes,
    path: DavPath,
    activities: tuple[str, ...],
    lifetime: float,
    subject: str,
    now: float | None = None,
) -> str:
    now = time.time() if now is None else now
    claims = {
        "iss": ISSUER,
        "sub": subject,
        "iat": int(now),
        "nbf": int(now) - 1,
        "exp": int(now + lifetime),
        "jti": uuid.uuid4().hex,
        "path": str(path),
        "activities": ",".join(activities),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def is_ours(token: str) -> bool:
    """Cheap check of the unverified claims: was this token issued by this kind of server?"""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return False
    return header.get("alg") == "HS256" and claims.get("iss") == ISSUER


def verify(secret: bytes, token: str, now: float | None = None) -> Grant:
    """The grant a token carries; Unauthorized (401, ``invalid_token``) if it is not valid."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            issuer=ISSUER,
            options={"require": ["exp", "iss", "path", "activities"]},
            leeway=0,
        )
        if now is not None and claims["exp"] <= now:
            raise jwt.ExpiredSignatureError("expired")
        path = confine(str(claims["path"]))
        ops: set[Op] = set()
        for name in str(claims["activities"]).split(","):
            ops |= ACTIVITIES.get(name, frozenset())
    except jwt.ExpiredSignatureError:
        raise _invalid("the token has expired") from None
    except (jwt.PyJWTError, BadRequest, KeyError):
        raise _invalid("the token is not valid for this server") from None
    rule = Rule(path, frozenset(ops))
    return Grant((rule,), str(claims.get("sub", "")), float(claims["exp"]))


def _invalid(description: str) -> Unauthorized:
    return Unauthorized(
        description,
        headers={
            "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{description}"'
        },
    )


class SecretStore:
    """The token key, loaded (or created) off the event loop the first time it is needed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._value: bytes | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> bytes:
        if self._value is None:
            async with self._lock:
                if self._value is None:
                    self._value = await asyncio.to_thread(load_secret, self.path)
        return self._value


def load_secret(path: Path) -> bytes:
    """The HMAC key in ``path``, created (mode 0600, atomically) when missing."""
    with contextlib.suppress(FileNotFoundError):
        return _read_secret(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_hex(32).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temp, path)  # never replaces a secret another worker wrote first
    except FileExistsError:
        pass
    finally:
        os.unlink(temp)
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    """The secret in ``path``, which must be a regular file (a FIFO put there would block the
    reading thread).  A symlink is followed: secrets mounted by orchestrators are links; the
    state directory is unreachable from the namespace, so no client can plant one."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path}: the secret is not a regular file")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(1 << 16).strip()
    finally:
        os.close(fd)
    if len(data) < 32:
        raise ValueError(f"{path}: secret is shorter than 32 bytes")
    return data
