"""Pure parsers for the WebDAV request headers (RFC 4918 §10).

This module owns the syntax of ``Depth`` (§10.2), ``Overwrite`` (§10.6) and
``Destination`` (§10.3; also the TPC ``Source`` header, spec §1.1), plus the simple
``true``/``false`` headers of HTTP-TPC (e.g. ``RequireChecksumVerification``).  It decides
whether a ``Destination`` names this server (local COPY/MOVE) or another one (TPC push),
given the request's ``Host`` and the configured local host aliases.  Nothing here does I/O;
every malformed value raises :class:`se.errors.BadRequest` with a one-line reason.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from se.errors import BadRequest

__all__ = [
    "Depth",
    "Destination",
    "parse_bool_header",
    "parse_depth",
    "parse_destination",
    "parse_overwrite",
]

_MAX_REASON_VALUE: Final = 100
_SCHEMES: Final[dict[str, str]] = {"http": "http", "https": "https", "dav": "http", "davs": "https"}
_DEFAULT_PORTS: Final[dict[str, int]] = {"http": 80, "https": 443}

_ABSOLUTE_RE: Final = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<authority>[^/?#]*)(?P<path>[^?#]*)"
    r"(?:\?(?P<query>[^#]*))?(?P<fragment>#.*)?",
    re.ASCII | re.DOTALL,
)
_HOSTPORT_RE: Final = re.compile(
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=\-]+)(?::(?P<port>[0-9]*))?",
    re.ASCII,
)
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
_BAD_ESCAPE_RE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _show(value: str) -> str:
    """A header value shortened (and made printable) for a one-line error reason."""
    if len(value) > _MAX_REASON_VALUE:
        value = value[:_MAX_REASON_VALUE] + "..."
    return repr(value)


# --------------------------------------------------------------------------- Depth


class Depth(enum.Enum):
    """RFC 4918 §10.2 ``Depth`` values."""

    ZERO = "0"
    ONE = "1"
    INFINITY = "infinity"


def parse_depth(value: str | None, default: Depth) -> Depth:
    """``Depth`` header; ``default`` when absent.  Case-insensitive, surrounding space ignored."""
    if value is None:
        return default
    depth = _DEPTHS.get(value) or _DEPTHS.get(value.strip().lower())
    if depth is None:
        raise BadRequest(f"invalid Depth header: {_show(value)}")
    return depth


_DEPTHS: dict[str, Depth] = {d.value: d for d in Depth}


# --------------------------------------------------------------------------- Overwrite / booleans


def parse_overwrite(value: str | None) -> bool:
    """``Overwrite`` header (RFC 4918 §10.6): absent means T.  Accepts ``T``/``F`` in any case."""
    if value is None:
        return True
    text = value.strip().upper()
    if text == "T":
        return True
    if text == "F":
        return False
    raise BadRequest(f"invalid Overwrite header: {_show(value)} (expected T or F)")


def parse_bool_header(value: str | None, name: str, default: bool) -> bool:
    """A ``true``/``false`` header (case-insensitive); ``default`` when absent."""
    if value is None:
        return default
    text = value.strip().lower()
    if text == "true":
        return True
    if text == "false":
        return False
    raise BadRequest(f"invalid {name} header: {_show(value)} (expected true or false)")


# --------------------------------------------------------------------------- Destination


@dataclass(frozen=True, slots=True)
class Destination:
    """A parsed ``Destination`` (or ``Source``) header.

    ``url``: absolute http(s) URL (dav/davs mapped to http/https, host lower-cased, query
    kept) or, for an absolute-path destination, the path and query as given.
    ``scheme``: ``http``/``https``, or ``""`` for an absolute path.
    ``netloc``: ``host[:port]`` as given (host lower-cased, no default port filled in); the
    request's Host for an absolute path.
    ``raw_path``: the percent-encoded path as given, without query (``/`` if empty).
    ``is_local``: the destination names this server.
    """

    url: str
    scheme: str
    netloc: str
    raw_path: str
    is_local: bool


def _split_hostport(text: str) -> tuple[str, int | None] | None:
    """``host[:port]`` -> (normalised host, port or None); None when unparsable."""
    match = _HOSTPORT_RE.fullmatch(text.strip())
    if match is None:
        return None
    host = match["host"].lower().rstrip(".")
    if not host:
        return None
    port_text = match["port"]
    if not port_text:
        return host, None
    if len(port_text) > 5 or int(port_text) > 65535:
        return None
    return host, int(port_text)


def _matches(host: str, port: int, default_port: int, candidate: str, *, any_port: bool) -> bool:
    parsed = _split_hostport(candidate)
    if parsed is None or parsed[0] != host:
        return False
    if parsed[1] is None:
        return any_port or port == default_port
    return parsed[1] == port


def parse_destination(
    value: str | None,
    request_host: str,
    local_hosts: Sequence[str],
    *,
    header: str = "Destination",
) -> Destination:
    """Parse a ``Destination``/``Source`` header (RFC 4918 §10.3, spec §1.1).

    Accepts an absolute URL with scheme http, https, dav or davs, or an absolute path
    (always local).  Rejects other schemes, a missing host, userinfo, a fragment, control
    characters and malformed percent-escapes with BadRequest.

    Locality: the URL's host (case-insensitive) and port must match ``request_host`` (the
    request's ``Host``; without a port it stands for the default port of the URL's scheme)
    or an entry of ``local_hosts`` (``host`` = any port, ``host:port`` = that port only).
    A URL without a port is taken to use its scheme's default port (80/443).
    """
    if value is None or not value.strip():
        raise BadRequest(f"missing {header} header")
    text = value.strip()
    if _CONTROL_RE.search(text):
        raise BadRequest(f"invalid {header} header: control character in URL")
    if _BAD_ESCAPE_RE.search(text):
        raise BadRequest(f"invalid {header} header: bad percent-escape in {_show(text)}")

    if text.startswith("/") and not text.startswith("//"):
        if "#" in text:
            raise BadRequest(f"invalid {header} header: fragment not allowed in {_show(text)}")
        raw_path = text.split("?", 1)[0]
        return Destination(
            url=text, scheme="", netloc=request_host, raw_path=raw_path, is_local=True
        )

    match = _ABSOLUTE_RE.fullmatch(text)
    if match is None:
        raise BadRequest(f"invalid {header} header: not an absolute URL: {_show(text)}")
    scheme = _SCHEMES.get(match["scheme"].lower())
    if scheme is None:
        raise BadRequest(f"invalid {header} header: unsupported scheme in {_show(text)}")
    if match["fragment"] is not None:
        raise BadRequest(f"invalid {header} header: fragment not allowed in {_show(text)}")
    authority = match["authority"]
    if "@" in authority:
        raise BadRequest(f"invalid {header} header: credentials not allowed in URL")
    if not authority:
        raise BadRequest(f"invalid {header} header: no host in {_show(text)}")
    hostport = _HOSTPORT_RE.fullmatch(authority)
    parsed = _split_hostport(authority)
    if hostport is None or parsed is None:
        raise BadRequest(f"invalid {header} header: bad host in {_show(text)}")
    host, port = parsed
    netloc = hostport["host"].lower() + (f":{port}" if port is not None else "")
    raw_path = match["path"] or "/"
    query = match["query"]
    url = f"{scheme}://{netloc}{raw_path}" + (f"?{query}" if query else "")

    default_port = _DEFAULT_PORTS[scheme]
    effective_port = default_port if port is None else port
    is_local = _matches(host, effective_port, default_port, request_host, any_port=False) or any(
        _matches(host, effective_port, default_port, entry, any_port=True) for entry in local_hosts
    )
    return Destination(url=url, scheme=scheme, netloc=netloc, raw_path=raw_path, is_local=is_local)
