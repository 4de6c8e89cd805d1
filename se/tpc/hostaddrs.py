"""This host's own addresses, so that a third-party copy cannot be pointed back at it.

Loopback (``127.0.0.0/8``, ``::1``), the unspecified addresses (``0.0.0.0``, ``::``: a
connection to them reaches this host) and ``0.0.0.0/8`` are always local.  The rest is read
without psutil: the kernel's local routes (``/proc/net/fib_trie``: every ``host LOCAL``
entry, secondary and AnyIP addresses included), ``/proc/net/if_inet6``, the primary IPv4
address of each interface (``SIOCGIFADDR``) where ``/proc`` is missing, and what this
host's names resolve to.  The ``/proc`` part is re-read at most every
:data:`REFRESH` seconds (interfaces come and go); names are resolved once.  Blocking.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
import threading
import time

__all__ = ["REFRESH", "HostAddresses"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

REFRESH = 30.0  # seconds between re-reads of the interface addresses
_SIOCGIFADDR = 0x8915
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


def _fib_trie(text: str) -> set[IPNetwork]:
    """The ``host LOCAL`` routes of ``/proc/net/fib_trie``: ``|-- <addr>`` lines, each
    followed by ``/<len> host LOCAL`` when the address is this host's."""
    out: set[IPNetwork] = set()
    last: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("|--"):
            last = line[3:].strip()
        elif last is not None and line.startswith("/") and line.endswith("host LOCAL"):
            with contextlib.suppress(ValueError):
                out.add(ipaddress.ip_network(f"{last}{line.split()[0]}", strict=False))
    return out


def _if_inet6(text: str) -> set[IPNetwork]:
    out: set[IPNetwork] = set()
    for line in text.splitlines():
        fields = line.split()
        if fields and len(fields[0]) == 32:
            with contextlib.suppress(ValueError):
                out.add(ipaddress.ip_network(int(fields[0], 16).to_bytes(16, "big")))
    return out


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _ioctl_ipv4() -> set[IPNetwork]:
    """The primary IPv4 address of every interface (where /proc/net/fib_trie is missing)."""
    out: set[IPNetwork] = set()
    try:
        names = [name for _i, name in socket.if_nameindex()]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return out
    with sock:
        for name in names:
            try:
                packed = fcntl.ioctl(
                    sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15])
                )
            except OSError:
                continue
            out.add(ipaddress.ip_network(socket.inet_ntoa(packed[20:24])))
    return out


def _named() -> set[IPNetwork]:
    """What this host's names resolve to (may use DNS: called once)."""
    out: set[IPNetwork] = set()
    names = {socket.gethostname()}
    with contextlib.suppress(OSError):
        names.add(socket.getfqdn())
    for name in names:
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except OSError:
            continue
        for info in infos:
            with contextlib.suppress(ValueError):
                out.add(ipaddress.ip_network(str(info[4][0]).split("%", 1)[0]))
    return out


def interface_networks() -> set[IPNetwork]:
    """The local addresses (as networks) the kernel reports now."""
    found: set[IPNetwork] = set()
    v4 = _read("/proc/net/fib_trie")
    found |= _fib_trie(v4) if v4 is not None else _ioctl_ipv4()
    v6 = _read("/proc/net/if_inet6")
    if v6 is not None:
        found |= _if_inet6(v6)
    return found


class HostAddresses:
    """Answers "is this address this host?"; thread-safe, refreshed lazily."""

    def __init__(self, resolve_names: bool = True) -> None:
        self._lock = threading.Lock()
        self._named = _named() if resolve_names else set()
        self._nets: tuple[IPNetwork, ...] = ()
        self._read_at = -REFRESH

    def _networks(self) -> tuple[IPNetwork, ...]:
        now = time.monotonic()
        with self._lock:
            if now - self._read_at >= REFRESH:
                self._nets = tuple(interface_networks() | self._named)
                self._read_at = now
            return self._nets

    def contains(self, ip: IPAddress) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback or ip.is_unspecified or ip in _THIS_NETWORK:
            return True
        return any(ip.version == net.version and ip in net for net in self._networks())
