"""The lean path of the most frequent request: an anonymous GET or HEAD of a small file.

Most of the cost of such a request in aiohttp is the request and response objects, the
router, the handler's task and the signals, not the file.  :func:`answer` serves the
request straight from aiohttp's parsed message (the same parser, so the same limits and
the same reading of every byte): the same checks and the same answer as the full path
(se.app.dispatch -> se.dav.handlers.get), with the headers of
:mod:`se.web.representation`.  The connection handler (se.web.protocol) writes the
answer, counts it in the metrics and writes its access log line.

Whatever the lean path does not cover is left to the full path, which answers it as
always: another method; a request with a body, credentials (``Authorization``, a query
string, a client certificate where certificates are asked for), conditions, ranges or
digests wanted; paths below ``/.well-known`` and the SRR path; anything refused or not
found; a collection; a file above ``storage.inline_read_max`` that is not in the
small-file cache; a server with fault injection, events, tape or the transfer log on.
Nothing is written before that decision, so handing over costs one lookup.
"""

from __future__ import annotations

import asyncio

from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import HttpVersion11
from aiohttp.http_parser import RawRequestMessage

from se.auth.policy import Op, require
from se.errors import SEError
from se.scitags.http import begin_flow
from se.storage.paths import confine
from se.storage.types import CachedFile, Stat
from se.web.context import Context
from se.web.representation import SERVER, file_headers

__all__ = ["Answer", "answer"]

# Request fields that ask for more than the lean path does (lower case, as bytes).
_HANDED_OVER = frozenset(
    (
        b"authorization",
        b"range",
        b"if-range",
        b"if-match",
        b"if-none-match",
        b"if-modified-since",
        b"if-unmodified-since",
        b"want-digest",
        b"want-repr-digest",
        b"expect",
        b"content-length",
        b"transfer-encoding",
        b"upgrade",
    )
)
_TAIL = f"\r\nServer: {SERVER}\r\n\r\n".encode()


class Answer:
    """A whole answer, ready to write, and what the metrics and the access log need."""

    __slots__ = ("data", "sent")

    def __init__(self, data: bytes, sent: int) -> None:
        self.data = data  # status line, head and body
        self.sent = sent  # bytes of the body


def answer(ctx: Context, msg: RawRequestMessage, transport: asyncio.BaseTransport) -> Answer | None:
    """The answer to ``msg`` if the lean path covers it, else None (nothing was done)."""
    method = msg.method
    if method == "GET":
        op = Op.READ
    elif method == "HEAD":
        op = Op.STAT
    else:
        return None
    if msg.version != HttpVersion11 or msg.should_close or msg.upgrade or msg.chunked:
        return None
    if (
        ctx.faults is not None
        or ctx.events is not None
        or ctx.tape is not None
        or ctx.transfers is not None
    ):
        return None
    raw_path = msg.path
    if "?" in raw_path:
        return None
    for name, _value in msg.raw_headers:
        if name.lower() in _HANDED_OVER:
            return None
    if ctx.certificates is not None and transport.get_extra_info("sslcontext") is not None:
        return None
    backend = ctx.backend
    try:
        path = confine(raw_path)
        if path.segments and path.segments[0] == ".well-known":
            return None
        srr_path = ctx.cfg.space.srr_path
        if srr_path and str(path) == srr_path:
            return None
        require(op, path, ctx.anonymous, None, ctx.public)
        opened = backend.open_read(path)
    except SEError:
        return None
    if isinstance(opened, Stat):
        return None
    try:
        st = opened.stat
        if op is Op.STAT:
            return Answer(_head(st, opened.path.name, st.size), 0)
        if st.size > backend.inline_read_max and not isinstance(opened, CachedFile):
            return None
        svc = ctx.scitags
        flow = None
        if svc is not None:
            flow = begin_flow(svc, msg.headers, {}, str(path), method, "", transport, sending=True)
        body = backend.read_small(opened, 0, st.size)
        if flow is not None:
            flow.end(len(body))
        return Answer(_head(st, opened.path.name, len(body)) + body, len(body))
    finally:
        opened.close()


def _head(st: Stat, name: str, length: int) -> bytes:
    """The status line and head of a 200 answer, as aiohttp writes them."""
    fields = "".join(f"{k}: {v}\r\n" for k, v in file_headers(st, name).items())
    return (
        f"HTTP/1.1 200 OK\r\n{fields}Content-Length: {length}\r\n"
        f"Date: {rfc822_formatted_time()}".encode()
        + _TAIL
    )
