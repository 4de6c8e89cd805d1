"""The transfer log: one JSON line per transfer, for FTS-style monitoring.

A transfer is a PUT (``upload``), a GET answered with a body (``download``), or a
third-party copy (``pull`` / ``push``).  Each line (``logging.transfer_log``; off when
empty) has: ``id``, ``kind``, ``method``, ``start``/``end`` (UTC, RFC 3339 with
milliseconds), ``duration`` (s), ``path`` (local), ``remote`` (a copy's URL without
credentials and query, else ``null``), ``bytes`` moved, ``size`` of the file when known,
``throughput`` (bytes/s), ``checksum`` (``adler32:<hex>`` when the file's stored checksum is
known), ``state`` (``ok``, ``failed``, ``aborted``), ``status`` (HTTP), ``error`` (the
failure line or reason; ``""`` when ok), ``client`` (address), ``identity`` (token
``sub@iss`` or certificate DN), ``vo`` (primary FQAN's VO), ``scitag``, ``user_agent``,
``pid`` (worker).

Lines are buffered and written by a flush at least once a second (and at stop) on a thread,
so the event loop never waits for the disk; each flush is one ``write(2)`` of whole lines on
an ``O_APPEND`` descriptor, so several worker processes can share one file without tearing
lines.  :meth:`TransferLog.reopen` (SIGHUP) opens the file again for logrotate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from se.auth.policy import Grant

__all__ = [
    "COPY_FACTS",
    "CopyFacts",
    "TransferLog",
    "iso_time",
    "note_bytes",
    "note_cut",
    "note_sent",
    "strip_url",
    "was_cut",
]

log = logging.getLogger("se")

FLUSH_PERIOD = 1.0  # seconds between flushes
FLUSH_BYTES = 256 * 1024  # or sooner, once this much is waiting


@dataclass(slots=True)
class CopyFacts:
    """What a third-party copy tells the log about itself (set by se.tpc on the request)."""

    kind: str  # pull | push
    remote: str
    bytes: int
    size: int | None
    scitag: str | None
    result: str  # the result line ("success: ...", "failure: ...", "aborted: ..."), or ""


COPY_FACTS: web.RequestKey[CopyFacts] = web.RequestKey("se_copy_facts", CopyFacts)
_BYTES: web.RequestKey[int] = web.RequestKey("se_transfer_bytes", int)


_CUT: web.RequestKey[bool] = web.RequestKey("se_transfer_cut", bool)


def note_cut(request: web.Request) -> None:
    """A download whose connection broke after its headers went (the client left)."""
    request[_CUT] = True


def was_cut(request: web.Request) -> bool:
    return bool(request.get(_CUT, False))


_DIRECT: web.RequestKey[int] = web.RequestKey("se_transfer_direct_bytes", int)


def note_sent(request: web.Request, count: int) -> None:
    """Body bytes sent past aiohttp's writer (sendfile(2) on a thread)."""
    request[_DIRECT] = request.get(_DIRECT, 0) + count


def note_bytes(request: web.Request, count: int) -> None:
    """Bytes an upload received (the body may bypass aiohttp's reader)."""
    request[_BYTES] = count


def strip_url(url: str) -> str:
    """``url`` without user information, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return parts._replace(netloc=host + port, query="", fragment="").geturl()


def iso_time(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class TransferLog:
    """One writer per application; lines go to ``path`` in whole-line appends."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self._pending: list[str] = []
        self._size = 0
        self._lock = threading.Lock()  # one flush at a time, and the descriptor with it
        self._task: asyncio.Task[None] | None = None
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        old, self._fd = self._fd, fd
        if old >= 0:
            os.close(old)

    def reopen(self, path: str | None = None) -> None:
        """Open the file again (logrotate moved it), or another one; lines waiting go to
        the new one."""
        with self._lock:
            if path is not None:
                self.path = path
            try:
                self._open()
            except OSError as exc:
                log.error("transfer log: cannot open %s: %s", self.path, exc.strerror)

    def start(self) -> None:
        """Start the periodic flush (in the running loop)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._flusher())

    async def _flusher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(FLUSH_PERIOD)
            if self._pending:
                await loop.run_in_executor(None, self.flush)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"
        self._pending.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().run_in_executor(None, self.flush)

    def flush(self) -> None:
        """Write the waiting lines (any thread)."""
        with self._lock:
            lines, self._pending, self._size = self._pending, [], 0
            if not lines or self._fd < 0:
                return
            data = "".join(lines).encode("utf-8", "replace")
            try:
                while data:
                    written = os.write(self._fd, data)
                    data = data[written:]
            except OSError as exc:
                log.error("transfer log: cannot write %s: %s", self.path, exc.strerror)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def record(
        self,
        request: web.Request,
        response: web.StreamResponse | None,
        *,
        grant: Grant | None,
        kind: str,
        path: str,
        started: float,
        size: int | None,
        checksum: str | None,
        error: str = "",
        aborted: bool = False,
    ) -> None:
        """Write the line of one finished transfer."""
        end = time.time()
        status = response.status if response is not None else 0
        facts = request.get(COPY_FACTS)
        remote = None
        scitag = request.headers.get("SciTag")
        if facts is not None:
            moved = facts.bytes
            remote = strip_url(facts.remote)
            scitag = facts.scitag
            result = facts.result
            if result.startswith("success"):
                state = "ok"
            elif result:
                state = "aborted" if result.startswith("aborted") else "failed"
                error = result
            else:  # refused before the 202, or the client left before the result line
                state = "failed" if status >= 400 else "aborted"
                error = error or "the client left before the result"
        else:
            if kind == "upload":
                moved = request.get(_BYTES, 0)
            elif response is not None and aborted:  # cut: what went, either way
                moved = response.body_length + request.get(_DIRECT, 0)
            elif response is not None:
                # Answered in full (else the handler raised): the declared length, since a
                # body sent with sendfile(2) on a thread passes aiohttp's counter by.
                length = response.content_length
                moved = length if length is not None else response.body_length
            else:
                moved = 0
            if aborted:
                state = "aborted"
            elif 200 <= status < 300:
                state = "ok"
            else:
                state = "failed"
        if state == "ok":
            error = ""
        vo = ""
        if grant is not None and grant.attributes:
            vo = grant.attributes[0].strip("/").split("/", 1)[0]
        duration = max(end - started, 0.0)
        self.write(
            {
                "id": secrets.token_hex(8),
                "kind": kind,
                "method": request.method,
                "start": iso_time(started),
                "end": iso_time(end),
                "duration": round(duration, 6),
                "path": path,
                "remote": remote,
                "bytes": moved,
                "size": size,
                "throughput": round(moved / duration, 1) if duration > 0 else None,
                "checksum": checksum,
                "state": state,
                "status": status,
                "error": error,
                "client": request.remote or "",
                "identity": grant.subject if grant is not None else "",
                "vo": vo,
                "scitag": scitag,
                "user_agent": request.headers.get("User-Agent", ""),
                "pid": os.getpid(),
            }
        )
