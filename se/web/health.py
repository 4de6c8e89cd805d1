"""``/.well-known/se/health``: is this worker fit to take requests?  For load balancers.

Answered before authentication (a balancer has no credentials) and with nothing but
status: ``200`` and a small JSON body (status, version, worker pid, uptime, the reload
generation, draining false) when serving; ``503`` with the same body and a short reason
while the worker drains at stop, when the storage root is not an accessible, writable
directory, when the state directory (where the SQLite databases live) is not, or when the
state database of the space accounting (SQLite or PostgreSQL) did not answer a read within
:data:`DB_TIMEOUT` seconds.  The checks (a few ``access(2)`` calls, one small query) are
cached for :data:`CHECK_TTL` seconds; the query runs in the background, so an answer never
waits for the database (it reports the last check, at most a second or two old).

:data:`SERVICE` is this process's own state (one per worker, shared by its listeners):
the reload generation, whether it drains, and how many requests are in its handlers (what
a graceful stop waits for).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field

from aiohttp import hdrs, web

from se import __version__
from se.config import state_dir
from se.space.accounting import Accounting
from se.web.context import context

__all__ = ["CHECK_TTL", "HEALTH_PATH", "SERVICE", "ServiceState", "response"]

HEALTH_PATH = "/.well-known/se/health"
CHECK_TTL = 1.0  # seconds a storage check is reused
DB_TIMEOUT = 2.0  # seconds the state database has to answer


@dataclass(slots=True)
class ServiceState:
    """The process's service state, read by the health page and the stop sequence."""

    started: float = field(default_factory=time.monotonic)
    generation: int = 0  # configuration reloads applied
    draining: bool = False  # set at SIGTERM: the health page answers 503 from then on
    active: int = 0  # requests inside their handlers (health checks not counted)
    polled: float = -1e9  # time.monotonic() of the last health request (a balancer's check)
    _checks: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)
    _databases: dict[int, tuple[float, str]] = field(default_factory=dict)
    _probes: dict[int, asyncio.Task[None]] = field(default_factory=dict)

    def storage_problem(self, root: str, state: str) -> str:
        """ "" when the storage root and the state directory are usable, else why not."""
        now = time.monotonic()
        key = (root, state)
        cached = self._checks.get(key)
        if cached is not None and now - cached[0] < CHECK_TTL:
            return cached[1]
        problem = _check_dir(root, "storage root") or _check_dir(state, "state directory")
        self._checks[key] = (now, problem)
        return problem

    def database_problem(self, space: Accounting) -> str:
        """Why the accounting's database failed its last read ("" when it answered); a new
        read starts when that answer is older than :data:`CHECK_TTL`."""
        key = id(space)
        cached = self._databases.get(key)
        stale = cached is None or time.monotonic() - cached[0] >= CHECK_TTL
        if stale and key not in self._probes:
            self._probes[key] = asyncio.ensure_future(self._probe(key, space))
        return cached[1] if cached is not None else ""

    async def _probe(self, key: int, space: Accounting) -> None:
        problem = ""
        try:
            async with asyncio.timeout(DB_TIMEOUT):
                await space.all_usage_async()
        except Exception:  # whatever the driver raises: the answer is the same
            problem = "state database is unreachable"
        finally:
            del self._probes[key]
        self._databases[key] = (time.monotonic(), problem)


def _check_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        return f"{what} is not accessible"
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        return f"{what} is not writable"
    return ""


SERVICE = ServiceState()


def response(request: web.Request) -> web.Response:
    """The health answer (GET or HEAD; other methods 405)."""
    if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
        return web.Response(
            status=405, text="health: GET or HEAD\n", headers={hdrs.ALLOW: "GET, HEAD"}
        )
    ctx = context(request)
    cfg = ctx.cfg
    state = SERVICE
    state.polled = time.monotonic()
    reason = "draining" if state.draining else ""
    if not reason:
        state_path = state_dir(cfg)
        if not state_path.exists():  # made on first use: its parent then must be writable
            state_path = state_path.parent
        reason = state.storage_problem(cfg.storage.root, str(state_path))
    if not reason and ctx.space is not None:
        reason = state.database_problem(ctx.space)
    body: dict[str, object] = {
        "status": "ok" if not reason else ("draining" if state.draining else "unhealthy"),
        "version": __version__,
        "pid": os.getpid(),
        "uptime": round(time.monotonic() - state.started, 3),
        "generation": state.generation,
        "draining": state.draining,
    }
    if reason:
        body["reason"] = reason
    return web.Response(
        status=503 if reason else 200,
        text=json.dumps(body) + "\n",
        content_type="application/json",
        headers={hdrs.CACHE_CONTROL: "no-store"},
    )
