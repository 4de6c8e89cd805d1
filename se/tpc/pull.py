"""The pull data path: this server GETs the source into the backend's upload path.

Single stream: one GET streamed through :class:`se.storage.posix.Upload` (temp file,
checksums while streaming, fsync, atomic rename).  Several streams: ranged GETs of
``stream_block_size`` blocks written at their offsets into the same temp file, checksums
computed over the assembled file.  Whatever fails, the temp file is removed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp

from se.errors import NotFound, PreconditionFailed, SEError
from se.storage import checksums
from se.storage.posix import Upload
from se.tpc import integrity
from se.tpc.markers import os_error_text
from se.tpc.remote import (
    TransferFailed,
    describe_client_error,
    error_text,
    open_remote,
    redact,
)
from se.tpc.service import TPCService
from se.tpc.state import Transfer, conn_key

__all__ = ["Budget", "SourceInfo", "probe", "pull"]

log = logging.getLogger("se.tpc")

WRITE_BLOCK = 1 << 20  # bytes gathered before a positional write
FREE_RESERVE = 64 << 20  # a pull of unknown size stops when less than this is free


def _free_bytes(directory: str) -> int:
    """Free bytes (for unprivileged writers) of the filesystem that holds ``directory``, or
    of its nearest existing ancestor (a pull creates missing parents)."""
    while True:
        try:
            vfs = os.statvfs(directory)
        except (FileNotFoundError, NotADirectoryError):
            parent = os.path.dirname(directory)
            if parent == directory:
                raise
            directory = parent
            continue
        return vfs.f_bavail * vfs.f_frsize


class Budget:
    """What a pull may write: never past the source's declared length, ``tpc.max_pull_bytes``
    or the free space of the target's filesystem (checked before the first byte and, for a
    source of unknown length, again each time half of the space above
    :data:`FREE_RESERVE` may have been used)."""

    def __init__(self, svc: TPCService, transfer: Transfer, declared: int | None) -> None:
        self.declared = declared
        self.cap = svc.cfg.max_pull_bytes
        self._run = svc.backend.run
        self._dir = os.path.dirname(svc.backend.fs_path(transfer.local))
        self._next_check = 0

    async def _free(self) -> int:
        return await self._run(_free_bytes, self._dir)

    async def start(self) -> None:
        declared, cap = self.declared, self.cap
        if declared is not None and cap and declared > cap:
            raise _local_write(
                f"the source declares {declared} bytes, more than tpc.max_pull_bytes ({cap})"
            )
        free = await self._free()
        if declared is not None and declared > free:
            raise _local_write(
                f"not enough space: the source declares {declared} bytes; the target "
                f"filesystem has {free} bytes free"
            )
        if declared is None:
            self._next_check = max(0, free - FREE_RESERVE) // 2

    async def check(self, total: int) -> None:
        """Before writing up to ``total`` bytes in all."""
        declared, cap = self.declared, self.cap
        if declared is not None:
            if total > declared:
                raise _source_body(f"the source sent more than the {declared} bytes it declared")
            return
        if cap and total > cap:
            raise _local_write(f"the source sent more than tpc.max_pull_bytes ({cap} bytes)")
        if total >= self._next_check:
            free = await self._free()
            if free < FREE_RESERVE:
                raise _local_write(
                    f"target filesystem full: {free} bytes free after {total} bytes received"
                )
            self._next_check = total + (free - FREE_RESERVE) // 2


def _local_write(detail: str) -> TransferFailed:
    return TransferFailed(detail, side="local", phase="write")


def _source_body(detail: str) -> TransferFailed:
    return TransferFailed(detail, side="source", phase="body")


def _stored(exc: SEError) -> TransferFailed:
    """A storage error of the target as a ``local write`` failure, with the errno of the
    operating-system error under it when there is one."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError):
        where = exc.reason.rpartition(": ")[0] or exc.reason
        return _local_write(f"{where}: {os_error_text(cause)}")
    return _local_write(exc.reason)


@dataclass(slots=True)
class SourceInfo:
    url: str  # after redirects
    size: int | None = None
    digests: dict[str, bytes] = field(default_factory=dict)
    ranges: bool = False


def _request_headers(svc: TPCService, transfer: Transfer) -> list[tuple[str, str]]:
    """Headers of our own (the client's forwarded ones are bound to the source's origin)."""
    if not transfer.ask_digest:
        return []
    first = (*transfer.spec.expected, *transfer.spec.want_digest)
    return [("Want-Digest", svc.want_digest(first))]


async def _request(
    svc: TPCService, transfer: Transfer, method: str, url: str, extra: list[tuple[str, str]]
) -> tuple[aiohttp.ClientResponse, str]:
    """HEAD/GET the source, asking for its checksum; once more without asking when the
    source refuses the question itself (XRootD without a checksum configured answers 405).
    """
    for _attempt in range(2):
        resp, final = await open_remote(
            svc.session,
            method,
            url,
            [*_request_headers(svc, transfer), *extra],
            svc.policy,
            svc.cfg.max_redirects,
            "source",
            on_hop=transfer.attempting,
            on_peer=transfer.peer,
            credentials_for=transfer.spec.remote,
            flow_label=transfer.flow_label(),
            bound=transfer.spec.headers,
            client_ssl=transfer.client_ssl,
        )
        if resp.status != 405 or not transfer.ask_digest:
            return resp, final
        resp.release()
        transfer.ask_digest = False
    return resp, final


