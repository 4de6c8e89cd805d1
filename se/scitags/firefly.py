"""Fireflies: one UDP datagram when a flow starts and one when it ends (RFC 5424 syslog
header + the SciTags JSON body), sent to the flow's peer on UDP 10514 and to any
configured collectors.  Sending never blocks or fails the data path: a datagram that
cannot go out is dropped and counted.

Orientation follows XRootD: the supplier of the data is the source.  A GET served by this
server: source = this server; a PUT: source = the client; a TPC pull: source = the remote;
a TPC push: source = this server.  ``usage`` is from the source's point of view.

Cost (a small GET sends two of them): each datagram is assembled from strings made once
(the flow's context and flow-id JSON, the header's host and app name) and a timestamp
whose date-and-second part is formatted once per second.  The sends of one event-loop
iteration are queued and made together once the iteration's callbacks have run
(:meth:`FireflySender.flush`), after the responses were written, and the metrics counters
move once per batch.  A datagram the kernel does not take (socket buffer full, an
unreachable address) is counted as dropped; nothing is discarded without being counted.
"""

from __future__ import annotations

import _socket
import datetime as dt
import errno
import functools
import ipaddress
import json
import logging
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from se import metrics
from se.loopturn import at_end_of_turn
from se.scitags.tags import Tag

__all__ = [
    "FireflySender",
    "Flow",
    "datagram",
    "now_iso",
    "plain_ip",
    "rtt_ms",
    "tcp_info",
]

log = logging.getLogger("se.scitags")
_SENT = metrics.cached(lambda: metrics.SCITAGS_FIREFLIES.labels("sent"))
_DROPPED = metrics.cached(lambda: metrics.SCITAGS_FIREFLIES.labels("dropped"))
_FILTERED = metrics.cached(lambda: metrics.SCITAGS_FIREFLIES.labels("filtered"))
MAX_DATAGRAM = 1400


