"""Build the aiohttp application: the route table, shared state, start-up and clean-up.

Routing is one catch-all route (aiohttp's class views reject non-standard verbs such as
PROPFIND) whose :func:`dispatch` authenticates every request once, then hands it to the
front that owns it: the tape REST API (``se.tape.http``), the metrics page
(``se.web.metrics``), the GridSite delegation endpoint (``se.tpc.delegation``),
third-party copy (``se.tpc``) for a COPY naming a remote, and WebDAV (``se.dav``) for the
rest.  This module is the only one that knows all the fronts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import hdrs, web

from se.auth.cache import GrantCache
from se.auth.clientcert import CertificateAuth
from se.auth.delegation import DelegationStore
from se.auth.macaroons import SecretStore
from se.auth.policy import Grant, Op, named_rules
from se.auth.wlcg import TokenVerifier
from se.config import Config, ConfigError, state_dir
from se.dashboard import http as dashboard_http
from se.dashboard.state import DASHBOARD, Dashboard
from se.dav import handlers
from se.dav.macaroon_requests import post
from se.errors import ExpectationFailed, MethodNotAllowed, SEError
from se.events import EventLog
from se.faults import FaultState
from se.scitags.service import SciTagService
from se.space.accounting import Accounting
from se.storage.dirwatch import DirWatch
from se.storage.paths import DavPath, check_new_name, confine, is_reserved
from se.storage.posix import PosixBackend
from se.storage.statcache import AnswerCache, FileCache, ListingCache
from se.tape import http as tape_http
from se.tape.model import Locality
from se.tape.service import TapeService
from se.tpc import delegation
from se.tpc.handler import third_party_copy
from se.tpc.request import parse_copy
from se.tpc.service import TPC_SERVICE, TPCService
from se.web import fastpath, health, metrics, srr, testpoints
from se.web.access import authenticate, authorise, grant_of
from se.web.context import CONTEXT, Context, MetricSource, context
from se.web.error_handling import error_response, handle_errors
from se.web.representation import SERVER
from se.web.transferlog import COPY_FACTS, TransferLog, was_cut

__all__ = ["METHODS", "create_app", "dispatch", "expect_handler", "on_prepare", "reconfigure"]

log = logging.getLogger("se")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def copy(request: web.Request) -> web.StreamResponse:
    """A COPY naming a remote source or destination is a third-party copy; else WebDAV's."""
    ctx = context(request)
    spec = parse_copy(
        request.headers, request.headers.items(), request.host, ctx.cfg.server.local_hosts
    )
    if spec is None:
        return await handlers.copy(request)
    return await third_party_copy(request, spec)


METHODS: dict[str, Handler] = {
    "OPTIONS": handlers.options,
    "GET": handlers.get,
    "HEAD": handlers.get,
    "PUT": handlers.put,
    "DELETE": handlers.delete,
    "MKCOL": handlers.mkcol,
    "COPY": copy,
    "MOVE": handlers.move,
    "PROPFIND": handlers.propfind_handler,
    "PROPPATCH": handlers.proppatch,
    "POST": post,
}


# Methods that may create a name: PUT and MKCOL at the request path, MOVE and COPY at the
# Destination, a third-party pull (COPY with Source) at the request path.
_CREATES = frozenset(("PUT", "MKCOL", "MOVE", "COPY"))


def _check_new_names(request: web.Request) -> None:
    """Control characters are refused in names about to be created (400); existing names
    with them stay readable and deletable."""
    if request.method in ("PUT", "MKCOL") or "Source" in request.headers:
        check_new_name(request.raw_path)
    destination = request.headers.get("Destination")
    if destination is not None:
        check_new_name(destination)


async def dispatch(request: web.Request) -> web.StreamResponse:
    if request.path == health.HEALTH_PATH:  # for load balancers: no credentials, only status
        return health.response(request)
    handler = METHODS.get(request.method)
    if handler is None:
        raise MethodNotAllowed(
            f"method {request.method} is not supported", headers={"Allow": handlers.ALLOW}
        )
    if request.method in _CREATES:
        _check_new_names(request)
    await authenticate(request)
    faults = context(request).faults
    if faults is not None:
        injected = await testpoints.gate(request, faults)
        if injected is not None:
            return injected
    if srr.is_srr(request):
        return await srr.response(request, functools.partial(_tape_facts, request))
    front = (
        tape_http.route(request)
        or delegation.route(request)
        or testpoints.route(request)
        or dashboard_http.route(request)
    )
    if front is not None:
        return await front()
    if request.path == metrics.METRICS_PATH and request.method in (
        hdrs.METH_GET,
        hdrs.METH_HEAD,
    ):
        authorise(request, Op.STAT, DavPath(()))
        return await metrics.response(context(request))
    return await handler(request)


