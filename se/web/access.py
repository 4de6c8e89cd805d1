"""Who is asking: the request's bearer token or client certificate (if any) turned into a
grant, and the call into the one policy function that every handler (WebDAV, TPC, tokens)
goes through.

:func:`authenticate` runs once per request, before its handler (and before a
100-continue is answered).  Precedence, when both may come:

* a bearer token that is present decides alone: it is always checked, an invalid one is a
  401 even where anonymous access would do or a valid certificate came with it (RFC 6750;
  no silent fallback), and a valid one's grant is the request's (the certificate is not
  looked at: a client that sends a token asks for its rights);
* without a token, a client certificate or proxy (when ``tls.client_certs`` asks for one)
  decides: a chain that cannot be trusted is a 401 with the reason, a trusted one gets the
  grant of the ``[[auth.x509]]`` rules;
* with neither, the request is anonymous.

Handlers then call the synchronous :func:`authorise`.

Each credential checked is counted for the metrics (``se_auth_total``, by kind and outcome).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import hdrs, web

from se import metrics
from se.auth import macaroons
from se.auth.policy import Grant, Op, explain, require
from se.errors import BadRequest, Forbidden, SEError, Unauthorized
from se.storage.paths import DavPath
from se.web.context import Context, context

__all__ = [
    "authenticate",
    "authorise",
    "authorise_write",
    "bearer_token",
    "check_write",
    "decision_of",
    "grant_of",
    "identity_label",
]

# The grant found for this request (None: anonymous), set once by authenticate().
_GRANT_KEY: web.RequestKey[Grant | None] = web.RequestKey("se_grant", Grant)
# The last authorisation decision of this request (events on): see decision_of().
_DECISION_KEY: web.RequestKey[tuple[str, str, str, str]] = web.RequestKey("se_decision", tuple)
_AUTH: dict[tuple[str, str], Callable[[], Any]] = {}


def _count(kind: str, outcome: str) -> None:
    """One credential checked (``kind``: token, macaroon, x509; ``outcome``: ok, cached,
    refused)."""
    get = _AUTH.get((kind, outcome))
    if get is None:
        get = _AUTH[(kind, outcome)] = metrics.cached(lambda: metrics.AUTH.labels(kind, outcome))
    get().inc()


def bearer_token(request: web.Request) -> str | None:
    """The token of ``Authorization: Bearer`` or of the ``authz`` query parameter.

    Copies of the same token count once; two different ones are a 400 (``invalid_request``).
    """
    auth = request.headers.getall(hdrs.AUTHORIZATION, ())
    # Parsing the query string is skipped unless it can hold a token (the common case).
    authz = request.query.getall("authz", ()) if "authz" in request.query_string else ()
    if len(auth) == 1 and not authz:
        scheme, _, rest = auth[0].strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        if not rest.strip():
            raise _invalid_request("empty bearer token")
        return rest.strip()
    bearer = []
    for value in auth:
        scheme, _, rest = value.strip().partition(" ")
        if scheme.lower() == "bearer":
            bearer.append(rest.strip())
    for value in authz:
        bearer.append(value.removeprefix("Bearer ").removeprefix("Bearer%20").strip())
    # Identical copies of one token (the WLCG JWT compliance suite repeats the header) are
    # one credential; two different tokens are ambiguous.
    bearer = list(dict.fromkeys(bearer))
    if len(bearer) > 1:
        raise _invalid_request("more than one bearer token in the request")
    if bearer and not bearer[0]:
        raise _invalid_request("empty bearer token")
    return bearer[0] if bearer else None


def _invalid_request(reason: str) -> BadRequest:
    return BadRequest(
        reason, headers={"WWW-Authenticate": 'Bearer realm="se", error="invalid_request"'}
    )


async def authenticate(request: web.Request) -> None:
    """Check the request's token, once; keep its grant on the request."""
    if _GRANT_KEY in request:
        return
    request[_GRANT_KEY] = None
    token = bearer_token(request)
    if token is None:
        certificates = context(request).certificates
        if certificates is not None and request.transport is not None:
            ssl_object = request.transport.get_extra_info("ssl_object")
            try:
                request[_GRANT_KEY] = grant = await certificates.grant_for(ssl_object)
            except SEError:
                _count("x509", "refused")
                raise
            if grant is not None:
                _count("x509", "ok")
        return
    ctx = context(request)
    own = _own_audiences(request, ctx.cfg.server.local_hosts)
    where = own[0]  # the audience check depends on the listener the token was sent to
    kind = "macaroon" if macaroons.is_ours(token) else "token"
    grant = ctx.grants.get(token, where)
    if grant is not None:
        request[_GRANT_KEY] = grant
        _count(kind, "cached")
        return
    try:
        if kind == "macaroon":
            grant = macaroons.verify(await ctx.secret.get(), token)
        elif ctx.tokens is not None:
            grant = await ctx.tokens.verify(token, own)
        else:
            raise Unauthorized(
                "bearer token not issued by this server",
                headers={
                    "WWW-Authenticate": 'Bearer realm="se", error="invalid_token", '
                    'error_description="token not issued by this server"'
                },
            )
    except SEError:
        _count(kind, "refused")
        raise
    _count(kind, "ok")
    ctx.grants.put(token, where, grant)
    request[_GRANT_KEY] = grant


