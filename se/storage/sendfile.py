"""Sending a file's bytes on a connection's socket with ``sendfile(2)``, off the event loop.

uvloop has no ``loop.sendfile``.  The fronts flush their response headers through aiohttp,
wait for the transport's buffer to drain (:func:`drain_transport`), then run
:func:`sendfile_blocking` on a worker thread with private duplicates of the socket and file
descriptors, polling for writability since the socket is non-blocking.  Used by GET (WebDAV)
and by third-party-copy push.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time

__all__ = ["SEND_STALL_TIMEOUT", "drain_transport", "sendfile_blocking"]

# A client that takes no byte for this long is dropped.
SEND_STALL_TIMEOUT = 300.0
_BROKEN = select.POLLERR | select.POLLHUP | select.POLLNVAL


def sendfile_blocking(
    sock_fd: int,
    file_fd: int,
    offset: int,
    count: int,
    stop: threading.Event,
    progress: list[int] | None = None,
) -> int:
    """Runs on a worker thread, which owns (and closes) both descriptors.

    ``progress[0]`` (when given) follows the bytes sent, for the event loop to read.
    """
    try:
        return _sendfile_loop(sock_fd, file_fd, offset, count, stop, progress)
    finally:
        os.close(sock_fd)
        os.close(file_fd)


def _sendfile_loop(
    sock_fd: int,
    file_fd: int,
    offset: int,
    count: int,
    stop: threading.Event,
    progress: list[int] | None,
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
        if progress is not None:
            progress[0] = sent
        last_progress = time.monotonic()
    return sent


async def drain_transport(transport: asyncio.Transport) -> None:
    # Headers must be on the wire before bytes go around the transport.
    for _ in range(10000):
        if transport.get_write_buffer_size() == 0:
            return
        if transport.is_closing():
            raise ConnectionResetError("client connection closed")
        await asyncio.sleep(0.001)
    raise TimeoutError("client does not read the response headers")
