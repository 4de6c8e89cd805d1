"""``/.well-known/se/dashboard`` (the page) and ``/.well-known/se/dashboard.json`` (its data).

Both answer GET and HEAD to a caller with read access to ``/`` or named in
``dashboard.admins``.  The page is one file (``page.html``, shipped with the package): its
style and script are inline, and the Content-Security-Policy allows exactly those two (by
their SHA-256), fetches to this server and nothing else, so it works offline and loads
nothing from anywhere.  :func:`on_prepare` (5xx responses) and :func:`recorder` (failed
third-party copies) keep the errors the page lists.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import hdrs, web

from se.auth.policy import Op
from se.dashboard.state import DASHBOARD, Dashboard
from se.errors import MethodNotAllowed
from se.storage.paths import DavPath
from se.tpc.handler import result_of
from se.web import testpoints
from se.web.access import authorise
from se.web.context import context
from se.web.health import HEALTH_PATH

__all__ = [
    "DASHBOARD_PATH",
    "JSON_PATH",
    "PAGE",
    "on_prepare",
    "recorder",
    "route",
    "security_policy",
]

DASHBOARD_PATH = "/.well-known/se/dashboard"
JSON_PATH = DASHBOARD_PATH + ".json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PAGE = resources.files("se.dashboard").joinpath("page.html").read_bytes()


def _hashes(tag: str, page: str) -> str:
    found = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in found
    )


def security_policy(page: bytes) -> str:
    """Inline style and script of ``page`` only, requests to this origin only."""
    text = page.decode()
    return (
        "default-src 'none'; "
        f"script-src {_hashes('script', text)}; "
        f"style-src {_hashes('style', text)}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


_HEADERS = {
    "Content-Security-Policy": security_policy(PAGE),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def route(request: web.Request) -> Callable[[], Awaitable[web.StreamResponse]] | None:
    """What answers a dashboard URL, or None (not one, or the dashboard is off)."""
    path = request.path
    if path != DASHBOARD_PATH and path != JSON_PATH:
        return None
    dash = request.app.get(DASHBOARD)
    if dash is None:
        return None
    return functools.partial(_answer, request, dash, path == JSON_PATH)


def _admit(request: web.Request) -> None:
    """Allowed: an identity named in ``dashboard.admins``, or whoever may read ``/``.  (The
    context's configuration: the one a reload put in force.)"""
    if testpoints.is_admin(request, context(request).cfg.dashboard.admins):
        return
    authorise(request, Op.READ, DavPath(()))


async def _answer(request: web.Request, dash: Dashboard, data: bool) -> web.StreamResponse:
    if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
        raise MethodNotAllowed(f"{request.path} takes GET", headers={"Allow": "GET, HEAD"})
    _admit(request)
    if not data:
        return web.Response(body=PAGE, content_type="text/html", charset="utf-8", headers=_HEADERS)
    doc = await dash.document(await _space(request))
    return web.Response(
        text=json.dumps(doc, separators=(",", ":")),
        content_type="application/json",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


async def _space(request: web.Request) -> list[dict[str, Any]] | None:
    """Used bytes and files of each share, with its limit (None: no space accounting)."""
    space = context(request).space
    if space is None:
        return None
    usage = await space.all_usage_async()
    out = []
    for share in space.shares:
        used = usage.get(share.name)
        out.append(
            {
                "name": share.name,
                "path": ", ".join(share.prefixes),
                "used": used.bytes if used is not None else 0,
                "files": used.files if used is not None else 0,
                "limit": share.size or None,
                "state": share.serving_state,
            }
        )
    return out


def _reason(resp: web.StreamResponse) -> str:
    """The one-line reason of an error response (se's are ``text/plain``)."""
    body = resp.body if isinstance(resp, web.Response) else None
    if isinstance(body, bytes) and resp.content_type == "text/plain":
        return body[:400].decode("utf-8", "replace").split("\n", 1)[0]
    return resp.reason or ""


def recorder(handler: Handler, dash: Dashboard) -> Handler:
    """Keep the third-party copies that ended in failure (or were aborted) for the page."""

    async def recorded(request: web.Request) -> web.StreamResponse:
        resp = await handler(request)
        if request.method == "COPY" and resp.status == 202:
            line = result_of(resp)
            if line is not None and not line.startswith("success"):
                dash.record(request, resp.status, line, "tpc")
        return resp

    return recorded


def on_prepare(dash: Dashboard) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """For ``on_response_prepare``: keep every 5xx response, whatever sent it (a handler,
    the error wrapper, or the 100-continue hook refusing a body, e.g. 507)."""

    async def prepared(request: web.Request, resp: web.StreamResponse) -> None:
        # A 503 of the health page is a state the balancer polls, not a failed request.
        if resp.status >= 500 and request.path != HEALTH_PATH:
            dash.record(request, resp.status, _reason(resp), "http")

    return prepared
