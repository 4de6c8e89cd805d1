"""The access log, and credentials never in any log: one line per request naming the
identity it was judged as, and a filter that hides token-bearing query parameters
(``authz=``, ``access_token=``) in every record of the loggers it is attached to."""

from __future__ import annotations

import atexit
import logging
import os
import re
import select
import time as _time
from typing import TextIO

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from se.loopturn import at_end_of_turn
from se.web.access import grant_of, identity_label

__all__ = ["AccessLogger", "RedactTokens", "flush", "redact_query", "write_directly", "write_line"]

_SECRET_PARAM = re.compile(r"(?i)([?&](?:authz|access_token)=)[^&\s\"]*")


def redact_query(text: str) -> str:
    return _SECRET_PARAM.sub(r"\1REDACTED", text)


class RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and not record.args:
            record.msg = redact_query(record.msg)
        elif record.args:
            record.msg = redact_query(record.getMessage())
            record.args = ()
        return True


def _quoted(text: str) -> str:
    if "\\" not in text and '"' not in text:  # nearly always
        return text
    return text.replace("\\", "\\\\").replace('"', '\\"')


class AccessLogger(AbstractAccessLogger):
    """One line per request, in the combined log format followed by the identity the
    request was judged as (quoted) and the time it took in milliseconds, at the event
    loop clock's resolution (1 ms under uvloop):
    ``127.0.0.1 [07/Dec/2026:10:00:00 +0000] "GET /f HTTP/1.1" 200 4096 "-" "curl/7.88"
    "/DC=org/CN=Alice /dteam" 3``."""

    @property
    def enabled(self) -> bool:
        """logging.access_log (switched live at SIGHUP by disabling the logger)."""
        return not self.logger.disabled

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        headers = request.headers
        version = request.version
        write_line(
            self.logger,
            request.remote or "-",
            request.method,
            request.raw_path,
            version.major,
            version.minor,
            response.status,
            response.body_length,
            headers.get("Referer", "-"),
            headers.get("User-Agent", "-"),
            identity_label(grant_of(request)),
            time,
        )


_Entry = tuple[float, str, str, str, int, int, int, int, str, str, str, float]


def write_line(
    logger: logging.Logger,
    remote: str,
    method: str,
    raw_path: str,
    major: int,
    minor: int,
    status: int,
    length: int,
    referer: str,
    agent: str,
    identity: str,
    took: float,
) -> None:
    """The access log's line of one answered request (``took`` in seconds), to the direct
    sink when one is set up (:func:`write_directly`), else through ``logger``."""
    if logger.disabled or not logger.isEnabledFor(logging.INFO):
        return
    entry = (
        _time.time(), remote, method, raw_path, major, minor, status, length, referer, agent,
        identity, took,
    )  # fmt: skip
    sink = _SINK
    if sink is None or logger.handlers or not logger.propagate:
        logger.info("%s", _LOGGED.line(entry))
        return
    sink.add(entry)


class _Stamps:
    """The two time stamps of a line, each formatted once per second: the access log's own
    (UTC, ``[07/Dec/2026:10:00:00 +0000]``) and the logging record's (local time)."""

    __slots__ = ("prefix", "second", "stamp")

    def __init__(self) -> None:
        self.second = -1
        self.stamp = ""
        self.prefix = ""

    def _at(self, second: int) -> None:
        self.second = second
        self.stamp = _time.strftime("[%d/%b/%Y:%H:%M:%S +0000]", _time.gmtime(second))
        self.prefix = _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(second))

    def line(self, entry: _Entry) -> str:
        """The access log line of ``entry`` (what follows the logging record's prefix)."""
        now, remote, method, raw_path, major, minor, status, length, referer, agent, who, took = (
            entry
        )
        if int(now) != self.second:
            self._at(int(now))
        return (
            f'{remote} {self.stamp} "{method} {raw_path} HTTP/{major}.{minor}" {status} '
            f'{length} "{_quoted(referer)}" "{_quoted(agent)}" "{_quoted(who)}" '
            f"{took * 1000.0:.0f}"
        )


_LOGGED = _Stamps()  # for lines that go through logging


class _Sink:
    """Access log lines formatted as the root handler would (``fmt``), gathered and written
    to ``fd`` together: at the end of the event loop's turn when the last write is more
    than ``GATHER`` seconds old (a quiet server logs at once), else ``GATHER`` after it
    (under load: one write per 10 ms, not one per request).  A request only leaves its
    fields (:meth:`add`); the lines are formatted when they are written, all in one pass.
    Each write holds whole lines and at most PIPE_BUF bytes (unless one line is longer),
    so lines of several workers writing to one pipe never mix; nothing is dropped (a short
    write is continued)."""

    CHUNK = 4096  # PIPE_BUF on Linux
    GATHER = 0.01  # seconds after a write during which more lines wait for the next one
    MAX_HELD = 512  # entries: written at once beyond this many

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        self._entries: list[_Entry] = []
        self._scheduled = False
        self._quiet_until = 0.0
        self._stamps = _Stamps()

    def add(self, entry: _Entry) -> None:
        entries = self._entries
        entries.append(entry)
        if len(entries) >= self.MAX_HELD:
            self.flush()
        elif not self._scheduled:
            self._scheduled = at_end_of_turn(self.flush, self._quiet_until - _time.monotonic())

    def flush(self) -> None:
        self._scheduled = False
        self._quiet_until = _time.monotonic() + self.GATHER
        entries, self._entries = self._entries, []
        stamps = self._stamps
        tail = f" INFO {self.name}: "
        chunk: list[bytes] = []
        size = 0
        for entry in entries:
            line = stamps.line(entry)
            if "=" in line:  # what RedactTokens does to the records of the logger
                line = redact_query(line)
            now = entry[0]
            data = (
                f"{stamps.prefix},{int((now - stamps.second) * 1000):03d}{tail}{line}\n"
            ).encode("utf-8", "backslashreplace")
            if chunk and size + len(data) > self.CHUNK:
                self._write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(data)
            size += len(data)
        if chunk:
            self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                select.select([], [self.fd], [], 1.0)
                continue
            except OSError:
                return  # stderr is gone: as logging would, lose the log, not the request
            view = view[n:]


_SINK: _Sink | None = None
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def write_directly(stream: TextIO, fmt: str) -> None:
    """Write access log lines straight to ``stream``'s descriptor (see :class:`_Sink`)
    instead of through logging, when ``fmt`` is the format se's own logging set-up uses
    (the line is then the same); a no-op otherwise.  ``stream`` must be the only place
    the root logger writes to."""
    global _SINK
    flush()
    if fmt != _FORMAT:
        _SINK = None
        return
    stream.flush()
    _SINK = _Sink(stream.fileno(), "se.access")
    atexit.register(flush)


def flush() -> None:
    """Write out the access log lines not written yet (at the end of a worker)."""
    if _SINK is not None:
        _SINK.flush()
