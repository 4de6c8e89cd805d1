"""COPY as a third-party copy: checks, the 202 marker stream, the watchdog.

Everything that can be decided before data moves is answered with a plain status (400,
401/403, 404, 409, 412, 503).  Then ``202 Accepted`` with a ``text/perf-marker-stream``
body: a marker at once, one as soon as the remote's address is known, one every
``tpc.marker_period`` seconds, a last one (with RemoteConnections) just before the result
line.  The same loop watches the client connection (aiohttp does not cancel a handler
whose client left) and the first-byte, stall and total timeouts; it sleeps between
events, woken by the worker's one watchdog ticker (:meth:`TPCService.watch`) only when
one of these needs it.  The last marker, the result line and the end of the chunked body
leave in one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from se.auth.policy import Op
from se.errors import BadRequest, Forbidden, PreconditionFailed, SEError
from se.events import EventLog, redact_headers
from se.storage import checksums
from se.storage.paths import DavPath, confine
from se.storage.types import OpenFile, Stat
from se.tpc import markers
from se.tpc.delegation import client_dn, delegate_first
from se.tpc.pull import SourceInfo, probe, pull
from se.tpc.push import push
from se.tpc.remote import RemoteRefused, TransferFailed, redact
from se.tpc.request import Mode, TransferSpec
from se.tpc.service import TPC_SERVICE, TPCService
from se.tpc.state import Transfer
from se.web import testpoints
from se.web.access import authorise, authorise_write
from se.web.context import context
from se.web.transferlog import COPY_FACTS, CopyFacts

__all__ = ["result_line", "result_of", "third_party_copy"]

log = logging.getLogger("se.tpc")
# The result line, kept on the response for the event.
_RESULT: web.ResponseKey[str] = web.ResponseKey("se_tpc_result", str)
# Besides the TransferHeader* family, the COPY headers a tpc event shows.
_RECORDED_HEADERS = ("Credential", "SciTag", "Overwrite")


async def third_party_copy(request: web.Request, spec: TransferSpec) -> web.StreamResponse:
    ctx = context(request)
    svc = request.app[TPC_SERVICE]
    if not svc.cfg.enabled:
        raise Forbidden("third-party copy is disabled on this server")
    path = confine(request.raw_path)
    if spec.mode is Mode.PULL:
        authorise_write(request, path, spec.overwrite)
        ctx.backend.check_upload(path, spec.overwrite)
    else:
        authorise(request, Op.READ, path)
        if ctx.tape is not None:
            await ctx.tape.check_source(ctx.backend.stat(path), path)
    try:
        svc.policy.check_url(spec.remote)
    except RemoteRefused as exc:
        raise Forbidden(str(exc)) from None
    client_ssl = await _delegated(request, svc) if spec.delegated else None
    if spec.delegated and client_ssl is None:
        return delegate_first(request)
    transfer = Transfer(spec, path, svc.scitags)
    transfer.client_ssl = client_ssl
    svc.admit()
    svc.running[transfer] = None
    resp: web.StreamResponse | None = None
    try:
        rule = testpoints.fired(request)
        if rule is not None and rule.tpc_failure is not None:
            resp = await _injected_failure(request, svc, transfer, rule.tpc_failure)
        elif spec.mode is Mode.PULL:
            resp = await _pull(request, svc, transfer)
        else:
            resp = await _push(request, svc, transfer, path)
        return resp
    finally:
        svc.release()
        svc.running.pop(transfer, None)
        if ctx.events is not None:
            _record(ctx.events, request, transfer, resp)
        request[COPY_FACTS] = CopyFacts(  # for the transfer log
            spec.mode.value,
            spec.remote,
            transfer.bytes,
            transfer.size,
            spec.scitag,
            (resp.get(_RESULT) or "") if resp is not None else "",
        )


async def _injected_failure(
    request: web.Request, svc: TPCService, transfer: Transfer, text: str
) -> web.StreamResponse:
    """A fault rule's ``tpc_failure``: accepted (202, one marker), then ``failure: <text>``
    without moving data."""
    resp = web.StreamResponse(
        status=202, headers={"Content-Type": "text/perf-marker-stream", "Cache-Control": "no-cache"}
    )
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    state = _Stream(resp, quiet=not testpoints.fired_markers(request))
    await state.marker(markers.format_marker(transfer.marker()))
    svc.failed("injected")
    _log(transfer, "failure", f"{text} (fault injected)")
    await state.send(markers.format_result("failure", text))
    if not state.broken:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await resp.write_eof()
    return resp


async def _delegated(request: web.Request, svc: TPCService) -> ssl.SSLContext | None:
    """The TLS context presenting the client's delegated proxy; None: not delegated yet."""
    store = svc.delegations
    if store is None:
        raise BadRequest(
            "Credential: gridsite needs client certificates, which this server does not take "
            "(tls.client_certs)"
        )
    dn = await client_dn(request)

    def find() -> ssl.SSLContext | None:
        proxy = store.usable(dn)
        return None if proxy is None else svc.client_ssl(proxy)

    return await asyncio.get_running_loop().run_in_executor(None, find)


