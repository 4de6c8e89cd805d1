"""The lean path of the most frequent requests: GET or HEAD of a small file, and the like.

Most of the cost of such a request in aiohttp is the request and response objects, the
router, the handler's task and the signals, not the file.  :func:`answer` serves the
request straight from aiohttp's parsed message (the same parser, so the same limits and
the same reading of every byte): the same checks and the same answer as the full path
(se.app.dispatch -> se.dav.handlers.get), with the headers of
:mod:`se.web.representation`.  The connection handler (se.web.protocol) writes the
answer, counts it in the metrics and writes its access log line.  PROPFIND Depth 0 of a
file is answered the same way by se.dav.handlers.lean_propfind, and a small PUT by
se.dav.handlers.lean_put after one I/O job (a :class:`Pending`; the connection reads
nothing more until its answer is written); the application gives the handler its
:class:`Lean`, with the answerer of each method.

Whatever the lean path does not cover is left to the full path, which answers it as
always: another method; a request with a body (but a PROPFIND's or a PUT's, whole in the
segments read so far), credentials other than one bearer token already verified (a new token, a
query string, a client certificate where certificates are asked for), conditions, ranges or
digests wanted; paths below ``/.well-known`` and the SRR path; anything refused or not
found; a collection; a file above ``storage.inline_read_max`` that is not in the
small-file cache; a server with fault injection, events, tape or the transfer log on.
Nothing is written before that decision, so handing over costs one lookup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import HttpVersion11
from aiohttp.http_parser import RawRequestMessage

from se.auth.policy import Grant, Op, require
from se.errors import SEError
from se.scitags.http import begin_flow
from se.storage.paths import DavPath, confine
from se.storage.types import CachedFile, Stat
from se.web.access import cached_grant
from se.web.context import Context
from se.web.representation import SERVER, file_head_fields

__all__ = [
    "LEAN",
    "Answer",
    "Answerer",
    "Deferred",
    "Lean",
    "Pending",
    "answer_get",
    "credentials",
    "head",
    "target",
]

# Request fields that ask for more than the lean path does (lower case, as bytes).
_HANDED_OVER = frozenset(
    (
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
# ... of a request that has a body (PROPFIND): it may say how long that is.
_HANDED_OVER_WITH_BODY = _HANDED_OVER - {b"content-length"}
_TAIL = f"\r\nServer: {SERVER}\r\n\r\n".encode()


class Answer:
    """A whole answer, ready to write, and what the metrics and the access log need."""

    __slots__ = ("data", "grant", "kind", "sent", "status")

    def __init__(
        self,
        data: bytes,
        sent: int,
        status: int = 200,
        who: tuple[Grant | None, str] = (None, ""),
    ) -> None:
        self.data = data  # status line, head and body
        self.sent = sent  # bytes of the body
        self.status = status
        self.grant, self.kind = who  # the request's grant; the kind of its token or ""


class Pending:
    """A request whose answer an I/O job is making (a lean PUT): once ``job`` is done,
    ``finish`` makes the answer of its result.  A job that fails leaves the request to the
    full path, which answers it as always (the job must then have done nothing the full
    path would see: a failed upload stores nothing)."""

    __slots__ = ("finish", "job")

    def __init__(self, job: asyncio.Future[Any], finish: Callable[[Any], Answer]) -> None:
        self.job = job
        self.finish = finish


# An answerer: the answer to a request (its parsed message and its whole body, b"" if
# none), or None to leave it to the full path.
Answerer = Callable[[Context, RawRequestMessage, bytes, asyncio.BaseTransport], "Answer | None"]
# ... of a request whose answer needs an I/O job: its Pending, or None.
Deferred = Callable[[Context, RawRequestMessage, bytes, asyncio.BaseTransport], "Pending | None"]


class Lean:
    """What the connection handler needs for the lean path: the application's context, the
    answerer of each method it answers at once, and of each it answers after an I/O job
    (only the last request of what arrived; nothing is read meanwhile, so that the answers
    stay in order)."""

    __slots__ = ("answerers", "ctx", "deferred")

    def __init__(
        self,
        ctx: Context,
        answerers: dict[str, Answerer],
        deferred: dict[str, Deferred] | None = None,
    ) -> None:
        self.ctx = ctx
        self.answerers = answerers
        self.deferred = deferred or {}


LEAN: web.AppKey[Lean] = web.AppKey("se_lean", Lean)


def target(
    ctx: Context, msg: RawRequestMessage, transport: asyncio.BaseTransport, body: bool = False
) -> DavPath | None:
    """The path of a request the lean path may answer, or None: the checks every lean
    answerer makes first (``body``: the request has one, and may say how long it is)."""
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
    handed_over = _HANDED_OVER_WITH_BODY if body else _HANDED_OVER
    for name, _value in msg.raw_headers:
        if name.lower() in handed_over:
            return None
    try:
        path = confine(raw_path)
    except SEError:
        return None
    if path.segments and path.segments[0] == ".well-known":
        return None
    srr_path = ctx.cfg.space.srr_path
    if srr_path and str(path) == srr_path:
        return None
    return path


_ANONYMOUS: tuple[Grant | None, str] = (None, "")


def credentials(
    ctx: Context, msg: RawRequestMessage, transport: asyncio.BaseTransport
) -> tuple[Grant | None, str] | None:
    """Who the request is, for the lean path: ``(None, "")`` when anonymous, ``(grant,
    kind)`` for one bearer token verified before (se.web.access.cached_grant); None for
    anything else, left to the full path (a token not yet verified, a client certificate
    where certificates are asked for)."""
    authorization = msg.headers.getall("Authorization", ())
    tls = transport.get_extra_info("sslcontext") is not None
    if not authorization:
        return None if tls and ctx.certificates is not None else _ANONYMOUS
    sockname = transport.get_extra_info("sockname")
    return cached_grant(ctx, list(authorization), "https" if tls else "http", sockname)


def answer_get(
    ctx: Context, msg: RawRequestMessage, body: bytes, transport: asyncio.BaseTransport
) -> Answer | None:
    """GET and HEAD of a file (se.dav.handlers.get for the full path)."""
    if body:
        return None
    path = target(ctx, msg, transport)
    if path is None:
        return None
    who = credentials(ctx, msg, transport)
    if who is None:
        return None
    grant = who[0]
    op = Op.STAT if msg.method == "HEAD" else Op.READ
    backend = ctx.backend
    try:
        require(op, path, ctx.anonymous, grant, ctx.public)
        opened = backend.open_read(path)
    except SEError:
        return None
    if isinstance(opened, Stat):
        return None
    try:
        st = opened.stat
        fields = file_head_fields(st, opened.path.name)
        if op is Op.STAT:
            return Answer(head(200, fields, st.size), 0, 200, who)
        if st.size > backend.inline_read_max and not isinstance(opened, CachedFile):
            return None
        svc = ctx.scitags
        flow = None
        if svc is not None:
            subject = grant.subject if grant is not None else ""
            flow = begin_flow(
                svc, msg.headers, {}, str(path), "GET", subject, transport, sending=True
            )
        data = backend.read_small(opened, 0, st.size)
        if flow is not None:
            flow.end(len(data))
        return Answer(head(200, fields, len(data)) + data, len(data), 200, who)
    finally:
        opened.close()


_REASONS = {200: "OK", 201: "Created", 204: "No Content", 207: "Multi-Status"}


def head(status: int, fields: str, length: int) -> bytes:
    """The status line and head of an answer, as aiohttp writes them: ``fields`` (whole
    lines), then Content-Length (never for a 204), Date and Server."""
    framing = "" if status == 204 else f"Content-Length: {length}\r\n"
    return (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n{fields}{framing}"
        f"Date: {rfc822_formatted_time()}".encode()
        + _TAIL
    )
