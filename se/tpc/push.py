"""The push data path: this server PUTs a local file to the destination.

The PUT carries ``Content-Length`` and the file's stored checksums as ``Digest`` and
``Repr-Digest`` (a verifying destination refuses a corrupted copy), and optionally
``Expect: 100-continue`` (``tpc.push_expect_continue``: off by default, because aiohttp's
parser rejects the ``100 Continue`` of XRootD, which carries ``Connection: Close``).
Afterwards a HEAD checks the size and, where the destination offers one, the checksum; a
copy that fails that check is deleted at the destination.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from typing import Any

import aiohttp
from aiohttp import payload
from aiohttp.abc import AbstractStreamWriter

from se.storage.posix import PosixBackend
from se.storage.sendfile import drain_transport, sendfile_blocking
from se.storage.types import OpenFile
from se.tpc import integrity
from se.tpc.remote import TransferFailed, error_text, open_remote
from se.tpc.service import TPCService
from se.tpc.state import Transfer, conn_key

__all__ = ["push"]

READ_CHUNK = 4 << 20


class FileBody(payload.Payload):
    """A local file as a request body: read on the I/O pool, progress counted as sent."""

    def __init__(
        self, backend: PosixBackend, f: OpenFile, transfer: Transfer, direct_min: int
    ) -> None:
        super().__init__(f, content_type="application/octet-stream")
        self._backend = backend
        self._fd = f.fd
        self._t = transfer
        self._length = f.stat.size
        self._direct_min = direct_min
        self.finished = asyncio.Event()  # set when write() has returned or failed

    @property
    def size(self) -> int:
        return self._length

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a file body is not text")

    async def write(self, writer: AbstractStreamWriter) -> None:
        try:
            await self._write(writer)
        finally:
            self.finished.set()

    async def _write(self, writer: AbstractStreamWriter) -> None:
        transport: asyncio.Transport | None = getattr(writer, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if (
            self._direct_min
            and self._length >= self._direct_min
            and transport is not None
            and sock is not None
            and transport.get_extra_info("sslcontext") is None
        ):
            await self._sendfile(writer, transport, sock.fileno())
            return
        key = conn_key(writer) or self._t.last_conn
        offset = 0
        while offset < self._length:
            data = await self._backend.run(
                os.pread, self._fd, min(READ_CHUNK, self._length - offset), offset
            )
            if not data:
                raise _local_read(f"the file shrank while sending ({offset} bytes)")
            await writer.write(data)
            offset += len(data)
            self._t.progress(len(data), key)

    async def _sendfile(
        self, writer: AbstractStreamWriter, transport: asyncio.Transport, sock_fd: int
    ) -> None:
        """The body with sendfile(2) on a worker thread, once the headers are out."""
        send_headers = getattr(writer, "send_headers", None)
        if callable(send_headers):
            send_headers()
        await drain_transport(transport)
        stop = threading.Event()
        progress = [0]
        sending = asyncio.ensure_future(
            self._backend.run(
                sendfile_blocking,
                os.dup(sock_fd),
                os.dup(self._fd),
                0,
                self._length,
                stop,
                progress,
            )
        )
        try:
            await self._t.follow(sending, lambda: progress[0], conn_key(writer))
            sent = sending.result()
        finally:
            stop.set()
            if not sending.done():
                sending.cancel()
        if sent != self._length:
            raise _local_read(f"the file shrank while sending ({sent} bytes)")

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        await self.write(writer)


def _local_read(detail: str) -> TransferFailed:
    return TransferFailed(detail, side="local", phase="read")


def _put_phase(transfer: Transfer) -> str:
    """Where a PUT is: nothing of the body sent yet, part of it, or all of it."""
    if transfer.bytes == 0:
        return "first byte"
    if transfer.size is not None and transfer.bytes >= transfer.size:
        return "close"
    return "body"


async def push(svc: TPCService, transfer: Transfer, f: OpenFile, local: dict[str, bytes]) -> None:
    spec = transfer.spec
    transfer.size = f.stat.size
    headers: list[tuple[str, str]] = integrity.digest_headers(local)

    bodies: list[FileBody] = []

    def body() -> Any:
        transfer.bytes = 0  # a redirected PUT starts again
        bodies.append(FileBody(svc.backend, f, transfer, svc.cfg.direct_push_min))
        return bodies[-1]

    try:
        resp, final = await open_remote(
            svc.session,
            "PUT",
            spec.remote,
            headers,
            svc.policy,
            svc.cfg.max_redirects,
            "destination",
            body=body,
            expect_continue=svc.cfg.push_expect_continue,
            on_hop=transfer.attempting,
            on_peer=transfer.peer,
            flow_label=transfer.flow_label(),
            bound=spec.headers,
            client_ssl=transfer.client_ssl,
        )
    except TransferFailed as exc:
        cause = exc.__cause__
        if isinstance(cause, TransferFailed):  # raised by the body itself
            raise cause from None
        if exc.side == "destination" and exc.phase == "first byte":
            exc.phase = _put_phase(transfer)  # the error came while sending the body
        raise
    try:
        if resp.status not in (200, 201, 204, 205):
            status = resp.status
            phase = _put_phase(transfer)
            text = await error_text(resp)
            raise TransferFailed(f"PUT answered {text}", status, side="destination", phase=phase)
        # The answer may come while the last bytes are still being counted as sent; the
        # body's writer must finish before the response is released (that cancels it).
        if bodies:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(svc.cfg.stall_timeout):
                    await bodies[-1].finished.wait()
    finally:
        resp.release()
    if transfer.bytes != transfer.size:
        raise TransferFailed(
            f"PUT answered {resp.status} after {transfer.bytes} of {transfer.size} bytes",
            side="destination",
            phase="body",
        )
    await _verify(svc, transfer, final, local)


async def _verify(svc: TPCService, transfer: Transfer, url: str, local: dict[str, bytes]) -> None:
    required = transfer.spec.require_checksum
    if required is None:
        required = svc.cfg.require_checksum
    headers = [("Want-Digest", integrity.want_digest(local, ()))]
    try:
        resp, _ = await open_remote(
            svc.session,
            "HEAD",
            url,
            headers,
            svc.policy,
            svc.cfg.max_redirects,
            "destination",
            credentials_for=transfer.spec.remote,
            bound=transfer.spec.headers,
            client_ssl=transfer.client_ssl,
        )
    except TransferFailed:
        if required:
            raise
        return
    try:
        if resp.status >= 300:
            if required:
                raise TransferFailed(
                    f"cannot verify the copy: HEAD answered HTTP {resp.status} "
                    f"{resp.reason or ''}".rstrip(),
                    resp.status,
                    side="destination",
                    phase="HEAD",
                )
            return
        remote = integrity.declared_digests(resp.headers, resp.status)
        length = resp.content_length
    finally:
        resp.release()
    try:
        if length is not None and length != transfer.size:
            raise TransferFailed(
                f"the destination has {length} bytes, the source {transfer.size}",
                side="",
                phase="checksum",
            )
        transfer.compared = integrity.verify(
            remote, local, {}, required, "source", local_name="the destination's copy"
        )
    except TransferFailed as exc:
        deleted = "deleted" if await _delete(svc, transfer, url) else "not deleted"
        raise TransferFailed(
            f"verification failed (the copy was {deleted}): {exc}", side="", phase="checksum"
        ) from None


async def _delete(svc: TPCService, transfer: Transfer, url: str) -> bool:
    """Remove a copy that failed verification (best effort); whether the destination
    confirmed it."""
    try:
        resp, _ = await open_remote(
            svc.session,
            "DELETE",
            url,
            (),
            svc.policy,
            0,
            "destination",
            credentials_for=transfer.spec.remote,
            bound=transfer.spec.headers,
            client_ssl=transfer.client_ssl,
        )
        resp.release()
    except (TransferFailed, aiohttp.ClientError, OSError):
        return False
    return resp.status in (200, 202, 204)