async def _tape_facts(request: web.Request) -> srr.TapeFacts | None:
    """For SRR: the Tape REST endpoint and the simulated library's capacity and use."""
    tape = request.app.get(tape_http.TAPE_SERVICE)
    if tape is None:
        return None
    cfg = tape.cfg
    counts = await tape.store.locality_counts()
    on_tape = (Locality.TAPE, Locality.DISK_AND_TAPE, Locality.UNAVAILABLE, Locality.LOST)
    return srr.TapeFacts(
        endpoint=cfg.endpoint or f"{request.scheme}://{request.host}{cfg.api_path}",
        total=cfg.cartridges * cfg.cartridge_capacity,
        used=sum(counts.get(loc, (0, 0))[1] for loc in on_tape),
    )


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """Answer ``Expect: 100-continue`` only once the request could succeed (RFC 9110 §10.1.1)."""
    expect = request.headers.get(hdrs.EXPECT, "").lower()
    if expect != "100-continue":
        return error_response(ExpectationFailed(f"unsupported Expect: {expect}"))
    if request.method == hdrs.METH_PUT:
        ctx = context(request)
        try:
            check_new_name(request.raw_path)
            await authenticate(request)
            await handlers.check_put(request)
        except SEError as exc:
            resp = error_response(exc)
            resp.force_close()  # the client may still send the body it was refused
            if ctx.events is not None:
                testpoints.record_request(request, resp)
            return resp
        if ctx.faults is not None:  # an injected refusal comes before the body, too
            injected = await testpoints.gate(request, ctx.faults)
            if injected is not None:
                injected.force_close()
                if ctx.events is not None:
                    testpoints.record_request(request, injected)
                return injected
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not started
    return None


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[hdrs.SERVER] = SERVER


