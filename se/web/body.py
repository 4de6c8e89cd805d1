"""The one reader of small request bodies (XML, JSON): to the end of the body, or to a limit.

``StreamReader.read(n)`` returns what has arrived so far, not ``n`` bytes: a body sent in
several TCP segments (a 90-byte PROPFIND in two, a 10 000-file stage from curl) would be
cut short.  :func:`read_body` reads until the body's end (aiohttp's parser ends it after
``Content-Length`` bytes or at the last chunk of a chunked body) and refuses anything past
``limit`` with a 413, whether announced by ``Content-Length`` (before a byte is read) or
found while reading (chunked).  Every endpoint that takes a small body reads it here.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from se.errors import BadRequest, PayloadTooLarge

__all__ = ["read_body"]


async def read_body(request: web.Request, limit: int, what: str = "request body") -> bytes:
    """The whole body of ``request``; PayloadTooLarge (413) past ``limit`` bytes, BadRequest
    (400) for a body the HTTP parser refused (a bad chunk, a short body)."""
    announced = request.content_length
    if announced is not None and announced > limit:
        raise PayloadTooLarge(f"{what} larger than {limit} bytes")
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            chunk = await request.content.read(limit + 1 - total)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"{what} larger than {limit} bytes")
            chunks.append(chunk)
    except HttpProcessingError as exc:
        raise BadRequest(f"{what} could not be read: {exc.message}") from None
    return b"".join(chunks)
