"""The WLCG Tape REST API v1 over HTTP, plus ``/.well-known/se/tape`` (status and switches).

Mounted on every listener beside WebDAV: :func:`route` answers the tape URLs and returns None
for everything else.  Parsing and response shapes are :mod:`se.tape.api`; authorization is the
one policy function (``require``) per path: STAGE for stage/cancel/delete/release, POLL (or
STAGE) for polling, STAT or POLL for archiveinfo (every WLCG storage scope allows one of them).
Errors are RFC 7807 problem details.

Paths: a request's paths are kept as the client spelled them (after
:func:`~se.tape.api.sanitise_path`) for the responses, and decoded once into the namespace path
that is the key of the store (pins, catalogue) and of authorization.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import hdrs, web

from se.auth.policy import Op
from se.dav.access import authorise, grant_of
from se.dav.context import Context, context
from se.errors import BadRequest, Forbidden, SEError, Unauthorized
from se.storage.paths import DavPath, confine
from se.storage.posix import Stat
from se.tape import api
from se.tape.model import CartridgeState, FileState, Locality, StageRequest
from se.tape.service import TapeService
from se.tape.simulator import ERR_EMPTY, ERR_LOST, ERR_UNAVAILABLE, ERR_UNREACHABLE
from se.tape.store import DuplicateRequestError

__all__ = ["ADMIN_PATH", "DISCOVERY_PATH", "route"]

DISCOVERY_PATH = "/.well-known/wlcg-tape-rest-api"
ADMIN_PATH = "/.well-known/se/tape"
MAX_ID = 64

ERR_MISSING = "USER ERROR: file does not exist or is not accessible to you"
ERR_DIRECTORY = "USER ERROR: path is a directory"
ERR_NOT_TAPE = "USER ERROR: file is not on a tape-backed path"
ERR_DENIED = "Permission denied"

Handler = Callable[[web.Request, TapeService, str], Awaitable[web.StreamResponse]]


def route(request: web.Request) -> Callable[[], Awaitable[web.StreamResponse]] | None:
    """What answers a tape URL, or None when the path is not one."""
    ctx = context(request)
    tape = ctx.tape
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
    except api.TapeProblem as exc:
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
        text=json.dumps(api.problem(status, title, detail)),
        content_type=api.PROBLEM_TYPE,
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
    if request.content_length is not None and request.content_length > limit:
        raise api.TapeProblem(413, "Request body too large", f"more than {limit} bytes")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise api.TapeProblem(413, "Request body too large", f"more than {limit} bytes")
    return body


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
    """Whether the caller may do one of ``ops`` on every (valid) path of a request."""
    for f in req.files:
        path = _canonical(f.path)
        if path is None or _allowed(request, ops, path) is not None:
            return False
    return True


def _canonical(spelling: str) -> DavPath | None:
    """The namespace path a sanitised client path names (decoded once); None if invalid."""
    try:
        return confine(spelling)
    except SEError:
        return None


def _check_id(rid: str) -> None:
    if not rid or len(rid) > MAX_ID or not rid.isascii():
        raise api.TapeProblem(404, "Not found", "no such stage request")


# -- discovery ------------------------------------------------------------------------------


async def _discovery(request: web.Request, tape: TapeService, _rid: str) -> web.StreamResponse:
    doc = api.discovery(tape.cfg.sitename, _base_uri(request, tape), tape.cfg.description)
    # Built from the Host header unless tape.endpoint is set: then not for shared caches.
    cache = "public, max-age=3600" if tape.cfg.endpoint else "private, max-age=3600"
    return _json(doc, headers={"Cache-Control": cache})


# -- stage ----------------------------------------------------------------------------------


async def _stage(request: web.Request, tape: TapeService, _rid: str) -> web.StreamResponse:
    ctx = context(request)
    cfg = tape.cfg
    entries = api.parse_stage(await _body(request, tape), cfg.sitename, cfg.max_files_per_request)
    owner = _owner(request)
    files: list[tuple[str, int | None, dict[str, Any] | None]] = []
    spellings: list[str] = []
    paths: list[DavPath | None] = []
    seen: set[str] = set()
    for spelling, lifetime, meta in entries:
        path = _canonical(spelling)
        key = str(path) if path is not None else spelling
        if key in seen:
            continue  # two spellings of one file
        seen.add(key)
        if lifetime is not None:
            lifetime = min(lifetime, cfg.max_pin_lifetime)
        files.append((key, lifetime, meta))
        spellings.append(spelling)
        paths.append(path)
    refusals = [_allowed(request, (Op.STAGE,), p) if p is not None else None for p in paths]
    valid = [i for i, p in enumerate(paths) if p is not None]
    if not valid:
        # Nothing to stage; still, who may not stage anything learns nothing more.
        refusal = _allowed(request, (Op.STAGE,), DavPath(()))
        if isinstance(refusal, Unauthorized):
            raise refusal
        raise api.TapeProblem(400, "Invalid paths", "no file of the request names a valid path")
    if all(refusals[i] is not None for i in valid):
        refusal = refusals[valid[0]]
        assert refusal is not None
        raise refusal
    if await tape.store.count_active(owner) >= cfg.max_active_requests:
        raise api.TapeProblem(
            429,
            "Too many requests",
            f"{owner} has {cfg.max_active_requests} active stage requests already",
        )
    now = int(time.time())
    states, pins = await _initial_states(ctx, tape, files, paths, refusals, now)
    request_id = str(uuid.uuid4())
    try:
        await tape.store.create_request(
            request_id, owner, now, files, states, spellings=spellings, pins=pins
        )
    except DuplicateRequestError:  # pragma: no cover - a uuid4 collision
        raise api.TapeProblem(500, "Internal error", "request id collision; retry") from None
    tape.requests_created += 1
    tape.files_requested += len(files)
    if any(s is FileState.SUBMITTED for s, _ in states):
        tape.queue(request_id)  # in the background: the 201 does not wait for the queues
    location = f"{_base_uri(request, tape)}/stage/{request_id}"
    return _json({"requestId": request_id}, 201, {hdrs.LOCATION: location})


async def _initial_states(
    ctx: Context,
    tape: TapeService,
    files: Sequence[tuple[str, int | None, dict[str, Any] | None]],
    paths: Sequence[DavPath | None],
    refusals: Sequence[SEError | None],
    now: int,
) -> tuple[list[tuple[FileState, str | None]], list[int | None]]:
    """What each file starts as: settled at once (missing, not tape, on disk) or SUBMITTED."""
    stats = await ctx.backend.run(_stat_all, ctx, paths)
    on_tape = [
        (p, st.size)
        for p, st in zip(paths, stats, strict=True)
        if p is not None and st is not None and not st.is_dir
    ]
    localities = await tape.localities(on_tape)
    unreachable = bool(tape.settings.get("unreachable"))
    states: list[tuple[FileState, str | None]] = []
    pins: list[int | None] = []
    for (key, lifetime, _meta), path, st, refusal in zip(
        files, paths, stats, refusals, strict=True
    ):
        pin: int | None = None
        state: tuple[FileState, str | None]
        if path is None:
            state = (FileState.FAILED, "USER ERROR: invalid path")
        elif refusal is not None:
            state = (FileState.FAILED, ERR_DENIED)
        elif st is None:
            state = (FileState.FAILED, ERR_MISSING)
        elif st.is_dir:
            state = (FileState.FAILED, ERR_DIRECTORY)
        elif tape.pool_of(path) is None:
            state = (FileState.FAILED, ERR_NOT_TAPE)
        else:
            locality = localities.get(key)
            if locality in (Locality.DISK, Locality.DISK_AND_TAPE):
                state = (FileState.COMPLETED, None)
                pin = now + (tape.cfg.pin_lifetime if lifetime is None else lifetime)
            elif locality is Locality.NONE:
                state = (FileState.FAILED, ERR_EMPTY)
            elif locality is Locality.LOST:
                state = (FileState.FAILED, ERR_LOST)
            elif locality is Locality.UNAVAILABLE:
                state = (FileState.FAILED, ERR_UNAVAILABLE)
            elif unreachable:
                state = (FileState.FAILED, ERR_UNREACHABLE)
            else:
                state = (FileState.SUBMITTED, None)
        states.append(state)
        pins.append(pin)
    return states, pins


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
    """The request, if the caller owns it or may do one of ``ops`` on all its paths; else 404."""
    _check_id(rid)
    req = await tape.store.get_request(rid)
    if req is not None and (req.owner == _owner(request) or _may_all(request, ops, req)):
        return req
    raise api.TapeProblem(404, "Not found", f"no stage request {rid}")


async def _poll_or_delete(request: web.Request, tape: TapeService, rid: str) -> web.StreamResponse:
    if request.method == hdrs.METH_GET:
        req = await _visible_request(request, tape, rid, (Op.POLL, Op.STAGE))
        return _json(api.format_request(req))
    await _visible_request(request, tape, rid, (Op.STAGE,))
    if tape.library is not None:
        await tape.library.delete(rid)
    else:
        await tape.store.delete_request(rid)
    return web.Response(status=200)


def _keys(spellings: Sequence[str]) -> list[str]:
    out: list[str] = []
    for spelling in spellings:
        path = _canonical(spelling)
        out.append(str(path) if path is not None else spelling)
    return list(dict.fromkeys(out))


async def _cancel(request: web.Request, tape: TapeService, rid: str) -> web.StreamResponse:
    req = await _visible_request(request, tape, rid, (Op.STAGE,))
    keys = _keys(api.parse_paths(await _body(request, tape), None))
    known = {f.path for f in req.files}
    missing = [k for k in keys if k not in known]
    if missing:
        raise api.TapeProblem(
            400,
            "File missing from stage request",
            f"the file {missing[0]} does not belong to the stage request {rid};"
            " no modification has been made to this request",
        )
    if tape.library is not None:
        await tape.library.cancel(rid, keys)
    else:
        await tape.store.cancel(rid, keys)
    return web.Response(status=200)


async def _release(request: web.Request, tape: TapeService, rid: str) -> web.StreamResponse:
    keys = _keys(api.parse_paths(await _body(request, tape), None))
    req = await tape.store.get_request(rid) if rid and len(rid) <= MAX_ID else None
    owner = _owner(request)
    if req is not None and (req.owner == owner or _may_all(request, (Op.STAGE,), req)):
        await tape.store.release(rid, keys)
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
        await tape.store.release_owner(owner, allowed)
    return web.Response(status=200)


# -- archiveinfo ----------------------------------------------------------------------------


async def _archiveinfo(request: web.Request, tape: TapeService, _rid: str) -> web.StreamResponse:
    ctx = context(request)
    spellings = api.parse_paths(await _body(request, tape), tape.cfg.max_archiveinfo_paths)
    paths = [_canonical(s) for s in spellings]
    refusals = [_allowed(request, (Op.STAT, Op.POLL), p) if p is not None else None for p in paths]
    valid = [i for i, p in enumerate(paths) if p is not None]
    if valid and all(refusals[i] is not None for i in valid):
        refusal = refusals[valid[0]]
        assert refusal is not None
        raise refusal
    visible = [p if r is None else None for p, r in zip(paths, refusals, strict=True)]
    stats = await ctx.backend.run(_stat_all, ctx, visible)
    files = [
        (p, st.size)
        for p, st in zip(visible, stats, strict=True)
        if p is not None and st is not None and not st.is_dir
    ]
    localities = await tape.localities(files)
    items: list[tuple[str, Locality | None, str | None]] = []
    for spelling, path, st in zip(spellings, visible, stats, strict=True):
        if path is None or st is None:
            items.append((spelling, None, ERR_MISSING))
        elif st.is_dir:
            items.append((spelling, None, ERR_DIRECTORY))
        elif tape.pool_of(path) is None:
            # Never going to tape; the locality is still given (gfal-xattr needs one).
            items.append((spelling, Locality.DISK, ERR_NOT_TAPE))
        else:
            items.append((spelling, localities.get(str(path)), None))
    return _json(api.format_archiveinfo(items))


# -- /.well-known/se/tape -------------------------------------------------------------------

_STATES = {s.value for s in CartridgeState}


async def _admin(request: web.Request, tape: TapeService, _rid: str) -> web.StreamResponse:
    """GET: the library's state; POST: run-time switches.  Both need modify on ``/``."""
    authorise(request, Op.MODIFY, DavPath(()))
    if request.method == hdrs.METH_POST:
        await _switch(tape, await _body(request, tape))
        await tape.tick()
    return _json(await status(tape))


