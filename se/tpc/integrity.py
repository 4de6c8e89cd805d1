"""Checksums across a transfer: what to ask the remote for, what it declared, and the
comparison that decides whether the copy is kept.  Pure."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping

from se.errors import BadRequest
from se.storage import checksums
from se.tpc.remote import TransferFailed

__all__ = ["declared_digests", "digest_headers", "verify", "want_digest"]

log = logging.getLogger("se.tpc")

# Preference when asking a remote: adler32 is what every WLCG storage keeps.
_DEFAULT_ORDER = ("adler32", "crc32c", "md5", "sha256", "sha512", "sha1", "crc32")


def want_digest(first: Iterable[str], configured: Iterable[str]) -> str:
    """A ``Want-Digest`` value naming ``first`` (the client's), then the usual ones."""
    algs = [a for a in (*first, *configured, *_DEFAULT_ORDER) if checksums.canonical_algorithm(a)]
    ordered = list(dict.fromkeys(checksums.canonical_algorithm(a) or a for a in algs))
    parts = []
    for i, alg in enumerate(ordered[: len(_DEFAULT_ORDER)]):
        q = max(1, 10 - i) / 10
        token = checksums.digest_token(alg)
        parts.append(token if i == 0 else f"{token};q={q:.1f}")
    return ", ".join(parts)


def declared_digests(headers: Mapping[str, str], status: int) -> dict[str, bytes]:
    """Checksums of the whole file a remote declared in a HEAD/GET/PUT answer.

    Reads ``Repr-Digest`` and RFC 3230 ``Digest`` (both describe the whole file, even on a
    206) and ``Content-MD5`` on a 200.  A malformed value is ignored (and logged), never
    trusted.
    """
    found: dict[str, bytes] = {}
    for name, parse in (
        ("Digest", checksums.parse_digest),
        ("Repr-Digest", checksums.parse_repr_digest),
    ):
        text = headers.get(name)
        if not text:
            continue
        try:
            found.update(parse(text, name))
        except BadRequest as exc:
            log.info("remote sent an unusable %s header: %s", name, exc.reason)
    md5 = headers.get("Content-MD5")
    if md5 and status == 200 and "md5" not in found:
        with contextlib.suppress(BadRequest):
            found["md5"] = checksums.parse_content_md5(md5)
    return found


def digest_headers(digests: Mapping[str, bytes]) -> list[tuple[str, str]]:
    """``Digest`` and ``Repr-Digest`` lines announcing ``digests`` (for a push's PUT)."""
    if not digests:
        return []
    return [
        ("Digest", ",".join(checksums.format_digest(a, v) for a, v in digests.items())),
        ("Repr-Digest", ",".join(checksums.format_repr_digest(a, v) for a, v in digests.items())),
    ]


def _value(alg: str, raw: bytes) -> str:
    try:
        return checksums.format_digest_value(alg, raw)
    except BadRequest:
        return raw.hex()


def verify(
    local: Mapping[str, bytes],
    remote: Mapping[str, bytes],
    client: Mapping[str, bytes],
    required: bool,
    remote_name: str,
    local_name: str = "received data",
) -> list[str]:
    """Compare every algorithm both sides know; returns the algorithms that matched.

    A mismatch always raises TransferFailed (phase ``checksum``) naming both values; with
    ``required``, so does finding nothing to compare.
    """
    matched: list[str] = []
    for who, declared in ((remote_name, remote), ("the client", client)):
        for alg, want in declared.items():
            got = local.get(alg)
            if got is None:
                continue
            if got != want:
                raise TransferFailed(
                    f"{alg} mismatch: {who} declared {_value(alg, want)}, "
                    f"{local_name} has {_value(alg, got)}",
                    side="",
                    phase="checksum",
                )
            matched.append(alg)
    if required and not matched:
        offered = ", ".join(sorted({*remote, *client})) or "none"
        raise TransferFailed(
            f"checksum verification required but no common checksum with the {remote_name} "
            f"(it offered: {offered})",
            side="",
            phase="checksum",
        )
    return matched