async def probe(svc: TPCService, transfer: Transfer) -> SourceInfo:
    """HEAD the source before answering 202: size, checksums, range support.

    A source that is definitely missing is a plain 404; a client checksum that contradicts
    the source's is a 412.  Other HTTP errors are left for the GET to report.  Network
    errors raise TransferFailed (reported after the 202 as a failure line).
    """
    spec = transfer.spec
    try:
        async with asyncio.timeout(svc.cfg.head_timeout):
            resp, url = await _request(svc, transfer, "HEAD", spec.remote, [])
    except TimeoutError:
        raise TransferFailed(
            f"timed out: no answer within {svc.cfg.head_timeout:g} s (tpc.head_timeout)",
            side="source",
            phase="HEAD",
        ) from None
    try:
        if resp.status in (404, 410):
            raise NotFound(f"source {redact(spec.remote)} answered HEAD with {resp.status}")
        if resp.status >= 300:
            return SourceInfo(url=spec.remote)
        info = SourceInfo(
            url=url,
            size=resp.content_length,
            digests=integrity.declared_digests(resp.headers, resp.status),
            ranges="bytes" in resp.headers.get("Accept-Ranges", "").lower(),
        )
    finally:
        resp.release()
    for alg, want in spec.expected.items():
        have = info.digests.get(alg)
        if have is not None and have != want:
            raise PreconditionFailed(
                f"{alg} given in the COPY's Repr-Digest differs from the source's "
                f"({checksums.format_digest_value(alg, want)} != "
                f"{checksums.format_digest_value(alg, have)})"
            )
    return info


def _extra_algorithms(transfer: Transfer, declared: dict[str, bytes]) -> tuple[str, ...]:
    names = (*declared, *transfer.spec.expected, *transfer.spec.want_digest)
    return tuple(dict.fromkeys(a for a in names if checksums.canonical_algorithm(a)))


async def pull(svc: TPCService, transfer: Transfer, info: SourceInfo) -> None:
    """Fetch the source into ``transfer.local``; raises TransferFailed (or SEError) on failure."""
    block = svc.cfg.stream_block_size
    streams = min(transfer.spec.streams, svc.cfg.max_streams)
    try:
        if streams > 1 and info.ranges and info.size is not None and info.size > block:
            try:
                await _pull_multi(svc, transfer, info, streams)
                return
            except _RangesIgnored:
                # The source announced ranges but sends whole files: one stream will do.
                log.info("source %s ignores Range; pulling with one stream", redact(info.url))
        await _pull_single(svc, transfer, info)
    except SEError as exc:  # only the target's storage raises these here
        raise _stored(exc) from exc


class _RangesIgnored(Exception):
    """A source answered a range GET with the whole file (200)."""


async def _get(
    svc: TPCService, transfer: Transfer, url: str, extra: list[tuple[str, str]]
) -> tuple[aiohttp.ClientResponse, str]:
    return await _request(svc, transfer, "GET", url, extra)


async def _pull_single(svc: TPCService, transfer: Transfer, info: SourceInfo) -> None:
    resp, _url = await _get(svc, transfer, info.url, [])
    try:
        if resp.status != 200:
            status = resp.status
            text = await error_text(resp)
            raise TransferFailed(f"GET answered {text}", status, side="source", phase="first byte")
        size = resp.content_length if resp.content_length is not None else info.size
        declared = {**info.digests, **integrity.declared_digests(resp.headers, 200)}
        transfer.size = size
        budget = Budget(svc, transfer, size)
        await budget.start()
        upload = await svc.backend.begin_upload(
            transfer.local, transfer.spec.overwrite, _extra_algorithms(transfer, declared)
        )
        key = conn_key(resp) or transfer.last_conn
        try:
            direct_min = svc.cfg.direct_pull_min
            if direct_min and size is not None and size >= direct_min and _socket_of(resp):
                await _receive_direct(transfer, resp, upload, size)
            else:
                async for chunk in resp.content.iter_any():
                    transfer.progress(len(chunk), key)
                    await budget.check(upload.received + len(chunk))
                    await upload.feed(chunk)
            await _finish(svc, transfer, upload, size, declared)
        except BaseException:
            await asyncio.shield(upload.abort())
            raise
    except (aiohttp.ClientError, OSError) as exc:
        raise _describe(transfer, exc) from exc
    finally:
        resp.release()


def _socket_of(resp: aiohttp.ClientResponse) -> int | None:
    """The plain-TCP socket under a response, or None (TLS, or already released)."""
    conn = resp.connection
    transport = conn.transport if conn is not None else None
    if transport is None or transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    return sock.fileno() if sock is not None else None


