"""Per-worker TPC state: the pooled client session, the network policy and the limits.

It is also the one place where transfers are counted for the metrics (``se.metrics``):
admitted, queued and active now, finished by result, failures by reason (the bytes are
counted by ``se.tpc.state.Transfer.progress``).

It also runs the one watchdog ticker of the worker: every :data:`TICK` seconds it asks each
running transfer's :class:`Watch` whether it needs its marker loop (a marker due, a new
connection, a timeout, a client gone, the server stopping), and wakes only those; a
thousand transfers waiting in the queue then cost one loop over them per tick instead of
a thousand timer wake-ups."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from se import metrics
from se.auth.delegation import Delegated, DelegationStore
from se.config import Config, checksum_algorithms, is_loopback
from se.errors import ServiceUnavailable
from se.scitags.service import SciTagService
from se.storage.posix import PosixBackend
from se.tpc import integrity
from se.tpc.hostaddrs import HostAddresses
from se.tpc.remote import NetworkPolicy, client_cert_context, make_session
from se.tpc.state import Transfer

__all__ = ["TICK", "TPC_SERVICE", "TPCService", "Watch", "refuses_local_remotes"]

TICK = 0.2  # seconds between the watchdog's looks at the running transfers


def refuses_local_remotes(cfg: Config) -> bool:
    """Are this host's own addresses refused as remotes?  (``tpc.local_remotes``; "auto":
    yes unless the server listens on loopback only, where local remotes are all there is.)
    """
    mode = cfg.tpc.local_remotes
    if mode == "auto":
        return not is_loopback(cfg.server.host)
    return mode == "refuse"


class TPCService:
    """Admission (active + queued limits), the shared client session and settings."""

    def __init__(
        self, cfg: Config, backend: PosixBackend, scitags: SciTagService | None = None
    ) -> None:
        self.cfg = cfg.tpc
        self.scitags = scitags
        self.backend = backend
        self.algorithms = checksum_algorithms(cfg)
        self.policy = NetworkPolicy.of(
            cfg.tpc.allow_networks,
            cfg.tpc.deny_networks,
            HostAddresses() if refuses_local_remotes(cfg) else None,
        )
        self._ca_dir = cfg.tls.ca_dir
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(cfg.tpc.max_active)
        self.admitted = 0  # accepted and not finished (active + queued)
        self.active = 0
        _SUCCESS(), _FAILURE()  # both results show on the metrics page from the start
        self.stopping = False  # the server is shutting down: running transfers abort
        # Transfers accepted and not finished (the dashboard lists them).
        self.running: dict[Transfer, None] = {}
        # Delegated proxies (Credential: gridsite), when client certificates are taken.
        self.delegations: DelegationStore | None = None
        self._client_contexts: dict[tuple[str, int], ssl.SSLContext] = {}
        self._watches: dict[Watch, None] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._want_digest: dict[tuple[str, ...], str] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            labeller = self.scitags.labeller if self.scitags is not None else None
            self._session = make_session(
                self.policy, self.cfg.verify_tls, self._ca_dir, self.cfg.connect_timeout, labeller
            )
        return self._session

    def client_ssl(self, proxy: Delegated) -> ssl.SSLContext:
        """The TLS context presenting a delegated proxy, made once per version of its file
        (blocking: reads the file)."""
        key = (str(proxy.path), proxy.path.stat().st_mtime_ns)
        ctx = self._client_contexts.get(key)
        if ctx is None:
            if len(self._client_contexts) >= 256:
                self._client_contexts.clear()
            ctx = client_cert_context(self.cfg.verify_tls, self._ca_dir, str(proxy.path))
            self._client_contexts[key] = ctx
        return ctx

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._session is not None:
            await self._session.close()

    def want_digest(self, first: tuple[str, ...]) -> str:
        """The ``Want-Digest`` value asking for ``first`` (the client's algorithms), then
        the configured ones (made once per distinct ``first``)."""
        value = self._want_digest.get(first)
        if value is None:
            if len(self._want_digest) >= 64:
                self._want_digest.clear()
            value = self._want_digest[first] = integrity.want_digest(first, self.algorithms)
        return value

    def watch(self, task: asyncio.Future[Any], due: Callable[[float], bool]) -> Watch:
        """Register a marker loop: ``due(now)`` says whether it has work; its :meth:`Watch.wait`
        returns when it has (checked every :data:`TICK` s) or when ``task`` is done.  The
        caller must :meth:`Watch.close` it."""
        w = Watch(self, task, due)
        self._watches[w] = None
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick())
        return w

    def _unwatch(self, w: Watch) -> None:
        self._watches.pop(w, None)

    async def _tick(self) -> None:
        """Wake the marker loops that have work, every TICK s, while there are any."""
        while self._watches:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            for w in list(self._watches):
                w.poke(now)

    def admit(self) -> None:
        """Count a new transfer in, or refuse it with 503 when the queue is full."""
        if self.admitted >= self.cfg.max_active + self.cfg.max_queued:
            raise ServiceUnavailable(
                f"too many third-party copies ({self.admitted} active or queued); retry later",
                headers={"Retry-After": "30"},
            )
        self.admitted += 1
        self._gauges(active=False)

    def release(self) -> None:
        self.admitted -= 1
        self._gauges(active=False)

    async def acquire_slot(self) -> None:
        await self._slots.acquire()
        self.active += 1
        self._gauges(admitted=False)

    def release_slot(self) -> None:
        self.active -= 1
        self._slots.release()
        self._gauges(admitted=False)

    def _gauges(self, admitted: bool = True, active: bool = True) -> None:
        """Set the gauges (only those that can have changed: each is a shared-memory write)."""
        if admitted:
            metrics.TPC_ADMITTED.set(self.admitted)
        if active:
            metrics.TPC_ACTIVE.set(self.active)
        metrics.TPC_QUEUED.set(self.admitted - self.active)

    @staticmethod
    def succeeded() -> None:
        """A transfer ended with ``success``."""
        _SUCCESS().inc()

    @staticmethod
    def failed(reason: str) -> None:
        """A transfer ended with ``failure`` (or ``aborted``); ``reason``: the failure
        line's tag (``source connect``, ``local write``, ``checksum``...), ``aborted`` or
        ``injected``."""
        _FAILURE().inc()
        metrics.TPC_FAILURES.labels(reason).inc()


class Watch:
    """One marker loop under the service's watchdog ticker (see :meth:`TPCService.watch`)."""

    __slots__ = ("_due", "_svc", "_task", "_waiter")

    def __init__(
        self, svc: TPCService, task: asyncio.Future[Any], due: Callable[[float], bool]
    ) -> None:
        self._svc = svc
        self._task = task
        self._due = due
        self._waiter: asyncio.Future[None] | None = None
        task.add_done_callback(self._wake)

    async def wait(self) -> None:
        """Until the task is done or the ticker finds work (at most TICK s late)."""
        if self._task.done():
            return
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def poke(self, now: float) -> None:
        """The ticker's look: wake the loop if it has work (or if asking fails: the loop
        then meets the same error itself)."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        try:
            due = self._due(now)
        except Exception:
            due = True
        if due:
            waiter.set_result(None)

    def _wake(self, _task: object = None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        self._task.remove_done_callback(self._wake)
        self._svc._unwatch(self)


_SUCCESS = metrics.cached(lambda: metrics.TPC_TRANSFERS.labels("success"))
_FAILURE = metrics.cached(lambda: metrics.TPC_TRANSFERS.labels("failure"))


TPC_SERVICE: web.AppKey[TPCService] = web.AppKey("se_tpc", TPCService)
