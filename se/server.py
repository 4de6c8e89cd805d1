"""Process management: listening sockets, TLS, uvloop, worker processes.

One process per worker, each with its own uvloop event loop.  The parent binds the first
socket of every listener (``[server]``, then each ``[[listeners]]`` table; learning the port
when 0 was asked for), prints one address line per listener, and forks; with more than one
worker every worker listens on its own ``SO_REUSEPORT`` sockets so the kernel spreads
connections evenly.  Every worker serves every listener, each with its own application
(se.app.create_app on the listener's derived configuration); what must happen once per
storage root or tape database (the sweep of interrupted uploads, the simulated tape library)
is given to one listener of the first worker.  The parent forwards SIGTERM/SIGINT and waits.

The parent also restarts workers that die (:func:`_supervise`), reloads the configuration at
SIGHUP (:class:`ReloadState` reads the file again and refuses it whole, with one log line,
when it is bad or changes a key that needs a restart; each worker gets the new listener
configurations over its control pipe (:class:`Control`) and applies them with
se.app.reconfigure), and speaks systemd's notification protocol (:func:`sd_notify`: READY,
RELOADING, STOPPING, WATCHDOG).  With one worker the single process does all of that itself.
A stop drains first (:func:`_drain`): /health answers 503 while running requests get up to
server.drain_timeout seconds, then third-party copies still running end "aborted:".
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from multiprocessing import connection as mp_connection
from multiprocessing.process import BaseProcess
from typing import Any, TextIO, cast

import uvloop
from aiohttp import web

from se import metrics
from se.app import METHODS, create_app, reconfigure
from se.auth.x509 import configure_server_context
from se.config import Config, ConfigError, is_loopback, listener_configs, state_dir
from se.events import reset_events
from se.faults import reset_state
from se.tape.service import database_path
from se.web import accesslog, health
from se.web.accesslog import AccessLogger, RedactTokens
from se.web.context import CONTEXT
from se.web.fastpath import LEAN
from se.web.protocol import HeadBudget, SEHandler

__all__ = ["Endpoint", "check_startup", "plan", "run", "serve_url"]

log = logging.getLogger("se")
ALLOW = ", ".join(METHODS)


def check_startup(cfg: Config) -> None:
    """Refuse configurations that would expose anonymous write access to a network."""
    if cfg.auth is None and not is_loopback(cfg.server.host) and not cfg.server.insecure_anonymous:
        raise ConfigError(
            f"refusing to serve anonymous read-write on non-loopback address {cfg.server.host}: "
            "add an [auth] section or pass --insecure-anonymous"
        )


def forget_test_state(cfg: Config) -> None:
    """Run-time fault rules, fault counts and events start empty with each server run
    (before the workers, which share them)."""
    if cfg.faults.enabled:
        reset_state(state_dir(cfg) / "faults")
    if cfg.events.enabled:
        reset_events(state_dir(cfg) / "events")


def make_ssl_context(cfg: Config) -> ssl.SSLContext | None:
    if not cfg.tls.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # A TLS 1.2 connection's client certificate cannot change under a kept identity.
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_cert_chain(cfg.tls.cert, cfg.tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls: cannot load certificate/key: {exc}") from exc
    if cfg.tls.client_certs != "none":
        try:
            configure_server_context(ctx, cfg.tls.ca_dir, cfg.tls.client_certs)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"tls.ca_dir: cannot load {cfg.tls.ca_dir}: {exc}") from exc
    return ctx


def bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, socktype, proto, _cn, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def serve_url(cfg: Config, port: int) -> str:
    host = cfg.server.host
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if cfg.tls.enabled else "http"
    return f"{scheme}://{host}:{port}"


class _Site(web.SockSite):
    """A SockSite whose connections are :class:`SEHandler` (aiohttp's RequestHandler with
    bounded pre-request cost and the request-line checks), made with the kwargs the
    runner's Server would pass to its own handlers."""

    __slots__ = ("_budget", "_head")

    def __init__(
        self,
        runner: web.AppRunner,
        sock: socket.socket,
        *,
        ssl_context: ssl.SSLContext | None,
        backlog: int,
        budget: HeadBudget,
        max_head_bytes: int,
        head_timeout: float,
    ) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context, backlog=backlog)
        self._budget = budget
        self._head = (max_head_bytes, head_timeout)

    async def start(self) -> None:
        self._runner._reg_site(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        kwargs = server._kwargs
        max_head_bytes, head_timeout = self._head
        app = cast(web.AppRunner, self._runner).app
        lean = app[LEAN] if app[CONTEXT].cfg.server.lean_path else None
        scitags = app[CONTEXT].scitags
        closed_hook = scitags.connection_closed if scitags is not None else None

        def handler() -> SEHandler:
            return SEHandler(
                server,
                loop=loop,
                budget=self._budget,
                max_head_bytes=max_head_bytes,
                head_timeout=head_timeout,
                allow=ALLOW,
                lean=lean,
                closed_hook=closed_hook,
                **kwargs,
            )

        self._server = await loop.create_server(
            handler, sock=self._sock, ssl=self._ssl_context, backlog=self._backlog
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """One listener as every worker serves it: its configuration (with its real port) and
    what it does for its root in the first worker."""

    cfg: Config
    sweep: bool  # sweeps its storage root at start (one listener per root)
    library: bool  # may run the simulated tape library (one listener per tape database)


def plan(cfgs: Sequence[Config]) -> tuple[Endpoint, ...]:
    """Endpoints for the listeners' configurations, in order: the first listener of each
    storage root sweeps it (none whose root lies below another listener's, which that one's
    sweep covers), the first of each tape database runs the library."""
    roots = [os.path.realpath(c.storage.root) for c in cfgs]
    databases: set[str] = set()
    out: list[Endpoint] = []
    for i, cfg in enumerate(cfgs):
        root = roots[i]
        covered = any(
            (other == root and j < i) or root.startswith(other.rstrip("/") + "/")
            for j, other in enumerate(roots)
            if j != i
        )
        database = database_path(cfg)
        library = database not in databases
        databases.add(database)
        out.append(Endpoint(cfg, cfg.storage.sweep_on_start and not covered, library))
    return tuple(out)


async def _start(
    endpoint: Endpoint, sock: socket.socket, first: bool, budget: HeadBudget
) -> web.AppRunner:
    cfg = endpoint.cfg
    app = create_app(cfg, sweep=endpoint.sweep and first, primary=endpoint.library and first)
    access = logging.getLogger("se.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())
    s = cfg.server
    runner = web.AppRunner(
        app,
        # Always given; logging.access_log turns it on and off (live, at SIGHUP).
        access_log=access,
        access_log_class=AccessLogger,
        handler_cancellation=False,
        # After the drain (server.drain_timeout): time for the aborted copies' last lines.
        shutdown_timeout=SHUTDOWN_GRACE,
        # WLCG tokens with many groups exceed aiohttp's 8 KiB field default; the token
        # size limit proper (auth.max_token_bytes) answers 401 with a reason.
        max_field_size=s.max_header_field,
        max_line_size=s.max_header_field,
        max_headers=s.max_headers,
        keepalive_timeout=s.keepalive_timeout,
    )
    await runner.setup()
    try:
        site = _Site(
            runner,
            sock,
            ssl_context=make_ssl_context(cfg),
            backlog=1024,
            budget=budget,
            max_head_bytes=s.max_header_bytes,
            head_timeout=s.header_timeout,
        )
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


SHUTDOWN_GRACE = 5.0  # seconds, after the drain, for aborted transfers to say so
DRAIN_POLL = 0.1  # seconds between two looks at the running requests while draining
BALANCER_MEMORY = 60.0  # seconds: a health poll this recent means a balancer sends to us


async def _drain(runners: Sequence[web.AppRunner], again: asyncio.Event) -> None:
    """The graceful part of a stop: /health answers 503 from now on, the listeners keep
    serving (a balancer stops sending once it has seen the 503) while requests are still
    running, for at most server.drain_timeout seconds (a second SIGTERM ends the wait)."""
    state = health.SERVICE
    state.draining = True
    server = runners[0].app[CONTEXT].cfg.server if runners else None
    timeout = server.drain_timeout if server is not None else 0.0
    now = time.monotonic()
    deadline = now + timeout
    # Behind a balancer (it polled health within the last minute), stay up until its
    # checks have seen the 503, or a connection it hands over meanwhile would be reset.
    until = now
    if server is not None and now - state.polled < BALANCER_MEMORY:
        until = now + min(server.drain_min, server.drain_timeout)
    if state.active:
        log.info("stopping: draining %d running request(s), at most %g s", state.active, timeout)
    while (state.active > 0 or time.monotonic() < until) and not again.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            log.warning("stopping: %d request(s) still running after the drain", state.active)
            break
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(DRAIN_POLL, left)):
                await again.wait()


class _Reloader:
    """The reload of one process that serves (the single process of --workers 1, or a
    worker told by its parent): the live parts of a new configuration into every app."""

    def __init__(self, runners: Sequence[web.AppRunner]) -> None:
        self.runners = runners

    def apply(self, generation: int, cfgs: Sequence[Config] | None) -> None:
        """``cfgs``: one configuration per listener, in order; None: only reopen the
        transfer logs (a refused reload still serves logrotate)."""
        if cfgs is None:
            for r in self.runners:
                transfers = r.app[CONTEXT].transfers
                if transfers is not None:
                    transfers.reopen()
            return
        for r, cfg in zip(self.runners, cfgs, strict=True):
            reconfigure(r.app, cfg)
        apply_logging(cfgs[0])
        health.SERVICE.generation = generation


def apply_logging(cfg: Config) -> None:
    """The process-wide logging settings of ``cfg`` (level, access log on or off)."""
    logging.getLogger().setLevel(cfg.logging.level.upper())
    logging.getLogger("se.access").disabled = not cfg.logging.access_log


async def _serve(
    endpoints: Sequence[Endpoint],
    socks: Sequence[socket.socket],
    first: bool,
    control: Control | None = None,
) -> None:
    """Serve ``endpoints`` on ``socks`` until SIGTERM/SIGINT.  ``control``: the worker's
    link to its supervising parent (reloads come that way); None: the single process,
    which reloads at SIGHUP itself, tells systemd and pings its watchdog."""
    # One budget for the unfinished request heads of all the listeners of this worker.
    budget = HeadBudget(endpoints[0].cfg.server.header_buffer_bytes)
    runners: list[web.AppRunner] = []
    watchdog: asyncio.Task[None] | None = None
    try:
        apply_logging(endpoints[0].cfg)
        for endpoint, sock in zip(endpoints, socks, strict=True):
            runners.append(await _start(endpoint, sock, first, budget))
        stop = asyncio.Event()
        again = asyncio.Event()  # a second stop signal: no more waiting
        loop = asyncio.get_running_loop()

        def on_stop() -> None:
            (again if stop.is_set() else stop).set()

        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, on_stop)
        reloader = _Reloader(runners)
        if control is None:
            state = _RELOADS

            def on_hup() -> None:
                notify_reloading()
                cfgs = state.check() if state is not None else None
                reloader.apply(state.generation if state is not None else 0, cfgs)
                if cfgs is not None and state is not None:
                    log.info("config reloaded (generation %d)", state.generation)
                sd_notify("READY=1")

            loop.add_signal_handler(signal.SIGHUP, on_hup)
            watchdog = asyncio.ensure_future(_watchdog())
        else:
            control.attach(loop, reloader)
        # Held since before the address was printed: one sent meanwhile is delivered now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD_SIGNALS)
        if control is None:
            sd_notify("READY=1")
        else:
            control.send(("ready",))
        await stop.wait()
        if control is None:
            sd_notify("STOPPING=1")
        await _drain(runners, again)
    finally:
        if watchdog is not None:
            watchdog.cancel()
        # All at once: each waits for its own connections while the others do the same.
        results = await asyncio.gather(*(r.cleanup() for r in runners), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.error("stopping a listener failed: %r", result)
        accesslog.flush()


def _worker(
    endpoints: Sequence[Endpoint],
    socks: Sequence[socket.socket] | None,
    index: int,
    inherited: Sequence[socket.socket] = (),
    control: Control | None = None,
    generation: int = 0,
) -> None:
    health.SERVICE.generation = generation
    if control is not None:
        # The parent reloads (and tells the workers through the control pipe); a SIGHUP
        # sent to the whole process group must not stop a worker.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.environ.pop("NOTIFY_SOCKET", None)  # only the parent talks to systemd
    if socks is None:
        # The first worker's sockets, copied by fork: kept open here, they would stay in
        # the SO_REUSEPORT groups after that worker died, and take connections no one
        # accepts.
        for sock in inherited:
            sock.close()
        socks = bind_all([e.cfg for e in endpoints], reuse_port=True)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(endpoints, socks, index == 0, control))


def bind_all(cfgs: Sequence[Config], reuse_port: bool) -> list[socket.socket]:
    """One listening socket per configuration, all or none."""
    socks: list[socket.socket] = []
    try:
        for cfg in cfgs:
            socks.append(bind(cfg.server.host, cfg.server.port, reuse_port))
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def setup_logging(cfg: Config) -> None:
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=cfg.logging.level.upper(), format=fmt, stream=sys.stderr)
    # Access log lines skip logging's records and handler: the same text, written in
    # batches (se.web.accesslog).
    accesslog.write_directly(sys.stderr, fmt)


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_HELD_SIGNALS = {*_STOP_SIGNALS, signal.SIGHUP}
# The reloads of this run (set by run(); the single process reads it at SIGHUP).
_RELOADS: ReloadState | None = None


