"""Storage Resource Reporting, served live at ``/.well-known/se/srr`` (and ``space.srr_path``).

``GET``/``HEAD``: the SRR 4.2 document (se.space.srr) built now from the accounting
(Context.space: the same numbers as the quota check and PROPFIND), the filesystem (statvfs:
online capacity, the total of shares without a size) and, when tape is enabled, the simulated
library (nearline capacity; what the tape front says, handed in by se.app).  Who may read it
is ``space.srr_access``: by default anyone, as accounting scrapers fetch it without
credentials (it holds totals, no names of files).

``POST ?reconcile`` (or ``?reconcile=<share>``): walk the share(s) now and answer the new
totals as JSON; needs modify permission on ``/``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web

from se import __version__
from se.auth.policy import Op
from se.errors import MethodNotAllowed, NotFound, ServiceUnavailable, Unauthorized
from se.space import srr
from se.space.shares import latency_of, retention_of
from se.storage.paths import DavPath
from se.web.access import authorise, grant_of
from se.web.context import Context, context

__all__ = ["SRR_PATH", "TapeFacts", "is_srr", "response"]

SRR_PATH = "/.well-known/se/srr"


@dataclass(frozen=True, slots=True)
class TapeFacts:
    """What the tape front tells SRR: its REST endpoint and the library's (total, used)."""

    endpoint: str
    total: int
    used: int


def is_srr(request: web.Request) -> bool:
    path = request.path
    if path == SRR_PATH:
        return True
    extra = context(request).cfg.space.srr_path
    return bool(extra) and path == extra


def _statvfs(fs: str) -> tuple[int, int, int]:
    """(total, used, available) bytes of the filesystem holding ``fs`` (or its nearest
    existing parent)."""
    for _ in range(4096):  # bounded by the depth of the path
        try:
            vfs = os.statvfs(fs)
        except (FileNotFoundError, NotADirectoryError):
            parent = os.path.dirname(fs)
            if parent == fs:
                raise
            fs = parent
            continue
        frsize = vfs.f_frsize
        return (
            vfs.f_blocks * frsize,
            (vfs.f_blocks - vfs.f_bfree) * frsize,
            vfs.f_bavail * frsize,
        )
    raise OSError("path too deep")  # pragma: no cover


def _check_access(request: web.Request, ctx: Context) -> None:
    mode = ctx.cfg.space.srr_access
    if mode == "anyone":
        return
    if mode == "authenticated":
        if grant_of(request) is None:
            raise Unauthorized("SRR: credentials needed (space.srr_access = authenticated)")
        return
    authorise(request, Op.STAT, DavPath(()))


async def response(
    request: web.Request, tape: Callable[[], Awaitable[TapeFacts | None]]
) -> web.StreamResponse:
    ctx = context(request)
    space = ctx.space
    if space is None:
        raise NotFound("space accounting is turned off (space.enabled)")
    if request.method == hdrs.METH_POST:
        return await _reconcile(request, ctx)
    if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
        raise MethodNotAllowed(
            f"{request.method} is not supported here", headers={"Allow": "GET, HEAD, POST"}
        )
    _check_access(request, ctx)
    doc = await document(request, ctx, await tape())
    body = json.dumps(doc, indent=1).encode()
    return web.Response(
        body=body,
        content_type="application/json",
        headers={hdrs.CACHE_CONTROL: "no-cache"},
    )


async def document(request: web.Request, ctx: Context, tape: TapeFacts | None) -> dict[str, Any]:
    """The SRR document as this request's Host sees it."""
    space = ctx.space
    assert space is not None
    cfg = ctx.cfg
    usage = await space.all_usage_async()
    run = ctx.backend.run
    pools = cfg.tape.pools if cfg.tape.enabled else ()
    reports = []
    for share in space.shares:
        segs = tuple(seg for seg in share.prefixes[0].split("/") if seg)
        total, _used, avail = await run(_statvfs, ctx.backend.fs_path(DavPath(segs)))
        u = usage[share.name]
        if share.size:
            free = max(0, min(share.size - u.bytes, avail))
            total = share.size
        else:
            free = avail
        reports.append(
            srr.ShareReport(
                share=share,
                used=u.bytes,
                files=u.files,
                total=total,
                state=srr.serving_state(share, total, free, cfg.space.draining_free_fraction),
                latency=latency_of(share, pools),
                retention=retention_of(share, pools),
            )
        )
    online_total, online_used, _avail = await run(_statvfs, ctx.backend.root)
    base = cfg.space.endpoint or f"{request.scheme}://{request.host}/"
    interface = "http" if base.startswith("http://") else "https"
    endpoints = [srr.Endpoint("webdav", base, interface, capabilities=("tpc",))]
    if tape is not None:
        endpoints.append(srr.Endpoint("taperest", tape.endpoint, "taperest", version="v1"))
    return srr.build_document(
        implementation_version=__version__,
        name=cfg.space.service_name or request.host.rsplit(":", 1)[0].strip("[]"),
        service_id=cfg.space.service_id,
        quality_level=cfg.space.quality_level,
        endpoints=endpoints,
        shares=reports,
        online=(online_total, online_used),
        nearline=None if tape is None else (tape.total, tape.used),
        now=time.time(),
    )


async def _reconcile(request: web.Request, ctx: Context) -> web.StreamResponse:
    authorise(request, Op.MODIFY, DavPath(()))
    space = ctx.space
    assert space is not None
    if "reconcile" not in request.query:
        raise MethodNotAllowed("POST here takes ?reconcile or ?reconcile=<share>")
    name = request.query.get("reconcile") or None
    if name is not None and name not in {s.name for s in space.shares}:
        raise NotFound(f"no share named {name}")
    try:
        totals = await asyncio.wait_for(space.reconcile(name), timeout=3600)
    except TimeoutError:
        raise ServiceUnavailable("reconciliation still running after an hour") from None
    body = {n: {"bytes": u.bytes, "files": u.files} for n, u in totals.items()}
    return web.json_response(body)
