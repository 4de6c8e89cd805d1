"""What handlers share: the configuration and the backend, under one typed app key."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from se.auth.cache import GrantCache
from se.auth.macaroons import SecretStore
from se.auth.policy import Grant
from se.auth.wlcg import TokenVerifier
from se.config import Config
from se.scitags.service import SciTagService
from se.storage.posix import PosixBackend
from se.storage.watchcache import WatchedCache
from se.tape.service import TapeService
from se.tpc.service import TPCService

__all__ = ["CONTEXT", "Context", "context"]


@dataclass(frozen=True, slots=True)
class Context:
    cfg: Config
    backend: PosixBackend
    anonymous: str  # the anonymous access level in force
    listings: WatchedCache[bytes]  # rendered PROPFIND bodies
    tpc: TPCService
    secret: SecretStore  # key of server-issued tokens, read or made on first use
    tokens: TokenVerifier | None  # WLCG JWTs, when issuers are configured
    public: Grant | None  # explicit anonymous rules ([[auth.public]])
    grants: GrantCache  # verified tokens
    scitags: SciTagService | None  # fireflies and flow labels, when enabled
    tape: TapeService | None = None  # the tape REST API and the simulated tier, when enabled


CONTEXT: web.AppKey[Context] = web.AppKey("se_context", Context)


def context(request: web.Request) -> Context:
    return request.app[CONTEXT]
