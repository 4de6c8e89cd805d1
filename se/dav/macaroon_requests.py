"""``POST`` with ``Content-Type: application/macaroon-request``: issue a macaroon (a bearer token).

Any other POST is refused with 405 (never handled as something else: a server that once
answered an unknown POST with the file's content is why gfal2 checks this).  The caller
gets at most what it may do itself: each requested activity must be allowed to it on the
path and everything below it (:func:`se.auth.policy.holds`); activities it does not hold
are dropped.  Caveats the client asks for narrow the token (``activity:``, ``path:``) or cap
its life (``before:``, ``validity``); any other caveat is refused with a 400.
"""

from __future__ import annotations

import json
import time

from aiohttp import hdrs, web

from se.auth import macaroons
from se.auth.policy import Op, holds
from se.dav.handlers import ALLOW
from se.errors import (
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    UnsupportedMediaType,
)
from se.storage.paths import confine
from se.web.access import authorise, grant_of
from se.web.body import read_body
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
            headers={"Allow": ALLOW},
        )
    ctx = context(request)
    path = confine(request.raw_path)
    body = await read_body(request, macaroons.MAX_REQUEST_BODY, "macaroon request")
    req = macaroons.parse_request(body)
    scope = req.path if req.path is not None else path
    if not scope.is_within(path) and not path.is_within(scope):
        raise Forbidden("the path caveat is outside the requested path")
    if req.path is not None and not scope.is_within(path):
        scope = path  # never wider than the URL the token was asked on
    now = time.time()
    if req.before is not None and req.before <= now:
        raise BadRequest("the before caveat is not in the future")
    grant = grant_of(request)  # an invalid token is a 401 here, not "nothing allowed"
    asked = req.activities or ("READ_METADATA",)
    # An activity is granted only when the caller holds each of its operations on the
    # whole subtree the token will cover (not merely on the path itself: a token for /a
    # may stat /, but must not yield a READ_METADATA token for / that stats everything).
    granted = [
        activity
        for activity in asked
        if all(
            holds(op, scope, ctx.anonymous, grant, ctx.public)
            for op in macaroons.ACTIVITIES[activity]
        )
    ]
    if not granted:
        authorise(request, Op.STAT, scope)  # 401 for anonymous callers, with a challenge
        raise Forbidden(f"none of the requested activities is allowed on all of {scope}")
    cfg = ctx.cfg.tpc
    lifetime = min(req.validity or cfg.macaroon_default_validity, cfg.macaroon_max_validity)
    if req.before is not None:  # the client's own limit
        lifetime = min(lifetime, req.before - now)
    if grant is not None and grant.expires:  # never outlive the presenting token
        lifetime = min(lifetime, max(0.0, grant.expires - now))
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