def count_metrics_apart() -> None:
    """Metrics of this server run go to a fresh private directory that the workers share
    (se.metrics' multiprocess mode; set before they fork), removed when the server exits."""
    path = tempfile.mkdtemp(prefix="se-metrics-")
    metrics.use_directory(path)
    parent = os.getpid()

    def remove() -> None:
        if os.getpid() == parent:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)


def run(cfg: Config, out: TextIO = sys.stdout, reload: Callable[[], Config] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status.  ``reload``: reads the
    configuration again (SIGHUP), as it was read at start (file and flags)."""
    global _RELOADS
    base = cfg
    cfgs = listener_configs(cfg)
    for each in cfgs:
        check_startup(each)
        make_ssl_context(each)  # fail early on bad certificates
    setup_logging(cfg)
    for each in cfgs:
        os.makedirs(each.storage.root, exist_ok=True)
    for each in cfgs:
        forget_test_state(each)
    count_metrics_apart()
    workers = cfg.server.workers
    socks = bind_all(cfgs, reuse_port=workers > 1)
    # Workers beyond the first bind the ports that the first sockets actually got.
    cfgs = tuple(_with_port(c, s.getsockname()[1]) for c, s in zip(cfgs, socks, strict=True))
    # Whoever reads the address may stop the server at once: SIGTERM/SIGINT wait (blocked,
    # inherited by the workers) until the handlers that stop cleanly are in place.
    signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    for each in cfgs:  # [server]'s line first, as before listeners existed
        root = os.path.abspath(each.storage.root)
        print(f"se: serving {root} at {serve_url(each, each.server.port)}", file=out, flush=True)
    endpoints = plan(cfgs)
    _RELOADS = ReloadState(base, tuple(c.server.port for c in cfgs), reload)
    if workers == 1:
        _worker(endpoints, socks, 0)
        return 0
    return _supervise(endpoints, socks, workers, _RELOADS)


# Supervision of --workers N: a worker that dies is started again after a pause that
# doubles with each recent crash (RESTART_DELAY: first and longest); CRASH_LIMIT crashes
# within CRASH_WINDOW seconds stop the server instead, with a message and exit status 1.
# Connections the kernel had already queued on a dead worker's SO_REUSEPORT socket are
# lost with it (each socket has its own queue, which no other process can take over); the
# restart bounds that outage to the pause.
CRASH_LIMIT = 5
CRASH_WINDOW = 60.0
RESTART_DELAY = (0.5, 8.0)


# --------------------------------------------------------------------------- reload

# What a SIGHUP reload may change (everything else is compared, and a difference refuses
# the whole file): whole sections, and single keys of others.
LIVE_SECTIONS = frozenset(("auth", "logging", "shares"))
LIVE_KEYS: dict[str, frozenset[str]] = {
    "server": frozenset(("drain_timeout",)),
    "faults": frozenset(("rules", "admins")),
}
RELOAD_WAIT = 10.0  # seconds the parent waits for every worker to confirm a reload


def frozen_change(old: Config, new: Config) -> str | None:
    """The first key that differs between ``old`` and ``new`` and cannot change while the
    server runs (``server.port``, ``tls``, ``listeners``...), or None."""
    if (old.auth is None) != (new.auth is None):
        return "[auth] (added or removed)"
    for f in dataclasses.fields(old):
        name = f.name
        if name in LIVE_SECTIONS:
            continue
        a, b = getattr(old, name), getattr(new, name)
        if a == b:
            continue
        if dataclasses.is_dataclass(a) and type(a) is type(b):
            for g in dataclasses.fields(a):
                if g.name not in LIVE_KEYS.get(name, ()) and getattr(a, g.name) != getattr(
                    b, g.name
                ):
                    return f"{name}.{g.name}"
            continue  # only live keys differ
        return name
    return None


class ReloadState:
    """The configuration in force as read from the file (and flags), the ports the
    listeners got, and the number of reloads applied; :meth:`check` reads the file again."""

    def __init__(self, base: Config, ports: tuple[int, ...], source: Callable[[], Config] | None):
        self.base = base
        self.ports = ports
        self.source = source
        self.generation = 0

    def check(self) -> tuple[Config, ...] | None:
        """Each listener's new configuration (the reload counted), or None (refused or
        nothing to reload: one log line says why; the configuration in force stays)."""
        if self.source is None:
            log.warning(
                "reload: se serve was started without a configuration file, nothing to reload"
            )
            return None
        try:
            new = self.source()
            key = frozen_change(self.base, new)
            if key is not None:
                raise ConfigError(f"{key} cannot change without a restart")
            cfgs = listener_configs(new)
            for each in cfgs:
                check_startup(each)
        except ConfigError as exc:
            log.error("reload refused, the configuration in force is kept: %s", exc)
            return None
        self.base = new
        self.generation += 1
        return tuple(_with_port(c, port) for c, port in zip(cfgs, self.ports, strict=True))


Message = tuple[Any, ...]


class Control:
    """A worker's end of the pipe to its parent: "ready" once it listens, reloads in,
    confirmations out."""

    def __init__(self, conn: mp_connection.Connection) -> None:
        self.conn = conn

    def send(self, message: Message) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(message)

    def attach(self, loop: asyncio.AbstractEventLoop, reloader: _Reloader) -> None:
        fd = self.conn.fileno()

        def on_message() -> None:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):  # the parent is gone
                loop.remove_reader(fd)
                return
            if message[0] == "reload":
                _kind, generation, cfgs = message
                error = ""
                try:
                    reloader.apply(generation, cfgs)
                except ConfigError as exc:
                    error = str(exc)
                    log.error("reload failed in worker %d: %s", os.getpid(), exc)
                self.send(("applied", generation, error))

        loop.add_reader(fd, on_message)


# --------------------------------------------------------------------------- systemd


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) a state change: one datagram to $NOTIFY_SOCKET (an
    absolute path, or "@name" in the abstract namespace); nothing without it.  Never
    blocks the caller long when the manager does not read: a watchdog ping is dropped at
    once, a state change waits at most NOTIFY_TIMEOUT."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    ping = message == "WATCHDOG=1"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(0.0 if ping else NOTIFY_TIMEOUT)
            sock.sendto(message.encode(), address)
    except OSError as exc:
        if not (ping and isinstance(exc, BlockingIOError)):
            log.warning("sd_notify %s: %s", message.split("=", 1)[0], exc.strerror or exc)


NOTIFY_TIMEOUT = 1.0  # seconds a state change may wait for room in the manager's queue


def notify_reloading() -> None:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    sd_notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def watchdog_period() -> float | None:
    """Seconds between two WATCHDOG=1 pings (half of WatchdogSec), or None: not asked."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or not os.environ.get("NOTIFY_SOCKET"):
        return None
    if pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2e6


