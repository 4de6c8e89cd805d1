"""Bodies: responses from open files (sendfile off the loop, or reads for TLS), and
large request bodies taken straight from the socket.

uvloop has no ``loop.sendfile``, so aiohttp's FileResponse falls back to read+write under
it.  Here the response headers are flushed through aiohttp, the transport's buffer is
allowed to drain, and then ``os.sendfile`` on the connection's socket runs in a worker
thread (polling for writability, since the socket is non-blocking), while the event loop
keeps serving other connections.  TLS connections cannot use sendfile; they get positional
reads of ``chunk_size`` on the thread pool.

Uploads: aiohttp's body parser hands bytes to Python at about 1.2 GiB/s here, below what the
disk path can take.  A large plain-HTTP PUT with a Content-Length therefore pauses the
transport, takes what aiohttp already buffered, and reads the rest of the body from the
socket on a worker thread, hashing and writing as it goes.  aiohttp's parser never sees
those bytes, so the connection is closed after the response (``Connection: close``); for a
body of many megabytes one reconnection is noise.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import struct
import threading
import time

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from se import metrics
from se.errors import BadRequest, RequestTimeout, SEError
from se.faults import Rule
from se.storage.posix import PosixBackend, Upload
from se.storage.sendfile import drain_transport, sendfile_blocking
from se.storage.types import CachedFile, OpenFile
from se.web import transferlog

__all__ = ["receive_body", "send_file_range", "send_with_faults", "write_file_range"]


async def write_file_range(
    resp: web.StreamResponse,
    backend: PosixBackend,
    file: OpenFile | CachedFile,
    offset: int,
    count: int,
) -> None:
    """Write ``count`` bytes from ``offset`` through aiohttp (works on any transport)."""
    while count > 0:
        data = await backend.read_range(file, offset, min(backend.chunk_size, count))
        if not data:
            break
        await resp.write(data)
        offset += len(data)
        count -= len(data)


async def send_with_faults(
    request: web.Request,
    resp: web.StreamResponse,
    backend: PosixBackend,
    file: OpenFile | CachedFile,
    offset: int,
    count: int,
    rule: Rule,
) -> bool:
    """Send a byte range the way a fault rule says (se.faults): stall, throttle, flip the
    byte at ``corrupt_at``, then reset (RST, what curl reports as error 56) or close (FIN,
    short of Content-Length) after so many body bytes.  False when the connection was
    ended on purpose (the response must not be finished)."""
    transport = request.transport
    began = time.monotonic()
    pos, end, sent = offset, offset + count, 0
    stalled = rule.stall_after is None
    chunk = 64 << 10
    if rule.throttle is not None:
        chunk = max(1, min(chunk, rule.throttle // 10))
    while True:
        if not stalled and rule.stall_after is not None and sent >= rule.stall_after:
            await resp.drain()
            await asyncio.sleep(rule.stall)
            stalled = True
        cut = rule.reset_after if rule.reset_after is not None else rule.truncate_after
        if transport is not None and cut is not None and sent >= cut:
            await drain_transport(transport)
            if rule.reset_after is not None:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            else:
                transport.close()
            return False
        if pos >= end:
            return True
        n = min(chunk, end - pos)
        for limit in (cut, None if stalled else rule.stall_after):
            if limit is not None and limit > sent:
                n = min(n, limit - sent)
        data = await backend.read_range(file, pos, n)
        if not data:
            return True
        at = rule.corrupt_at
        if at is not None and pos <= at < pos + len(data):
            flipped = bytearray(data)
            flipped[at - pos] ^= 0xFF
            data = bytes(flipped)
        await resp.write(data)
        pos += len(data)
        sent += len(data)
        if rule.throttle is not None:
            ahead = began + sent / rule.throttle - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)


async def send_file_range(
    request: web.Request,
    resp: web.StreamResponse,
    backend: PosixBackend,
    file: OpenFile,
    offset: int,
    count: int,
) -> None:
    """Send a byte range of an open file as the (already prepared) response body."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if (
        transport is None
        or sock is None
        or transport.get_extra_info("sslcontext") is not None
        or count < backend.inline_read_max
    ):
        await write_file_range(resp, backend, file, offset, count)
        return
    writer = request.writer
    send_headers = getattr(writer, "send_headers", None)
    if callable(send_headers):
        send_headers()
    await drain_transport(transport)
    stop = threading.Event()
    # Private duplicates: if the loop closes the connection (or the handler the file)
    # meanwhile, the numbers the thread uses can never be recycled for another socket/file.
    sock_fd = os.dup(sock.fileno())
    file_fd = os.dup(file.fd)
    progress = [0]
    try:
        await backend.run(sendfile_blocking, sock_fd, file_fd, offset, count, stop, progress)
    finally:
        stop.set()
        metrics.HTTP_SENT.inc(progress[0])  # bytes aiohttp's writer never saw
        transferlog.note_sent(request, progress[0])


