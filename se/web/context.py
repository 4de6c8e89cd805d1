"""What every front shares for one worker: configuration, backend and credentials, under one
typed app key.

The fronts above this layer (WebDAV, third-party copy, the tape REST API) never import one
another.  Where one needs something of another's domain it goes through a protocol defined
here: :class:`TapeGate` is what WebDAV and TPC ask of the tape tier (may this file be read or
copied now? which SRM locality does a listing show?), :class:`MetricSource` what the metrics
page asks of every service.  The front that owns a service keeps its own app key for the rest
(``se.tpc.service.TPC_SERVICE``, ``se.tape.http.TAPE_SERVICE``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from prometheus_client import Metric

from se.auth.cache import GrantCache
from se.auth.clientcert import CertificateAuth
from se.auth.macaroons import SecretStore
from se.auth.policy import Grant
from se.auth.wlcg import TokenVerifier
from se.config import Config
from se.events import EventLog
from se.faults import FaultState
from se.scitags.service import SciTagService
from se.space.accounting import Accounting
from se.storage.paths import DavPath
from se.storage.posix import PosixBackend
from se.storage.statcache import AnswerCache, ListingCache
from se.storage.types import Stat
from se.web.transferlog import TransferLog

__all__ = ["CONTEXT", "Context", "MetricSource", "TapeGate", "context"]


class TapeGate(Protocol):
    """What the other fronts ask of the tape tier (``None`` in the context when it is off)."""

    async def check_readable(self, path: DavPath, size: int) -> None:
        """Raise (503 with Retry-After) when the file's bytes are on tape only."""

    async def check_source(self, stat: Stat | None, path: DavPath) -> None:
        """Raise when a copy may not read this source now (on tape only)."""

    async def file_localities(self, files: Iterable[tuple[DavPath, int]]) -> dict[str, str]:
        """SRM FileLocality (``ONLINE``, ``NEARLINE``, …) of each ``(path, size)``, by path."""
        ...


class MetricSource(Protocol):
    """What ``/.well-known/se/metrics`` reads at scrape time besides the families of
    ``se.metrics`` (state all workers share, shown once): a prometheus_client collector."""

    def collect(self) -> Iterable[Metric]:
        """Its metric families."""
        ...


# Not frozen: a SIGHUP reload (se.app.reconfigure) swaps the live parts in place.
@dataclass(slots=True, kw_only=True)
class Context:
    cfg: Config
    backend: PosixBackend
    anonymous: str  # the anonymous access level in force
    listings: ListingCache  # rendered PROPFIND fragments of collection members
    answers: AnswerCache | None  # rendered answers to PROPFIND Depth 0 of files
    secret: SecretStore  # key of server-issued tokens, read or made on first use
    tokens: TokenVerifier | None  # WLCG JWTs, when issuers are configured
    public: Grant | None  # explicit anonymous rules ([[auth.public]])
    grants: GrantCache  # verified tokens
    certificates: CertificateAuth | None = None  # client certificates, when asked for
    scitags: SciTagService | None  # fireflies and flow labels, when enabled
    tape: TapeGate | None = None  # the simulated tape tier, when enabled
    metric_sources: tuple[MetricSource, ...] = ()  # in the order the metrics page shows them
    faults: FaultState | None = None  # fault injection (faults.enabled)
    events: EventLog | None = None  # events for tests (events.enabled)
    space: Accounting | None = None  # share accounting, quotas, SRR (space.enabled)
    transfers: TransferLog | None = None  # the transfer log (logging.transfer_log)


CONTEXT: web.AppKey[Context] = web.AppKey("se_context", Context)


def context(request: web.Request) -> Context:
    return request.app[CONTEXT]
