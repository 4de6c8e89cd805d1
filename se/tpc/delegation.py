"""GridSite delegation over HTTPS: the endpoint a client delegates its proxy to, and what a
third-party copy with ``Credential: gridsite`` does with it.

The endpoint (``/.well-known/se/gridsite-delegation``, POST, SOAP) serves interface 2
(getVersion, getInterfaceVersion, getServiceMetadata, getProxyReq, getNewProxyReq,
renewProxyReq, putProxy, getTerminationTime, destroy) and interface 1 (getProxyReq,
putProxy), as davix (gfal2, FTS's URL copies) calls them.  The caller is the end-entity
DN of its TLS client certificate; a bearer token does not count.  SOAP faults are
answered with 500, as SOAP 1.1 over HTTP requires.

A COPY with ``Credential: gridsite`` whose client has no usable delegated proxy is
answered ``307`` to itself with ``X-Delegate-To`` naming the endpoint: davix delegates,
then repeats the COPY, which then runs with the delegated proxy as this server's TLS
client certificate towards the remote (every hop of it).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from se import __version__
from se.auth.delegation import DelegationError, DelegationStore, default_id
from se.errors import BadRequest, Forbidden, MethodNotAllowed
from se.tpc import gridsite
from se.tpc.service import TPC_SERVICE
from se.web.body import read_body
from se.web.context import context

__all__ = ["DELEGATION_PATH", "client_dn", "delegate_first", "route"]

log = logging.getLogger("se.tpc")
DELEGATION_PATH = "/.well-known/se/gridsite-delegation"
MAX_BODY = 128 << 10
INTERFACE_VERSION = {gridsite.NS_V1: "1.1.0", gridsite.NS_V2: "2.0.0"}


def route(request: web.Request) -> Callable[[], Awaitable[web.StreamResponse]] | None:
    if request.path != DELEGATION_PATH:
        return None
    return functools.partial(_endpoint, request)


async def client_dn(request: web.Request) -> str:
    """The end-entity DN of the request's client certificate; 400/403 without one."""
    if request.scheme != "https":
        raise BadRequest("GridSite delegation needs HTTPS with a client certificate")
    certificates = context(request).certificates
    transport = request.transport
    if certificates is None or transport is None:
        raise Forbidden("this server does not take client certificates (tls.client_certs)")
    grant = await certificates.grant_for(transport.get_extra_info("ssl_object"))
    if grant is None:
        raise Forbidden("GridSite delegation needs a client certificate (an X.509 proxy)")
    return grant.subject


def _store(request: web.Request) -> DelegationStore:
    store = request.app[TPC_SERVICE].delegations
    if store is None:
        raise Forbidden("this server does not take client certificates (tls.client_certs)")
    return store


def delegate_first(request: web.Request) -> web.Response:
    """The answer to a ``Credential: gridsite`` COPY whose client has not delegated yet."""
    if request.scheme != "https":
        raise BadRequest("Credential: gridsite needs HTTPS with a client certificate")
    endpoint = f"https://{request.host}{DELEGATION_PATH}"
    return web.Response(
        status=307,
        text="delegate a proxy first (X-Delegate-To), then repeat the COPY\n",
        headers={"X-Delegate-To": endpoint, hdrs.LOCATION: str(request.url)},
    )


async def _endpoint(request: web.Request) -> web.StreamResponse:
    if request.method != hdrs.METH_POST:
        raise MethodNotAllowed(
            f"{DELEGATION_PATH} takes SOAP calls by POST only", headers={"Allow": "POST"}
        )
    store = _store(request)
    dn = await client_dn(request)
    call = gridsite.parse_call(await read_body(request, MAX_BODY, "SOAP request"))
    loop = asyncio.get_running_loop()
    try:
        value = await loop.run_in_executor(None, _serve, store, dn, call)
    except DelegationError as exc:
        log.info("delegation %s by %s refused: %s", call.operation, dn, exc)
        return _soap(gridsite.fault(str(exc), namespace=call.namespace), 500)
    if call.operation == "putProxy":
        log.info("delegation: proxy of %s stored", dn)
    return _soap(gridsite.response(call, value), 200)


def _soap(body: bytes, status: int) -> web.Response:
    return web.Response(status=status, body=body, content_type="text/xml", charset="utf-8")


def _serve(store: DelegationStore, dn: str, call: gridsite.Call) -> str | dict[str, str] | None:
    """One operation (in a worker thread: keys are made, files written)."""
    op = call.operation
    ident = call.args.get("delegationID", "") or default_id(dn)
    match op:
        case "getVersion":
            return f"se-{__version__}"
        case "getInterfaceVersion":
            return INTERFACE_VERSION[call.namespace]
        case "getServiceMetadata":
            raise DelegationError(f"no service metadata {call.args.get('key', '')[:40]!r}")
        case "getProxyReq" | "renewProxyReq":
            return store.request(dn, ident)
        case "getNewProxyReq":
            ident = default_id(dn)
            return {"proxyRequest": store.request(dn, ident), "delegationID": ident}
        case "putProxy":
            store.put(dn, ident, call.args.get("proxy", ""))
            return None
        case "getTerminationTime":
            return gridsite.xsd_datetime(store.termination(dn, ident))
        case "destroy":
            store.destroy(dn, ident)
            return None
    raise DelegationError(f"unknown operation {op!r}")  # pragma: no cover - parse_call checks
