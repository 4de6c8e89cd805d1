"""HTTP byte ranges (RFC 9110 §14) and ``multipart/byteranges`` framing (RFC 9110 §14.6).

This module owns parsing of the ``Range`` request header into satisfiable byte ranges,
the ``Content-Range`` value (§14.4), and the exact byte framing of a multi-range 206 body,
which aiohttp does not implement (spec §4.7: davix vector reads need it).  Pure functions.

Multipart framing (RFC 2046 §5.1.1; same layout as Apache and nginx).  For each range,
in order, the body holds::

    part_header(...)  = CRLF "--" boundary CRLF
                        "Content-Type: " content_type CRLF
                        "Content-Range: bytes a-b/size" CRLF
                        CRLF
    <the b-a+1 data bytes>

and after the last part::

    closing(boundary) = CRLF "--" boundary "--" CRLF

So the body starts with an (empty) preamble and CRLF, and every part's data is followed
by the CRLF that begins the next delimiter.  :func:`multipart_length` returns the exact
length of that body so the response can carry ``Content-Length``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from typing import Final

from se.errors import BadRequest, RangeNotSatisfiable

__all__ = [
    "closing",
    "content_range",
    "merge_ranges",
    "multipart_length",
    "new_boundary",
    "parse_range",
    "part_header",
]

_SPEC_RE: Final = re.compile(r"(?:([0-9]+)-([0-9]*)|-([0-9]+))", re.ASCII)
_TOKEN_RE: Final = re.compile(r"[0-9A-Za-z'()+_,\-./:=?]{1,70}", re.ASCII)
_HEADER_VALUE_RE: Final = re.compile(r"[\x20-\x7e\t]*", re.ASCII)
# Numbers longer than this are far beyond any file size; avoids int() digit limits.
_MAX_DIGITS: Final = 30
_HUGE: Final = 10**_MAX_DIGITS


def _number(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return _HUGE if len(digits) > _MAX_DIGITS else int(digits)


def parse_range(value: str, size: int, max_ranges: int = 1024) -> list[tuple[int, int]] | None:
    """Parse a ``Range`` header against a representation of ``size`` bytes.

    Returns the satisfiable ranges as ``(start, end_exclusive)`` in request order, ends
    clamped to ``size``.  Returns None, meaning "ignore the header and send 200", when the
    unit is not ``bytes``, the syntax is invalid (including ``last < first``) or there are
    more than ``max_ranges`` members.  Raises RangeNotSatisfiable (with
    ``Content-Range: bytes */size``) when no member is satisfiable; unsatisfiable members
    are dropped otherwise.  ``bytes=-0`` is unsatisfiable, as is any range of an empty file.
    """
    if size < 0:
        raise BadRequest(f"invalid representation size {size}")
    unit, sep, spec = value.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    members = [m.strip() for m in spec.split(",")]
    members = [m for m in members if m]  # RFC 9110 §5.6.1: empty list elements are ignored
    if not members or len(members) > max_ranges:
        return None
    ranges: list[tuple[int, int]] = []
    for member in members:
        match = _SPEC_RE.fullmatch(member)
        if match is None:
            return None
        first_text, last_text, suffix_text = match.groups()
        if suffix_text is not None:
            length = _number(suffix_text)
            if length > 0 and size > 0:
                ranges.append((max(0, size - length), size))
            continue
        first = _number(first_text)
        last = _number(last_text) if last_text else None
        if last is not None and last < first:
            return None
        if first < size:
            end = size if last is None else min(last + 1, size)
            ranges.append((first, end))
    if not ranges:
        shown = value if len(value) <= 100 else value[:100]
        raise RangeNotSatisfiable(
            f"range not satisfiable: {shown}",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return ranges


def merge_ranges(ranges: Sequence[tuple[int, int]], gap: int = 0) -> list[tuple[int, int]]:
    """Sorted union of ``ranges``, also joining ranges separated by at most ``gap`` bytes.

    RFC 9110 §14.2 lets a server coalesce overlapping or close ranges, and davix accepts
    coalesced parts as long as they lie within the requested ranges (``gap=0`` guarantees
    that).
    """
    if gap < 0:
        raise BadRequest("negative range gap")
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + gap:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _check(start: int, end: int, size: int) -> None:
    if not 0 <= start < end <= size:
        raise BadRequest(f"invalid byte range {start}-{end} for size {size}")


def content_range(start: int, end: int, size: int) -> str:
    """``Content-Range`` value for ``[start, end)``: ``bytes start-(end-1)/size``."""
    _check(start, end, size)
    return f"bytes {start}-{end - 1}/{size}"


def new_boundary() -> str:
    """A fresh random boundary: 32 hex characters (token characters, no quoting needed)."""
    return secrets.token_hex(16)


def _check_boundary(boundary: str) -> None:
    if not _TOKEN_RE.fullmatch(boundary):
        raise BadRequest("invalid multipart boundary")


def part_header(boundary: str, start: int, end: int, size: int, content_type: str) -> bytes:
    """Delimiter and headers that precede the data of part ``[start, end)``.

    ``CRLF --boundary CRLF Content-Type: ... CRLF Content-Range: bytes a-b/size CRLF CRLF``;
    see the module docstring for the whole framing.
    """
    _check_boundary(boundary)
    _check(start, end, size)
    if not content_type or not _HEADER_VALUE_RE.fullmatch(content_type):
        raise BadRequest("invalid part content type")
    return (
        f"\r\n--{boundary}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Range: {content_range(start, end, size)}\r\n"
        "\r\n"
    ).encode("ascii")


def closing(boundary: str) -> bytes:
    """Close delimiter after the last part's data: ``CRLF --boundary-- CRLF``."""
    _check_boundary(boundary)
    return f"\r\n--{boundary}--\r\n".encode("ascii")


def multipart_length(
    boundary: str, ranges: Sequence[tuple[int, int]], size: int, content_type: str
) -> int:
    """Exact length of the body made of every ``part_header`` + data, then ``closing``."""
    total = len(closing(boundary))
    for start, end in ranges:
        total += len(part_header(boundary, start, end, size, content_type)) + (end - start)
    return total
