"""One transfer in progress: counters the data path updates and the marker loop reads."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from se.storage.paths import DavPath
from se.tpc.markers import PerfMarker, format_connection
from se.tpc.request import TransferSpec

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
        self.ask_digest = True  # send Want-Digest (dropped when the source refuses it)
        self._hops = 0
        self._streams = 1  # several streams share the connection list

    def activate(self) -> None:
        self.active_since = self.last_progress = time.monotonic()

    def progress(self, n: int) -> None:
        if n:
            self.bytes += n
            self.last_progress = time.monotonic()
            if self.first_byte_at is None:
                self.first_byte_at = self.last_progress

    def peer(self, host: str, port: int) -> None:
        """A connection to ``host:port`` carries this transfer's next request."""
        if self._guess is not None:  # the real address replaces the one from the URL
            self.connections.pop(self._guess, None)
            self._guess = None
        self.connections.setdefault(format_connection(host, port), None)

    def attempting(self, url: str) -> None:
        """Before each request (and redirect hop): forget the hosts that only redirected,
        and note the address the URL names if it is a literal."""
        self._hops += 1
        if self._hops > 1 and self._streams <= 1:
            self.connections.clear()
            self._guess = None
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

    async def follow(self, work: asyncio.Future[Any], done: Callable[[], int]) -> None:
        """Wait for ``work`` (running on a worker thread) while turning ``done()``, its byte
        count so far, into progress for the markers and the stall watchdog."""
        seen = done()
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=0.1)
                now = done()
                self.progress(now - seen)
                seen = now
        finally:
            self.progress(done() - seen)

    def marker(self) -> PerfMarker:
        return PerfMarker(
            timestamp=int(time.time()),
            stripe_index=0,
            stripe_bytes=self.bytes,
            total_stripes=1,
            remote_connections=tuple(self.connections),
        )

    def streaming(self, streams: int) -> None:
        self._streams = streams
