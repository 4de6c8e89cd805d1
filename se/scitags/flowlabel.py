"""IPv6 flow labels on the connections se opens (TPC pulls and pushes).

Linux only lets a socket send a chosen label if the label is registered with the kernel's
flow-label manager (``IPV6_FLOWLABEL_MGR``, shared between sockets of this user) and the
socket asks to send the flowinfo given to ``connect()`` (``IPV6_FLOWINFO_SEND``).  The
registration is per socket and is released by the kernel when the socket closes (after a
short linger).  When the kernel refuses, the connection goes out unlabelled, and that is
logged once.  Accepted connections cannot be labelled this way (see the flowd hand-off).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import socket
import struct
from pathlib import Path
from typing import Any

from se import metrics
from se.scitags.tags import Tag, flow_label

__all__ = ["Labeller", "bit19_allowed"]

log = logging.getLogger("se.scitags")
_LABELLED = metrics.cached(lambda: metrics.SCITAGS_FLOW_LABELS.labels("labelled"))
_REFUSED = metrics.cached(lambda: metrics.SCITAGS_FLOW_LABELS.labels("refused"))

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

    def register(self, sock: socket.socket, peer: str, label: int) -> bool:
        """Lease ``label`` for ``sock`` towards ``peer`` and have connect() send it."""
        try:
            dst = socket.inet_pton(socket.AF_INET6, peer.split("%", 1)[0])
            req = _REQ.pack(
                dst, struct.pack("!I", label), IPV6_FL_A_GET, IPV6_FL_S_USER, IPV6_FL_F_CREATE,
                0, 0, 0,
            )  # fmt: skip
            sock.setsockopt(SOL_IPV6, IPV6_FLOWLABEL_MGR, req)
            sock.setsockopt(SOL_IPV6, IPV6_FLOWINFO_SEND, 1)
        except OSError as exc:
            self.refused += 1
            _REFUSED().inc()
            if not self._warned:
                self._warned = True
                log.warning("IPv6 flow labels refused by the kernel (%s); not labelling", exc)
            return False
        self.labelled += 1
        _LABELLED().inc()
        return True

    async def connect(self, sockaddr: tuple[Any, ...], label: int) -> socket.socket:
        """A non-blocking TCP connection to an IPv6 ``sockaddr`` carrying ``label``.

        Done here rather than by the event loop: uvloop resolves the address again and
        drops the flowinfo, so the label would never reach connect().
        """
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            host, port = str(sockaddr[0]), int(sockaddr[1])
            scope = int(sockaddr[3]) if len(sockaddr) > 3 else 0
            if not self.register(sock, host, label):
                label = 0
            err = sock.connect_ex((host, port, label, scope))
            if err == errno.EINPROGRESS:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_writer(sock.fileno(), ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_writer(sock.fileno())
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, f"connect to [{host}]:{port}: {os.strerror(err)}")
        except BaseException:
            sock.close()
            raise
        return sock
