"""Who is asking: the request's bearer token (if any) turned into a grant, and the call
into the one policy function that every handler (WebDAV, TPC, tokens) goes through."""

from __future__ import annotations

from aiohttp import hdrs, web

from se.auth import macaroons
from se.auth.policy import Grant, Op, require
from se.dav.context import context
from se.errors import Forbidden, Unauthorized
from se.storage.paths import DavPath

__all__ = ["authorise", "authorise_write", "bearer_token", "grant_of"]

_GRANT_KEY = "se_grant"


def bearer_token(request: web.Request) -> str | None:
    """The token of ``Authorization: Bearer`` or of the ``authz`` query parameter."""
    auth = request.headers.get(hdrs.AUTHORIZATION)
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    authz = request.query.get("authz")
    if authz:
        return authz.removeprefix("Bearer ").removeprefix("Bearer%20").strip() or None
    return None


def grant_of(request: web.Request) -> Grant | None:
    """The grant of the request's token (checked once per request); 401 if it is invalid."""
    if _GRANT_KEY in request:
        grant: Grant | None = request[_GRANT_KEY]
        return grant
    token = bearer_token(request)
    grant = None
    if token is not None:
        if not macaroons.is_ours(token):
            raise Unauthorized(
                "bearer token not issued by this server",
                headers={
                    "WWW-Authenticate": 'Bearer error="invalid_token", '
                    'error_description="token not issued by this server"'
                },
            )
        grant = macaroons.verify(context(request).secret.get(), token)
    request[_GRANT_KEY] = grant
    return grant


def authorise(request: web.Request, op: Op, path: DavPath) -> None:
    """Raise unless this request may do ``op`` on ``path``.

    The anonymous level is tried first, so that a token is only read (and only able to
    fail) when it is needed.
    """
    anonymous = context(request).anonymous
    try:
        require(op, path, anonymous)
    except Unauthorized:
        grant = grant_of(request)
        if grant is None:
            raise
        require(op, path, anonymous, grant)


def authorise_write(request: web.Request, path: DavPath, overwrite: bool) -> None:
    """A write to ``path``: modify when it replaces something, else create.

    Whoever may modify may always write; a create-only caller may write where nothing
    exists yet (the filesystem is asked only in that case).
    """
    try:
        authorise(request, Op.MODIFY, path)
    except (Unauthorized, Forbidden):
        if overwrite and context(request).backend.stat(path) is not None:
            raise
        authorise(request, Op.CREATE, path)