@functools.lru_cache(maxsize=4096)
def plain_ip(address: str) -> str:
    """An address as fireflies want it: no zone id, v4-mapped IPv6 as plain IPv4."""
    address = address.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class _Clock:
    """UTC now as ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00`` (what ``datetime.now(UTC).isoformat(
    timespec="microseconds")`` gives, microseconds truncated as datetime does), with the
    part up to the second formatted once per second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self) -> str:
        return self.at(time.time_ns())

    def at(self, when_ns: int) -> str:
        """The time ``when_ns`` (nanoseconds since the epoch) in the same form."""
        second, ns = divmod(when_ns, 1_000_000_000)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{ns // 1000:06d}+00:00"


now_iso = _Clock()


def _iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="microseconds")


@functools.lru_cache(maxsize=4096)
def _json_str(text: str) -> str:
    """A string as a JSON value (what json.dumps writes for it)."""
    return json.dumps(text)


@functools.lru_cache(maxsize=1024)
def _context_json(experiment: int, activity: int, application: str | None) -> str:
    """``"context":{...}`` exactly as ``json.dumps(..., separators=(",", ":"))`` writes it."""
    app = f',"application":{_json_str(application)}' if application is not None else ""
    return f'"context":{{"experiment-id":{int(experiment)},"activity-id":{int(activity)}{app}}}'


@dataclass(slots=True)
class Flow:
    """One TCP flow being reported; src is the supplier of the data.

    ``started`` may be given (tests); otherwise the flow's start time is the time of its
    first firefly (the start firefly is sent when the flow starts)."""

    src: tuple[str, int]
    dst: tuple[str, int]
    tag: Tag
    application: str
    peer: str  # the other end's address (where the peer copy of fireflies goes)
    started: dt.datetime | None = None
    sent: int = 0  # bytes the source sent
    received: int = 0  # bytes the source received
    # The parts of every datagram that never change, made once (the hot path is GETs).
    _static: str = field(default="", init=False, repr=False)
    _start_iso: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        self.src = (plain_ip(self.src[0]), self.src[1])
        self.dst = (plain_ip(self.dst[0]), self.dst[1])

    @property
    def afi(self) -> str:
        return "ipv6" if ":" in self.src[0] else "ipv4"

    def static_json(self, with_application: bool = True) -> str:
        """``"context":{...},"flow-id":{...}``: the part of the JSON body that never changes."""
        if self._static and with_application:
            return self._static
        tag = self.tag
        context = _context_json(
            tag.experiment, tag.activity, self.application if with_application else None
        )
        text = (
            f'{context},"flow-id":{{"afi":"{self.afi}","src-ip":{_json_str(self.src[0])},'
            f'"dst-ip":{_json_str(self.dst[0])},"protocol":"tcp",'
            f'"src-port":{int(self.src[1])},"dst-port":{int(self.dst[1])}}}'
        )
        if with_application:
            self._static = text
        return text

    @property
    def start_iso(self) -> str:
        if not self._start_iso:
            self._start_iso = _iso(self.started) if self.started is not None else now_iso()
        return self._start_iso


def _ident(hostname: str, app_name: str) -> str:
    """The header after the timestamp: `` HOSTNAME APP-NAME PROCID MSGID SD ``."""
    return f" {hostname or '-'} {app_name} - firefly-json - "


def datagram(
    flow: Flow,
    state: str,
    hostname: str,
    app_name: str = "se",
    rtt_ms: float | None = None,
    now: dt.datetime | None = None,
) -> bytes:
    """The firefly for ``flow`` in ``state`` (start, ongoing or end)."""
    return _datagram(
        flow, state, _ident(hostname, app_name), _iso(now) if now else now_iso(), rtt_ms
    )


def _datagram(
    flow: Flow,
    state: str,
    ident: str,
    now: str,
    rtt_ms: float | None,
    end_time: str | None = None,
) -> bytes:
    if not flow._start_iso and flow.started is None:
        flow._start_iso = now  # the first firefly of the flow: it starts now
    end = f',"end-time":"{end_time or now}"' if state == "end" else ""
    lifecycle = f'{{"state":"{state}","current-time":"{now}","start-time":"{flow.start_iso}"{end}}}'
    tail = ""
    if state != "start":
        tail = f',"usage":{{"received":{int(flow.received)},"sent":{int(flow.sent)}}}'
    netlink = f',"netlink":{{"rtt":{rtt_ms:.3f}}}' if rtt_ms is not None else ""
    header = f"<134>1 {now}{ident}"
    body = f'{{"version":1,"flow-lifecycle":{lifecycle},{flow.static_json()}{tail}{netlink}}}'
    data = (header + body).encode()
    if len(data) > MAX_DATAGRAM:  # the optional parts go first; the JSON stays whole
        body = f'{{"version":1,"flow-lifecycle":{lifecycle},{flow.static_json(False)}{tail}}}'
        data = (header[:200] + body).encode()
    return data


_TCP_INFO_LEN = 232
_RTT = struct.Struct("I")  # tcpi_rtt, microseconds, at offset 68


def _tcp_info_buf(sock: object, size: int) -> bytes | None:
    """The raw TCP_INFO of ``sock`` (a socket, or the loop's stand-in for one), or None.

    uvloop's stand-in makes a full ``socket.socket`` for every call; the C-level socket
    type with explicit family/type/proto is made without a system call (the address family
    does not matter to this option), and is detached, never closed."""
    try:
        if isinstance(sock, _socket.socket):
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, size)
        fileno = getattr(sock, "fileno", None)
        fd = fileno() if fileno is not None else -1
        if not isinstance(fd, int) or fd < 0:  # none, or the transport is closed
            return None
        probe = _socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
        try:
            return probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, size)
        finally:
            probe.detach()
    except (OSError, ValueError, TypeError):  # closed, or not a socket
        return None


def rtt_ms(sock: socket.socket | None) -> float | None:
    """The smoothed RTT (ms) from TCP_INFO; None when unavailable."""
    buf = _tcp_info_buf(sock, _TCP_INFO_LEN)
    if buf is None or len(buf) < 136:
        return None
    rtt_us: int = _RTT.unpack_from(buf, 68)[0]
    return rtt_us / 1000.0


def tcp_info(sock: socket.socket | None) -> tuple[float | None, int | None, int | None]:
    """(rtt ms, bytes acked, bytes received) from TCP_INFO; Nones when unavailable."""
    buf = _tcp_info_buf(sock, _TCP_INFO_LEN)
    if buf is None or len(buf) < 136:
        return None, None, None
    (rtt_us,) = struct.unpack_from("I", buf, 68)
    (acked,) = struct.unpack_from("Q", buf, 120)
    (received,) = struct.unpack_from("Q", buf, 128)
    return rtt_us / 1000.0, acked, received


class FireflySender:
    """Non-blocking UDP sends to the flow's peer and the collectors, with counters.

    Inside a running event loop the datagrams are queued and sent by :meth:`flush`,
    scheduled once per loop iteration (``call_soon``); without one (tools, tests) they are
    sent at once.  :meth:`close` sends what is still queued."""

    def __init__(
        self,
        hostname: str,
        peer_port: int,
        send_to_peer: bool,
        collectors: Iterable[tuple[str, int]],
        exclude: Iterable[str],
        report_local: bool,
    ) -> None:
        self._hostname = hostname
        self._ident = _ident(hostname, "se")
        self._peer_port = peer_port
        self._send_to_peer = send_to_peer
        self._collectors = list(collectors)
        # One connected socket per collector (made at the first send): no address to parse
        # and no route to look up per datagram.
        self._links: list[socket.socket | None] = [None] * len(self._collectors)
        self._exclude = [ipaddress.ip_network(n, strict=False) for n in exclude]
        self._report_local = report_local
        self._socks: dict[int, socket.socket] = {}
        self._decisions: dict[str, bool] = {}
        # Queued fireflies: (datagram, peer address or "" when the peer gets no copy).
        self._queue: list[tuple[bytes, str]] = []
        self._scheduled = False
        self._unpublished = [0, 0, 0]  # sent, dropped, filtered: not yet on the metrics
        self.sent = 0
        self.dropped = 0
        self.skipped = 0  # flows not reported (filtered)

    @property
    def hostname(self) -> str:
        return self._hostname

    @hostname.setter
    def hostname(self, value: str) -> None:
        self._hostname = value
        self._ident = _ident(value, "se")

    def close(self) -> None:
        self.flush()
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()
        for i, link in enumerate(self._links):
            if link is not None:
                link.close()
                self._links[i] = None

    def reports(self, peer: str) -> bool:
        """Is a flow with this peer reported (scope filter)?  Remembered per address."""
        known = self._decisions.get(peer)
        if known is not None:
            return known
        if len(self._decisions) >= 4096:
            self._decisions.clear()
        decision = self._decide(peer)
        self._decisions[peer] = decision
        return decision

    def _decide(self, peer: str) -> bool:
        try:
            ip = ipaddress.ip_address(plain_ip(peer))
        except ValueError:
            return False
        if not self._report_local and (ip.is_loopback or ip.is_link_local):
            return False
        return not any(ip in net for net in self._exclude)

    def emit(
        self, flow: Flow, state: str, rtt_ms: float | None = None, end_time: str | None = None
    ) -> None:
        """Send (or queue) the firefly of ``flow`` in ``state``, if the flow is reported;
        an end firefly's ``end_time`` is now unless given (a flow that ended earlier)."""
        if not self.reports(flow.peer):
            self.skip()
            return
        self._enqueue(_datagram(flow, state, self._ident, now_iso(), rtt_ms, end_time), flow.peer)

    def report(self, flow: Flow, state: str, sock: socket.socket | None) -> None:
        """:meth:`emit`, with the RTT read from ``sock`` for the fireflies that carry it
        (not the start one), and only for flows that are reported."""
        if not self.reports(flow.peer):
            self.skip()
            return
        rtt = rtt_ms(sock) if state != "start" else None
        self._enqueue(_datagram(flow, state, self._ident, now_iso(), rtt), flow.peer)

    def skip(self) -> None:
        """Count a firefly of a flow that is not reported."""
        self.skipped += 1
        self._unpublished[2] += 1
        self._schedule()

    def _enqueue(self, data: bytes, peer: str) -> None:
        self._queue.append((data, plain_ip(peer) if self._send_to_peer else ""))
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = at_end_of_turn(self.flush)

    def flush(self) -> None:
        """Send the queued fireflies (the peer copy first, then one per collector) and move
        the metrics counters."""
        self._scheduled = False
        queue, self._queue = self._queue, []
        for data, peer in queue:
            if peer:
                self._send(data, peer, self._peer_port)
            for i in range(len(self._collectors)):
                self._send_collector(i, data)
        sent, dropped, filtered = self._unpublished
        if sent or dropped or filtered:
            self._unpublished = [0, 0, 0]
            if sent:
                _SENT().inc(sent)
            if dropped:
                _DROPPED().inc(dropped)
            if filtered:
                _FILTERED().inc(filtered)

    def count_dropped(self) -> None:
        self.dropped += 1
        self._unpublished[1] += 1
        self._schedule()

    def _send(self, data: bytes, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = self._socks.get(family)
            if sock is None:
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.setblocking(False)
                self._socks[family] = sock
            sock.sendto(data, (host, port))
            self.sent += 1
            self._unpublished[0] += 1
        except (OSError, OverflowError, ValueError) as exc:
            # BlockingIOError (the socket buffer is full) included: counted, not queued again
            self.dropped += 1
            self._unpublished[1] += 1
            log.debug("firefly to %s:%d dropped: %s", host, port, exc)

    def _send_collector(self, i: int, data: bytes) -> None:
        host, port = self._collectors[i]
        if not 0 < port < 65536:  # refused by sendto (connect would accept port 0)
            self._send(data, host, port)
            return
        try:
            link = self._links[i]
            if link is None:
                link = self._links[i] = _connected(host, port)
            try:
                link.send(data)
            except OSError as exc:
                if exc.errno not in _ICMP_ERRNOS:
                    raise
                # An ICMP error for an earlier datagram (collector down, unreachable) is
                # reported by the next send on a connected socket, which then sends
                # nothing: once more, and then it is the error of this datagram.
                link.send(data)
            self.sent += 1
            self._unpublished[0] += 1
        except (OSError, OverflowError, ValueError) as exc:
            self.dropped += 1
            self._unpublished[1] += 1
            log.debug("firefly to collector %s:%d dropped: %s", host, port, exc)


_ICMP_ERRNOS = frozenset(
    (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN)
)


def _connected(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock
