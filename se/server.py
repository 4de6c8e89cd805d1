"""Process management: listening sockets, TLS, uvloop, worker processes.

One process per worker, each with its own uvloop event loop.  The parent binds the first
socket of every listener (``[server]``, then each ``[[listeners]]`` table; learning the port
when 0 was asked for), prints one address line per listener, and forks; with more than one
worker every worker listens on its own ``SO_REUSEPORT`` sockets so the kernel spreads
connections evenly.  Every worker serves every listener, each with its own application
(se.app.create_app on the listener's derived configuration); what must happen once per
storage root or tape database (the sweep of interrupted uploads, the simulated tape library)
is given to one listener of the first worker.  The parent forwards SIGTERM/SIGINT and waits.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
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
from collections.abc import Iterable, Sequence
from multiprocessing import connection as mp_connection
from multiprocessing.process import BaseProcess
from typing import TextIO

import uvloop
from aiohttp import web

from se import metrics
from se.accesslog import AccessLogger, RedactTokens
from se.app import METHODS, create_app
from se.auth.x509 import configure_server_context
from se.config import Config, ConfigError, is_loopback, listener_configs, state_dir
from se.events import reset_events
from se.faults import reset_state
from se.tape.service import database_path
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

        def handler() -> SEHandler:
            return SEHandler(
                server,
                loop=loop,
                budget=self._budget,
                max_head_bytes=max_head_bytes,
                head_timeout=head_timeout,
                allow=ALLOW,
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
        access_log=access if cfg.logging.access_log else None,
        access_log_class=AccessLogger,
        handler_cancellation=False,
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


async def _serve(
    endpoints: Sequence[Endpoint], socks: Sequence[socket.socket], first: bool
) -> None:
    # One budget for the unfinished request heads of all the listeners of this worker.
    budget = HeadBudget(endpoints[0].cfg.server.header_buffer_bytes)
    runners: list[web.AppRunner] = []
    try:
        for endpoint, sock in zip(endpoints, socks, strict=True):
            runners.append(await _start(endpoint, sock, first, budget))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, stop.set)
        # Held since before the address was printed: one sent meanwhile is delivered now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        await stop.wait()
    finally:
        # All at once: each waits for its own connections while the others do the same.
        results = await asyncio.gather(*(r.cleanup() for r in runners), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.error("stopping a listener failed: %r", result)


def _worker(
    endpoints: Sequence[Endpoint],
    socks: Sequence[socket.socket] | None,
    index: int,
    inherited: Sequence[socket.socket] = (),
) -> None:
    if socks is None:
        # The first worker's sockets, copied by fork: kept open here, they would stay in
        # the SO_REUSEPORT groups after that worker died, and take connections no one
        # accepts.
        for sock in inherited:
            sock.close()
        socks = bind_all([e.cfg for e in endpoints], reuse_port=True)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(endpoints, socks, index == 0))


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
    logging.basicConfig(
        level=cfg.logging.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


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


def run(cfg: Config, out: TextIO = sys.stdout) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status."""
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
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    for each in cfgs:  # [server]'s line first, as before listeners existed
        root = os.path.abspath(each.storage.root)
        print(f"se: serving {root} at {serve_url(each, each.server.port)}", file=out, flush=True)
    endpoints = plan(cfgs)
    if workers == 1:
        _worker(endpoints, socks, 0)
        return 0
    return _supervise(endpoints, socks, workers)


# Supervision of --workers N: a worker that dies is started again after a pause that
# doubles with each recent crash (RESTART_DELAY: first and longest); CRASH_LIMIT crashes
# within CRASH_WINDOW seconds stop the server instead, with a message and exit status 1.
# Connections the kernel had already queued on a dead worker's SO_REUSEPORT socket are
# lost with it (each socket has its own queue, which no other process can take over); the
# restart bounds that outage to the pause.
CRASH_LIMIT = 5
CRASH_WINDOW = 60.0
RESTART_DELAY = (0.5, 8.0)


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _supervise(endpoints: Sequence[Endpoint], socks: list[socket.socket], workers: int) -> int:
    ctx = multiprocessing.get_context("fork")

    def spawn(index: int, first_socks: list[socket.socket] | None) -> BaseProcess:
        proc = ctx.Process(
            target=_worker,
            args=(endpoints, first_socks, index, socks),
            name=f"se-worker-{index}",
            daemon=False,
        )
        proc.start()
        return proc

    procs = {i: spawn(i, socks if i == 0 else None) for i in range(workers)}
    for sock in socks:
        sock.close()  # a restarted first worker binds its own SO_REUSEPORT sockets
    stopping = threading.Event()  # set by the signal handler

    def forward(signum: int, _frame: object) -> None:
        stopping.set()
        for proc in procs.values():
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    crashes: collections.deque[float] = collections.deque()
    restart_at: dict[int, float] = {}  # worker index -> when to start it again
    while not stopping.is_set():
        waiting = [p.sentinel for i, p in procs.items() if i not in restart_at]
        mp_connection.wait(waiting, timeout=0.5)  # short: signals are seen promptly
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
                _join(procs.values())
                return 1
            delay = min(RESTART_DELAY[0] * 2 ** (len(crashes) - 1), RESTART_DELAY[1])
            log.error("%s; restarting it in %.1f s", reason, delay)
            restart_at[index] = now + delay
    status = 0
    _join(p for i, p in procs.items() if i not in restart_at)
    for index, proc in procs.items():
        if index not in restart_at and proc.exitcode not in (0, None):
            status = 1
    return status


def _join(procs: Iterable[BaseProcess]) -> None:
    for proc in procs:
        proc.join()


def _with_port(cfg: Config, port: int) -> Config:
    return dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, port=port))
