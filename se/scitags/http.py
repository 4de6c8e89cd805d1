"""Fireflies (and the flowd hand-off) for the flows this server accepts: client GETs and
PUTs.  The supplier of the data is the source: this server for a GET, the client for a PUT.
Transfers on one keep-alive connection with one tag and direction make one flow
(:class:`se.scitags.service.ConnectionFlow`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from se.scitags.firefly import Flow
from se.scitags.service import ConnectionFlow, SciTagService

__all__ = ["begin", "begin_flow"]


def begin(
    request: web.Request, svc: SciTagService | None, sending: bool, subject: str = ""
) -> ConnectionFlow | None:
    """Start reporting this request's flow if it has (or is given) a tag; None otherwise."""
    if svc is None:
        return None
    query: Any = request.query if "scitag" in request.query_string else {}
    return begin_flow(
        svc,
        request.headers,
        query,
        request.path,
        request.method,
        subject,
        request.transport,
        sending,
    )


def begin_flow(
    svc: SciTagService,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    path: str,
    method: str,
    subject: str,
    transport: asyncio.BaseTransport | None,
    sending: bool,
) -> ConnectionFlow | None:
    """:func:`begin` from the parts of a request (for the lean GET path, which has no
    aiohttp request).  A transfer that continues its connection's open flow (same tag and
    direction, see :class:`ConnectionFlow`) sends no start firefly."""
    if not svc.wants_flows:
        return None
    tag = svc.tag_for(headers, query, path, method, subject)
    if tag is None or transport is None:
        return None
    application = svc.application_get if sending else svc.application_put
    continued = svc.resume(transport, tag, application)
    if continued is not None:
        return continued
    local = transport.get_extra_info("sockname")
    remote = transport.get_extra_info("peername")
    if not local or not remote:
        return None
    here = (str(local[0]), int(local[1]))
    there = (str(remote[0]), int(remote[1]))
    src, dst = (here, there) if sending else (there, here)
    flow = Flow(src, dst, tag, application, peer=there[0])
    sock = transport.get_extra_info("socket")
    svc.start(flow, accepted=True, sock=sock)
    return ConnectionFlow(svc, flow, transport, sock)
