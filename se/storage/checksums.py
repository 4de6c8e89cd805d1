"""Incremental checksums and the HTTP digest header codecs.

This module owns everything about file checksums that does not touch the disk:

* the canonical algorithm names (:data:`ALGORITHMS`) used everywhere else in ``se``;
* incremental hashers (:func:`new_hasher`, :class:`MultiHasher`) fed while streaming PUTs,
  pulls and reads; adler32, crc32 (IEEE) and crc32c digests are the 4 big-endian bytes of
  the value;
* RFC 3230 ``Want-Digest`` / ``Digest`` (the instance-digest family WLCG clients use today,
  tokens and value encodings as in spec §3.1), RFC 9530 §2-§4 ``Repr-Digest`` /
  ``Content-Digest`` / ``Want-Repr-Digest`` (structured-field dictionaries, RFC 8941, spec
  §3.2), and RFC 1864 ``Content-MD5`` (base64, or the 32-char hex gfal2 sends, spec §3.5);
* merging the checksums a client declared on an upload (:func:`expected_digests`) and the
  one-line message for a mismatch (:func:`describe_mismatch`).

Every function is pure.  Parsers of *preference* headers never raise (a bad ``Want-*``
header must never fail a GET); parsers of *declared* digests raise
:class:`se.errors.BadRequest` with a one-line reason and never any other exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Final, Protocol

import crc32c
from zlib_ng import zlib_ng

from se.errors import BadRequest

__all__ = [
    "ALGORITHMS",
    "DIGEST_SIZES",
    "Hasher",
    "MultiHasher",
    "canonical_algorithm",
    "compute",
    "describe_mismatch",
    "digest_token",
    "expected_digests",
    "format_digest",
    "format_digest_value",
    "format_repr_digest",
    "new_hasher",
    "parse_content_md5",
    "parse_digest",
    "parse_repr_digest",
    "parse_want_digest",
    "parse_want_repr_digest",
    "repr_digest_key",
]

ALGORITHMS: Final[tuple[str, ...]] = (
    "adler32",
    "crc32",
    "crc32c",
    "md5",
    "sha1",
    "sha256",
    "sha512",
)
"""Canonical algorithm names, lower case; also the ``<alg>`` in xattr names."""

DIGEST_SIZES: Final[Mapping[str, int]] = {
    "adler32": 4,
    "crc32": 4,
    "crc32c": 4,
    "md5": 16,
    "sha1": 20,
    "sha256": 32,
    "sha512": 64,
}
"""Length in bytes of the raw digest of each canonical algorithm."""

# Canonical name -> token we emit (RFC 3230 Digest) / key we emit (RFC 9530 dictionaries).
_RFC3230_OUT: Final[Mapping[str, str]] = {
    "adler32": "adler32",
    "crc32": "crc32",
    "crc32c": "crc32c",
    "md5": "md5",
    "sha1": "sha",
    "sha256": "sha-256",
    "sha512": "sha-512",
}
_RFC9530_OUT: Final[Mapping[str, str]] = {
    "adler32": "adler",
    "crc32": "crc32",  # not in the RFC 9530 registry; the name XRootD uses
    "crc32c": "crc32c",
    "md5": "md5",
    "sha1": "sha",
    "sha256": "sha-256",
    "sha512": "sha-512",
}
# Lower-cased token/key accepted on input -> canonical name.  Both families accept both
# spellings of adler; the canonical names ("sha256", ...) are accepted too because clients
# pass through whatever the user typed (spec §3.3: ``Want-Digest: ADLER32``).
_ALIASES: Final[Mapping[str, str]] = {
    "adler32": "adler32",
    "adler": "adler32",
    "crc32": "crc32",
    "crc32c": "crc32c",
    "md5": "md5",
    "sha": "sha1",
    "sha1": "sha1",
    "sha-1": "sha1",
    "sha-256": "sha256",
    "sha256": "sha256",
    "sha-512": "sha512",
    "sha512": "sha512",
}

# The 32-bit checksums, written as hex in RFC 3230 headers (spec §3.1; XRootD emits hex).
_HEX_ALGORITHMS: Final = frozenset({"adler32", "crc32", "crc32c"})
# Sent as hex (every 32-bit value is accepted in hex on input; crc32 also in base64).
_HEX_OUT: Final = frozenset({"adler32", "crc32c"})
_HEX_RE: Final = re.compile(r"[0-9A-Fa-f]+", re.ASCII)
_QVALUE_RE: Final = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)", re.ASCII)
_WEIGHT_RE: Final = re.compile(r"[0-9]{1,2}", re.ASCII)
_MAX_REASON_VALUE: Final = 100


# --------------------------------------------------------------------------- hashers


class Hasher(Protocol):
    """An incremental checksum: feed with :meth:`update`, read raw bytes with :meth:`digest`."""

    @property
    def name(self) -> str:
        """Canonical algorithm name."""
        ...

    def update(self, data: bytes | memoryview) -> None:
        """Feed more data."""
        ...

    def digest(self) -> bytes:
        """Raw digest of everything fed so far (does not finalise; may be called again)."""
        ...


class _Adler32:
    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value = 1

    @property
    def name(self) -> str:
        return "adler32"

    def update(self, data: bytes | memoryview) -> None:
        self._value = zlib_ng.adler32(data, self._value)

    def digest(self) -> bytes:
        return (self._value & 0xFFFFFFFF).to_bytes(4, "big")


class _Crc32c:
    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value = 0

    @property
    def name(self) -> str:
        return "crc32c"

    def update(self, data: bytes | memoryview) -> None:
        self._value = crc32c.crc32c(data, self._value)

    def digest(self) -> bytes:
        return (self._value & 0xFFFFFFFF).to_bytes(4, "big")


class _Crc32:
    """IEEE 802.3 CRC-32 (zlib's crc32), as DPM and XRootD (``crc32``) answer it."""

    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value = 0

    @property
    def name(self) -> str:
        return "crc32"

    def update(self, data: bytes | memoryview) -> None:
        self._value = zlib_ng.crc32(data, self._value)

    def digest(self) -> bytes:
        return (self._value & 0xFFFFFFFF).to_bytes(4, "big")


class _Hashlib:
    __slots__ = ("_hash", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        # md5/sha1 are integrity checks here, not security: keep working on FIPS hosts.
        self._hash = hashlib.new(name, usedforsecurity=False)

    @property
    def name(self) -> str:
        return self._name

    def update(self, data: bytes | memoryview) -> None:
        self._hash.update(data)

    def digest(self) -> bytes:
        return self._hash.digest()


def canonical_algorithm(name: str) -> str | None:
    """Canonical name for an algorithm name or HTTP token (any case), or None if unknown."""
    return _ALIASES.get(name.strip().lower())


def new_hasher(alg: str) -> Hasher:
    """A fresh hasher for ``alg`` (canonical name or HTTP token, any case).

    Raises BadRequest for an unknown algorithm.
    """
    canon = canonical_algorithm(alg)
    if canon == "adler32":
        return _Adler32()
    if canon == "crc32c":
        return _Crc32c()
    if canon == "crc32":
        return _Crc32()
    if canon is None:
        raise BadRequest(f"unsupported checksum algorithm: {_show(alg)}")
    return _Hashlib(canon)


class MultiHasher:
    """Several hashers fed with the same data, e.g. all checksums computed during a PUT."""

    __slots__ = ("_hashers",)

    def __init__(self, algorithms: Iterable[str]) -> None:
        hashers: dict[str, Hasher] = {}
        for alg in algorithms:
            hasher = new_hasher(alg)
            hashers.setdefault(hasher.name, hasher)
        self._hashers = hashers

    @property
    def algorithms(self) -> tuple[str, ...]:
        """Canonical names, in the order first given, without duplicates."""
        return tuple(self._hashers)

    def update(self, data: bytes | memoryview) -> None:
        """Feed ``data`` to every hasher."""
        for hasher in self._hashers.values():
            hasher.update(data)

    def digests(self) -> dict[str, bytes]:
        """Canonical name -> raw digest of everything fed so far."""
        return {alg: hasher.digest() for alg, hasher in self._hashers.items()}


def compute(data: bytes, alg: str) -> bytes:
    """Raw digest of ``data`` with ``alg`` (BadRequest if the algorithm is unknown)."""
    hasher = new_hasher(alg)
    hasher.update(data)
    return hasher.digest()


# --------------------------------------------------------------------------- formatting


def _require(alg: str, raw: bytes) -> str:
    canon = canonical_algorithm(alg)
    if canon is None:
        raise BadRequest(f"unsupported checksum algorithm: {_show(alg)}")
    if len(raw) != DIGEST_SIZES[canon]:
        raise BadRequest(f"{canon} digest must be {DIGEST_SIZES[canon]} bytes, got {len(raw)}")
    return canon


def digest_token(alg: str) -> str:
    """RFC 3230 token emitted for ``alg`` (``sha256`` -> ``sha-256``)."""
    canon = canonical_algorithm(alg)
    if canon is None:
        raise BadRequest(f"unsupported checksum algorithm: {_show(alg)}")
    return _RFC3230_OUT[canon]


def repr_digest_key(alg: str) -> str:
    """RFC 9530 dictionary key emitted for ``alg`` (``adler32`` -> ``adler``)."""
    canon = canonical_algorithm(alg)
    if canon is None:
        raise BadRequest(f"unsupported checksum algorithm: {_show(alg)}")
    return _RFC9530_OUT[canon]


def format_digest_value(alg: str, raw: bytes) -> str:
    """RFC 3230 value: adler32/crc32c as 8 lowercase zero-padded hex chars, others (crc32
    included) base64.

    crc32 is base64 of its 4 big-endian bytes because davix (so gfal2 and FTS) decodes a
    ``crc32`` value as base64 whatever the server meant; hex (XRootD's answer) reaches them
    garbled.  Both spellings are accepted on input."""
    canon = _require(alg, raw)
    if canon in _HEX_OUT:
        return raw.hex()
    return base64.b64encode(raw).decode("ascii")


def format_digest(alg: str, raw: bytes) -> str:
    """One RFC 3230 ``Digest`` member, e.g. ``adler32=0a1b2c3d`` or ``sha-256=<b64>``."""
    return f"{digest_token(alg)}={format_digest_value(alg, raw)}"


def format_repr_digest(alg: str, raw: bytes) -> str:
    """One RFC 9530 dictionary member, e.g. ``sha-256=:<b64>:`` or ``adler=:<b64 of 4 bytes>:``."""
    _require(alg, raw)
    return f"{repr_digest_key(alg)}=:{base64.b64encode(raw).decode('ascii')}:"


def _safe_value(alg: str, raw: bytes) -> str:
    try:
        return format_digest_value(alg, raw)
    except BadRequest:
        return raw.hex()


def describe_mismatch(alg: str, expected: bytes, actual: bytes) -> str:
    """One-line reason for a checksum mismatch, values in the RFC 3230 format."""
    name = canonical_algorithm(alg) or _show(alg)
    return (
        f"{name} mismatch: client declared {_safe_value(alg, expected)}, "
        f"received data has {_safe_value(alg, actual)}"
    )


# --------------------------------------------------------------------------- helpers


def _show(value: str) -> str:
    """A header value shortened for a one-line error reason."""
    value = " ".join(value.split())
    if len(value) > _MAX_REASON_VALUE:
        value = value[:_MAX_REASON_VALUE] + "..."
    return repr(value)


def _split_members(value: str) -> list[str]:
    """Split a list/dictionary header on top-level commas (commas in quoted strings kept)."""
    members: list[str] = []
    current: list[str] = []
    in_quote = False
    escaped = False
    for char in value:
        if in_quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_quote = False
        elif char == '"':
            in_quote = True
        elif char == ",":
            members.append("".join(current))
            current = []
            continue
        current.append(char)
    members.append("".join(current))
    return [m.strip() for m in members if m.strip()]


def _b64decode(text: str) -> bytes | None:
    """Strict standard base64 (padding may be omitted); None if invalid."""
    if not text or not text.isascii():
        return None
    missing = -len(text) % 4
    if missing == 3:
        return None
    try:
        return base64.b64decode(text + "=" * missing, validate=True)
    except (binascii.Error, ValueError):
        return None


def _hexdecode(text: str, size: int) -> bytes | None:
    if len(text) != 2 * size or not _HEX_RE.fullmatch(text):
        return None
    return bytes.fromhex(text)


# --------------------------------------------------------------------------- preferences


def _by_preference(entries: list[tuple[str, int]]) -> list[str]:
    """Canonical names ordered by weight descending (stable), weight-0 entries dropped."""
    seen: set[str] = set()
    kept: list[tuple[str, int]] = []
    for alg, weight in entries:
        if alg in seen:
            continue  # first mention of an algorithm decides
        seen.add(alg)
        if weight > 0:
            kept.append((alg, weight))
    kept.sort(key=lambda item: -item[1])
    return [alg for alg, _ in kept]


def parse_want_digest(value: str) -> list[str]:
    """RFC 3230 ``Want-Digest`` -> canonical names, best first.

    ``adler32;q=1, md5;q=0.5``: tokens are case-insensitive, q defaults to 1, q=0 means
    "not acceptable", ties keep request order.  Unknown tokens and members with a malformed
    q are ignored.  Never raises.
    """
    entries: list[tuple[str, int]] = []
    for member in _split_members(value):
        token, *params = member.split(";")
        alg = canonical_algorithm(token)
        if alg is None:
            continue
        weight: int | None = 1000
        for param in params:
            key, sep, raw = param.partition("=")
            if key.strip().lower() != "q":
                continue
            raw = raw.strip()
            if not sep or not _QVALUE_RE.fullmatch(raw):
                weight = None
                break
            whole, _, frac = raw.partition(".")
            weight = int(whole) * 1000 + int((frac + "000")[:3])
        if weight is not None:
            entries.append((alg, weight))
    return _by_preference(entries)


def parse_want_repr_digest(value: str) -> list[str]:
    """RFC 9530 ``Want-Repr-Digest`` / ``Want-Content-Digest`` -> canonical names, best first.

    ``sha-256=10, adler=3``: integer weights 0..10, 0 = not acceptable, ties keep request
    order.  Keys are matched case-insensitively; a bare key (structured-field boolean true)
    counts as weight 1; parameters are ignored; malformed members and unknown keys are
    ignored.  Never raises.
    """
    entries: list[tuple[str, int]] = []
    for member in _split_members(value):
        item = member.split(";", 1)[0]
        key, sep, raw = item.partition("=")
        alg = canonical_algorithm(key)
        if alg is None:
            continue
        raw = raw.strip()
        if not sep or raw == "?1":
            entries.append((alg, 1))
        elif _WEIGHT_RE.fullmatch(raw) and int(raw) <= 10:
            entries.append((alg, int(raw)))
    return _by_preference(entries)


# --------------------------------------------------------------------------- declared digests


def _decode_3230(alg: str, text: str) -> bytes | None:
    size = DIGEST_SIZES[alg]
    if alg in _HEX_ALGORITHMS:
        if 1 <= len(text) <= 8 and _HEX_RE.fullmatch(text):
            return int(text, 16).to_bytes(4, "big")
        if alg == "crc32":  # base64 of the 4 bytes, as se sends it (see format_digest_value)
            decoded = _b64decode(text)
            return decoded if decoded is not None and len(decoded) == 4 else None
        return None
    # md5 is base64 by RFC, hex from old DPM; we accept hex for the SHAs too since the two
    # encodings of a given digest size have different lengths and cannot be confused.
    hexed = _hexdecode(text, size)
    if hexed is not None:
        return hexed
    decoded = _b64decode(text)
    if decoded is not None and len(decoded) == size:
        return decoded
    return None


def _store(result: dict[str, bytes], alg: str, raw: bytes, header: str) -> None:
    previous = result.get(alg)
    if previous is not None and previous != raw:
        raise BadRequest(f"{header} header gives two different {alg} values")
    result[alg] = raw


def parse_digest(value: str, header: str = "Digest") -> dict[str, bytes]:
    """RFC 3230 ``Digest`` header -> canonical name -> raw digest.

    adler32/crc32/crc32c: 1-8 hex digits of either case (left-padded); md5 and sha*: base64 of
    the raw digest (or hex of it); decoded length must match the algorithm.  Unknown
    algorithms are skipped; a known one with a malformed value raises BadRequest.
    """
    result: dict[str, bytes] = {}
    for member in _split_members(value):
        token, sep, text = member.partition("=")
        alg = canonical_algorithm(token)
        if alg is None:
            continue
        raw = _decode_3230(alg, text.strip()) if sep else None
        if raw is None:
            raise BadRequest(f"invalid {alg} value in {header} header: {_show(text)}")
        _store(result, alg, raw, header)
    return result


def parse_repr_digest(value: str, header: str = "Repr-Digest") -> dict[str, bytes]:
    """RFC 9530 ``Repr-Digest`` / ``Content-Digest`` dictionary -> canonical name -> raw digest.

    Members are ``key=:base64:`` (structured-field byte sequences; parameters ignored).
    Unknown keys are skipped; a known key whose value is not a byte sequence of the right
    length raises BadRequest naming ``header`` and the algorithm.
    """
    result: dict[str, bytes] = {}
    for member in _split_members(value):
        item = member.split(";", 1)[0]
        key, sep, text = item.partition("=")
        alg = canonical_algorithm(key)
        if alg is None:
            continue
        text = text.strip()
        raw: bytes | None = None
        if sep and len(text) >= 2 and text[0] == ":" and text[-1] == ":":
            raw = _b64decode(text[1:-1])
        if raw is None or len(raw) != DIGEST_SIZES[alg]:
            raise BadRequest(f"invalid {alg} value in {header} header: {_show(text)}")
        _store(result, alg, raw, header)
    return result


def parse_content_md5(value: str) -> bytes:
    """``Content-MD5``: 24-char base64 (RFC 1864) or 32-char hex (gfal2 streamed copy)."""
    text = value.strip()
    raw: bytes | None = None
    if len(text) == 32:
        raw = _hexdecode(text, 16)
    elif len(text) == 24:
        raw = _b64decode(text)
    if raw is None or len(raw) != 16:
        raise BadRequest(f"invalid Content-MD5 header: {_show(value)}")
    return raw


def expected_digests(headers: Mapping[str, str]) -> dict[str, bytes]:
    """Checksums a client declared for an upload, merged from all digest headers.

    Reads ``Digest``, ``Repr-Digest``, ``Content-Digest`` and ``Content-MD5`` with
    ``headers.get`` (pass a case-insensitive mapping such as aiohttp's ``request.headers``).
    Raises BadRequest for a malformed value or when two headers disagree on an algorithm.
    """
    result: dict[str, bytes] = {}
    source: dict[str, str] = {}
    found: list[tuple[str, dict[str, bytes]]] = []
    digest = headers.get("Digest")
    if digest is not None:
        found.append(("Digest", parse_digest(digest)))
    for name in ("Repr-Digest", "Content-Digest"):
        text = headers.get(name)
        if text is not None:
            found.append((name, parse_repr_digest(text, name)))
    md5 = headers.get("Content-MD5")
    if md5 is not None:
        found.append(("Content-MD5", {"md5": parse_content_md5(md5)}))
    for name, digests in found:
        for alg, raw in digests.items():
            previous = result.get(alg)
            if previous is not None and previous != raw:
                raise BadRequest(f"{source[alg]} and {name} headers give different {alg} values")
            result[alg] = raw
            source.setdefault(alg, name)
    return result