def create_app(cfg: Config, *, sweep: bool | None = None, primary: bool = True) -> web.Application:
    """The application for one worker process.  ``sweep`` overrides storage.sweep_on_start;
    ``primary``: the first worker, the one that runs the simulated tape library."""
    app = web.Application(client_max_size=1024**2)
    executor = ThreadPoolExecutor(cfg.server.io_threads, thread_name_prefix="se-io")
    settle_ns = round(cfg.storage.cache_settle_time * 1e9)
    files = answers = None
    if cfg.storage.file_cache_bytes > 0:
        files = FileCache(cfg.storage.file_cache_bytes, settle_ns)
        # PROPFIND Depth 0 answers: an eighth of the small-file bound (about 10,000 of them).
        answers = AnswerCache(cfg.storage.file_cache_bytes // 8, settle_ns)
    watch = None
    if cfg.webdav.listing_cache_dirs > 0:
        watch = DirWatch.for_root(cfg.storage.root, cfg.webdav.listing_watches, is_reserved)
    backend = PosixBackend(cfg, executor, files, watch)
    listings = ListingCache(
        cfg.webdav.listing_cache_dirs, settle_ns=settle_ns, on_drop=backend.release_listing
    )
    scitags = SciTagService(cfg.scitags) if cfg.scitags.enabled else None
    tpc = TPCService(cfg, backend, scitags)
    tape = TapeService(cfg, run_library=primary) if cfg.tape.enabled else None
    if tape is not None:
        backend.observer = tape
    space = Accounting(cfg, executor) if cfg.space.enabled else None
    backend.space = space
    secret_file = cfg.tpc.macaroon_secret_file or str(state_dir(cfg) / "macaroon.secret")
    auth = cfg.auth
    tokens = TokenVerifier(auth, cfg.tls.ca_dir) if auth is not None and auth.issuers else None
    public = _public_rules(cfg)
    certificates = None
    if auth is not None and cfg.tls.client_certs != "none":
        try:
            certificates = CertificateAuth(cfg)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"client certificates: {exc}") from None
        tpc.delegations = DelegationStore(state_dir(cfg) / "delegation", certificates.verifier)
    faults = events = None
    if cfg.faults.enabled:
        try:
            faults = FaultState(state_dir(cfg) / "faults", cfg.faults.rules)
        except ValueError as exc:
            raise ConfigError(f"faults.rules: {exc}") from None
    if cfg.events.enabled:
        events = EventLog(state_dir(cfg) / "events", cfg.events.max_bytes // 2)
    if tape is not None:
        tape.faults, tape.events = faults, events
    sources: list[MetricSource] = []  # more scrape-time collectors (se.web.metrics)
    transfers = None
    if cfg.logging.transfer_log:
        try:
            transfers = TransferLog(cfg.logging.transfer_log)
        except OSError as exc:
            raise ConfigError(f"logging.transfer_log: cannot open: {exc.strerror}") from None
    app[CONTEXT] = ctx = Context(
        cfg=cfg,
        backend=backend,
        anonymous=cfg.anonymous_access(),
        listings=listings,
        answers=answers,
        secret=SecretStore(Path(secret_file)),
        tokens=tokens,
        public=public,
        grants=GrantCache(auth.token_cache_entries if auth is not None else 10000),
        certificates=certificates,
        scitags=scitags,
        tape=tape,
        metric_sources=tuple(sources),
        faults=faults,
        events=events,
        space=space,
        transfers=transfers,
    )
    app[_RETIRED] = []
    app[fastpath.LEAN] = fastpath.Lean(
        ctx,
        {
            "GET": fastpath.answer_get,
            "HEAD": fastpath.answer_get,
            "PROPFIND": handlers.lean_propfind,
        },
        {"PUT": handlers.lean_put},
    )
    app[TPC_SERVICE] = tpc
    if tape is not None:
        app[tape_http.TAPE_SERVICE] = tape
    # [\s\S], not ".": a name with a line feed in it (made on disk) must still route.
    handler = _served(handle_errors(dispatch))
    if events is not None:
        handler = _recorded(handler)
    if cfg.dashboard.enabled:
        app[DASHBOARD] = dashboard = Dashboard(cfg, tpc, tape, sampler=primary)
        handler = dashboard_http.recorder(handler, dashboard)
        app.on_response_prepare.append(dashboard_http.on_prepare(dashboard))
        app.cleanup_ctx.append(dashboard.running)
    app.router.add_route("*", r"/{tail:[\s\S]*}", handler, expect_handler=expect_handler)
    app.on_response_prepare.append(on_prepare)
    do_sweep = cfg.storage.sweep_on_start if sweep is None else sweep

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        task = None
        if space is not None and (primary or do_sweep):
            # Uploads counted but never put in place (a killed writer), before the sweep
            # removes the temp files that tell them apart.
            try:
                await space.recover()
            except Exception:
                log.exception("space: recovery of pending uploads failed")
        if do_sweep:
            task = asyncio.ensure_future(backend.run(backend.sweep_temp_files))
            task.add_done_callback(_log_sweep)
        if tape is not None:
            await tape.start()
        reconciler = None
        if space is not None and primary:
            reconciler = asyncio.ensure_future(space.run_periodic(cfg.space.reconcile_interval))
        if ctx.transfers is not None:
            ctx.transfers.start()
        yield
        if reconciler is not None:
            reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconciler
        await tpc.close()
        if tape is not None:
            await tape.close()
        if scitags is not None:
            scitags.close()
        if faults is not None:
            faults.close()
        if events is not None:
            events.close()
        # The ones in force and those a reload replaced.
        for part in (ctx.tokens, ctx.transfers, *app[_RETIRED]):
            if part is not None:
                await part.close()
        if task is not None and not task.done():
            task.cancel()
        executor.shutdown(wait=False, cancel_futures=True)
        if space is not None:
            space.close()
        listings.clear()
        if files is not None:
            files.clear()
        if answers is not None:
            answers.clear()

    async def stop_transfers(_app: web.Application) -> None:
        tpc.stopping = True  # running COPYs end with "aborted:" instead of being cut

    app.on_shutdown.append(stop_transfers)
    app.cleanup_ctx.append(lifecycle)
    return app


def _public_rules(cfg: Config) -> Grant | None:
    """The explicit anonymous rules ([[auth.public]]), if any."""
    auth = cfg.auth
    if auth is None or not auth.public:
        return None
    return Grant.of(
        rule for p in auth.public for rule in named_rules(confine(p.path), p.allow, p.deny)
    )


# Token verifiers and transfer logs replaced by a reload: closed at clean-up (a request may
# still use one).
_RETIRED: web.AppKey[list[TokenVerifier | TransferLog | None]] = web.AppKey("se_retired", list)


def reconfigure(app: web.Application, cfg: Config) -> None:
    """Apply a reloaded configuration (SIGHUP) to a running application: the parts that can
    change live (``se.server`` has refused any other change before calling this).

    Token issuers and their group rules, audiences, the anonymous level and rules, the
    X.509 rules, the shares ([[shares]]), the configuration's fault rules and the transfer
    log's file.  Requests already inside a handler finish with what they started with; the
    verified-token cache starts empty, since a token's grant depends on the rules.  Raises
    ConfigError (nothing changed) when a part cannot be built from ``cfg``.
    """
    ctx = app[CONTEXT]
    auth = cfg.auth
    public = _public_rules(cfg)
    certificates = ctx.certificates
    if certificates is not None and auth is not None:
        try:
            certificates = CertificateAuth(cfg)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"client certificates: {exc}") from None
    tokens = TokenVerifier(auth, cfg.tls.ca_dir) if auth is not None and auth.issuers else None
    if ctx.faults is not None:  # the last that may refuse: nothing has changed before it
        try:
            ctx.faults.update_config_rules(cfg.faults.rules)
        except ValueError as exc:
            raise ConfigError(f"faults.rules: {exc}") from None
    if ctx.space is not None:
        ctx.space.update_shares(cfg.shares)
    app[_RETIRED].append(ctx.tokens)
    ctx.cfg = cfg
    ctx.tokens = tokens
    ctx.public = public
    ctx.anonymous = cfg.anonymous_access()
    ctx.certificates = certificates
    ctx.grants = GrantCache(auth.token_cache_entries if auth is not None else 10000)
    path = cfg.logging.transfer_log
    if ctx.transfers is not None:
        if path:
            ctx.transfers.reopen(path)  # logrotate moved it, or another file
        else:
            ctx.transfers.flush()
            app[_RETIRED].append(ctx.transfers)
            ctx.transfers = None
    elif path:
        try:
            ctx.transfers = TransferLog(path)
        except OSError as exc:
            log.error("logging.transfer_log: cannot open %s: %s", path, exc.strerror)
        else:
            ctx.transfers.start()


