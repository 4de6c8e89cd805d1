"""Per-worker TPC state: the pooled client session, the network policy and the limits.

It is also the one place where transfers are counted for the metrics (``se.metrics``):
admitted, queued and active now, finished by result, failures by reason (the bytes are
counted by ``se.tpc.state.Transfer.progress``)."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
from aiohttp import web

from se import metrics
from se.auth.delegation import Delegated, DelegationStore
from se.config import Config, checksum_algorithms, is_loopback
from se.errors import ServiceUnavailable
from se.scitags.service import SciTagService
from se.storage.posix import PosixBackend
from se.tpc.hostaddrs import HostAddresses
from se.tpc.remote import NetworkPolicy, client_cert_context, make_session
from se.tpc.state import Transfer

__all__ = ["TPC_SERVICE", "TPCService", "refuses_local_remotes"]


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
        if self._session is not None:
            await self._session.close()

    def admit(self) -> None:
        """Count a new transfer in, or refuse it with 503 when the queue is full."""
        if self.admitted >= self.cfg.max_active + self.cfg.max_queued:
            raise ServiceUnavailable(
                f"too many third-party copies ({self.admitted} active or queued); retry later",
                headers={"Retry-After": "30"},
            )
        self.admitted += 1
        self._gauges()

    def release(self) -> None:
        self.admitted -= 1
        self._gauges()

    async def acquire_slot(self) -> None:
        await self._slots.acquire()
        self.active += 1
        self._gauges()

    def release_slot(self) -> None:
        self.active -= 1
        self._slots.release()
        self._gauges()

    def _gauges(self) -> None:
        metrics.TPC_ADMITTED.set(self.admitted)
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


_SUCCESS = metrics.cached(lambda: metrics.TPC_TRANSFERS.labels("success"))
_FAILURE = metrics.cached(lambda: metrics.TPC_TRANSFERS.labels("failure"))


TPC_SERVICE: web.AppKey[TPCService] = web.AppKey("se_tpc", TPCService)
