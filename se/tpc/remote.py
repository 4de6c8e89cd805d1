"""Talking to the passive party: address policy, the pooled client session, redirects.

One :class:`aiohttp.ClientSession` per worker carries every TPC request (connections are
reused per remote host).  Every address a transfer may connect to goes through
:class:`NetworkPolicy`: host names when they are resolved (so a name cannot be pointed
at a forbidden address), IP literals before each request and at every redirect hop, which
this module follows by hand so that each hop is checked and ``Authorization`` is dropped
when a redirect leaves the origin.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp import abc, hdrs
from aiohttp.resolver import DefaultResolver

from se.scitags.flowlabel import Labeller
from se.tpc.hostaddrs import HostAddresses
from se.tpc.markers import Failure, os_error_text

__all__ = [
    "NetworkPolicy",
    "RemoteRefused",
    "TransferFailed",
    "describe_client_error",
    "error_text",
    "make_session",
    "open_remote",
    "redact",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TransferFailed(Exception):
    """The transfer cannot complete; becomes the ``failure:`` line.

    ``str()`` is the detail; ``side`` and ``phase`` say where it failed (the tags of
    :mod:`se.tpc.markers`: ``side=""`` with ``phase="checksum"``, ``side="local"`` with
    ``write``/``read``/``internal``).  None: the raiser cannot tell (a network-policy refusal
    does not know which party it concerns); :meth:`failure` then takes the caller's.
    """

    def __init__(
        self,
        message: str,
        status: int | None = None,
        *,
        side: str | None = None,
        phase: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status  # the remote's HTTP status, when it gave one
        self.side = side
        self.phase = phase

    @classmethod
    def of(cls, failure: Failure, status: int | None = None) -> TransferFailed:
        return cls(failure.detail, status, side=failure.side, phase=failure.phase)

    def failure(self, side: str, phase: str) -> Failure:
        """Where and why, with ``side``/``phase`` where this exception does not say."""
        return Failure(
            self.side if self.side is not None else side,
            self.phase if self.phase is not None else phase,
            str(self),
        )

    def at(self, side: str, phase: str) -> TransferFailed:
        """Fill in what the raiser could not tell (in place); returns self."""
        if self.side is None:
            self.side = side
        if self.phase is None:
            self.phase = phase
        return self


class RemoteRefused(TransferFailed):
    """The remote address is outside the configured TPC network policy."""


def redact(url: str) -> str:
    """A URL fit for logs and failure lines: the query (pre-signed credentials) removed."""
    parts = urlsplit(url)
    return parts._replace(query="", fragment="").geturl() + ("?..." if parts.query else "")


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """Which remote addresses a transfer may connect to.

    Refused: addresses in ``deny``; with ``local`` set (a server reachable from other
    hosts), loopback, the unspecified addresses and this host's own addresses, unless an
    ``allow`` network (other than a ``/0``) names them; with a non-empty ``allow``,
    everything outside it.
    """

    allow: tuple[IPNetwork, ...]
    deny: tuple[IPNetwork, ...]
    local: HostAddresses | None = None  # set: this host's addresses are refused

    @classmethod
    def of(
        cls, allow: Iterable[str], deny: Iterable[str], local: HostAddresses | None = None
    ) -> NetworkPolicy:
        return cls(
            tuple(ipaddress.ip_network(n, strict=False) for n in allow),
            tuple(ipaddress.ip_network(n, strict=False) for n in deny),
            local,
        )

    def allows(self, address: str) -> bool:
        ip = _policy_ip(address)
        if ip is None:
            return False
        if any(ip in net for net in self.deny):
            return False
        if self.local is not None and self.local.contains(ip):
            return any(ip in net for net in self.allow if net.prefixlen > 0)
        return not self.allow or any(ip in net for net in self.allow)

    def check_url(self, url: str) -> None:
        """Refuse a numeric host outside the policy (names are checked on resolution).

        Legacy IPv4 spellings (``0x7f000001``, ``2130706433``, ``127.1``, ``0177.0.0.1``)
        are read as the C library would read them.
        """
        host = (urlsplit(url).hostname or "").strip("[]")
        address = numeric_address(host)
        if address is not None and not self.allows(address):
            raise RemoteRefused(f"remote address {host} is not allowed for third-party copy")


@functools.lru_cache(maxsize=1024)
def _policy_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address the policy judges for ``address`` (a zone dropped, an IPv4-mapped IPv6
    address as IPv4, the unspecified addresses as loopback: connecting to them reaches this
    host), or None when it is not an address.  Pure, so cached."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        ip = ipaddress.ip_address("127.0.0.1" if ip.version == 4 else "::1")
    return ip


@functools.lru_cache(maxsize=1024)
def numeric_address(host: str) -> str | None:
    """The address a numeric host names (any spelling ``inet_aton`` takes), else None.
    Pure, so cached."""
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return None
    return None


class GuardedResolver(abc.AbstractResolver):
    """DNS resolution that drops addresses the policy refuses (and records the choice)."""

    def __init__(self, policy: NetworkPolicy) -> None:
        self._inner = DefaultResolver()
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[abc.ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self._policy.allows(r["host"])]
        if not allowed:
            refused = ", ".join(sorted({r["host"] for r in results}))
            raise OSError(f"{host} resolves only to addresses not allowed for TPC: {refused}")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


# Where the connector reports the peer address of each connection it hands out: set by
# open_remote() around one request (context variables follow the request's task).
_PEER_SINK: contextvars.ContextVar[Callable[[str, int, Any], None] | None] = contextvars.ContextVar(
    "se_tpc_peer_sink", default=None
)
# A maker of IPv6 flow labels for the connections opened by the current request (the
# transfer's SciTag, fresh entropy per connection); None: unlabelled.
_FLOW_LABEL: contextvars.ContextVar[Callable[[], int] | None] = contextvars.ContextVar(
    "se_tpc_flow_label", default=None
)


class _PeerReportingConnector(aiohttp.TCPConnector):
    """A connector that tells the current transfer which address it is connected to
    (new and reused connections alike), while the connection is certainly open."""

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109
        conn = await super().connect(req, traces, timeout)
        sink = _PEER_SINK.get()
        transport = conn.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        if peer and self._policy is not None and not self._policy.allows(str(peer[0])):
            # The last word: whatever spelling or resolution led here, the address
            # actually connected to is checked before a byte of the request is sent.
            conn.close()
            raise RemoteRefused(f"remote address {peer[0]} is not allowed for third-party copy")
        if sink is not None and peer:
            sink(str(peer[0]), int(peer[1]), transport)
        return conn

    def __init__(
        self,
        *args: Any,
        labeller: Labeller | None = None,
        policy: NetworkPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._labeller = labeller
        self._policy = policy

    async def _wrap_create_connection(
        self,
        *args: Any,
        addr_infos: Any,
        req: Any,
        timeout: Any,  # noqa: ASYNC109 - aiohttp's signature
        **kwargs: Any,
    ) -> Any:
        make = _FLOW_LABEL.get()
        v6 = [ai for ai in addr_infos if ai[0] == socket.AF_INET6]
        if make is None or self._labeller is None or not v6:
            return await super()._wrap_create_connection(
                *args, addr_infos=addr_infos, req=req, timeout=timeout, **kwargs
            )
        # An IPv6 connection carrying the transfer's flow label (se.scitags.flowlabel).
        kwargs.pop("client_error", None)
        label = make()
        error: OSError = OSError("no IPv6 address to connect to")
        for ai in v6:
            try:
                async with asyncio.timeout(timeout.sock_connect):
                    sock = await self._labeller.connect(ai[4], label)
            except (OSError, TimeoutError) as exc:
                error = exc if isinstance(exc, OSError) else OSError(str(exc) or "timed out")
                continue
            return await self._loop.create_connection(*args, **kwargs, sock=sock)
        raise aiohttp.ClientConnectorError(req.connection_key, error)


def ssl_context(verify: bool, ca_dir: str) -> ssl.SSLContext | bool:
    if not verify:
        return False
    ctx = ssl.create_default_context(capath=ca_dir or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def client_cert_context(verify: bool, ca_dir: str, cert_file: str) -> ssl.SSLContext:
    """A client context that presents ``cert_file`` (certificate, key, chain in one PEM)."""
    ctx = ssl_context(verify, ca_dir)
    if not isinstance(ctx, ssl.SSLContext):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file)
    return ctx


def make_session(
    policy: NetworkPolicy,
    verify_tls: bool,
    ca_dir: str,
    connect_timeout: float,
    labeller: Labeller | None = None,
) -> aiohttp.ClientSession:
    connector = _PeerReportingConnector(
        labeller=labeller,
        policy=policy,
        limit=0,  # the transfer manager bounds concurrency
        limit_per_host=0,
        resolver=GuardedResolver(policy),
        ssl=ssl_context(verify_tls, ca_dir),
        ttl_dns_cache=60,
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
        skip_auto_headers=("Accept-Encoding", "User-Agent"),
        headers={"User-Agent": "se-tpc"},
        read_bufsize=1 << 20,
    )


# Forwarded headers that may follow a redirect to another origin, and headers that never do.
_UNBOUND = frozenset({"scitag"})
_CREDENTIALS = frozenset({"authorization", "cookie", "x-auth-token"})


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def describe_client_error(exc: BaseException, side: str, phase: str) -> Failure:
    """Where and why a request to the remote failed: connection and TLS errors by their
    type, anything else (a reset, a timeout, data that ended early) in ``phase``."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        err = exc.certificate_error
        why = getattr(err, "verify_message", None) or str(err)
        return Failure(side, "TLS", f"certificate of {exc.host}:{exc.port} not trusted: {why}")
    if isinstance(exc, aiohttp.ClientSSLError):
        return Failure(
            side, "TLS", f"TLS handshake with {exc.host}:{exc.port} failed: {exc.os_error}"
        )
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return Failure(side, "connect", f"cannot resolve {exc.host}: {os_error_text(exc.os_error)}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Failure(
            side,
            "connect",
            f"cannot connect to {exc.host}:{exc.port}: {os_error_text(exc.os_error)}",
        )
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return Failure(side, "connect", "timed out connecting")
    if isinstance(exc, ssl.SSLError):
        return Failure(side, "TLS", f"TLS error: {exc}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return Failure(side, phase, "the remote closed the connection")
    if isinstance(exc, aiohttp.ClientPayloadError):
        # aiohttp wraps the parser's error ("Not enough data ... (received N of M bytes)").
        inner = exc.__cause__
        why = (getattr(inner, "message", None) or str(inner)) if inner is not None else str(exc)
        return Failure(side, "body", f"the data ended early: {str(why).rstrip('.')}")
    if isinstance(exc, TimeoutError):
        return Failure(side, phase, "timed out")
    if isinstance(exc, OSError):
        return Failure(side, phase, os_error_text(exc))
    return Failure(side, phase, f"{exc or exc.__class__.__name__}")


async def open_remote(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    policy: NetworkPolicy,
    max_redirects: int,
    what: str,
    body: Callable[[], Any] | None = None,
    expect_continue: bool = False,
    on_hop: Callable[[str], None] | None = None,
    on_peer: Callable[[str, int, Any], None] | None = None,
    credentials_for: str | None = None,
    flow_label: Callable[[], int] | None = None,
    bound: Iterable[tuple[str, str]] = (),
    client_ssl: ssl.SSLContext | None = None,
) -> tuple[aiohttp.ClientResponse, str]:
    """Send one request, following redirects by hand; returns (response, final URL).

    ``body`` builds a fresh request body for each hop (a redirect re-sends it).
    ``on_hop`` is told each URL before it is requested, ``on_peer`` the address of each
    connection used.  ``bound`` (the client's ``TransferHeader*`` headers: tokens,
    cookies, ``X-Auth-Token`` ...) and any ``Authorization`` or ``Cookie`` among
    ``headers`` are sent only to the origin of ``credentials_for`` (default: ``url``), so
    neither a redirect hop nor a later request to a URL learned from a redirect carries
    them (except ``SciTag``, which names the flow, not a credential).  ``client_ssl``: the
    TLS context of every hop when the transfer presents a client certificate (a delegated
    proxy proves itself on each connection without leaving this server).  The caller must
    release the response.  Raises TransferFailed on a network error, a refused address, a
    redirect loop or a redirect without Location.
    """
    current = url
    hdr_items = list(headers.items() if isinstance(headers, Mapping) else headers)
    bound_items = list(bound)
    first_origin = _origin(credentials_for or url)
    phase = "HEAD" if method == "HEAD" else "first byte"
    for _hop in range(max_redirects + 1):
        try:
            policy.check_url(current)
        except RemoteRefused as exc:
            raise exc.at(what, "connect") from None
        if on_hop is not None:
            on_hop(current)
        if _origin(current) == first_origin:
            send = [*bound_items, *hdr_items]
        else:  # credentials stay with the origin they came with
            send = [(k, v) for k, v in bound_items if k.lower() in _UNBOUND]
            send += [(k, v) for k, v in hdr_items if k.lower() not in _CREDENTIALS]
        kwargs: dict[str, Any] = {"headers": send, "allow_redirects": False}
        if client_ssl is not None:
            kwargs["ssl"] = client_ssl
        if body is not None:
            kwargs["data"] = body()
            kwargs["expect100"] = expect_continue
        if flow_label is not None:  # a labelled connection is never reused by another flow
            kwargs["headers"] = [*send, ("Connection", "close")]
        token = _PEER_SINK.set(on_peer)
        label_token = _FLOW_LABEL.set(flow_label)
        try:
            resp = await session.request(method, current, **kwargs)
        except RemoteRefused as exc:  # by the connector: the address actually reached
            raise exc.at(what, "connect") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransferFailed.of(describe_client_error(exc, what, phase)) from exc
        finally:
            _FLOW_LABEL.reset(label_token)
            _PEER_SINK.reset(token)
        if resp.status in (301, 302, 303, 307, 308) and hdrs.LOCATION in resp.headers:
            location = resp.headers[hdrs.LOCATION]
            resp.release()
            nxt = urljoin(current, location)
            if urlsplit(nxt).scheme not in ("http", "https"):
                raise TransferFailed(
                    f"{method} redirected to an unsupported URL", side=what, phase=phase
                )
            if resp.status == 303 and method not in ("GET", "HEAD"):
                raise TransferFailed(
                    f"{method} answered HTTP 303 See Other", 303, side=what, phase=phase
                )
            current = nxt
            continue
        return resp, current
    raise TransferFailed(
        f"{method} redirected more than {max_redirects} times", side=what, phase=phase
    )


async def error_text(resp: aiohttp.ClientResponse, limit: int = 300) -> str:
    """``HTTP <status> <reason>[: start of the body]`` of an unexpected remote answer.

    The body is quoted only for error statuses: the body of a success is file data.
    """
    text = ""
    try:
        if resp.status >= 300:
            raw = await resp.content.read(limit)
            text = " ".join(raw.decode("utf-8", "replace").split())
    except (aiohttp.ClientError, OSError, TimeoutError):
        pass
    finally:
        resp.release()
    head = f"HTTP {resp.status} {resp.reason or ''}".strip()
    return f"{head}: {text}" if text else head
