"""Where a test reaches into the server: fault rules applied to requests, the fault and
event endpoints, and the request events.

* :func:`gate` runs for every request once it is authenticated (when ``faults.enabled``):
  the first rule that fires is recorded as a ``fault`` event and kept on the request
  (:func:`fired`); its ``delay`` is served here, its ``status`` answered here, and the
  body, digest and TPC actions are taken by the front that sends the body or runs the copy.
* :func:`route` answers ``/.well-known/se/faults`` (GET lists rules with their counts,
  POST adds one, DELETE removes one or all run-time rules) and ``/.well-known/se/events``
  (GET, since a cursor, by kind and path).  Both need ``modify`` on ``/`` or an identity
  named in ``faults.admins`` / ``events.admins``; off, they do not exist (404).
* :func:`record_request` writes the ``request`` event of each request (``events.enabled``):
  method, path, status, identity, the authorisation decision and what made it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web

from se.auth import macaroons
from se.auth.policy import Grant, Op
from se.errors import BadRequest, Forbidden, MethodNotAllowed, NotFound
from se.events import KINDS, read_events
from se.faults import FaultState, Rule, criteria_match
from se.storage.paths import DavPath
from se.web.access import authorise, bearer_token, decision_of, grant_of, identity_label
from se.web.body import read_body
from se.web.context import context
from se.web.headers import parse_destination

__all__ = [
    "EVENTS_PATH",
    "FAULTS_PATH",
    "RequestFacts",
    "fired",
    "fired_markers",
    "gate",
    "is_admin",
    "record_request",
    "route",
    "started",
]

FAULTS_PATH = "/.well-known/se/faults"
EVENTS_PATH = "/.well-known/se/events"
# Set on every request the gate sees (None: no rule fired), so that reading it is a plain
# lookup on the hot path (a missing key costs an exception).
_FIRED: web.RequestKey[Rule | None] = web.RequestKey("se_fault")
_GATED: web.RequestKey[bool] = web.RequestKey("se_fault_gated", bool)
_STARTED: web.RequestKey[float] = web.RequestKey("se_started", float)
_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)")
_OWN_PATHS = ("/.well-known/se/",)
_TPC_AGENTS = re.compile(r".*tpc|dcache|storm", re.I)


def fired(request: web.BaseRequest) -> Rule | None:
    """The fault rule that fired for this request, if any."""
    try:
        return request[_FIRED]
    except KeyError:  # the gate did not see it (faults off, an endpoint of se's own)
        return None


def fired_markers(request: web.BaseRequest) -> bool:
    """Whether a third-party copy sends its performance markers (a rule may withhold them)."""
    rule = fired(request)
    return rule is None or rule.markers


def _identities(grant: Grant | None) -> tuple[str, ...]:
    if grant is None or not grant.subject:
        return ()
    names = [grant.subject]
    if grant.kind == "token" and "@" in grant.subject:
        names.append(grant.subject.rsplit("@", 1)[0])
    return tuple(names)


def _tpc_role(request: web.Request) -> str | None:
    headers = request.headers
    if request.method == "COPY":
        if "Source" in headers:
            return "pull"
        try:  # the same locality test the COPY itself will make
            where = parse_destination(
                headers.get("Destination"),
                request.host,
                context(request).cfg.server.local_hosts,
            )
        except BadRequest:
            return None
        return None if where.is_local else "push"
    if request.method in ("GET", "HEAD", "PUT"):
        if _TPC_AGENTS.match(headers.get(hdrs.USER_AGENT, "")):
            return "passive"
        token = bearer_token(request) if hdrs.AUTHORIZATION in headers else None
        if token is not None and macaroons.is_ours(token):
            return "passive"  # this server's macaroons are what third-party copies carry
    return None


class RequestFacts:
    """What the fault rules can match about a request, each worked out the first time a
    rule asks (most rules are turned away by their method or path alone)."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.method = request.method
        self.path = request.path

    @functools.cached_property
    def identities(self) -> tuple[str, ...]:
        return _identities(grant_of(self.request))

    @functools.cached_property
    def vo(self) -> str:
        grant = grant_of(self.request)
        if grant is None or not grant.attributes:
            return ""
        return grant.attributes[0].strip("/").split("/", 1)[0]

    @functools.cached_property
    def tpc(self) -> str | None:
        return _tpc_role(self.request)

    @functools.cached_property
    def range(self) -> tuple[int, int | None] | None:
        m = _RANGE.match(self.request.headers.get(hdrs.RANGE, ""))
        if m is None or not m.group(1):
            return None
        return (int(m.group(1)), int(m.group(2)) if m.group(2) else None)


async def gate(request: web.Request, faults: FaultState) -> web.StreamResponse | None:
    """Apply the fault rules to a request: a response to send instead, or None."""
    if hdrs.EXPECT in request.headers:  # the 100-continue hook may have been first
        if request.get(_GATED):
            return None
        request[_GATED] = True
    request[_FIRED] = None
    rules = faults.request_rules()
    if not rules or request.path.startswith(_OWN_PATHS):
        return None  # the fault, event and metrics endpoints stay usable whatever the rules
    facts = RequestFacts(request)
    candidates = [rule for rule in rules if criteria_match(rule, facts)]
    if not candidates:
        return None
    loop = asyncio.get_running_loop()
    rule = await loop.run_in_executor(None, faults.fire, candidates)
    if rule is None:
        return None
    request[_FIRED] = rule
    events = context(request).events
    if events is not None:
        events.record(
            "fault",
            rule=rule.id,
            actions=rule.actions(),
            method=request.method,
            path=request.path,
            tpc=facts.tpc,
            identity=identity_label(grant_of(request)),
        )
    if rule.delay:
        await asyncio.sleep(rule.delay)
    if rule.status is None:
        return None
    text = rule.body or f"fault injected by rule {rule.id}"
    resp = web.Response(
        status=rule.status,
        text=text if text.endswith("\n") else text + "\n",
        content_type="text/plain",
        headers=dict(rule.headers),
    )
    if request.can_read_body:
        resp.force_close()  # the refused body may still be on the wire
    return resp