async def _pull(request: web.Request, svc: TPCService, transfer: Transfer) -> web.StreamResponse:
    info: SourceInfo | None = None
    early: TransferFailed | None = None
    try:
        info = await probe(svc, transfer)
    except TransferFailed as exc:  # reported after the 202, where FTS sees the text
        early = exc
    space = context(request).space
    size = info.size if info is not None else None
    if size is not None and space is not None and space.limit(transfer.local) is not None:
        # The declared length over the share's size: a real 507 instead of the 202.
        old = context(request).backend.stat(transfer.local)
        replacing = old.size if old is not None and not old.is_dir else 0
        await space.check_room(transfer.local, size, replacing)
    source = info or SourceInfo(url=transfer.spec.remote)

    async def run() -> None:
        if early is not None:
            raise early
        await pull(svc, transfer, source)

    return await _drive(request, svc, transfer, run)


async def _push(
    request: web.Request, svc: TPCService, transfer: Transfer, path: DavPath
) -> web.StreamResponse:
    opened = svc.backend.open_read(path, use_cache=False)
    if isinstance(opened, Stat):
        raise BadRequest(f"{path} is a collection; only files can be pushed")
    assert isinstance(opened, OpenFile)
    try:
        algs = tuple(dict.fromkeys(("adler32", *transfer.spec.expected)))
        local = await svc.backend.checksums(opened, algs)
        for alg, want in transfer.spec.expected.items():
            if local.get(alg, want) != want:
                raise PreconditionFailed(
                    f"{alg} given in the COPY's Repr-Digest differs from the file's "
                    f"({checksums.format_digest_value(alg, want)} != "
                    f"{checksums.format_digest_value(alg, local[alg])})"
                )
        send = {a: v for a, v in local.items() if a in algs}

        async def run() -> None:
            await push(svc, transfer, opened, send)

        return await _drive(request, svc, transfer, run)
    finally:
        opened.close()


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _timeout(svc: TPCService, transfer: Transfer, now: float) -> markers.Failure | None:
    """Where and why an expired timeout ended the transfer, if one did."""
    if transfer.active_since is None:
        return None
    cfg = svc.cfg
    pull = transfer.spec.mode is Mode.PULL
    side = "source" if pull else "destination"
    direction = "received from the source" if pull else "sent to the destination"
    if transfer.first_byte_at is None:
        if now - transfer.active_since > cfg.first_byte_timeout:
            return markers.Failure(
                side,
                "first byte",
                f"timed out: no data {direction} within {cfg.first_byte_timeout:g} s "
                "(tpc.first_byte_timeout)",
            )
    elif now - transfer.last_progress > cfg.stall_timeout:
        size = f" of {transfer.size}" if transfer.size is not None else ""
        return markers.Failure(
            side,
            "body",
            f"timed out: no data {direction} for {cfg.stall_timeout:g} s, stalled after "
            f"{transfer.bytes}{size} bytes (tpc.stall_timeout)",
        )
    if cfg.total_timeout and now - transfer.active_since > cfg.total_timeout:
        return markers.Failure(
            *transfer.where(),
            f"timed out: the transfer took longer than {cfg.total_timeout:g} s (tpc.total_timeout)",
        )
    return None


async def _drive(
    request: web.Request,
    svc: TPCService,
    transfer: Transfer,
    run: Callable[[], Awaitable[None]],
) -> web.StreamResponse:
    resp = web.StreamResponse(
        status=202, headers={"Content-Type": "text/perf-marker-stream", "Cache-Control": "no-cache"}
    )
    resp.enable_chunked_encoding()
    await resp.prepare(request)

    async def active() -> None:
        await svc.acquire_slot()
        try:
            transfer.activate()
            await run()
        finally:
            svc.release_slot()

    task = asyncio.ensure_future(active())
    state = _Stream(resp, quiet=not testpoints.fired_markers(request))
    next_marker = 0.0
    marked_connections = 0

    def due(now: float) -> bool:
        """Has the loop below work to do (the watchdog ticker asks)?"""
        return (
            now >= next_marker
            or len(transfer.connections) > marked_connections
            or svc.stopping
            or state.broken
            or _client_gone(request)
            or _timeout(svc, transfer, now) is not None
        )

    watch = svc.watch(task, due)
    try:
        while not task.done():
            now = time.monotonic()
            if now >= next_marker or len(transfer.connections) > marked_connections:
                marked_connections = len(transfer.connections)
                await state.marker(markers.format_marker(transfer.marker()))
                next_marker = now + svc.cfg.marker_period
            if svc.stopping or state.broken or _client_gone(request):
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                transfer.end_flows()
                svc.failed("aborted")
                if not svc.stopping:  # nobody is listening any more
                    _log(transfer, "aborted", "client disconnected")
                    return resp
                _log(transfer, "aborted", "server shutting down")
                line = result_line(transfer, "aborted", "server shutting down")
                return await _close(resp, state, transfer, line)
            reason = _timeout(svc, transfer, now)
            if reason is not None:
                transfer.failure = reason
                task.cancel()
                break
            await watch.wait()
    except asyncio.CancelledError:  # the server is stopping
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1):
                await state.send(result_line(transfer, "aborted", "server shutting down"))
                await resp.write_eof()
        raise
    finally:
        watch.close()
    line = await _outcome(svc, transfer, task)
    transfer.end_flows()
    return await _close(resp, state, transfer, line)


