"""One transfer in progress: counters the data path updates and the marker loop reads."""

from __future__ import annotations

import ipaddress
import time
from urllib.parse import urlsplit

import aiohttp

from se.storage.paths import DavPath
from se.tpc.markers import PerfMarker, format_connection
from se.tpc.request import Mode, TransferSpec

__all__ = ["Transfer"]


class Transfer:
    """Progress of one TPC.  Only the event loop touches it (no locking needed)."""

    def __init__(self, spec: TransferSpec, local: DavPath) -> None:
        self.spec = spec
        self.local = local
        self.bytes = 0
        self.size: int | None = None
        self.connections: dict[str, None] = {}  # ordered set of "tcp:ip:port"
        self.created = time.monotonic()
        self.active_since: float | None = None  # a transfer slot was granted
        self.first_byte_at: float | None = None
        self.last_progress = self.created
        self.failure: str | None = None  # set by the watchdog before it cancels the data path
        self._guess: str | None = None  # address taken from the URL before a connection

    @property
    def peer_name(self) -> str:
        return "source" if self.spec.mode is Mode.PULL else "destination"

    def activate(self) -> None:
        self.active_since = self.last_progress = time.monotonic()

    def progress(self, n: int) -> None:
        if n:
            self.bytes += n
            self.last_progress = time.monotonic()
            if self.first_byte_at is None:
                self.first_byte_at = self.last_progress

    def connected(self, host: str, port: int) -> None:
        self.connections.setdefault(format_connection(host, port), None)

    def connected_by(self, resp: aiohttp.ClientResponse) -> None:
        """Record the peer address of the connection that carried ``resp``."""
        conn = resp.connection
        transport = conn.transport if conn is not None else None
        peer = transport.get_extra_info("peername") if transport is not None else None
        if peer:
            if self._guess is not None:  # the real address replaces the one from the URL
                self.connections.pop(self._guess, None)
                self._guess = None
            self.connected(str(peer[0]), int(peer[1]))

    def attempting(self, url: str) -> None:
        """Before any connection exists: note the address the URL names, if a literal."""
        parts = urlsplit(url)
        host = (parts.hostname or "").strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return
        if not self.connections:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            self._guess = format_connection(host, port)
            self.connections[self._guess] = None

    def marker(self) -> PerfMarker:
        return PerfMarker(
            timestamp=int(time.time()),
            stripe_index=0,
            stripe_bytes=self.bytes,
            total_stripes=1,
            remote_connections=tuple(self.connections),
        )
