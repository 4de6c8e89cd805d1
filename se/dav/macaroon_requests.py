"""``POST`` with ``Content-Type: application/macaroon-request``: issue a macaroon (a bearer token).

Any other POST is refused with 405 (never handled as something else: a server that once
answered an unknown POST with the file's content is why gfal2 checks this).  The caller
gets at most what it may do itself: each requested activity must be allowed to it on the
path, through the same policy function as every other request.
"""

from __future__ import annotations

import json
import time

from aiohttp import hdrs, web

from se.auth import macaroons
from se.auth.policy import Op
from se.errors import (
    Forbidden,
    MethodNotAllowed,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from se.storage.paths import confine
from se.web.access import authorise, grant_of
from se.web.context import context

__all__ = ["MACAROON_TYPE", "post"]

MACAROON_TYPE = "application/macaroon-request"


async def post(request: web.Request) -> web.StreamResponse:
    ctype = request.headers.get(hdrs.CONTENT_TYPE, "").split(";", 1)[0].strip().lower()
    if ctype != MACAROON_TYPE:
        if ctype:
            raise UnsupportedMediaType(f"POST accepts only {MACAROON_TYPE}, not {ctype[:60]}")
        raise MethodNotAllowed(
            f"POST is only for token requests ({MACAROON_TYPE})",
            headers={"Allow": "OPTIONS, GET, HEAD, PUT, DELETE, MKCOL, COPY, MOVE, PROPFIND"},
        )
    ctx = context(request)
    path = confine(request.raw_path)
    if request.content_length is not None and request.content_length > macaroons.MAX_REQUEST_BODY:
        raise PayloadTooLarge(f"macaroon request larger than {macaroons.MAX_REQUEST_BODY} bytes")
    body = await request.content.read(macaroons.MAX_REQUEST_BODY + 1)
    if len(body) > macaroons.MAX_REQUEST_BODY:
        raise PayloadTooLarge(f"macaroon request larger than {macaroons.MAX_REQUEST_BODY} bytes")
    req = macaroons.parse_request(body)
    scope = req.path if req.path is not None else path
    if not scope.is_within(path) and not path.is_within(scope):
        raise Forbidden("the path caveat is outside the requested path")
    if req.path is not None and not scope.is_within(path):
        scope = path  # never wider than the URL the token was asked on
    grant = grant_of(request)  # an invalid token is a 401 here, not "nothing allowed"
    asked = req.activities or ("READ_METADATA",)
    granted: list[str] = []
    for activity in asked:
        try:
            for op in macaroons.ACTIVITIES[activity]:
                authorise(request, op, scope)
        except (Unauthorized, Forbidden):
            continue  # activities can only shrink to what the caller may do itself
        granted.append(activity)
    if not granted:
        authorise(request, Op.STAT, scope)  # 401 for anonymous callers, with a challenge
        raise Forbidden(f"none of the requested activities is allowed on {scope}")
    cfg = ctx.cfg.tpc
    lifetime = min(req.validity or cfg.macaroon_default_validity, cfg.macaroon_max_validity)
    if grant is not None and grant.expires:  # never outlive the presenting token
        lifetime = min(lifetime, max(0.0, grant.expires - time.time()))
    subject = grant.subject if grant is not None else "anonymous"
    token = macaroons.issue(await ctx.secret.get(), scope, tuple(granted), lifetime, subject)
    base = f"{request.scheme}://{request.host}{scope.url()}"
    payload = {
        "macaroon": token,
        "expires_in": int(lifetime),
        "activities": granted,
        "uri": {"target": base, "targetWithMacaroon": f"{base}?authz={token}"},
    }
    return web.Response(
        text=json.dumps(payload, indent=2) + "\n",
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
