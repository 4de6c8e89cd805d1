"""What a COPY asks for: local copy, TPC pull or TPC push, and its options.  Pure.

:func:`parse_copy` reads the request headers (a case-insensitive mapping) and returns
``None`` for an ordinary RFC 4918 COPY (Destination on this server) or a
:class:`TransferSpec`.  Every malformed or contradictory header raises BadRequest with a
one-line reason; nothing is contacted here.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from se.errors import BadRequest
from se.storage import checksums
from se.web.headers import parse_bool_header, parse_destination, parse_overwrite

__all__ = ["FORBIDDEN_FORWARD", "Mode", "TransferSpec", "forwarded_headers", "parse_copy"]

PREFIX = "transferheader"
# Headers a client may not inject into the requests to the remote party: they would break
# the framing of those requests or are set by the transfer itself.
FORBIDDEN_FORWARD = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "host",
        "connection",
        "keep-alive",
        "expect",
        "content-range",
        "range",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "want-digest",
        "want-repr-digest",
    }
)
MAX_STREAMS_HEADER = 100  # X-Number-Of-Streams above this is refused (0 counts as 1)


class Mode(enum.Enum):
    PULL = "pull"
    PUSH = "push"


@dataclass(frozen=True, slots=True)
class TransferSpec:
    mode: Mode
    remote: str  # absolute http(s) URL of the passive party, query kept
    overwrite: bool
    # None: the header was absent (the server's default applies).
    require_checksum: bool | None
    streams: int
    headers: tuple[tuple[str, str], ...]  # forwarded to the remote as-is
    scitag: str | None
    want_digest: tuple[str, ...]  # algorithms the client named in Want-(Repr-)Digest
    expected: dict[str, bytes] = field(default_factory=dict)  # client's Repr-Digest/Digest
    client_info: str = ""
    # Credential: gridsite -- act with the client's delegated proxy (se.tpc.delegation).
    delegated: bool = False


def forwarded_headers(items: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """``TransferHeader<Name>: v`` -> ``(<Name>, v)``, dropping empty and unsafe names."""
    out: list[tuple[str, str]] = []
    for key, value in items:
        if len(key) <= len(PREFIX) or key[: len(PREFIX)].lower() != PREFIX:
            continue
        name = key[len(PREFIX) :].strip()
        if not name or name.lower() in FORBIDDEN_FORWARD:
            continue
        out.append((name, value))  # TransferHeaderSciTag reaches the passive side as SciTag
    return tuple(out)


def _streams(value: str | None) -> int:
    if value is None or not value.strip():
        return 1
    text = value.strip()
    if re.fullmatch(r"[0-9]{1,3}", text) is None or int(text) > MAX_STREAMS_HEADER:
        raise BadRequest(
            f"invalid X-Number-Of-Streams header: {text[:20]!r} (expected 0..{MAX_STREAMS_HEADER})"
        )
    return max(1, int(text))


def _credential(value: str | None) -> bool:
    """Whether the copy acts with the client's delegated proxy (``Credential: gridsite``);
    ``none`` (or no header): with the forwarded ``TransferHeader*`` credentials only."""
    text = "none" if value is None else value.strip().lower()
    if text not in ("none", "gridsite"):
        raise BadRequest(
            f"unsupported Credential {text[:40]!r}: 'none' (send the remote's token in "
            "TransferHeaderAuthorization) or 'gridsite' (a delegated proxy) are accepted"
        )
    return text == "gridsite"


def _want(headers: Mapping[str, str]) -> tuple[str, ...]:
    algs: list[str] = []
    want = headers.get("Want-Digest")
    if want:
        algs += checksums.parse_want_digest(want)
    want_repr = headers.get("Want-Repr-Digest")
    if want_repr:
        algs += checksums.parse_want_repr_digest(want_repr)
    return tuple(dict.fromkeys(algs))


def _expected(headers: Mapping[str, str]) -> dict[str, bytes]:
    result: dict[str, bytes] = {}
    for name, parse in (
        ("Repr-Digest", checksums.parse_repr_digest),
        ("Digest", checksums.parse_digest),
    ):
        text = headers.get(name)
        if text is None:
            continue
        for alg, raw in parse(text, name).items():
            if result.get(alg, raw) != raw:
                raise BadRequest(f"Repr-Digest and Digest headers give different {alg} values")
            result[alg] = raw
    return result


def parse_copy(
    headers: Mapping[str, str],
    items: Iterable[tuple[str, str]],
    request_host: str,
    local_hosts: Sequence[str],
) -> TransferSpec | None:
    """Classify a COPY and parse its TPC headers.

    ``headers`` is the case-insensitive mapping for lookups, ``items`` every header line in
    order (for the ``TransferHeader*`` family).  Returns None for a local COPY.
    """
    source = headers.get("Source")
    destination = headers.get("Destination")
    if source is not None and destination is not None:
        raise BadRequest("COPY with both Source and Destination headers")
    if source is None and destination is None:
        raise BadRequest("COPY needs a Destination (or, for a third-party pull, a Source) header")
    if source is not None:
        remote = parse_destination(source, request_host, local_hosts, header="Source")
        if not remote.scheme:
            raise BadRequest("Source header must be an absolute http(s) URL")
        mode = Mode.PULL
    else:
        remote = parse_destination(destination, request_host, local_hosts)
        if remote.is_local:
            return None
        mode = Mode.PUSH
    delegated = _credential(headers.get("Credential"))
    scitag = headers.get("SciTag")
    if scitag is None:
        for key, value in items:
            if key.lower() == "transferheaderscitag":
                scitag = value
                break
    return TransferSpec(
        mode=mode,
        remote=remote.url,
        overwrite=parse_overwrite(headers.get("Overwrite")),
        require_checksum=(
            None
            if headers.get("RequireChecksumVerification") is None
            else parse_bool_header(
                headers.get("RequireChecksumVerification"), "RequireChecksumVerification", False
            )
        ),
        streams=_streams(headers.get("X-Number-Of-Streams")),
        headers=forwarded_headers(items),
        scitag=scitag.strip() if scitag else None,
        want_digest=_want(headers),
        expected=_expected(headers),
        client_info=headers.get("ClientInfo", "")[:200],
        delegated=delegated,
    )
