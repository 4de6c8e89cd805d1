"""Client certificates and VOMS proxies as credentials: the TLS peer chain of a request
turned into a :class:`~se.auth.policy.Grant` by the ``[[auth.x509]]`` rules.

The chain is verified by :mod:`se.auth.x509` (trust, proxies, CRLs, the VOMS attribute
certificate) on a worker thread the first time it is seen; the grant is then remembered by
the chain's fingerprint, and by the TLS connection (so the requests of a kept-alive
connection cost a dictionary lookup), for at most a minute (so a new CRL or a changed
vomsdir applies within a minute) and never past the chain's or the AC's end.  A chain that cannot be
trusted is a 401 with the reason; an AC that fails a check is logged (once per chain) and
the identity keeps its DN without FQANs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import ssl
import time
import weakref
from collections.abc import Sequence

from se.auth.cache import GrantCache
from se.auth.gridmap import GridMap
from se.auth.policy import Grant
from se.auth.x509 import X509Error, X509Verifier, peer_chain
from se.config import Config
from se.errors import Unauthorized

__all__ = ["CertificateAuth", "refused"]

log = logging.getLogger("se.auth")
RECHECK_SECONDS = 60.0


def refused(reason: str) -> Unauthorized:
    return Unauthorized(
        f"client certificate refused: {reason}",
        headers={"WWW-Authenticate": 'Bearer realm="se"'},
    )


class CertificateAuth:
    """One per worker: the verifier, the rules and the verified chains."""

    def __init__(self, cfg: Config) -> None:
        auth = cfg.auth
        if auth is None:  # pragma: no cover - the caller checks
            raise ValueError("client certificates need an [auth] section")
        hosts = {*cfg.server.local_hosts, socket.getfqdn(), "localhost"}
        self.verifier = X509Verifier(
            cfg.tls.ca_dir,
            auth.vomsdir,
            max_proxy_depth=auth.max_proxy_depth,
            crl_mode=auth.crl_mode,
            host_names=tuple(sorted(h for h in hosts if h)),
        )
        self.rules = GridMap(auth.x509, auth.stage_implies_read)
        self._grants = GrantCache(auth.token_cache_entries, RECHECK_SECONDS)
        self._connections: weakref.WeakKeyDictionary[ssl.SSLObject, tuple[Grant | None, float]]
        self._connections = weakref.WeakKeyDictionary()

    async def grant_for(self, ssl_object: ssl.SSLObject | None) -> Grant | None:
        """The grant of a TLS connection's client certificate; None without one; raises a
        401 when it is refused."""
        if ssl_object is None:
            return None
        known = self._connections.get(ssl_object)
        now = time.time()
        if known is not None and now < known[1]:
            return known[0]
        chain = peer_chain(ssl_object)
        grant = await self.grant(chain) if chain else None
        until = now + RECHECK_SECONDS
        if grant is not None and grant.expires:
            until = min(until, grant.expires)
        self._connections[ssl_object] = (grant, until)
        return grant

    async def grant(self, chain: Sequence[bytes]) -> Grant:
        """The grant of a verified peer chain (leaf first); raises a 401 when refused."""
        digest = hashlib.sha256()
        for der in chain:
            digest.update(len(der).to_bytes(4, "big"))
            digest.update(der)
        key = digest.hexdigest()
        grant = self._grants.get(key, "x509")
        if grant is not None:
            return grant
        loop = asyncio.get_running_loop()
        try:
            identity = await loop.run_in_executor(None, self.verifier.identify, list(chain))
        except X509Error as exc:
            raise refused(str(exc)) from None
        if identity.ac_problem:
            log.warning("VOMS attributes of %s ignored: %s", identity.dn, identity.ac_problem)
        grant = self.rules.grant(identity.dn, identity.fqans, identity.not_after)
        self._grants.put(key, "x509", grant)
        return grant
