"""Response bodies from open files: sendfile off the loop, or reads for TLS.

uvloop has no ``loop.sendfile``, so aiohttp's FileResponse falls back to read+write under
it.  Here the response headers are flushed through aiohttp, the transport's buffer is
allowed to drain, and then ``os.sendfile`` on the connection's socket runs in a worker
thread (polling for writability, since the socket is non-blocking), while the event loop
keeps serving other connections.  TLS connections cannot use sendfile; they get positional
reads of ``chunk_size`` on the thread pool.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time

from aiohttp import web

from se.storage.posix import CachedFile, OpenFile, PosixBackend

__all__ = ["send_file_range", "write_file_range"]

# A client that takes no byte for this long is dropped.
SEND_STALL_TIMEOUT = 300.0
_BROKEN = select.POLLERR | select.POLLHUP | select.POLLNVAL


def _sendfile_blocking(
    sock_fd: int, file_fd: int, offset: int, count: int, stop: threading.Event
) -> int:
    """Runs on a worker thread, which owns (and closes) both descriptors."""
    try:
        return _sendfile_loop(sock_fd, file_fd, offset, count, stop)
    finally:
        os.close(sock_fd)
        os.close(file_fd)


def _sendfile_loop(
    sock_fd: int, file_fd: int, offset: int, count: int, stop: threading.Event
) -> int:
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    sent = 0
    last_progress = time.monotonic()
    while sent < count and not stop.is_set():
        try:
            n = os.sendfile(sock_fd, file_fd, offset + sent, min(count - sent, 1 << 30))
        except BlockingIOError:
            events = poller.poll(500)
            if any(ev & _BROKEN for _fd, ev in events):
                raise ConnectionResetError("client connection closed") from None
            if time.monotonic() - last_progress > SEND_STALL_TIMEOUT:
                raise TimeoutError("client stopped reading") from None
            continue
        if n == 0:
            break  # the file shrank under us; the client sees a short body
        sent += n
        last_progress = time.monotonic()
    return sent


async def _drain_transport(transport: asyncio.Transport) -> None:
    # Headers must be on the wire before bytes go around the transport.
    for _ in range(10000):
        if transport.get_write_buffer_size() == 0:
            return
        if transport.is_closing():
            raise ConnectionResetError("client connection closed")
        await asyncio.sleep(0.001)
    raise TimeoutError("client does not read the response headers")


async def write_file_range(
    resp: web.StreamResponse,
    backend: PosixBackend,
    f: OpenFile | CachedFile,
    offset: int,
    count: int,
) -> None:
    """Write ``count`` bytes from ``offset`` through aiohttp (works on any transport)."""
    while count > 0:
        data = await backend.read_range(f, offset, min(backend.chunk_size, count))
        if not data:
            break
        await resp.write(data)
        offset += len(data)
        count -= len(data)


async def send_file_range(
    request: web.Request,
    resp: web.StreamResponse,
    backend: PosixBackend,
    f: OpenFile,
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
        await write_file_range(resp, backend, f, offset, count)
        return
    writer = request.writer
    send_headers = getattr(writer, "send_headers", None)
    if callable(send_headers):
        send_headers()
    await _drain_transport(transport)
    stop = threading.Event()
    # Private duplicates: if the loop closes the connection (or the handler the file)
    # meanwhile, the numbers the thread uses can never be recycled for another socket/file.
    sock_fd = os.dup(sock.fileno())
    file_fd = os.dup(f.fd)
    try:
        await backend.run(_sendfile_blocking, sock_fd, file_fd, offset, count, stop)
    finally:
        stop.set()
