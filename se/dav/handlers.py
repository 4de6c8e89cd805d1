"""One coroutine per WebDAV/HTTP method; thin: parse, authorise, call the backend, respond.

Routing (one catch-all route dispatching on the method) is in ``se.app``
(aiohttp's class views reject non-standard verbs).  Errors are raised as ``se.errors``
and rendered by ``se.web.error_handling``.  RFC 4918 sections are cited where a status is chosen.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import hdrs, web
from aiohttp.http_parser import RawRequestMessage

from se.auth.policy import Grant, Op, require
from se.dav import listing, propfind
from se.dav.body import receive_body, send_file_range, send_with_faults, write_file_range
from se.dav.ranges import (
    closing,
    content_range,
    merge_ranges,
    multipart_length,
    new_boundary,
    parse_range,
    part_header,
)
from se.errors import (
    BadGateway,
    BadRequest,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    SEError,
    Unauthorized,
    UnsupportedMediaType,
)
from se.scitags import http as scitags_http
from se.storage import checksums
from se.storage.paths import DavPath, confine
from se.storage.posix import UploadResult
from se.storage.types import CachedFile, DirEntry, Identity, OpenFile, Stat
from se.web import fastpath, testpoints, transferlog
from se.web.access import authorise, authorise_write, check_write, grant_of
from se.web.body import read_body
from se.web.context import Context, context
from se.web.headers import Depth, parse_depth, parse_destination, parse_overwrite
from se.web.representation import content_type, file_headers

log = logging.getLogger("se")

__all__ = [
    "ALLOW",
    "check_put",
    "copy",
    "delete",
    "get",
    "mkcol",
    "move",
    "options",
    "propfind_handler",
    "proppatch",
    "put",
]

ALLOW = "OPTIONS, GET, HEAD, PUT, DELETE, MKCOL, COPY, MOVE, PROPFIND, PROPPATCH, POST"


def _path(request: web.Request) -> DavPath:
    return confine(request.raw_path)


def _has_body(request: web.Request) -> bool:
    return bool(request.content_length) or request.headers.get(hdrs.TRANSFER_ENCODING) is not None


async def _read_xml(request: web.Request) -> bytes:
    return await read_body(request, context(request).cfg.webdav.max_xml_body, "XML body")


# -- OPTIONS ----------------------------------------------------------------------------
async def options(request: web.Request) -> web.StreamResponse:
    return web.Response(
        headers={"DAV": "1", "Allow": ALLOW, "Accept-Ranges": "bytes", "MS-Author-Via": "DAV"}
    )


# -- GET / HEAD -------------------------------------------------------------------------
def _digest_headers(request: web.Request) -> tuple[list[str], list[str]]:
    want = request.headers.get("Want-Digest")
    want_repr = request.headers.get("Want-Repr-Digest")
    d = checksums.parse_want_digest(want)[:1] if want else []
    r = checksums.parse_want_repr_digest(want_repr)[:1] if want_repr and not want else []
    return d, r


_CONDITIONALS = (
    hdrs.IF_MATCH,
    hdrs.IF_NONE_MATCH,
    hdrs.IF_MODIFIED_SINCE,
    hdrs.IF_UNMODIFIED_SINCE,
)


def _not_modified(request: web.Request, st: Stat) -> int | None:
    """RFC 9110 §13.2.2 evaluation order for the conditionals we support."""
    h = request.headers
    if not any(name in h for name in _CONDITIONALS):
        return None
    if_match = h.get(hdrs.IF_MATCH)
    if if_match is not None and if_match.strip() != "*" and st.etag not in _etags(if_match):
        return 412
    ius = request.if_unmodified_since
    if if_match is None and ius is not None and int(st.mtime) > ius.timestamp():
        return 412
    inm = h.get(hdrs.IF_NONE_MATCH)
    if inm is not None:
        if inm.strip() == "*" or st.etag in _etags(inm):
            return 304
        return None
    ims = request.if_modified_since
    if ims is not None and int(st.mtime) <= ims.timestamp():
        return 304
    return None


def _etags(value: str) -> set[str]:
    return {t.strip().removeprefix("W/") for t in value.split(",")}


async def get(request: web.Request) -> web.StreamResponse:
    path = _path(request)
    authorise(request, Op.STAT if request.method == hdrs.METH_HEAD else Op.READ, path)
    ctx = context(request)
    h = request.headers
    # Digests need the file itself (xattrs, or a read to compute them).
    wants_digest = "Want-Digest" in h or "Want-Repr-Digest" in h
    opened = ctx.backend.open_read(path, use_cache=not wants_digest)
    if isinstance(opened, Stat):
        return await _get_collection(request, path)
    try:
        return await _get_file(request, opened)
    finally:
        opened.close()


async def _get_collection(request: web.Request, path: DavPath) -> web.StreamResponse:
    ctx = context(request)
    entries = await ctx.backend.list_dir(path, with_xattrs=True)
    fmt = listing.preferred_format(request.headers.get(hdrs.ACCEPT, ""))
    if fmt == "json":
        return web.Response(
            text=listing.render_json(path, entries), content_type="application/json"
        )
    return web.Response(text=listing.render_html(path, entries), content_type="text/html")


async def _get_file(request: web.Request, file: OpenFile | CachedFile) -> web.StreamResponse:
    ctx = context(request)
    st = file.stat
    if ctx.tape is not None and request.method == hdrs.METH_GET:
        await ctx.tape.check_readable(file.path, st.size)
    headers = file_headers(st, file.path.name)
    status = _not_modified(request, st)
    if status == 412:  # an error like any other: one line of text/plain
        raise PreconditionFailed(f"{file.path}: If-Match/If-Unmodified-Since precondition failed")
    if status is not None:
        headers.pop(hdrs.CONTENT_TYPE)
        return web.Response(status=status, headers=headers)
    want, want_repr = _digest_headers(request)
    if want or want_repr:
        assert isinstance(file, OpenFile)  # opened without the cache when digests are wanted
        digests = await ctx.backend.checksums(file, tuple(want + want_repr))
        rule = testpoints.fired(request) if ctx.faults is not None else None
        if rule is not None and rule.wrong_digest:
            digests = {alg: bytes(b ^ 0x5A for b in raw) for alg, raw in digests.items()}
        for alg in want:
            headers["Digest"] = checksums.format_digest(alg, digests[alg])
        for alg in want_repr:
            headers["Repr-Digest"] = checksums.format_repr_digest(alg, digests[alg])
    ranges = None
    range_header = request.headers.get(hdrs.RANGE)
    if range_header is not None and _if_range_ok(request, st):
        ranges = parse_range(range_header, st.size, ctx.cfg.webdav.max_ranges)
    if ranges is None:
        return await _send(request, file, 200, headers, 0, st.size)
    if len(ranges) == 1:
        start, end = ranges[0]
        headers[hdrs.CONTENT_RANGE] = content_range(start, end, st.size)
        return await _send(request, file, 206, headers, start, end - start)
    # Overlapping or touching ranges are joined (RFC 9110 §14.2): the answer is never
    # larger than the file, however the ranges repeat (`bytes=0-,0-,0-,...`).
    return await _send_multipart(request, file, headers, merge_ranges(ranges))


def _if_range_ok(request: web.Request, st: Stat) -> bool:
    if_range = request.headers.get(hdrs.IF_RANGE)
    if if_range is None:
        return True
    if if_range.strip().startswith(('"', "W/")):
        return if_range.strip() == st.etag
    return request.if_range is not None and int(st.mtime) <= request.if_range.timestamp()


async def _send(
    request: web.Request,
    file: OpenFile | CachedFile,
    status: int,
    headers: dict[str, str],
    offset: int,
    count: int,
) -> web.StreamResponse:
    ctx = context(request)
    if request.method == hdrs.METH_HEAD:
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = count
        await resp.prepare(request)
        await resp.write_eof()
        return resp
    flow = scitags_http.begin(request, ctx.scitags, sending=True, subject=_subject(request))
    rule = testpoints.fired(request) if ctx.faults is not None else None
    if rule is not None and rule.has_body_action:
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = count
        await resp.prepare(request)
        finished = await send_with_faults(request, resp, ctx.backend, file, offset, count, rule)
        if flow is not None:
            flow.end(resp.body_length)
        if finished:
            await resp.write_eof()
        return resp
    if count <= ctx.backend.inline_read_max or isinstance(file, CachedFile):
        body = ctx.backend.read_small(file, offset, count)
        if flow is not None:
            flow.end(len(body))
        return web.Response(status=status, headers=headers, body=body)
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_length = count
    sent = 0
    try:
        await resp.prepare(request)
        await send_file_range(request, resp, ctx.backend, file, offset, count)
        sent = count
    except (OSError, TimeoutError) as exc:
        # Headers are gone already: the only honest signal left is closing the connection.
        # Usually the client left; one line, not a traceback, and the access log keeps the
        # status that was sent, with the bytes that went.
        if request.transport is not None:
            request.transport.close()
        transferlog.note_cut(request)
        log.info(
            "%s %s: download cut after %d bytes: %s",
            request.method,
            request.path,
            resp.body_length,
            exc or type(exc).__name__,
        )
        return resp
    finally:
        if flow is not None:
            flow.end(sent or resp.body_length)
    await resp.write_eof()
    return resp


def _subject(request: web.Request) -> str:
    grant = grant_of(request)
    return grant.subject if grant is not None else ""


async def _send_multipart(
    request: web.Request,
    file: OpenFile | CachedFile,
    headers: dict[str, str],
    ranges: list[tuple[int, int]],
) -> web.StreamResponse:
    ctx = context(request)
    st = file.stat
    ctype = headers.pop(hdrs.CONTENT_TYPE)
    boundary = new_boundary()
    headers[hdrs.CONTENT_TYPE] = f"multipart/byteranges; boundary={boundary}"
    resp = web.StreamResponse(status=206, headers=headers)
    resp.content_length = multipart_length(boundary, ranges, st.size, ctype)
    await resp.prepare(request)
    if request.method == hdrs.METH_HEAD:
        return resp
    for start, end in ranges:
        await resp.write(part_header(boundary, start, end, st.size, ctype))
        await write_file_range(resp, ctx.backend, file, start, end - start)
    await resp.write(closing(boundary))
    await resp.write_eof()
    return resp


# -- PUT --------------------------------------------------------------------------------
def _check_put(request: web.Request) -> tuple[DavPath, bool]:
    path = _path(request)
    overwrite = parse_overwrite(request.headers.get("Overwrite"))
    authorise_write(request, path, overwrite)
    if request.headers.get(hdrs.TRANSFER_ENCODING) and request.headers.get(hdrs.CONTENT_LENGTH):
        raise BadRequest("both Content-Length and Transfer-Encoding given")
    if request.headers.get(hdrs.CONTENT_RANGE):
        raise BadRequest("partial PUT (Content-Range) is not supported")
    return path, overwrite


async def put(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    path, overwrite = _check_put(request)
    if "100-continue" not in request.headers.get(hdrs.EXPECT, "").lower():
        await _check_room(request, path, overwrite)  # else done before the 100 Continue
    expected = checksums.expected_digests(request.headers)
    upload = await ctx.backend.begin_upload(path, overwrite, tuple(expected))
    flow = scitags_http.begin(request, ctx.scitags, sending=False, subject=_subject(request))
    try:
        close = await receive_body(request, upload, ctx.cfg.storage.direct_put_min)
        declared = request.content_length
        if declared is not None and upload.received != declared:
            raise BadRequest(
                f"body ended after {upload.received} of {declared} bytes; nothing stored"
            )
        result = await upload.commit(expected)
    except BaseException:
        await asyncio.shield(upload.abort())
        raise
    finally:
        if flow is not None:
            flow.end(upload.received)
        transferlog.note_bytes(request, upload.received)
    headers: dict[str, str] = {hdrs.ETAG: result.stat.etag}
    want, want_repr = _digest_headers(request)
    for alg in want:
        if alg in result.digests:
            headers["Digest"] = checksums.format_digest(alg, result.digests[alg])
    for alg in want_repr:
        if alg in result.digests:
            headers["Repr-Digest"] = checksums.format_repr_digest(alg, result.digests[alg])
    resp = web.Response(status=201 if result.created else 204, headers=headers)
    if close:
        resp.force_close()
    return resp


# Request fields of a PUT that ask for more than the lean PUT does (lower case, as bytes).
_PUT_HANDED_OVER = frozenset(
    (b"content-range", b"digest", b"repr-digest", b"content-digest", b"content-md5")
)


def lean_put(
    ctx: Context, msg: RawRequestMessage, body: bytes, transport: asyncio.BaseTransport
) -> fastpath.Pending | None:
    """PUT of a body that arrived whole (up to storage.chunk_size), for the lean path
    (se.web.fastpath): :func:`put` in one I/O job (PosixBackend.put_whole) and the same
    answer; None when it asks for more (digests sent or wanted, a range, 100-continue, a
    share with a size, a tagged flow, a storage observer, anything refused).  A job that
    fails leaves the request to :func:`put`, which answers the error as always."""
    path = fastpath.target(ctx, msg, transport, body=True)
    backend = ctx.backend
    if path is None or path.is_root or len(body) > backend.chunk_size:
        return None
    if backend.observer is not None:
        return None
    for name, _value in msg.raw_headers:
        if name.lower() in _PUT_HANDED_OVER:
            return None
    who = fastpath.credentials(ctx, msg, transport)
    if who is None:
        return None
    grant = who[0]
    headers = msg.headers
    svc = ctx.scitags
    if (
        svc is not None
        and svc.wants_flows
        and svc.tag_for(headers, {}, str(path), "PUT", grant.subject if grant else "") is not None
    ):
        return None
    space = ctx.space
    if space is not None and space.limit(path) is not None:
        return None
    try:
        overwrite = parse_overwrite(headers.get("Overwrite"))

        def may(op: Op) -> None:
            require(op, path, ctx.anonymous, grant, ctx.public)

        check_write(may, ctx, path, overwrite)
        job = asyncio.get_running_loop().run_in_executor(
            backend.executor, backend.put_whole, path, overwrite, body
        )
    except (SEError, RuntimeError):  # (RuntimeError: the I/O threads are gone)
        return None

    def finish(result: UploadResult) -> fastpath.Answer:
        status = 201 if result.created else 204
        fields = f"Etag: {result.stat.etag}\r\n"
        return fastpath.Answer(fastpath.head(status, fields, 0), 0, status, who)

    return fastpath.Pending(job, finish)


async def check_put(request: web.Request) -> None:
    """Everything a PUT can be refused for before its body is read (for ``Expect:
    100-continue``): the path, the preconditions, the caller's rights, the target, the room
    left in its share."""
    path, overwrite = _check_put(request)
    context(request).backend.check_upload(path, overwrite)
    await _check_room(request, path, overwrite)


async def _check_room(request: web.Request, path: DavPath, overwrite: bool) -> None:
    """507 before the body when its Content-Length would take the share over its size (a
    body of unknown length is checked when it is committed)."""
    space = context(request).space
    length = request.content_length
    if space is None or length is None or space.limit(path) is None:
        return
    old = context(request).backend.stat(path) if overwrite else None
    replacing = old.size if old is not None and not old.is_dir else 0
    await space.check_room(path, length, replacing)


# -- MKCOL / DELETE ---------------------------------------------------------------------
async def mkcol(request: web.Request) -> web.StreamResponse:
    path = _path(request)
    authorise(request, Op.MKDIR, path)
    if _has_body(request):
        raise UnsupportedMediaType("MKCOL with a request body is not supported")
    await context(request).backend.mkcol(path)
    return web.Response(status=201)


async def delete(request: web.Request) -> web.StreamResponse:
    path = _path(request)
    authorise(request, Op.DELETE, path)
    failures = await context(request).backend.delete(path)
    if not failures:
        return web.Response(status=204)
    body = propfind.render_status_list(
        (_href(request, p, False), e.status, e.reason) for p, e in failures
    )
    return web.Response(status=207, body=body, content_type="application/xml", charset="utf-8")


# -- COPY / MOVE ------------------------------------------------------------------------
async def copy(request: web.Request) -> web.StreamResponse:
    """A COPY within this server (third-party copies are routed to ``se.tpc`` before this)."""
    return await _copy_or_move(request, move=False)


async def move(request: web.Request) -> web.StreamResponse:
    return await _copy_or_move(request, move=True)


async def _copy_or_move(request: web.Request, move: bool) -> web.StreamResponse:
    ctx = context(request)
    src = _path(request)
    dest = parse_destination(
        request.headers.get("Destination"), request.host, ctx.cfg.server.local_hosts
    )
    if not dest.is_local:  # a remote COPY destination is a TPC push, handled above
        raise BadGateway("MOVE destination is on another server")
    dst = confine(dest.raw_path)
    overwrite = parse_overwrite(request.headers.get("Overwrite"))
    depth = parse_depth(request.headers.get("Depth"), Depth.INFINITY)
    if depth is Depth.ONE or (move and depth is not Depth.INFINITY):
        raise BadRequest(f"Depth {depth.value} is not allowed for {request.method}")
    if move:
        _authorise_rename(request, src, dst)
    else:
        authorise(request, Op.READ, src)
        if ctx.tape is not None:  # a copy reads its source: not while it is on tape only
            await ctx.tape.check_source(ctx.backend.stat(src), src)
    authorise_write(request, dst, overwrite)
    if move:
        created = await ctx.backend.move(src, dst, overwrite)
    else:
        created, failures = await ctx.backend.copy(src, dst, overwrite, depth is Depth.INFINITY)
        if failures:  # members left out (links leading out, special files): RFC 4918 §9.8.8
            body = propfind.render_status_list(
                (_href(request, p, False), e.status, e.reason) for p, e in failures
            )
            return web.Response(
                status=207, body=body, content_type="application/xml", charset="utf-8"
            )
    return web.Response(status=201 if created else 204)


def _authorise_rename(request: web.Request, src: DavPath, dst: DavPath) -> None:
    """Moving away needs delete on the source; since WLCG profile 1.3 a create-only
    caller may also rename, within what it may create, onto a name that is free."""
    try:
        authorise(request, Op.DELETE, src)
    except (Unauthorized, Forbidden):
        authorise(request, Op.CREATE, src)
        if context(request).backend.stat(dst) is not None:
            raise
        authorise(request, Op.CREATE, dst)


# -- PROPFIND / PROPPATCH ---------------------------------------------------------------
def _href(request: web.Request, path: DavPath, collection: bool) -> str:
    return _href_at(f"{request.scheme}://{request.host}", path, collection)


def _href_at(base: str, path: DavPath, collection: bool) -> str:
    # path.url() keeps '&' (RFC 3986 sub-delim): escape the whole href for XML.
    return propfind.xml_escape(base + path.url(collection))


def _resource(
    request: web.Request,
    e: DirEntry,
    quota: tuple[int, int] | None,
    localities: dict[str, str] | None = None,
) -> propfind.Resource:
    return _resource_at(f"{request.scheme}://{request.host}", e, quota, localities)


def _resource_at(
    base: str,
    e: DirEntry,
    quota: tuple[int, int] | None,
    localities: dict[str, str] | None = None,
) -> propfind.Resource:
    st = e.stat
    return propfind.Resource(
        href=_href_at(base, e.path, st.is_dir),
        name=e.path.name or "/",
        is_dir=st.is_dir,
        size=st.size,
        mtime=st.mtime,
        ctime=st.ctime_ns / 1e9,
        etag=st.etag,
        content_type="" if st.is_dir else content_type(e.path.name),
        checksums=e.checksums,
        dead=e.dead_props,
        quota=quota if st.is_dir else None,
        locality=None if localities is None or st.is_dir else localities.get(str(e.path)),
    )


async def _localities(request: web.Request, entries: list[DirEntry]) -> dict[str, str]:
    """SRM FileLocality of files: from the tape catalogue under tape prefixes, else ONLINE."""
    files = [(e.path, e.stat.size) for e in entries if not e.stat.is_dir]
    tape = context(request).tape
    if tape is None:
        return {str(p): "ONLINE" for p, _ in files}
    return await tape.file_localities(files)


# Fragments of smaller listings are not kept; the cache is for the expensive ones.
LISTING_CACHE_MIN_ENTRIES = 32
_JOIN_BELOW = 64 * 1024  # bytes of listing below which a multistatus is sent joined
_PLAIN_LIVE = frozenset(n for n in propfind.LIVE if n != (propfind.DCACHE, "Checksums"))


def lean_propfind(
    ctx: Context, msg: RawRequestMessage, body: bytes, transport: asyncio.BaseTransport
) -> fastpath.Answer | None:
    """PROPFIND Depth 0 of a file, for the lean path (se.web.fastpath): what
    :func:`propfind_handler` answers, or None when it asks for more (quota, checksums,
    locality, a collection, a body over webdav.max_xml_body, anything refused)."""
    path = fastpath.target(ctx, msg, transport, body=True)
    if path is None or len(body) > ctx.cfg.webdav.max_xml_body:
        return None
    headers = msg.headers
    host = headers.get(hdrs.HOST)
    if host is None:
        return None
    who = fastpath.credentials(ctx, msg, transport)
    if who is None:
        return None
    try:
        if parse_depth(headers.get("Depth"), Depth.INFINITY) is not Depth.ZERO:
            return None
        require(Op.STAT, path, ctx.anonymous, who[0], ctx.public)
        req = propfind.parse_propfind(body)
        if req.kind == "prop" and (
            (propfind.DCACHE, "Checksums") in req.names
            or propfind.FILE_LOCALITY in req.names
            or any(n[1].startswith("quota-") for n in req.names)
        ):
            return None
        scheme = "https" if transport.get_extra_info("sslcontext") is not None else "http"
        base = f"{scheme}://{host}"
        answers = ctx.answers
        key = (path.segments, base, req)
        if answers is not None and key in answers:
            # Rendered before from what this path stats as now (se.storage.statcache).
            data = answers.get(key, ctx.backend.identity(path))
            if data is not None:
                return _multistatus_answer(data, who)
        entry = ctx.backend.entry(path, req.kind != "prop" or not set(req.names) <= _PLAIN_LIVE)
    except SEError:
        return None
    if entry is None or entry.stat.is_dir:
        return None
    resource = _resource_at(base, entry, None)
    data = propfind.wrap_multistatus(propfind.render_responses([resource], req))
    if answers is not None:
        answers.put(key, entry.stat, data)
    return _multistatus_answer(data, who)


def _multistatus_answer(data: bytes, who: tuple[Grant | None, str]) -> fastpath.Answer:
    fields = "Content-Type: application/xml; charset=utf-8\r\n"
    return fastpath.Answer(fastpath.head(207, fields, len(data)) + data, len(data), 207, who)


async def propfind_handler(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    path = _path(request)
    depth = parse_depth(request.headers.get("Depth"), Depth.INFINITY)
    authorise(request, Op.STAT if depth is Depth.ZERO else Op.READ, path)
    req = propfind.parse_propfind(await _read_xml(request))
    if depth is Depth.INFINITY and not ctx.cfg.webdav.allow_depth_infinity:
        body = (
            '<?xml version="1.0" encoding="utf-8"?>\n<D:error xmlns:D="DAV:">'
            "<D:propfind-finite-depth/></D:error>\n"
        )
        return web.Response(status=403, text=body, content_type="application/xml")
    with_xattrs = req.kind != "prop" or not set(req.names) <= _PLAIN_LIVE
    self_entry = ctx.backend.entry(path, with_xattrs)
    if self_entry is None:
        raise NotFound(f"{path}: not found")
    # Quota (RFC 4331) is the filesystem's (inside a share with a size: the share's used
    # bytes and what is left of its size), shown on the collection asked about only: it
    # changes with every write anywhere, and would make listings impossible to keep.
    wants_quota = req.kind == "prop" and any(n[1].startswith("quota-") for n in req.names)
    quota = ctx.backend.quota(path) if wants_quota and self_entry.stat.is_dir else None
    if quota is not None and ctx.space is not None:  # in a share: its accounting
        quota = await ctx.space.quota(path, quota[1]) or quota
    if (
        req.kind == "prop"
        and (propfind.DCACHE, "Checksums") in req.names
        and not self_entry.stat.is_dir
        and depth is Depth.ZERO
    ):
        opened = ctx.backend.open_read(path, use_cache=False)
        if isinstance(opened, OpenFile):
            try:
                self_entry.checksums.update(await ctx.backend.checksums(opened, ("adler32",)))
            finally:
                opened.close()
    wants_locality = req.kind == "prop" and propfind.FILE_LOCALITY in req.names
    localities = await _localities(request, [self_entry]) if wants_locality else None
    head = propfind.render_responses([_resource(request, self_entry, quota, localities)], req)
    if not self_entry.stat.is_dir or depth is Depth.ZERO:
        return _multistatus(propfind.wrap_multistatus(head))
    children = await _children(request, path, self_entry.stat, req, depth)
    if len(children) < _JOIN_BELOW:
        return _multistatus(propfind.wrap_multistatus(head, children))
    # A large listing (often a kept one) is sent in its pieces: joining them would copy
    # (and page-fault in) the whole body once more for every request.
    response = web.StreamResponse(status=207)
    response.content_type = "application/xml"
    response.charset = "utf-8"
    parts = propfind.multistatus_parts(head, children)
    response.content_length = sum(len(part) for part in parts)
    await response.prepare(request)
    for part in parts:
        await response.write(part)
    await response.write_eof()
    return response


async def _children(
    request: web.Request, path: DavPath, directory: Stat, req: propfind.PropRequest, depth: Depth
) -> bytes:
    """The rendered members of collection ``path`` (stat-ed for this request as
    ``directory``).

    For Depth 1, on a local filesystem, the whole body is kept with a token that any change
    to the directory or to a member (through any path, by any process) makes stale (see
    se.storage.dirwatch): an unchanged listing costs one non-blocking read.  Otherwise the
    directory is read and every member stat'ed: a member's rendered fragment is reused when
    the member stats now exactly as it did when the fragment was rendered (device, inode,
    size, mtime, ctime: see se.storage.statcache); only the others are looked at again
    (symlinks checked, xattrs read) and rendered.  That pass makes no objects
    (PosixBackend.member_identities): a listdir and an lstat (relative to the open
    directory) per member.  Localities (which change without the files) are never cached.
    """
    ctx = context(request)
    cache = ctx.listings
    wants_locality = req.kind == "prop" and propfind.FILE_LOCALITY in req.names
    with_xattrs = req.kind != "prop" or not set(req.names) <= _PLAIN_LIVE
    max_entries = ctx.cfg.webdav.depth_infinity_limit
    if depth is not Depth.ONE or wants_locality or not cache.enabled:
        limit = 1 if depth is Depth.ONE else 1 << 30
        entries = await ctx.backend.list_dir(path, with_xattrs, limit, max_entries)
        localities = await _localities(request, entries) if wants_locality else None
        return propfind.render_responses(
            (_resource(request, e, None, localities) for e in entries), req
        )
    key = (request.scheme, request.host, req, path)
    whole = cache.whole(key)
    if whole is not None and ctx.backend.listing_current(whole[0], directory):
        return whole[1]
    kept = cache.group(key)
    members, token = await ctx.backend.member_identities(path, watch=True)
    small = len(members) < LISTING_CACHE_MIN_ENTRIES
    if token is not None and (small or len(members) > max_entries):
        ctx.backend.release_listing(token)  # not worth keeping, or refused below
        token = None
    if len(members) > max_entries:
        raise Forbidden("listing exceeds the configured entry limit")
    unchanged: list[bytes] = []
    changed: list[str] = []
    for name, identity in members:
        hit = kept.get(name)
        if hit is not None and identity is not None and hit[0] == identity:
            unchanged.append(hit[1])
        else:
            changed.append(name)
    if not changed:  # nothing rendered
        body = b"".join(unchanged)
        if token is not None:
            cache.replace(key, {name: kept[name] for name, _ in members}, (token, body))
        elif len(kept) != len(members):  # members were removed: forget their fragments
            cache.replace(key, {} if small else {name: kept[name] for name, _ in members})
        return body
    found = await ctx.backend.entries(path, changed, with_xattrs)
    now = time.time_ns()
    parts: list[bytes] = []
    fresh: dict[str, tuple[Identity, bytes]] = {}
    for name, identity in members:
        entry = found.get(name)
        if entry is None:
            hit = kept.get(name) if identity is not None else None
            if hit is not None and hit[0] == identity:
                fresh[name] = hit
                parts.append(hit[1])
            continue  # else vanished, or became something else, since it was listed
        fragment = propfind.render_responses((_resource(request, entry, None),), req)
        # A symlink's fragment is never kept (its identity is its target's); nor one changed
        # too recently to tell from a later change.
        if identity is not None and cache.keepable(entry.stat, now):
            fresh[name] = (entry.stat.identity, fragment)
        parts.append(fragment)
    body = b"".join(parts)
    cache.replace(key, {} if small else fresh, (token, body) if token is not None else None)
    return body


def _multistatus(body: bytes) -> web.Response:
    return web.Response(status=207, body=body, content_type="application/xml", charset="utf-8")


async def proppatch(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    path = _path(request)
    authorise(request, Op.MODIFY, path)
    body = await _read_xml(request)
    # Parsing and the xattr calls run on the I/O pool: thousands of updates must not hold
    # the event loop.  All or nothing (RFC 4918 section 9.2): when one update fails, none
    # is kept; it gets its status and every other one 424 Failed Dependency.
    ops = await ctx.backend.run(propfind.parse_proppatch, body)
    limits = ctx.cfg.webdav
    if len(ops) > limits.max_proppatch_ops:
        raise PayloadTooLarge(
            f"PROPPATCH with {len(ops)} property updates; at most "
            f"{limits.max_proppatch_ops} are accepted (webdav.max_proppatch_ops)"
        )
    for op in ops:
        if len(op.element) > limits.max_property_size:
            raise PayloadTooLarge(
                f"property {op.key[:200]} is {len(op.element)} bytes; at most "
                f"{limits.max_property_size} are accepted (webdav.max_property_size)"
            )
    if ctx.backend.stat(path) is None:
        raise NotFound(f"{path}: not found")
    protected = [op for op in ops if op.name in propfind.LIVE]
    results: list[tuple[tuple[str, str], int]] = []
    if protected:
        results = [(op.name, 403 if op in protected else 424) for op in ops]
    else:
        updates = [(op.key, op.element if op.action == "set" else None) for op in ops]
        failed = await ctx.backend.patch_props(path, updates)
        if failed is None:
            results = [(op.name, 200) for op in ops]
        else:
            index, status, _reason = failed
            results = [(op.name, status if i == index else 424) for i, op in enumerate(ops)]
    body = propfind.render_proppatch(_href(request, path, False), results)
    return web.Response(status=207, body=body, content_type="application/xml", charset="utf-8")
