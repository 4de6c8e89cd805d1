"""``/.well-known/se/health``: is this worker fit to take requests?  For load balancers.

Answered before authentication (a balancer has no credentials) and with nothing but
status: ``200`` and a small JSON body (status, version, worker pid, uptime, the reload
generation, draining false) when serving; ``503`` with the same body and a short reason
while the worker drains at stop, when the storage root is not an accessible, writable
directory, when the state directory (where the SQLite databases live) is not, or when the
state database of the space accounting (SQLite or PostgreSQL) did not answer a read within
:data:`PROBE_TIMEOUT` seconds.  The checks (a few ``access(2)`` calls, one small query) run
in the background at most once per :data:`CHECK_TTL` seconds, so an answer never waits for
a disk or a database (it reports the last check, at most a second or two old); a hung one
counts as unhealthy after :data:`PROBE_TIMEOUT` seconds.

:data:`SERVICE` is this process's own state (one per worker, shared by its listeners):
the reload generation, whether it drains, and how many requests are in its handlers (what
a graceful stop waits for).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

from aiohttp import hdrs, web

from se import __version__
from se.config import state_dir
from se.space.accounting import Accounting
from se.web.context import context

__all__ = ["CHECK_TTL", "HEALTH_PATH", "SERVICE", "ServiceState", "response"]

HEALTH_PATH = "/.well-known/se/health"
CHECK_TTL = 1.0  # seconds a storage check is reused
PROBE_TIMEOUT = 2.0  # seconds the storage or the state database has to answer a check


@dataclass(slots=True)
class ServiceState:
    """The process's service state, read by the health page and the stop sequence."""

    started: float = field(default_factory=time.monotonic)
    generation: int = 0  # configuration reloads applied
    draining: bool = False  # set at SIGTERM: the health page answers 503 from then on
    active: int = 0  # requests inside their handlers (health checks not counted)
    polled: float = -1e9  # time.monotonic() of the last health request (a balancer's check)
    _results: dict[Hashable, tuple[float, str]] = field(default_factory=dict)
    _probes: dict[Hashable, asyncio.Task[None]] = field(default_factory=dict)

    def problem(self, key: Hashable, check: Callable[[], Awaitable[str]], silent: str) -> str:
        """The last result of ``check`` ("" when fine, else why not), started again in the
        background once older than :data:`CHECK_TTL`: the answer never waits for a disk or
        a database, not even a hung one (a check that takes longer than
        :data:`PROBE_TIMEOUT` seconds reports ``silent``)."""
        cached = self._results.get(key)
        stale = cached is None or time.monotonic() - cached[0] >= CHECK_TTL
        if stale and key not in self._probes:
            self._probes[key] = asyncio.ensure_future(self._probe(key, check, silent))
        return cached[1] if cached is not None else ""

    async def _probe(self, key: Hashable, check: Callable[[], Awaitable[str]], silent: str) -> None:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                problem = await check()
        except Exception:  # a timeout, or whatever the driver raises: the answer is the same
            problem = silent
        finally:
            del self._probes[key]
        self._results[key] = (time.monotonic(), problem)


def _storage_check(root: str, state: str) -> Callable[[], Awaitable[str]]:
    def sync() -> str:
        state_path = state if os.path.exists(state) else os.path.dirname(state)
        return _check_dir(root, "storage root") or _check_dir(state_path, "state directory")

    async def check() -> str:
        return await asyncio.get_running_loop().run_in_executor(None, sync)

    return check


def _database_check(space: Accounting) -> Callable[[], Awaitable[str]]:
    async def check() -> str:
        await space.all_usage_async()
        return ""

    return check


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
        root, state_path = cfg.storage.root, str(state_dir(cfg))
        reason = state.problem(
            ("storage", root, state_path),
            _storage_check(root, state_path),
            "storage root does not answer",
        )
    if not reason and ctx.space is not None:
        reason = state.problem(
            ("database", id(ctx.space)),
            _database_check(ctx.space),
            "state database is unreachable",
        )
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