def _own_audiences(request: web.Request, local_hosts: tuple[str, ...]) -> tuple[str, ...]:
    """This server's own URLs as token audiences, the listener first: the address and port
    the request arrived on, and each ``server.local_hosts`` name (on that port unless the
    entry names one; without the port too when it is the scheme's default).  Never the
    request's Host header, which the client chooses.
    """
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    return _own_audiences_at(request.scheme, sockname, local_hosts)


def _own_audiences_at(scheme: str, sockname: Any, local_hosts: tuple[str, ...]) -> tuple[str, ...]:
    if not sockname or not isinstance(sockname, tuple):
        return (f"{scheme}://localhost",)
    addr, port = str(sockname[0]), int(sockname[1])
    default = 443 if scheme == "https" else 80
    own: list[str] = []
    for host in (f"[{addr}]" if ":" in addr else addr, *local_hosts):
        if host.rpartition(":")[2].isdigit() and not host.endswith("]"):
            own.append(f"{scheme}://{host}")  # a local_hosts entry with its own port
            continue
        own.append(f"{scheme}://{host}:{port}")
        if port == default:
            own.append(f"{scheme}://{host}")
    return tuple(own)


def cached_grant(
    ctx: Context, authorization: list[str], scheme: str, sockname: Any
) -> tuple[Grant, str] | None:
    """For the lean path (se.web.fastpath): the grant of a request whose only credential is
    one ``Authorization: Bearer`` token that :func:`authenticate` verified before (in the
    verified-token cache for this listener), with its kind for :func:`count_cached`; None
    for anything else (the full path then judges the request as always)."""
    if len(authorization) != 1:
        return None
    scheme_name, _, rest = authorization[0].strip().partition(" ")
    token = rest.strip()
    if scheme_name.lower() != "bearer" or not token:
        return None
    where = _own_audiences_at(scheme, sockname, ctx.cfg.server.local_hosts)[0]
    grant = ctx.grants.get(token, where)
    if grant is None:
        return None
    return grant, "macaroon" if macaroons.is_ours(token) else "token"


def count_cached(kind: str) -> None:
    """A request judged by a verified token taken from the cache (as :func:`authenticate`
    counts it)."""
    _count(kind, "cached")


def identity_label(grant: Grant | None) -> str:
    """Who the request was judged as: ``-`` (anonymous), ``sub@iss`` for a token, the DN
    and the primary FQAN for a certificate or proxy."""
    if grant is None:
        return "-"
    if grant.attributes:
        return f"{grant.subject} {grant.attributes[0]}"
    return grant.subject or "-"


def grant_of(request: web.BaseRequest) -> Grant | None:
    grant: Grant | None = request.get(_GRANT_KEY)
    return grant


def authorise(request: web.Request, op: Op, path: DavPath) -> None:
    """Raise unless this request may do ``op`` on ``path``.  With events on, the decision
    and the rule that made it are kept for the request's event (:func:`decision_of`)."""
    ctx = context(request)
    grant = grant_of(request)
    if ctx.events is None:
        require(op, path, ctx.anonymous, grant, ctx.public)
        return
    try:
        require(op, path, ctx.anonymous, grant, ctx.public)
    except (Unauthorized, Forbidden):
        why = explain(op, path, ctx.anonymous, grant, ctx.public)
        request[_DECISION_KEY] = (op.value, str(path), "deny", why)
        raise
    why = explain(op, path, ctx.anonymous, grant, ctx.public)
    request[_DECISION_KEY] = (op.value, str(path), "allow", why)


def decision_of(request: web.BaseRequest) -> tuple[str, str, str, str] | None:
    """(operation, path, "allow"|"deny", the rule in words) of the request's last
    authorisation, when events are on."""
    return request.get(_DECISION_KEY)


def authorise_write(request: web.Request, path: DavPath, overwrite: bool) -> None:
    """A write to ``path``: modify when it replaces something, else create (see
    :func:`check_write`)."""
    check_write(lambda op: authorise(request, op, path), context(request), path, overwrite)


def check_write(may: Callable[[Op], None], ctx: Context, path: DavPath, overwrite: bool) -> None:
    """Raise unless a write to ``path`` is allowed, ``may(op)`` raising for an operation
    the caller may not do.

    Whoever may modify may always write; a create-only caller may write where nothing
    exists yet (the filesystem is asked only in that case).
    """
    try:
        may(Op.MODIFY)
    except (Unauthorized, Forbidden):
        if overwrite and ctx.backend.stat(path) is not None:
            raise
        may(Op.CREATE)