async def _switch(tape: TapeService, body: bytes) -> None:
    try:
        data = json.loads(body)
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(data, dict) or not data:
        raise BadRequest("expected a JSON object of switches")
    for key, value in data.items():
        if key == "unreachable":
            if not isinstance(value, bool):
                raise BadRequest("unreachable: true or false")
            await tape.store.set_setting(key, value or None)
        elif key in ("bad_file_probability", "drive_failure_probability"):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1
            ):
                raise BadRequest(f"{key}: a number between 0 and 1, or null for the default")
            await tape.store.set_setting(key, value)
        elif key == "cartridges":
            if not isinstance(value, dict) or not all(
                isinstance(v, str) and v.upper() in _STATES for v in value.values()
            ):
                raise BadRequest(f"cartridges: {{vid: state}}, states {sorted(_STATES)}")
            for vid, state in value.items():
                await tape.store.set_cartridge_state(str(vid), CartridgeState(state.upper()))
        elif key in ("flush", "evict"):
            if not isinstance(value, bool):
                raise BadRequest(f"{key}: true or false")
            if value and key == "flush":
                await tape.flush(force=True)
            elif value and tape.buffer is not None:
                await tape.buffer.evict_unpinned()
        else:
            raise BadRequest(f"unknown switch {key!r}")


async def status(tape: TapeService) -> dict[str, Any]:
    """What ``se tape status`` prints: drives, queues, buffer, switches, requests."""
    out: dict[str, Any] = {
        "library": tape.library is not None,
        "settings": tape.settings,
        "cartridges": {v: s.value for v, s in tape.cartridge_states.items()},
        "localities": {
            loc.value: {"files": n, "bytes": b}
            for loc, (n, b) in (await tape.store.locality_counts()).items()
        },
    }
    lib = tape.library
    if lib is not None:
        st = lib.stats()
        out["drives"] = {"total": st.drives, "mounted": list(st.in_drives)}
        out["queued_files"] = st.queued_files
        out["queues"] = lib.queue_depths()
        out["mounts"] = {v: n for v, n in st.mounts.items() if n}
        out["files_recalled"] = st.files_recalled
        out["bytes_recalled"] = st.bytes_recalled
        out["files_failed"] = st.files_failed
        out["drive_failures"] = st.drive_failures
        out["utilisation"] = round(st.utilisation, 4)
    if tape.buffer is not None:
        out["buffer"] = {
            "capacity": tape.buffer.config.capacity,
            "used": await tape.buffer.usage(),
            "evicted_files": tape.buffer.evicted_files,
        }
    return out
