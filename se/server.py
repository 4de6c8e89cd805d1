"""Process management: listening socket, TLS, uvloop, worker processes.

One process per worker, each with its own uvloop event loop.  The parent binds the first
socket (learning the port when 0 was asked for), prints the address, and forks; with more
than one worker every worker listens on its own ``SO_REUSEPORT`` socket so the kernel
spreads connections evenly.  The parent forwards SIGTERM/SIGINT and waits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import ssl
import sys
from typing import TextIO

import uvloop
from aiohttp import web

from se.accesslog import RedactTokens
from se.app import create_app
from se.config import Config, ConfigError, is_loopback

__all__ = ["check_startup", "run", "serve_url"]

log = logging.getLogger("se")


def check_startup(cfg: Config) -> None:
    """Refuse configurations that would expose anonymous write access to a network."""
    if cfg.auth is None and not is_loopback(cfg.server.host) and not cfg.server.insecure_anonymous:
        raise ConfigError(
            f"refusing to serve anonymous read-write on non-loopback address {cfg.server.host}: "
            "add an [auth] section or pass --insecure-anonymous"
        )


def make_ssl_context(cfg: Config) -> ssl.SSLContext | None:
    if not cfg.tls.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cfg.tls.cert, cfg.tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls: cannot load certificate/key: {exc}") from exc
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


MAX_HEADER_FIELD = 65536


def serve_url(cfg: Config, port: int) -> str:
    host = cfg.server.host
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if cfg.tls.enabled else "http"
    return f"{scheme}://{host}:{port}"


async def _serve(cfg: Config, sock: socket.socket, first: bool) -> None:
    app = create_app(cfg, sweep=cfg.storage.sweep_on_start and first, primary=first)
    access = logging.getLogger("se.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())
    runner = web.AppRunner(
        app,
        access_log=access if cfg.logging.access_log else None,
        handler_cancellation=False,
        # WLCG tokens with many groups exceed aiohttp's 8 KiB header default; the token
        # size limit proper (auth.max_token_bytes) answers 401 with a reason.
        max_field_size=MAX_HEADER_FIELD,
        max_line_size=MAX_HEADER_FIELD,
        keepalive_timeout=cfg.server.keepalive_timeout,
    )
    await runner.setup()
    site = web.SockSite(runner, sock, ssl_context=make_ssl_context(cfg), backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _worker(cfg: Config, sock: socket.socket | None, index: int) -> None:
    if sock is None:
        sock = bind(cfg.server.host, cfg.server.port, reuse_port=True)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(cfg, sock, index == 0))


def setup_logging(cfg: Config) -> None:
    logging.basicConfig(
        level=cfg.logging.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run(cfg: Config, out: TextIO = sys.stdout) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status."""
    check_startup(cfg)
    make_ssl_context(cfg)  # fail early on bad certificates
    setup_logging(cfg)
    os.makedirs(cfg.storage.root, exist_ok=True)
    workers = cfg.server.workers
    sock = bind(cfg.server.host, cfg.server.port, reuse_port=workers > 1)
    port = sock.getsockname()[1]
    # Workers beyond the first bind the port that the first socket actually got.
    cfg = _with_port(cfg, port)
    print(
        f"se: serving {os.path.abspath(cfg.storage.root)} at {serve_url(cfg, port)}",
        file=out,
        flush=True,
    )
    if workers == 1:
        _worker(cfg, sock, 0)
        return 0
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(
            target=_worker,
            args=(cfg, sock if i == 0 else None, i),
            name=f"se-worker-{i}",
            daemon=False,
        )
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    sock.close()

    def forward(signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for proc in procs:
        proc.join()
        if proc.exitcode not in (0, None):
            status = 1
    return status


def _with_port(cfg: Config, port: int) -> Config:
    return dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, port=port))