async def _receive_direct(
    transfer: Transfer, resp: aiohttp.ClientResponse, upload: Upload, size: int
) -> None:
    """Take the rest of a large plain-HTTP body straight from the socket on a worker thread
    (hashing and writing as it goes), past aiohttp's parser; the connection is closed after.
    """
    fd = _socket_of(resp)
    key = conn_key(resp)
    conn = resp.connection
    assert fd is not None and conn is not None and conn.transport is not None
    # Drain aiohttp's buffer without yielding, then pause: reading the buffer may resume
    # the transport (flow control), so the pause must come after it.
    buffered = []
    while chunk := resp.content.read_nowait():
        buffered.append(chunk)
    conn.transport.pause_reading()
    stop = threading.Event()
    receiving: asyncio.Future[None] | None = None
    try:
        for chunk in buffered:
            transfer.progress(len(chunk), key)
            await upload.feed(chunk)
        receiving = asyncio.ensure_future(
            upload.receive_from_socket(os.dup(fd), size - upload.received, stop)
        )
        await transfer.follow(receiving, lambda: upload.received, key)
        try:
            receiving.result()
        except (ConnectionError, TimeoutError) as exc:
            raise _source_body(f"the data ended early ({upload.received} of {size} bytes)") from exc
    finally:
        stop.set()  # a worker thread still reading sees this within half a second
        if receiving is not None and not receiving.done():
            receiving.cancel()
        resp.close()  # the connection's framing is ours now: never reuse it


def _describe(transfer: Transfer, exc: BaseException) -> TransferFailed:
    """A network error while reading the source's answer."""
    phase = "body" if transfer.bytes else "first byte"
    return TransferFailed.of(describe_client_error(exc, "source", phase))


async def _pull_multi(svc: TPCService, transfer: Transfer, info: SourceInfo, streams: int) -> None:
    assert info.size is not None
    size = info.size
    transfer.size = size
    block = svc.cfg.stream_block_size
    await Budget(svc, transfer, size).start()
    upload = await svc.backend.begin_upload(
        transfer.local, transfer.spec.overwrite, _extra_algorithms(transfer, info.digests)
    )
    starts = iter(range(0, size, block))
    transfer.streaming(streams)
    try:
        workers = [
            asyncio.ensure_future(_stream(svc, transfer, info.url, upload, starts, size, block))
            for _ in range(min(streams, -(-size // block)))
        ]
        try:
            done, _pending = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # the first failure, if any
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        await _finish(svc, transfer, upload, size, info.digests)
    except BaseException:
        await asyncio.shield(upload.abort())
        raise


async def _stream(
    svc: TPCService,
    transfer: Transfer,
    url: str,
    upload: Upload,
    starts: Iterator[int],
    size: int,
    block: int,
) -> None:
    for start in starts:  # shared by all streams: each takes the next block
        end = min(size, start + block) - 1
        resp, _ = await _get(svc, transfer, url, [("Range", f"bytes={start}-{end}")])
        try:
            if resp.status == 200:
                raise _RangesIgnored()
            if resp.status != 206:
                status = resp.status
                text = await error_text(resp)
                raise TransferFailed(
                    f"range GET answered {text}", status, side="source", phase="first byte"
                )
            crange = resp.headers.get("Content-Range", "")
            if not crange.startswith(f"bytes {start}-{end}/"):
                raise _source_body(f"the source sent the wrong range: {crange[:80]!r}")
            offset = start
            buf = bytearray()
            key = conn_key(resp) or transfer.last_conn
            async for chunk in resp.content.iter_any():
                transfer.progress(len(chunk), key)
                if offset + len(buf) + len(chunk) > end + 1:
                    raise _source_body(
                        f"the source sent more than the {end + 1 - start} bytes of a range"
                    )
                buf += chunk
                if len(buf) >= WRITE_BLOCK:
                    await upload.write_at(offset, bytes(buf))
                    offset += len(buf)
                    buf.clear()
            if buf:
                await upload.write_at(offset, bytes(buf))
                offset += len(buf)
            if offset != end + 1:
                raise _source_body(
                    f"the source sent {offset - start} of {end + 1 - start} bytes of a range"
                )
        except (aiohttp.ClientError, OSError) as exc:
            raise _describe(transfer, exc) from exc
        finally:
            resp.release()


async def _finish(
    svc: TPCService,
    transfer: Transfer,
    upload: Upload,
    size: int | None,
    declared: dict[str, bytes],
) -> None:
    if size is not None and upload.received != size:
        raise _source_body(f"the data ended early ({upload.received} of {size} bytes)")
    local = await upload.digests()
    required = transfer.spec.require_checksum
    if required is None:
        required = svc.cfg.require_checksum
    transfer.compared = integrity.verify(
        local, declared, transfer.spec.expected, required, "source"
    )
    await upload.commit({})  # a storage error becomes "local write" in pull()
