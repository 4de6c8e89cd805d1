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
import ipaddress
import json
import logging
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from se.scitags.tags import Tag

__all__ = [
    "FireflySender",
    "Flow",
    "datagram",
    "plain_ip",
    "tcp_info",
]

log = logging.getLogger("se.scitags")
MAX_DATAGRAM = 1400


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

    @property
    def afi(self) -> str:
        return "ipv6" if ":" in plain_ip(self.src[0]) else "ipv4"


def datagram(
    flow: Flow,
    state: str,
    hostname: str,
    app_name: str = "se",
    rtt_ms: float | None = None,
    now: dt.datetime | None = None,
) -> bytes:
    """The firefly for ``flow`` in ``state`` (start, ongoing or end)."""
    now = now or _now()
    lifecycle = {"state": state, "current-time": _iso(now), "start-time": _iso(flow.started)}
    if state == "end":
        lifecycle["end-time"] = _iso(now)
    body: dict[str, object] = {
        "version": 1,
        "flow-lifecycle": lifecycle,
        "context": {
            "experiment-id": flow.tag.experiment,
            "activity-id": flow.tag.activity,
            "application": flow.application,
        },
        "flow-id": {
            "afi": flow.afi,
            "src-ip": plain_ip(flow.src[0]),
            "dst-ip": plain_ip(flow.dst[0]),
            "protocol": "tcp",
            "src-port": flow.src[1],
            "dst-port": flow.dst[1],
        },
    }
    if state != "start":
        body["usage"] = {"received": flow.received, "sent": flow.sent}
    if rtt_ms is not None:
        body["netlink"] = {"rtt": round(rtt_ms, 3)}
    header = f"<134>1 {_iso(now)} {hostname or '-'} {app_name} - firefly-json - "
    data = (header + json.dumps(body, separators=(",", ":"))).encode()
    if len(data) > MAX_DATAGRAM:  # the optional parts go first; the JSON stays whole
        context = body["context"]
        assert isinstance(context, dict)
        context.pop("application", None)
        body.pop("netlink", None)
        data = (header[:200] + json.dumps(body, separators=(",", ":"))).encode()
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
        self.sent = 0
        self.dropped = 0
        self.skipped = 0  # flows not reported (filtered)

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()

    def reports(self, peer: str) -> bool:
        """Is a flow with this peer reported (scope filter)?"""
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
        except (OSError, OverflowError, ValueError) as exc:
            self.dropped += 1
            log.debug("firefly to %s:%d dropped: %s", host, port, exc)
