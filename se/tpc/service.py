"""Per-worker TPC state: the pooled client session, the network policy and the limits."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
from aiohttp import web

from se.auth.delegation import Delegated, DelegationStore
from se.config import Config, checksum_algorithms, is_loopback
from se.errors import ServiceUnavailable
from se.scitags.service import SciTagService
from se.storage.posix import PosixBackend
from se.tpc.hostaddrs import HostAddresses
from se.tpc.remote import NetworkPolicy, client_cert_context, make_session
from se.web.metrics import head, line

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
        self.succeeded = 0
        self.failed = 0
        self.stopping = False  # the server is shutting down: running transfers abort
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

    def release(self) -> None:
        self.admitted -= 1

    async def acquire_slot(self) -> None:
        await self._slots.acquire()
        self.active += 1

    def release_slot(self) -> None:
        self.active -= 1
        self._slots.release()

    def metric_lines(self) -> list[str]:
        """This worker's TPC counters for ``/.well-known/se/metrics``."""
        return [
            *head("se_tpc_transfers_total", "counter", "Third-party copies finished, by result."),
            line("se_tpc_transfers_total", self.succeeded, {"result": "success"}),
            line("se_tpc_transfers_total", self.failed, {"result": "failure"}),
            *head("se_tpc_active", "gauge", "Third-party copies moving data now."),
            line("se_tpc_active", self.active),
            *head(
                "se_tpc_admitted",
                "gauge",
                "Third-party copies accepted and not finished (active + queued).",
            ),
            line("se_tpc_admitted", self.admitted),
        ]


TPC_SERVICE: web.AppKey[TPCService] = web.AppKey("se_tpc", TPCService)
