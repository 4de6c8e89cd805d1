"""Per-worker SciTags state: the registry, where tags come from, fireflies, flow labels and
the flowd hand-off, with counters."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Mapping
from importlib import resources

from se import metrics
from se.config import SciTagsConfig
from se.scitags.firefly import FireflySender, Flow, plain_ip
from se.scitags.flowlabel import Labeller
from se.scitags.tags import INVALID, Registry, Tag, select_tag

__all__ = ["SciTagService", "parse_hostport"]

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
        self._flowd_pipe = cfg.flowd_pipe
        self._by_path = [
            (p.rstrip("/") or "/", self._exp(e)) for p, e in _pairs(cfg.experiment_by_path)
        ]
        self._by_issuer = [(i, self._exp(e)) for i, e in _pairs(cfg.experiment_by_issuer)]
        self._by_method = {m.upper(): a for m, a in _pairs(cfg.activity_by_method)}
        self._warned_invalid = False
        self._ongoing: dict[int, asyncio.TimerHandle] = {}
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

    def end(self, flow: Flow, sock: socket.socket | None, accepted: bool) -> None:
        handle = self._ongoing.pop(id(flow), None)
        if handle is not None:
            handle.cancel()
        self._report("end", flow, sock, accepted)

    def _report(self, state: str, flow: Flow, sock: socket.socket | None, accepted: bool) -> None:
        """Never lets a reporting problem reach the data path: logged and counted."""
        try:
            if self._fireflies:
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
