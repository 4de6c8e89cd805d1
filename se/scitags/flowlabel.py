"""IPv6 flow labels on the connections se opens (TPC pulls and pushes).

Linux only lets a socket send a chosen label if the label is registered with the kernel's
flow-label manager (``IPV6_FLOWLABEL_MGR``, shared between sockets of this user) and the
socket asks to send the flowinfo given to ``connect()`` (``IPV6_FLOWINFO_SEND``).  The
registration is per socket and is released by the kernel when the socket closes (after a
short linger).  When the kernel refuses, the connection goes out unlabelled, and that is
logged once.  Accepted connections cannot be labelled this way (see the flowd hand-off).
"""

from __future__ import annotations

import logging
import secrets
import socket
import struct
from pathlib import Path

from se.scitags.tags import Tag, flow_label

__all__ = ["Labeller", "bit19_allowed"]

log = logging.getLogger("se.scitags")

SOL_IPV6 = 41
IPV6_FLOWLABEL_MGR = 32
IPV6_FLOWINFO_SEND = 33
IPV6_FL_A_GET = 0
IPV6_FL_S_USER = 3
IPV6_FL_F_CREATE = 1
_REQ = struct.Struct("=16s4sBBHHHI")  # struct in6_flowlabel_req


def bit19_allowed() -> bool:
    """False when net.ipv6.flowlabel_state_ranges=1 (labels with bit 19 are refused)."""
    try:
        return Path("/proc/sys/net/ipv6/flowlabel_state_ranges").read_text().strip() != "1"
    except OSError:
        return True


class Labeller:
    """Makes labels for a tag (fresh entropy per connection) and labels new sockets."""

    def __init__(self) -> None:
        self._bit19 = bit19_allowed()
        self.labelled = 0
        self.refused = 0
        self._warned = False

    def new_label(self, tag: Tag) -> int:
        return flow_label(tag, secrets.randbits(20), self._bit19) or 0

    def socket(self, addr_info: tuple[object, ...]) -> socket.socket:
        """A socket for ``addr_info`` (aiohttp's socket factory), labelled when the address
        is IPv6 and carries a flowinfo (the label, set by the connector)."""
        family, type_, proto, _name, sockaddr = addr_info
        sock = socket.socket(family, type_, proto)  # type: ignore[arg-type]
        if family != socket.AF_INET6 or not isinstance(sockaddr, tuple) or len(sockaddr) < 3:
            return sock
        label = int(sockaddr[2])
        if not label:
            return sock
        try:
            peer = socket.inet_pton(socket.AF_INET6, str(sockaddr[0]).split("%", 1)[0])
            req = _REQ.pack(
                peer, struct.pack("!I", label), IPV6_FL_A_GET, IPV6_FL_S_USER, IPV6_FL_F_CREATE,
                0, 0, 0,
            )  # fmt: skip
            sock.setsockopt(SOL_IPV6, IPV6_FLOWLABEL_MGR, req)
            sock.setsockopt(SOL_IPV6, IPV6_FLOWINFO_SEND, 1)
            self.labelled += 1
        except OSError as exc:
            self.refused += 1
            if not self._warned:
                self._warned = True
                log.warning("IPv6 flow labels refused by the kernel (%s); not labelling", exc)
        return sock