def started(request: web.BaseRequest) -> None:
    request[_STARTED] = time.monotonic()


def record_request(request: web.Request, response: web.StreamResponse | None) -> None:
    """The ``request`` event of a finished request (events enabled)."""
    events = context(request).events
    if events is None or request.path == EVENTS_PATH:
        return
    decision = decision_of(request)
    began = request.get(_STARTED)
    size = None
    if response is not None:
        size = response.body_length if response.prepared else None
        if size is None and isinstance(response, web.Response) and response.body is not None:
            size = len(response.body) if isinstance(response.body, bytes) else None
    events.record(
        "request",
        method=request.method,
        path=request.path,
        status=response.status if response is not None else None,
        identity=identity_label(grant_of(request)),
        operation=decision[0] if decision else None,
        decision=decision[2] if decision else None,
        rule=decision[3] if decision else None,
        bytes=size,
        duration_ms=round((time.monotonic() - began) * 1000, 3) if began else None,
        fault=rule.id if (rule := fired(request)) is not None else None,
    )


def route(request: web.Request) -> Callable[[], Awaitable[web.StreamResponse]] | None:
    path = request.path
    if path == FAULTS_PATH or path.startswith(FAULTS_PATH + "/"):
        return functools.partial(_faults, request, path[len(FAULTS_PATH) + 1 :])
    if path == EVENTS_PATH:
        return functools.partial(_events, request)
    return None


def is_admin(request: web.Request, admins: tuple[str, ...]) -> bool:
    """Whether the caller's identity (token subject, ``sub@iss``, or DN) is in ``admins``."""
    grant = grant_of(request)
    return grant is not None and bool(set(_identities(grant)) & set(admins))


def _admit(request: web.Request, admins: tuple[str, ...]) -> None:
    """Allowed: an identity named in ``admins``, or whoever may modify ``/``."""
    if is_admin(request, admins):
        return
    try:
        authorise(request, Op.MODIFY, DavPath(()))
    except Forbidden:
        raise Forbidden(f"{request.path} needs modify access to / or an admin identity") from None


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data, indent=1) + "\n", content_type="application/json"
    )


async def _faults(request: web.Request, rule_id: str) -> web.StreamResponse:
    ctx = context(request)
    faults = ctx.faults
    if faults is None:
        raise NotFound(f"{request.path}: fault injection is off (faults.enabled)")
    _admit(request, ctx.cfg.faults.admins)
    loop = asyncio.get_running_loop()
    method = request.method
    if rule_id and method != hdrs.METH_DELETE:
        raise MethodNotAllowed(f"{request.path} takes DELETE", headers={"Allow": "DELETE"})
    if method in (hdrs.METH_GET, hdrs.METH_HEAD):
        return _json({"rules": await loop.run_in_executor(None, faults.listing)})
    if method == hdrs.METH_POST:
        body = await read_body(request, 64 << 10, "fault rule")
        try:
            data = json.loads(body)
        except ValueError:
            raise BadRequest("a fault rule is a JSON object") from None
        try:
            rule = await loop.run_in_executor(None, faults.add, data)
        except ValueError as exc:
            raise BadRequest(f"bad fault rule: {exc}") from None
        return _json({"id": rule.id, "source": rule.source, **rule.spec, "hits": 0}, 201)
    if method == hdrs.METH_DELETE:
        if rule_id.startswith("cfg-"):
            raise Forbidden(f"rule {rule_id} comes from the configuration")
        gone = await loop.run_in_executor(None, faults.remove, rule_id or None)
        if rule_id and not gone:
            raise NotFound(f"no fault rule {rule_id[:40]!r}")
        return web.Response(status=204)
    raise MethodNotAllowed(
        f"{FAULTS_PATH} takes GET, POST and DELETE", headers={"Allow": "GET, POST, DELETE"}
    )


async def _events(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    events = ctx.events
    if events is None:
        raise NotFound(f"{request.path}: events are off (events.enabled)")
    _admit(request, ctx.cfg.events.admins)
    if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
        raise MethodNotAllowed(f"{EVENTS_PATH} takes GET", headers={"Allow": "GET"})
    query = request.query
    kinds = [k for k in query.get("kind", "").split(",") if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise BadRequest(f"unknown event kind {unknown[0][:40]!r} (one of {', '.join(KINDS)})")
    try:
        limit = int(query.get("limit", "1000"))
    except ValueError:
        raise BadRequest("limit: an integer") from None
    if not 1 <= limit <= 100000:
        raise BadRequest("limit: 1 to 100000")
    loop = asyncio.get_running_loop()
    found, cursor = await loop.run_in_executor(
        None,
        functools.partial(
            read_events,
            events.directory,
            query.get("since", ""),
            kinds,
            query.get("path", ""),
            limit,
        ),
    )
    return _json({"events": found, "cursor": cursor})