async def receive_body(request: web.Request, upload: Upload, direct_min: int) -> bool:
    """Feed the whole request body to ``upload``; True when the connection must close."""
    declared = request.content_length
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    direct = (
        direct_min > 0
        and declared is not None
        and declared >= direct_min
        and transport is not None
        and sock is not None
        and transport.get_extra_info("sslcontext") is None
    )
    stall = upload.backend.body_stall_timeout
    try:
        if direct:
            assert transport is not None and sock is not None and declared is not None
            await _receive_direct(request, upload, transport, sock.fileno(), declared)
        else:
            await _receive_parsed(request, upload, stall)
    except TimeoutError:
        # The caller aborts the upload (its temp file goes); the client, if still there,
        # reads why.
        raise RequestTimeout(
            f"no body byte for {stall:g} s: upload dropped after {upload.received} bytes;"
            " nothing stored",
            headers={"Connection": "close"},
        ) from None
    except (ConnectionError, HttpProcessingError):
        # The client went away or broke the framing: an expected event, not a bug.
        raise BadRequest(
            f"upload interrupted after {upload.received} bytes; nothing stored",
            headers={"Connection": "close"},
        ) from None
    return direct


async def _receive_parsed(request: web.Request, upload: Upload, stall: float) -> None:
    """Feed the body as aiohttp parses it; TimeoutError when the client sends nothing for
    ``stall`` seconds (time spent writing to the disk does not count)."""
    content = request.content
    watch = _StallWatch(stall)
    loop = asyncio.get_running_loop()
    try:
        while True:
            watch.waiting_since = loop.time()
            chunk = await content.readany()
            watch.waiting_since = None
            if not chunk:
                return
            await upload.feed(chunk)
    except asyncio.CancelledError:
        if watch.expired and watch.task.uncancel() == 0:
            # No lingering for the rest of a body that is not coming: answer, then close.
            content.feed_eof()
            raise TimeoutError("client stopped sending") from None
        raise
    finally:
        watch.close()


class _StallWatch:
    """Cancels the current task once it has waited ``timeout`` seconds in one go (while
    ``waiting_since`` is set).  One timer per upload, re-armed only when it fires, so that
    the per-chunk cost is two assignments."""

    def __init__(self, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self._timeout = timeout
        self.waiting_since: float | None = None
        self.expired = False
        self._handle = self._loop.call_later(timeout, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        since = self.waiting_since
        if since is not None and now - since >= self._timeout:
            self.expired = True
            self.task.cancel()
            return
        self._handle = self._loop.call_at(
            (now if since is None else since) + self._timeout, self._check
        )

    def close(self) -> None:
        self._handle.cancel()


async def _receive_direct(
    request: web.Request, upload: Upload, transport: asyncio.Transport, fd: int, declared: int
) -> None:
    content = request.content
    # Drain aiohttp's buffer without yielding, then pause: reading the buffer may resume
    # the transport (flow control), so the pause must come after it.
    buffered = []
    while chunk := content.read_nowait():
        buffered.append(chunk)
    transport.pause_reading()
    parsed = sum(len(c) for c in buffered)  # counted by aiohttp's reader
    remaining = declared - parsed
    stop = threading.Event()
    try:
        try:
            for chunk in buffered:
                await upload.feed(chunk)
        except SEError as exc:
            # Refused before the socket part started: still take the rest of the body off
            # the wire, so the client, busy sending, gets to read the answer.
            await upload.backend.run(
                _discard_blocking, os.dup(fd), remaining, stop, upload.backend.body_stall_timeout
            )
            exc.headers["Connection"] = "close"
            raise
        try:
            await upload.receive_from_socket(os.dup(fd), remaining, stop)
        except SEError as exc:
            exc.headers["Connection"] = "close"
            raise
    finally:
        stop.set()
        if upload.received > parsed:  # the bytes aiohttp's reader never saw
            metrics.HTTP_RECEIVED.inc(upload.received - parsed)
        # aiohttp never saw the body: mark it complete so that it does not wait
        # (lingering) for bytes that will not come through it.
        content.feed_eof()


def _discard_blocking(sock_fd: int, count: int, stop: threading.Event, stall: float) -> None:
    """Read and drop ``count`` bytes (bounded by the stall timeout); owns ``sock_fd``."""
    try:
        poller = select.poll()
        poller.register(sock_fd, select.POLLIN)
        last = time.monotonic()
        while count > 0 and not stop.is_set():
            try:
                data = os.read(sock_fd, min(count, 1 << 20))
            except BlockingIOError:
                poller.poll(500)
                if time.monotonic() - last > stall:
                    return
                continue
            except OSError:
                return
            if not data:
                return
            count -= len(data)
            last = time.monotonic()
    finally:
        os.close(sock_fd)