async def _close(
    resp: web.StreamResponse, state: _Stream, transfer: Transfer, line: bytes
) -> web.StreamResponse:
    """The last marker (with RemoteConnections), the result line, the end of the body:
    one write (one chunk and the terminator)."""
    last = b"" if state.quiet else markers.format_marker(transfer.marker())
    await state.finish(last, line)
    return resp


async def _outcome(svc: TPCService, transfer: Transfer, task: asyncio.Future[None]) -> bytes:
    reason: markers.Failure
    try:
        await task
    except asyncio.CancelledError:
        reason = transfer.failure or markers.Failure("local", "internal", "transfer cancelled")
    except TransferFailed as exc:
        reason = exc.failure(*transfer.where())
    except SEError as exc:  # this server's storage, whatever the data path did not tag
        local = "write" if transfer.spec.mode is Mode.PULL else "read"
        reason = markers.Failure("local", local, exc.reason)
    except Exception as exc:
        log.exception("third-party copy failed unexpectedly")
        reason = markers.Failure("local", "internal", f"internal error: {exc.__class__.__name__}")
    else:
        svc.succeeded()
        _log(transfer, "success", "")
        return markers.format_result("success", "Created")
    svc.failed(reason.tag)
    _log(transfer, "failure", str(reason))
    return result_line(transfer, "failure", reason)


def result_of(resp: web.StreamResponse) -> str | None:
    """The result line (``success: ...``, ``failure: ...``, ``aborted: ...``) a third-party
    copy's response ended with, if it is one and got that far."""
    return resp.get(_RESULT)


def result_line(transfer: Transfer, kind: str, reason: markers.Failure | str) -> bytes:
    """The one format of every failure (and aborted) line, whichever check, timeout or
    error ended the transfer: ``<kind>: [<tag>: ]<detail>; local=<path> remote=<url without
    its query>`` (:func:`se.tpc.markers.format_failure`).
    """
    return markers.format_failure(kind, reason, str(transfer.local), redact(transfer.spec.remote))


def _record(
    events: EventLog,
    request: web.Request,
    transfer: Transfer,
    resp: web.StreamResponse | None,
) -> None:
    """The ``tpc`` event of a finished third-party copy (events enabled)."""
    spec = transfer.spec
    received = [
        (k, v)
        for k, v in request.headers.items()
        if k.lower().startswith("transfer") or k in _RECORDED_HEADERS
    ]
    events.record(
        "tpc",
        mode=spec.mode.value,
        local=str(transfer.local),
        path=str(transfer.local),
        remote=redact(spec.remote),
        headers=redact_headers(received),
        scitag=spec.scitag,
        streams=spec.streams,
        delegated=spec.delegated,
        checksum={
            "requested": list(spec.want_digest),
            "client_declared": sorted(spec.expected),
            "required": spec.require_checksum,
            "compared": sorted(set(transfer.compared)),
        },
        bytes=transfer.bytes,
        connections=list(transfer.connections),
        result=resp.get(_RESULT) if resp is not None else None,
    )


class _Stream:
    """Writes to the marker stream, remembering (not raising) a client that went away."""

    def __init__(self, resp: web.StreamResponse, quiet: bool = False) -> None:
        self.resp = resp
        self.broken = False
        self.quiet = quiet  # performance markers withheld (a fault rule says so)

    async def marker(self, data: bytes) -> None:
        if not self.quiet:
            await self.send(data)

    async def finish(self, last_marker: bytes, line: bytes) -> None:
        """The last marker (b"": none), the result line and the end of the body at once."""
        self.resp[_RESULT] = line.decode("utf-8", "replace").strip()
        if self.broken:
            return
        try:
            await self.resp.write_eof(last_marker + line)
        except (ConnectionError, RuntimeError):
            self.broken = True

    async def send(self, data: bytes) -> None:
        if data.startswith((b"success", b"failure", b"aborted")):
            self.resp[_RESULT] = data.decode("utf-8", "replace").strip()
        if self.broken:
            return
        try:
            await self.resp.write(data)
        except (ConnectionError, RuntimeError):
            self.broken = True


def _log(transfer: Transfer, outcome: str, message: str) -> None:
    elapsed = time.monotonic() - transfer.created
    rate = transfer.bytes / elapsed / 1e6 if elapsed > 0 else 0.0
    info = f" [{transfer.spec.client_info}]" if transfer.spec.client_info else ""
    log.info(
        "tpc %s %s %s %s: %d bytes in %.2f s (%.1f MB/s)%s%s%s",
        transfer.spec.mode.value,
        redact(transfer.spec.remote),
        "->" if transfer.spec.mode is Mode.PULL else "<-",
        transfer.local,
        transfer.bytes,
        elapsed,
        rate,
        f" {outcome}",
        f": {message}" if message else "",
        info,
    )
