"""Build the aiohttp application: routes, shared state, start-up and clean-up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from se.auth.cache import GrantCache
from se.auth.macaroons import SecretStore
from se.auth.policy import Grant, Rule, ops_named
from se.auth.wlcg import TokenVerifier
from se.config import Config, state_dir
from se.dav import handlers
from se.dav.context import CONTEXT, Context
from se.middleware import handle_errors
from se.scitags.service import SciTagService
from se.storage.paths import confine
from se.storage.posix import CachedFile, PosixBackend
from se.storage.watchcache import WatchedCache
from se.tape.service import TapeService
from se.tpc.service import TPCService

__all__ = ["create_app"]

log = logging.getLogger("se")


def create_app(cfg: Config, *, sweep: bool | None = None, primary: bool = True) -> web.Application:
    """The application for one worker process.  ``sweep`` overrides storage.sweep_on_start;
    ``primary``: the first worker, the one that runs the simulated tape library."""
    app = web.Application(client_max_size=1024**2)
    executor = ThreadPoolExecutor(cfg.server.io_threads, thread_name_prefix="se-io")
    files: WatchedCache[CachedFile] | None = None
    if cfg.storage.file_cache_bytes > 0:
        files = WatchedCache(max_bytes=cfg.storage.file_cache_bytes, max_variants=4096)
    backend = PosixBackend(cfg, executor, files)
    listings: WatchedCache[bytes] = WatchedCache(cfg.webdav.listing_cache_dirs)
    scitags = SciTagService(cfg.scitags) if cfg.scitags.enabled else None
    tpc = TPCService(cfg, backend, scitags)
    tape = TapeService(cfg, run_library=primary) if cfg.tape.enabled else None
    if tape is not None:
        backend.observer = tape
    secret_file = cfg.tpc.macaroon_secret_file or str(state_dir(cfg) / "macaroon.secret")
    auth = cfg.auth
    tokens = TokenVerifier(auth, cfg.tls.ca_dir) if auth is not None and auth.issuers else None
    public = None
    if auth is not None and auth.public:
        public = Grant.of(Rule(confine(p.path), ops_named(p.allow)) for p in auth.public)
    app[CONTEXT] = Context(
        cfg,
        backend,
        cfg.anonymous_access(),
        listings,
        tpc,
        SecretStore(Path(secret_file)),
        tokens,
        public,
        GrantCache(auth.token_cache_entries if auth is not None else 10000),
        scitags,
        tape,
    )
    app.router.add_route(
        "*", "/{tail:.*}", handle_errors(handlers.dispatch), expect_handler=handlers.expect_handler
    )
    app.on_response_prepare.append(handlers.on_prepare)
    do_sweep = cfg.storage.sweep_on_start if sweep is None else sweep

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        task = None
        if do_sweep:
            task = asyncio.ensure_future(backend.run(backend.sweep_temp_files))
            task.add_done_callback(_log_sweep)
        if tape is not None:
            await tape.start()
        yield
        await tpc.close()
        if tape is not None:
            await tape.close()
        if scitags is not None:
            scitags.close()
        if tokens is not None:
            await tokens.close()
        if task is not None and not task.done():
            task.cancel()
        executor.shutdown(wait=False, cancel_futures=True)
        listings.close()
        if files is not None:
            files.close()

    async def stop_transfers(_app: web.Application) -> None:
        tpc.stopping = True  # running COPYs end with "aborted:" instead of being cut

    app.on_shutdown.append(stop_transfers)
    app.cleanup_ctx.append(lifecycle)
    return app


def _log_sweep(task: asyncio.Future[int]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.warning("sweep of interrupted uploads failed: %s", exc)
    elif task.result():
        log.info("removed %d interrupted upload(s)", task.result())
