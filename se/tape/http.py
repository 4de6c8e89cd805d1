"""The WLCG Tape REST API v1 over HTTP, plus ``/.well-known/se/tape`` (status and switches).

Mounted on every listener beside WebDAV: :func:`route` answers the tape URLs and returns None
for everything else.  This module parses, authorises and responds; what a request does is a
:class:`~se.tape.service.TapeService` method (the service is ``app[TAPE_SERVICE]``).  Parsing
and response shapes are :mod:`se.tape.wire`; authorization is the one policy function
(``require``) per path: STAGE for stage/cancel/delete/release, POLL (or STAGE) for polling, STAT
or POLL for archiveinfo (every WLCG storage scope allows one of them).  Errors are RFC 7807
problem details.

Paths: a request's paths are kept as the client spelled them (after
:func:`~se.tape.wire.sanitise_path`) for the responses, and decoded once into the namespace path
that is the key of the store (pins, catalogue) and of authorization.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import hdrs, web

from se.auth.policy import Op
from se.errors import BadRequest, Forbidden, PayloadTooLarge, SEError, Unauthorized
from se.storage.paths import DavPath, confine
from se.storage.types import Stat
from se.tape import wire
from se.tape.model import ERR_DENIED, StageRequest
from se.tape.service import StageItem, TapeService
from se.web.access import authorise, grant_of
from se.web.body import read_body
from se.web.context import Context, context

__all__ = ["ADMIN_PATH", "DISCOVERY_PATH", "TAPE_SERVICE", "route"]

DISCOVERY_PATH = "/.well-known/wlcg-tape-rest-api"
ADMIN_PATH = "/.well-known/se/tape"
MAX_ID = 64

# The tape service of this worker, when the tape tier is enabled.
TAPE_SERVICE: web.AppKey[TapeService] = web.AppKey("se_tape", TapeService)

Handler = Callable[[web.Request, TapeService, str], Awaitable[web.StreamResponse]]


def route(request: web.Request) -> Callable[[], Awaitable[web.StreamResponse]] | None:
    """What answers a tape URL, or None when the path is not one."""
    tape = request.app.get(TAPE_SERVICE)
    if tape is None:
        return None
    path = request.path
    if path == DISCOVERY_PATH:
        return functools.partial(
            _guard, request, _discovery, tape, "", (hdrs.METH_GET, hdrs.METH_HEAD)
        )
    if path == ADMIN_PATH:
        return functools.partial(_guard, request, _admin, tape, "", (hdrs.METH_GET, hdrs.METH_POST))
    base = tape.cfg.api_path + "/"
    if not path.startswith(base):
        return None
    parts = path[len(base) :].split("/")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # gfal2 posts to "{uri}/stage/" and "{uri}/archiveinfo/"
    match parts:
        case ["stage"]:
            return functools.partial(_guard, request, _stage, tape, "", (hdrs.METH_POST,))
        case ["stage", rid]:
            return functools.partial(
                _guard, request, _poll_or_delete, tape, rid, (hdrs.METH_GET, hdrs.METH_DELETE)
            )
        case ["stage", rid, "cancel"]:
            return functools.partial(_guard, request, _cancel, tape, rid, (hdrs.METH_POST,))
        case ["release", rid]:
            return functools.partial(_guard, request, _release, tape, rid, (hdrs.METH_POST,))
        case ["archiveinfo"]:
            return functools.partial(_guard, request, _archiveinfo, tape, "", (hdrs.METH_POST,))
    return None


async def _guard(
    request: web.Request,
    handler: Handler,
    tape: TapeService,
    rid: str,
    methods: tuple[str, ...],
) -> web.StreamResponse:
    """Method check, then the handler; every error becomes problem+json."""
    try:
        if request.method not in methods:
            allow = ", ".join(methods)
            return _problem(
                405,
                "Method not allowed",
                f"{request.method}; allowed: {allow}",
                {"Allow": allow},
            )
        return await handler(request, tape, rid)
    except wire.TapeProblem as exc:
        return _problem(exc.status, exc.title, exc.detail)
    except (Unauthorized, Forbidden) as exc:
        title = "Unauthorized" if exc.status == 401 else "Forbidden"
        return _problem(exc.status, title, exc.reason, exc.headers)
    except SEError as exc:
        return _problem(exc.status, "Request refused", exc.reason, exc.headers)


def _problem(
    status: int, title: str, detail: str | None, headers: dict[str, str] | None = None
) -> web.Response:
    extra = dict(headers or {})
    return web.Response(
        status=status,
        text=json.dumps(wire.problem(status, title, detail)),
        content_type=wire.PROBLEM_TYPE,
        headers=extra,
    )


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data), content_type="application/json", headers=headers
    )


def _base_uri(request: web.Request, tape: TapeService) -> str:
    return tape.cfg.endpoint or f"{request.scheme}://{request.host}{tape.cfg.api_path}"


async def _body(request: web.Request, tape: TapeService) -> bytes:
    limit = tape.cfg.max_body_bytes
    try:
        return await read_body(request, limit)
    except PayloadTooLarge:
        raise wire.TapeProblem(413, "Request body too large", f"more than {limit} bytes") from None


def _owner(request: web.Request) -> str:
    grant = grant_of(request)
    return grant.subject if grant is not None and grant.subject else "anonymous"


def _allowed(request: web.Request, ops: Sequence[Op], path: DavPath) -> SEError | None:
    """None when the request may do one of ``ops`` on ``path``, else the refusal."""
    refusal: SEError | None = None
    for op in ops:
        try:
            authorise(request, op, path)
            return None
        except (Unauthorized, Forbidden) as exc:
            refusal = refusal or exc
    return refusal


def _may_all(request: web.Request, ops: Sequence[Op], req: StageRequest) -> bool:
    """Whether the caller may do one of ``ops`` on every path of a request.

    Owner or not: the subject alone proves nothing (a READ_METADATA macaroon of the owner
    for another path has it too).  Files that name no valid path are skipped, and so are,
    for the owner, the files its own submission was refused (settled FAILED, nothing to
    act on); at least one path must be checked.
    """
    owner = req.owner == _owner(request)
    checked = False
    for file in req.files:
        path = _canonical(file.path)
        if path is None or (owner and file.error == ERR_DENIED):
            continue
        if _allowed(request, ops, path) is not None:
            return False
        checked = True
    return checked


def _canonical(spelling: str) -> DavPath | None:
    """The namespace path a sanitised client path names (decoded once); None if invalid."""
    try:
        return confine(spelling)
    except SEError:
        return None


def _check_id(rid: str) -> None:
    if not rid or len(rid) > MAX_ID or not rid.isascii():
        raise wire.TapeProblem(404, "Not found", "no such stage request")


# -- discovery ------------------------------------------------------------------------------


async def _discovery(request: web.Request, tape: TapeService, _rid: str) -> web.StreamResponse:
    doc = wire.discovery(tape.cfg.sitename, _base_uri(request, tape), tape.cfg.description)
    # Built from the Host header unless tape.endpoint is set: then not for shared caches.
    cache = "public, max-age=3600" if tape.cfg.endpoint else "private, max-age=3600"
    return _json(doc, headers={"Cache-Control": cache})


# -- stage ----------------------------------------------------------------------------------


async def _stage(request: web.Request, tape: TapeService, _rid: str) -> web.StreamResponse:
    ctx = context(request)
    cfg = tape.cfg
    entries = wire.parse_stage(await _body(request, tape), cfg.sitename, cfg.max_files_per_request)
    files: list[tuple[str, DavPath | None, int | None, dict[str, Any] | None]] = []
    seen: set[str] = set()
    for spelling, lifetime, meta in entries:
        path = _canonical(spelling)
        key = str(path) if path is not None else spelling
        if key in seen:
            continue  # two spellings of one file
        seen.add(key)
        files.append((spelling, path, lifetime, meta))
    paths = [path for _spelling, path, _lifetime, _meta in files]
    refusals = [
        _allowed(request, (Op.STAGE,), path) if path is not None else None for path in paths
    ]
    valid = [index for index, path in enumerate(paths) if path is not None]
    if not valid:
        # Nothing to stage; still, who may not stage anything learns nothing more.
        refusal = _allowed(request, (Op.STAGE,), DavPath(()))
        if isinstance(refusal, Unauthorized):
            raise refusal
        raise wire.TapeProblem(400, "Invalid paths", "no file of the request names a valid path")
    if all(refusals[index] is not None for index in valid):
        refusal = refusals[valid[0]]
        assert refusal is not None
        raise refusal
    stats = await ctx.backend.run(_stat_all, ctx, paths)
    items = [
        StageItem(spelling, path, lifetime, meta, stat, refusal is not None)
        for (spelling, path, lifetime, meta), stat, refusal in zip(
            files, stats, refusals, strict=True
        )
    ]
    request_id = await tape.submit(_owner(request), items)
    tape.event(
        "tape",
        operation="stage",
        request=request_id,
        paths=[str(p) if p is not None else s for s, p, _l, _m in files],
        metadata=[meta for _s, _p, _l, meta in files if meta],
        owner=_owner(request),
    )
    location = f"{_base_uri(request, tape)}/stage/{request_id}"
    return _json({"requestId": request_id}, 201, {hdrs.LOCATION: location})


def _stat_all(ctx: Context, paths: Sequence[DavPath | None]) -> list[Stat | None]:
    out: list[Stat | None] = []
    for path in paths:
        try:
            out.append(None if path is None else ctx.backend.stat(path))
        except SEError:
            out.append(None)
    return out


# -- poll, cancel, delete, release ----------------------------------------------------------


async def _visible_request(
    request: web.Request, tape: TapeService, rid: str, ops: Sequence[Op]
) -> StageRequest:
    """The request, if the caller may do one of ``ops`` on all its paths; else 404 (whether
    it exists or not)."""
    _check_id(rid)
    req = await tape.get(rid)
    if req is not None and _may_all(request, ops, req):
        return req
    raise wire.TapeProblem(404, "Not found", f"no stage request {rid}")


async def _poll_or_delete(request: web.Request, tape: TapeService, rid: str) -> web.StreamResponse:
    if request.method == hdrs.METH_GET:
        req = await _visible_request(request, tape, rid, (Op.POLL, Op.STAGE))
        return _json(wire.format_request(req))
    await _visible_request(request, tape, rid, (Op.STAGE,))
    await tape.delete(rid)
    tape.event("tape", operation="delete", request=rid)
    return web.Response(status=200)


def _keys(spellings: Sequence[str]) -> list[str]:
    out: list[str] = []
    for spelling in spellings:
        path = _canonical(spelling)
        out.append(str(path) if path is not None else spelling)
    return list(dict.fromkeys(out))


async def _cancel(request: web.Request, tape: TapeService, rid: str) -> web.StreamResponse:
    req = await _visible_request(request, tape, rid, (Op.STAGE,))
    keys = _keys(wire.parse_paths(await _body(request, tape), None))
    known = {file.path for file in req.files}
    missing = [key for key in keys if key not in known]
    if missing:
        raise wire.TapeProblem(
            400,
            "File missing from stage request",
            f"the file {missing[0]} does not belong to the stage request {rid};"
            " no modification has been made to this request",
        )
    await tape.cancel(rid, keys)
    tape.event("tape", operation="cancel", request=rid, paths=keys)
    return web.Response(status=200)


async def _release(request: web.Request, tape: TapeService, rid: str) -> web.StreamResponse:
    keys = _keys(wire.parse_paths(await _body(request, tape), None))
    req = await tape.get(rid) if rid and len(rid) <= MAX_ID else None
    owner = _owner(request)
    if req is not None and _may_all(request, (Op.STAGE,), req):
        await tape.release(rid, keys)
        return web.Response(status=200)
    # Unknown id (gfal-evict sends "gfal2-placeholder-id"): the caller's own pins on the
    # paths it may stage.  Always 200, as clients expect, once it may stage one of them.
    allowed: list[str] = []
    refusal: SEError | None = None
    for key in keys:
        path = _canonical(key)
        denied = _allowed(request, (Op.STAGE,), path) if path is not None else None
        if path is not None and denied is None:
            allowed.append(key)
        refusal = refusal or denied
    if not allowed and refusal is not None:
        raise refusal
    if allowed:
        await tape.release_owner(owner, allowed)
    return web.Response(status=200)


# -- archiveinfo ----------------------------------------------------------------------------


async def _archiveinfo(request: web.Request, tape: TapeService, _rid: str) -> web.StreamResponse:
    ctx = context(request)
    spellings = wire.parse_paths(await _body(request, tape), tape.cfg.max_archiveinfo_paths)
    paths = [_canonical(spelling) for spelling in spellings]
    refusals = [
        _allowed(request, (Op.STAT, Op.POLL), path) if path is not None else None for path in paths
    ]
    valid = [index for index, path in enumerate(paths) if path is not None]
    if valid and all(refusals[index] is not None for index in valid):
        refusal = refusals[valid[0]]
        assert refusal is not None
        raise refusal
    visible = [
        path if refusal is None else None for path, refusal in zip(paths, refusals, strict=True)
    ]
    stats, writing = await ctx.backend.run(_stat_or_writing, ctx, visible)
    items = await tape.archive_info(list(zip(spellings, visible, stats, strict=True)), writing)
    return _json(wire.format_archiveinfo(items))


def _stat_or_writing(
    ctx: Context, paths: Sequence[DavPath | None]
) -> tuple[list[Stat | None], set[DavPath]]:
    """The stats of the paths, and those of the missing ones that a write in progress (a
    PUT or a TPC pull, in any worker) is about to create."""
    stats = _stat_all(ctx, paths)
    writing = {
        path
        for path, stat in zip(paths, stats, strict=True)
        if path is not None and stat is None and ctx.backend.writing(path)
    }
    return stats, writing


# -- /.well-known/se/tape -------------------------------------------------------------------


async def _admin(request: web.Request, tape: TapeService, _rid: str) -> web.StreamResponse:
    """GET: the library's state; POST: run-time switches.  Both need modify on ``/``."""
    authorise(request, Op.MODIFY, DavPath(()))
    if request.method == hdrs.METH_POST:
        await tape.set_switches(_switches(await _body(request, tape)))
    return _json(await tape.status())


def _switches(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(data, dict) or not data:
        raise BadRequest("expected a JSON object of switches")
    return data
