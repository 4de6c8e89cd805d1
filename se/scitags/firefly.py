"""Fireflies: one UDP datagram when a flow starts and one when it ends (RFC 5424 syslog
header + the SciTags JSON body), sent to the flow's peer on UDP 10514 and to any
configured collectors.  Sending never blocks or fails the data path: a datagram that
cannot go out is dropped and counted.

Orientation follows XRootD: the supplier of the data is the source.  A GET served by this
server: source = this server; a PUT: source = the client; a TPC pull: source = the remote;
a TPC push: source = this server.  ``usage`` is from the source's point of view.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import json
import logging
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from se import metrics
from se.scitags.tags import Tag

__all__ = [
    "FireflySender",
    "Flow",
    "datagram",
    "plain_ip",
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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="microseconds")


@dataclass(slots=True)
class Flow:
    """One TCP flow being reported; src is the supplier of the data."""

    src: tuple[str, int]
    dst: tuple[str, int]
    tag: Tag
    application: str
    peer: str  # the other end's address (where the peer copy of fireflies goes)
    started: dt.datetime = field(default_factory=_now)
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
        if self._static and with_application:
            return self._static
        context: dict[str, object] = {
            "experiment-id": self.tag.experiment,
            "activity-id": self.tag.activity,
        }
        if with_application:
            context["application"] = self.application
        flow_id = {
            "afi": self.afi,
            "src-ip": self.src[0],
            "dst-ip": self.dst[0],
            "protocol": "tcp",
            "src-port": self.src[1],
            "dst-port": self.dst[1],
        }
        text = (
            f'"context":{json.dumps(context, separators=(",", ":"))},'
            f'"flow-id":{json.dumps(flow_id, separators=(",", ":"))}'
        )
        if with_application:
            self._static = text
        return text

    @property
    def start_iso(self) -> str:
        if not self._start_iso:
            self._start_iso = _iso(self.started)
        return self._start_iso


def datagram(
    flow: Flow,
    state: str,
    hostname: str,
    app_name: str = "se",
    rtt_ms: float | None = None,
    now: dt.datetime | None = None,
) -> bytes:
    """The firefly for ``flow`` in ``state`` (start, ongoing or end)."""
    now_iso = _iso(now or _now())
    end = f',"end-time":"{now_iso}"' if state == "end" else ""
    lifecycle = (
        f'{{"state":"{state}","current-time":"{now_iso}","start-time":"{flow.start_iso}"{end}}}'
    )
    tail = ""
    if state != "start":
        tail = f',"usage":{{"received":{int(flow.received)},"sent":{int(flow.sent)}}}'
    netlink = f',"netlink":{{"rtt":{rtt_ms:.3f}}}' if rtt_ms is not None else ""
    header = f"<134>1 {now_iso} {hostname or '-'} {app_name} - firefly-json - "
    body = f'{{"version":1,"flow-lifecycle":{lifecycle},{flow.static_json()}{tail}{netlink}}}'
    data = (header + body).encode()
    if len(data) > MAX_DATAGRAM:  # the optional parts go first; the JSON stays whole
        body = f'{{"version":1,"flow-lifecycle":{lifecycle},{flow.static_json(False)}{tail}}}'
        data = (header[:200] + body).encode()
    return data


_TCP_INFO_LEN = 232


def tcp_info(sock: socket.socket | None) -> tuple[float | None, int | None, int | None]:
    """(rtt ms, bytes acked, bytes received) from TCP_INFO; Nones when unavailable."""
    if sock is None:
        return None, None, None
    try:
        buf = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except (OSError, ValueError):  # closed (uvloop's pseudo-socket raises ValueError)
        return None, None, None
    if len(buf) < 136:
        return None, None, None
    (rtt_us,) = struct.unpack_from("I", buf, 68)
    (acked,) = struct.unpack_from("Q", buf, 120)
    (received,) = struct.unpack_from("Q", buf, 128)
    return rtt_us / 1000.0, acked, received


class FireflySender:
    """Non-blocking UDP sends to the flow's peer and the collectors, with counters."""

    def __init__(
        self,
        hostname: str,
        peer_port: int,
        send_to_peer: bool,
        collectors: Iterable[tuple[str, int]],
        exclude: Iterable[str],
        report_local: bool,
    ) -> None:
        self.hostname = hostname
        self._peer_port = peer_port
        self._send_to_peer = send_to_peer
        self._collectors = list(collectors)
        self._exclude = [ipaddress.ip_network(n, strict=False) for n in exclude]
        self._report_local = report_local
        self._socks: dict[int, socket.socket] = {}
        self._decisions: dict[str, bool] = {}
        self.sent = 0
        self.dropped = 0
        self.skipped = 0  # flows not reported (filtered)

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()

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

    def emit(self, flow: Flow, state: str, rtt_ms: float | None = None) -> None:
        if not self.reports(flow.peer):
            self.skipped += 1
            _FILTERED().inc()
            return
        data = datagram(flow, state, self.hostname, rtt_ms=rtt_ms)
        targets = list(self._collectors)
        if self._send_to_peer:
            targets.insert(0, (plain_ip(flow.peer), self._peer_port))
        for host, port in targets:
            self._send(data, host, port)

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
            _SENT().inc()
        except (OSError, OverflowError, ValueError) as exc:
            self.dropped += 1
            _DROPPED().inc()
            log.debug("firefly to %s:%d dropped: %s", host, port, exc)
