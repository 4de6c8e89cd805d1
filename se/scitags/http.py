"""Fireflies (and the flowd hand-off) for the flows this server accepts: client GETs and
PUTs.  The supplier of the data is the source: this server for a GET, the client for a PUT.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from se.scitags.firefly import Flow
from se.scitags.service import SciTagService

__all__ = ["AcceptedFlow", "begin", "begin_flow"]


class AcceptedFlow:
    def __init__(self, svc: SciTagService, flow: Flow, sock: socket.socket | None) -> None:
        self._svc = svc
        self.flow = flow
        self._sock = sock
        self._done = False

    def end(self, nbytes: int) -> None:
        if self._done:
            return
        self._done = True
        self.flow.sent = nbytes
        self._svc.end(self.flow, self._sock, accepted=True)


def begin(
    request: web.Request, svc: SciTagService | None, sending: bool, subject: str = ""
) -> AcceptedFlow | None:
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
) -> AcceptedFlow | None:
    """:func:`begin` from the parts of a request (for the lean GET path, which has no
    aiohttp request)."""
    if not svc.wants_flows:
        return None
    tag = svc.tag_for(headers, query, path, method, subject)
    if tag is None or transport is None:
        return None
    local = transport.get_extra_info("sockname")
    remote = transport.get_extra_info("peername")
    if not local or not remote:
        return None
    here = (str(local[0]), int(local[1]))
    there = (str(remote[0]), int(remote[1]))
    src, dst, app = (here, there, "http-get") if sending else (there, here, "http-put")
    flow = Flow(src, dst, tag, f"{svc.cfg.application} {app}", peer=there[0])
    sock = transport.get_extra_info("socket")
    svc.start(flow, accepted=True, sock=sock)
    return AcceptedFlow(svc, flow, sock)
