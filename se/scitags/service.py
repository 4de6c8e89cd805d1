"""Per-worker SciTags state: the registry, where tags come from, fireflies, flow labels and
the flowd hand-off, with counters."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from importlib import resources

from se import metrics
from se.config import SciTagsConfig
from se.scitags.firefly import FireflySender, Flow, now_iso, plain_ip, rtt_ms
from se.scitags.flowlabel import Labeller
from se.scitags.tags import INVALID, Registry, Tag, select_tag

__all__ = ["ConnectionFlow", "SciTagService", "parse_hostport"]

log = logging.getLogger("se.scitags")
_FLOWD_WRITTEN = metrics.cached(lambda: metrics.SCITAGS_FLOWD_LINES.labels("written"))
_FLOWD_DROPPED = metrics.cached(lambda: metrics.SCITAGS_FLOWD_LINES.labels("dropped"))


def parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not host:port")
    return host.strip("[]"), int(port)


def _pairs(items: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(k.strip(), v.strip()) for k, _, v in (i.partition("=") for i in items)]


class SciTagService:
    def __init__(self, cfg: SciTagsConfig) -> None:
        self.cfg = cfg
        text = (
            open(cfg.registry_file, encoding="utf-8").read()  # noqa: SIM115 - startup only
            if cfg.registry_file
            else resources.files("se.scitags").joinpath("api.json").read_text(encoding="utf-8")
        )
        self.registry = Registry.parse(text)
        collectors = []
        for item in cfg.collectors:
            host, port = parse_hostport(item)
            # Resolved once, here: a firefly never waits for DNS.
            info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            collectors.append((str(info[4][0]), port))
        self.sender = FireflySender(
            socket.gethostname(),
            cfg.firefly_port,
            cfg.send_to_peer,
            collectors,
            cfg.exclude,
            cfg.report_local,
        )
        self.labeller = Labeller() if cfg.flow_labels else None
        self._fireflies = cfg.fireflies
        self.application_get = f"{cfg.application} http-get"  # of flows se accepts
        self.application_put = f"{cfg.application} http-put"
        self._flowd_pipe = cfg.flowd_pipe
        self._by_path = [
            (p.rstrip("/") or "/", self._exp(e)) for p, e in _pairs(cfg.experiment_by_path)
        ]
        self._by_issuer = [(i, self._exp(e)) for i, e in _pairs(cfg.experiment_by_issuer)]
        self._by_method = {m.upper(): a for m, a in _pairs(cfg.activity_by_method)}
        self._warned_invalid = False
        self._ongoing: dict[int, asyncio.TimerHandle] = {}
        # Accepted flows whose last transfer ended, by connection, until the next transfer
        # continues them or flow_linger passes (see ConnectionFlow).
        self._linger_ns = int(cfg.flow_linger * 1e9)
        self._parked: dict[asyncio.BaseTransport, ConnectionFlow] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.flowd_lines = 0
        self.flowd_dropped = 0
        # Every outcome shows on the metrics page from the start (at 0).
        for outcome in ("sent", "dropped", "filtered"):
            metrics.SCITAGS_FIREFLIES.labels(outcome)
        for outcome in ("labelled", "refused"):
            metrics.SCITAGS_FLOW_LABELS.labels(outcome)
        for outcome in ("written", "dropped"):
            metrics.SCITAGS_FLOWD_LINES.labels(outcome)

    def _exp(self, name: str) -> int:
        if name.isdigit():
            return int(name)
        found = self.registry.experiment_id(name)
        if found is None:
            raise ValueError(f"scitags: unknown experiment {name!r}")
        return found

    def close(self) -> None:
        self._end_parked(lambda _t, _f: True)
        self.sender.close()

    @property
    def wants_flows(self) -> bool:
        """Does reporting a flow do anything (fireflies on, or a flowd pipe)?  When not, a
        caller may skip making the Flow (addresses, socket) altogether."""
        return self._fireflies or bool(self._flowd_pipe)

    def tag_for(
        self,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        path: str = "",
        method: str = "",
        subject: str = "",
    ) -> Tag | None:
        """The tag of a request: given by the client, else from the configured fallbacks."""
        tag, source = select_tag(headers, query)
        if tag is INVALID and not self._warned_invalid:
            self._warned_invalid = True
            log.info("invalid %s value; such flows are marked 0/0", source)
        if tag is not None:
            return tag
        experiment = next(
            (e for p, e in self._by_path if p == "/" or path == p or path.startswith(p + "/")),
            None,
        )
        if experiment is None and subject:
            issuer = subject.rpartition("@")[2]
            experiment = next((e for i, e in self._by_issuer if i == issuer), None)
        if experiment is None:
            return None
        activity = 1
        name = self._by_method.get(method.upper())
        if name is not None:
            found = int(name) if name.isdigit() else self.registry.activity_id(experiment, name)
            activity = found or 1
        return Tag(experiment, activity)

    # -- flows -----------------------------------------------------------------------
    def start(self, flow: Flow, accepted: bool, sock: socket.socket | None = None) -> None:
        self._report("start", flow, None, accepted)
        interval = self.cfg.ongoing_interval
        if interval > 0 and self.cfg.fireflies:
            self._ongoing[id(flow)] = asyncio.get_running_loop().call_later(
                interval, self._tick, flow, sock
            )

    def _tick(self, flow: Flow, sock: socket.socket | None) -> None:
        if id(flow) not in self._ongoing:
            return
        self._report("ongoing", flow, sock, accepted=False)
        self._ongoing[id(flow)] = asyncio.get_running_loop().call_later(
            self.cfg.ongoing_interval, self._tick, flow, sock
        )

    def end(
        self,
        flow: Flow,
        sock: socket.socket | None,
        accepted: bool,
        parked: ConnectionFlow | None = None,
    ) -> None:
        """The flow's end: now, or (``parked``) when its last transfer ended."""
        handle = self._ongoing.pop(id(flow), None)
        if handle is not None:
            handle.cancel()
        self._report("end", flow, sock, accepted, parked)

    # -- flows of accepted connections ---------------------------------------------------
    def resume(
        self, transport: asyncio.BaseTransport, tag: Tag, application: str
    ) -> ConnectionFlow | None:
        """The flow this connection's previous transfer left open, if the next transfer
        (``tag``, ``application``) continues it; a parked flow it does not continue ends."""
        if not self._parked:
            return None
        parked = self._parked.pop(transport, None)
        if parked is None:
            return None
        flow = parked.flow
        if (
            flow.tag == tag
            and flow.application == application
            and time.time_ns() - parked.ended_ns <= self._linger_ns
        ):
            parked.done = False
            return parked
        self._close_flow(parked)
        return None

    def finished(self, cf: ConnectionFlow) -> None:
        """A transfer of ``cf`` ended: its flow ends now, or stays open for the connection's
        next transfer (flow_linger), when the connection stays open."""
        transport = cf.transport
        if self._linger_ns <= 0 or transport is None or transport.is_closing():
            self.end(cf.flow, cf.sock, accepted=True)
            return
        now = time.time_ns()
        cf.ended_ns = now
        if self._fireflies and now - cf.rtt_read_ns >= 1_000_000_000:
            # the RTT the end firefly carries, read while the socket is open (once a second
            # at most: a run of small transfers would otherwise read it for every one)
            cf.rtt = rtt_ms(cf.sock)
            cf.rtt_read_ns = now
        earlier = self._parked.pop(transport, None)
        if earlier is not None and earlier is not cf:  # not expected: transfers are serial
            self._close_flow(earlier)
        self._parked[transport] = cf
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(
                max(self.cfg.flow_linger, 0.05), self._sweep
            )

    def connection_closed(self, transport: asyncio.BaseTransport) -> None:
        """The connection is gone: the flow it left open ends now."""
        if self._parked:
            parked = self._parked.pop(transport, None)
            if parked is not None:
                self._close_flow(parked)

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = time.time_ns() - self._linger_ns
        self._end_parked(lambda t, f: f.ended_ns <= cutoff or t.is_closing())
        if self._parked:
            self._sweeper = asyncio.get_running_loop().call_later(
                max(self.cfg.flow_linger / 2, 0.05), self._sweep
            )

    def _end_parked(self, which: Callable[[asyncio.BaseTransport, ConnectionFlow], bool]) -> None:
        for transport, cf in list(self._parked.items()):
            if which(transport, cf):
                del self._parked[transport]
                self._close_flow(cf)
        if not self._parked and self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _close_flow(self, cf: ConnectionFlow) -> None:
        self.end(cf.flow, None, accepted=True, parked=cf)

    def _report(
        self,
        state: str,
        flow: Flow,
        sock: socket.socket | None,
        accepted: bool,
        parked: ConnectionFlow | None = None,
    ) -> None:
        """Never lets a reporting problem reach the data path: logged and counted.  A
        ``parked`` flow's end carries the RTT and the time kept when it was parked."""
        try:
            if self._fireflies:
                if parked is not None:
                    end_time = now_iso.at(parked.ended_ns)
                    self.sender.emit(flow, state, parked.rtt, end_time=end_time)
                else:
                    self.sender.report(flow, state, sock)
            if accepted and self._flowd_pipe:
                self._flowd(state, flow)
        except Exception:
            self.sender.count_dropped()
            log.exception("could not report a %s flow event", state)

    def _flowd(self, state: str, flow: Flow) -> None:
        """One line to flowd's named pipe, never blocking: no reader, no line."""
        path = self.cfg.flowd_pipe
        if not path:
            return
        line = (
            f"{state} tcp {plain_ip(flow.src[0])} {flow.src[1]} {plain_ip(flow.dst[0])} "
            f"{flow.dst[1]} {flow.tag.experiment} {flow.tag.activity}\n"
        ).encode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            self.flowd_dropped += 1
            _FLOWD_DROPPED().inc()
            if exc.errno not in (errno.ENXIO, errno.ENOENT):
                log.debug("flowd pipe %s: %s", path, exc)
            return
        try:
            os.write(fd, line)  # < PIPE_BUF: atomic
            self.flowd_lines += 1
            _FLOWD_WRITTEN().inc()
        except OSError:
            self.flowd_dropped += 1
            _FLOWD_DROPPED().inc()
        finally:
            os.close(fd)


class ConnectionFlow:
    """The flow of an accepted transfer, and of the transfers after it on the same
    keep-alive connection that continue it.

    The network sees one TCP flow per connection.  A run of transfers on one connection
    with one tag and one direction is reported as one flow: a start firefly at the first,
    one end firefly after the last (carrying the bytes of all of them, and the time the last
    one ended), sent when the connection closes, carries another tag or direction, or has
    carried none for ``flow_linger`` seconds.  With ``flow_linger = 0`` every transfer is a
    flow of its own."""

    __slots__ = ("_svc", "done", "ended_ns", "flow", "rtt", "rtt_read_ns", "sock", "transport")

    def __init__(
        self,
        svc: SciTagService,
        flow: Flow,
        transport: asyncio.BaseTransport | None,
        sock: socket.socket | None,
    ) -> None:
        self._svc = svc
        self.flow = flow
        self.transport = transport
        self.sock = sock
        self.done = False
        self.ended_ns = 0
        self.rtt: float | None = None
        self.rtt_read_ns = 0

    def end(self, nbytes: int) -> None:
        """This transfer ended, having moved ``nbytes`` (from the source); idempotent."""
        if self.done:
            return
        self.done = True
        self.flow.sent += nbytes
        self._svc.finished(self)
