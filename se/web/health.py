"""``/.well-known/se/health``: is this worker fit to take requests?  For load balancers.

Answered before authentication (a balancer has no credentials) and with nothing but
status: ``200`` and a small JSON body (status, version, worker pid, uptime, the reload
generation, draining false) when serving; ``503`` with the same body and a short reason
while the worker drains at stop, when the storage root is not an accessible, writable
directory, or when the state directory (where the databases live) is not.  The checks are
a few ``access(2)`` calls, cached for :data:`CHECK_TTL` seconds per root.

:data:`SERVICE` is this process's own state (one per worker, shared by its listeners):
the reload generation, whether it drains, and how many requests are in its handlers (what
a graceful stop waits for).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from aiohttp import hdrs, web

from se import __version__
from se.config import state_dir
from se.web.context import context

__all__ = ["CHECK_TTL", "HEALTH_PATH", "SERVICE", "ServiceState", "response"]

HEALTH_PATH = "/.well-known/se/health"
CHECK_TTL = 1.0  # seconds a storage check is reused


@dataclass(slots=True)
class ServiceState:
    """The process's service state, read by the health page and the stop sequence."""

    started: float = field(default_factory=time.monotonic)
    generation: int = 0  # configuration reloads applied
    draining: bool = False  # set at SIGTERM: the health page answers 503 from then on
    active: int = 0  # requests inside their handlers (health checks not counted)
    _checks: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)

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
    cfg = context(request).cfg
    state = SERVICE
    reason = "draining" if state.draining else ""
    if not reason:
        state_path = state_dir(cfg)
        if not state_path.exists():  # made on first use: its parent then must be writable
            state_path = state_path.parent
        reason = state.storage_problem(cfg.storage.root, str(state_path))
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