async def _watchdog() -> None:
    period = watchdog_period()
    if period is None:
        return
    while True:
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(period)


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _supervise(
    endpoints: Sequence[Endpoint],
    socks: list[socket.socket],
    workers: int,
    reloads: ReloadState | None = None,
) -> int:
    ctx = multiprocessing.get_context("fork")
    current = list(endpoints)  # as reloaded: what a restarted worker starts with
    conns: dict[int, mp_connection.Connection] = {}  # worker index -> its control pipe
    ready: set[int] = set()  # workers that listen (READY=1 once all of them do)
    generation = 0

    def spawn(index: int, first_socks: list[socket.socket] | None) -> BaseProcess:
        ours, theirs = multiprocessing.Pipe()
        proc = ctx.Process(
            target=_worker,
            args=(tuple(current), first_socks, index, socks, Control(theirs), generation),
            name=f"se-worker-{index}",
            daemon=False,
        )
        proc.start()
        theirs.close()
        old = conns.pop(index, None)
        if old is not None:
            old.close()
        conns[index] = ours
        return proc

    def receive(conn: mp_connection.Connection) -> Message | None:
        try:
            message: Message = conn.recv()
        except (EOFError, OSError):
            return None
        index = next((i for i, c in conns.items() if c is conn), -1)
        if message[0] == "ready" and index >= 0:
            ready.add(index)
        return message

    def reload_workers() -> None:
        nonlocal generation
        notify_reloading()
        cfgs = reloads.check() if reloads is not None else None
        if cfgs is not None and reloads is not None:
            generation = reloads.generation
            apply_logging(cfgs[0])
            current[:] = [dataclasses.replace(e, cfg=c) for e, c in zip(current, cfgs, strict=True)]
        pending: dict[int, mp_connection.Connection] = {}
        for index, conn in conns.items():
            if index not in restart_at and procs[index].is_alive():
                try:
                    conn.send(("reload", generation, cfgs))
                except OSError:
                    continue
                pending[index] = conn
        deadline = time.monotonic() + RELOAD_WAIT
        while pending and time.monotonic() < deadline:
            for item in mp_connection.wait(list(pending.values()), timeout=0.5):
                assert isinstance(item, mp_connection.Connection)
                message = receive(item)
                index = next(i for i, c in pending.items() if c is item)
                if message is None or (message[0] == "applied" and message[1] == generation):
                    del pending[index]
            ping()
        if cfgs is not None:
            if pending:
                log.error(
                    "reload: worker(s) %s did not confirm within %g s", sorted(pending), RELOAD_WAIT
                )
            log.info("config reloaded (generation %d)", generation)
        sd_notify("READY=1")

    period = watchdog_period()
    next_ping = 0.0

    def ping() -> None:
        nonlocal next_ping
        if period is not None and time.monotonic() >= next_ping:
            sd_notify("WATCHDOG=1")
            next_ping = time.monotonic() + period

    procs = {i: spawn(i, socks if i == 0 else None) for i in range(workers)}
    for sock in socks:
        sock.close()  # a restarted first worker binds its own SO_REUSEPORT sockets
    stopping = threading.Event()  # set by the signal handler
    hup = threading.Event()  # SIGHUP: reload

    def forward(signum: int, _frame: object) -> None:
        if not stopping.is_set():
            sd_notify("STOPPING=1")
        stopping.set()
        for proc in procs.values():
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: hup.set())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD_SIGNALS)
    crashes: collections.deque[float] = collections.deque()
    restart_at: dict[int, float] = {}  # worker index -> when to start it again
    announced = False  # READY=1 sent
    while not stopping.is_set():
        waiting: list[Any] = [p.sentinel for i, p in procs.items() if i not in restart_at]
        waiting += [c for i, c in conns.items() if i not in restart_at]
        # Short: signals are seen promptly.
        for item in mp_connection.wait(waiting, timeout=0.5):
            if isinstance(item, mp_connection.Connection):
                receive(item)
        ping()
        if not announced and len(ready) == workers:
            announced = True
            sd_notify("READY=1")
        if hup.is_set() and not stopping.is_set():
            hup.clear()
            reload_workers()
        now = time.monotonic()
        for index, proc in list(procs.items()):
            if stopping.is_set():
                break
            if index in restart_at:
                if now >= restart_at[index]:
                    del restart_at[index]
                    procs[index] = spawn(index, None)
                    log.warning("worker %d restarted (pid %s)", index, procs[index].pid)
                continue
            if proc.exitcode is None:
                continue
            if proc.pid is not None:
                metrics.worker_died(proc.pid)
            crashes.append(now)
            while crashes and crashes[0] < now - CRASH_WINDOW:
                crashes.popleft()
            reason = f"worker {index} (pid {proc.pid}) {_exit_reason(proc.exitcode)}"
            if len(crashes) >= CRASH_LIMIT:
                log.error(
                    "workers crashed %d times within %g s (the last: %s); stopping the "
                    "server, see the errors above",
                    len(crashes),
                    CRASH_WINDOW,
                    reason,
                )
                forward(signal.SIGTERM, None)
                _join(procs.values(), ping)
                return 1
            delay = min(RESTART_DELAY[0] * 2 ** (len(crashes) - 1), RESTART_DELAY[1])
            log.error("%s; restarting it in %.1f s", reason, delay)
            restart_at[index] = now + delay
    status = 0
    _join((p for i, p in procs.items() if i not in restart_at), ping)
    for index, proc in procs.items():
        if index not in restart_at and proc.exitcode not in (0, None):
            status = 1
    return status


def _join(procs: Iterable[BaseProcess], ping: Callable[[], None] | None = None) -> None:
    """Wait for each process to end (the watchdog still pinged while they drain)."""
    for proc in procs:
        while proc.exitcode is None:
            proc.join(1.0)
            if ping is not None:
                ping()


def _with_port(cfg: Config, port: int) -> Config:
    return dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, port=port))