def _served(handler: Handler) -> Handler:
    """Count the requests inside their handlers (what a graceful stop waits for) and write
    the transfer log's line of each transfer."""
    state = health.SERVICE

    async def served(request: web.Request) -> web.StreamResponse:
        state.active += 1
        started = time.time()
        response: web.StreamResponse | None = None
        aborted = True
        try:
            response = await handler(request)
            aborted = False
            return response
        finally:
            state.active -= 1
            transfers = context(request).transfers
            if transfers is not None:
                _log_transfer(transfers, request, response, started, aborted)

    return served


def _log_transfer(
    transfers: TransferLog,
    request: web.Request,
    response: web.StreamResponse | None,
    started: float,
    aborted: bool,
) -> None:
    """The transfer log's line, when the request was a transfer (PUT, GET of a file with a
    body, a third-party copy)."""
    method = request.method
    facts = request.get(COPY_FACTS)
    aborted = aborted or was_cut(request)
    status = response.status if response is not None else 0
    if facts is not None:
        kind = facts.kind
    elif method == "PUT":
        kind = "upload"
    elif method == "GET" and (aborted or status in (200, 206)):
        kind = "download"
    else:
        return
    try:
        path = confine(request.raw_path)
    except SEError:
        return
    ctx = context(request)
    st = ctx.backend.stat(path) if kind != "upload" or 200 <= status < 300 else None
    if kind == "download" and st is not None and st.is_dir:
        return  # a collection's listing
    ok = not aborted and 200 <= status < 300
    if facts is not None:
        ok = facts.result.startswith("success")
    size: int | None = None
    checksum = None
    if st is not None and not st.is_dir and (ok or kind in ("download", "push")):
        size = st.size
        adler = ctx.backend.cached_checksums(ctx.backend.fs_path(path), st).get("adler32")
        if adler is not None:
            checksum = f"adler32:{adler.hex()}"
    elif facts is not None:
        size = facts.size
    elif kind == "upload":
        size = request.content_length
    error = ""
    if not ok and isinstance(response, web.Response) and response.text is not None:
        error = response.text.strip()[:1000]
    elif aborted:
        error = "connection closed before the transfer ended"
    transfers.record(
        request,
        response,
        grant=grant_of(request),
        kind=kind,
        path=str(path),
        started=started,
        size=size,
        checksum=checksum,
        error=error,
        aborted=aborted,
    )


def _recorded(handler: Handler) -> Handler:
    """Write each request's event once it is answered (events enabled)."""

    async def recorded(request: web.Request) -> web.StreamResponse:
        testpoints.started(request)
        response: web.StreamResponse | None = None
        try:
            response = await handler(request)
            return response
        finally:
            testpoints.record_request(request, response)

    return recorded


def _log_sweep(task: asyncio.Future[int]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.warning("sweep of interrupted uploads failed: %s", exc)
    elif task.result():
        log.info("removed %d interrupted upload(s)", task.result())
