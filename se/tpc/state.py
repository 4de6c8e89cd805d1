"""One transfer in progress: counters the data path updates and the marker loop reads.

:meth:`Transfer.progress` is also where TPC bytes are counted for the metrics
(``se_tpc_bytes_total``, by direction)."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from se import metrics
from se.scitags.firefly import Flow
from se.scitags.service import SciTagService
from se.scitags.tags import Tag
from se.storage.paths import DavPath
from se.tpc.markers import Failure, PerfMarker, format_connection
from se.tpc.request import TransferSpec

__all__ = ["Transfer", "conn_key"]


def conn_key(obj: Any) -> int | None:
    """The local port of the connection under a client response or a stream writer."""
    connection = getattr(obj, "connection", None)
    transport = connection.transport if connection is not None else getattr(obj, "transport", None)
    local = transport.get_extra_info("sockname") if transport is not None else None
    return int(local[1]) if local else None


@functools.lru_cache(maxsize=1024)
def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


_PULLED = metrics.cached(lambda: metrics.TPC_BYTES.labels("in"))
_PUSHED = metrics.cached(lambda: metrics.TPC_BYTES.labels("out"))


class Transfer:
    """Progress of one TPC.  Only the event loop touches it (no locking needed)."""

    def __init__(
        self, spec: TransferSpec, local: DavPath, scitags: SciTagService | None = None
    ) -> None:
        self.spec = spec
        self.local = local
        self._scitags = scitags
        self.tag: Tag | None = None
        if scitags is not None:
            self.tag = scitags.tag_for({"SciTag": spec.scitag or ""}, {}, str(local), "COPY")
        # Connections seen (local port -> peer, transport) and the flows reported for the
        # ones that carried data (local port -> flow, its bytes).
        self._conns: dict[int, tuple[str, int, Any]] = {}
        self._flows: dict[int, tuple[Flow, Any]] = {}
        # The local port of the connection that carried the latest request (a response
        # whose body was read at once no longer knows its connection).
        self.last_conn: int | None = None
        self.bytes = 0
        self._counted = (_PULLED if spec.mode.value == "pull" else _PUSHED)()
        self.size: int | None = None
        self.connections: dict[str, None] = {}  # ordered set of "tcp:ip:port"
        self.created = time.monotonic()
        self.active_since: float | None = None  # a transfer slot was granted
        self.first_byte_at: float | None = None
        self.last_progress = self.created
        # Set by the watchdog before it cancels the data path.
        self.failure: Failure | None = None
        # "tcp:ip:port" of the remote and of this server's end of the latest connection.
        self._stripe: tuple[str, str] | None = None
        self._guess: str | None = None  # address taken from the URL before a connection
        # The client's delegated proxy as this server's TLS client certificate
        # (Credential: gridsite), else None.
        self.client_ssl: ssl.SSLContext | None = None
        self.ask_digest = True  # send Want-Digest (dropped when the source refuses it)
        self.compared: list[str] = []  # checksum algorithms compared and found equal
        self._hops = 0
        self._streams = 1  # several streams share the connection list

    def activate(self) -> None:
        self.active_since = self.last_progress = time.monotonic()

    def progress(self, n: int, conn: int | None = None) -> None:
        if n and conn is not None and self.tag is not None:
            self._flow_bytes(conn, n)
        if n:
            self.bytes += n
            self._counted.inc(n)
            self.last_progress = time.monotonic()
            if self.first_byte_at is None:
                self.first_byte_at = self.last_progress

    def flow_label(self) -> Callable[[], int] | None:
        """A maker of flow labels for this transfer's connections (None: unlabelled)."""
        svc = self._scitags
        if svc is None or svc.labeller is None or self.tag is None:
            return None
        labeller, tag = svc.labeller, self.tag
        return lambda: labeller.new_label(tag)

    def _flow_bytes(self, conn: int, n: int) -> None:
        entry = self._flows.get(conn)
        if entry is None:
            known = self._conns.get(conn)
            if known is None or self._scitags is None or self.tag is None:
                return
            host, port, transport = known
            local = transport.get_extra_info("sockname")
            if not local:
                return
            here, there = (str(local[0]), int(local[1])), (host, port)
            pull = self.spec.mode.value == "pull"
            src, dst = (there, here) if pull else (here, there)
            app = f"{self._scitags.cfg.application} http-tpc"
            flow = Flow(src, dst, self.tag, app, peer=host)
            entry = self._flows[conn] = (flow, transport)
            self._scitags.start(flow, accepted=False, sock=transport.get_extra_info("socket"))
        entry[0].sent += n

    def end_flows(self) -> None:
        """The end fireflies of every flow that carried data (once)."""
        if self._scitags is None:
            return
        for flow, transport in self._flows.values():
            self._scitags.end(flow, transport.get_extra_info("socket"), accepted=False)
        self._flows.clear()

    def peer(self, host: str, port: int, transport: Any = None) -> None:
        """A connection to ``host:port`` carries this transfer's next request."""
        if transport is not None:
            local = transport.get_extra_info("sockname")
            if local:
                self._conns[int(local[1])] = (host, port, transport)
                self.last_conn = int(local[1])
                here = format_connection(str(local[0]), int(local[1]))
                self._stripe = (format_connection(host, port), here)
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
        if not _is_ip_literal(host):
            return
        if not self.connections:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            self._guess = format_connection(host, port)
            self.connections[self._guess] = None

    async def follow(
        self, work: asyncio.Future[Any], done: Callable[[], int], conn: int | None = None
    ) -> None:
        """Wait for ``work`` (running on a worker thread) while turning ``done()``, its byte
        count so far, into progress for the markers and the stall watchdog."""
        seen = done()
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=0.1)
                now = done()
                self.progress(now - seen, conn)
                seen = now
        finally:
            self.progress(done() - seen, conn)

    def marker(self) -> PerfMarker:
        source = destination = ""
        if self._stripe is not None:
            remote, here = self._stripe
            pull = self.spec.mode.value == "pull"
            source, destination = (remote, here) if pull else (here, remote)
        return PerfMarker(
            timestamp=int(time.time()),
            stripe_index=0,
            stripe_bytes=self.bytes,
            total_stripes=1,
            remote_connections=tuple(self.connections),
            stripe_source=source,
            stripe_destination=destination,
        )

    def where(self) -> tuple[str, str]:
        """The remote side and the phase this transfer is in, for a failure that does not
        say: ``connect`` until a connection is up, ``first byte`` until data moved,
        ``body`` while it moves; once all of a known size has moved, ``local write`` for a
        pull (storing it) and ``close`` for a push (the destination's answer)."""
        pull = self.spec.mode.value == "pull"
        side = "source" if pull else "destination"
        if self._stripe is None:
            return side, "connect"
        if self.bytes == 0:
            return side, "first byte"
        if self.size is not None and self.bytes >= self.size:
            return ("local", "write") if pull else (side, "close")
        return side, "body"

    def streaming(self, streams: int) -> None:
        self._streams = streams
