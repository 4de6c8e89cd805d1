"""The HTTP/1 connection handler: what a connection may cost before its request exists.

aiohttp's :class:`~aiohttp.web_protocol.RequestHandler`, extended where aiohttp has no knob:

* **Total head size.**  aiohttp limits each field (``max_field_size``) and the number of
  fields (``max_headers``) but not their sum; this handler counts the bytes of every
  request head still being received and answers 431 past ``max_head_bytes``.
* **Head deadline.**  A request head must arrive within ``head_timeout`` seconds of its
  first byte (and a new connection must start one within that time): slow or never-ending
  heads get 408 and are closed, silent connections are closed.  Idle keep-alive between
  requests stays aiohttp's ``keepalive_timeout``.
* **Head memory per worker.**  Unfinished heads of all connections together may hold at
  most ``HeadBudget.limit`` bytes; the connection that would exceed it gets 503 and is
  closed, so a thousand slow clients cannot grow the server, while a request that arrives
  in one piece (nearly all of them) is never counted.
* **Request lines.**  HTTP/1.0 and 1.1 are served; a line without a version (HTTP/0.9) is
  a 400, HTTP/2.0 sent as HTTP/1 text a 505.  ``OPTIONS *`` is routed to the server-wide
  OPTIONS answer and ``CONNECT`` is a 405 (this is no proxy); both would otherwise meet
  the router's 404.

The fast path (a whole request head in one segment) adds an attribute test or two per
segment and nothing per header.

It is also where every answered request is counted for the metrics (:meth:`log_access`,
which aiohttp calls once per response of any kind, access log on or off): its method,
status, duration and body bytes (``se.metrics.request_done``), and the connections opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import yarl
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from se import metrics
from se.web import fastpath, health
from se.web.access import count_cached, identity_label
from se.web.accesslog import write_line

__all__ = ["HeadBudget", "SEHandler"]

log = logging.getLogger("se.http")

_ROOT = yarl.URL("/")
# aiohttp's writers report each body write (3.14); without that hook, what a response wrote
# in all (its head too) stands in for its body.
_BODY_HOOK = hasattr(AbstractStreamWriter, "on_body_write")


class HeadBudget:
    """Bytes held by unfinished request heads of all connections of one worker.

    Once a burst of them is over (``TRIM_AFTER`` bytes or more were held at once, and none
    are now), the C heap is trimmed so that the memory goes back to the system instead of
    staying with the process as free fragments."""

    __slots__ = ("limit", "peak", "used")

    TRIM_AFTER = 4 * 1024 * 1024

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0

    def add(self, n: int) -> None:
        self.used += n
        if self.used > self.peak:
            self.peak = self.used

    def release(self, n: int, loop: asyncio.AbstractEventLoop) -> None:
        self.used -= n
        if self.used == 0 and self.peak >= self.TRIM_AFTER:
            self.peak = 0
            loop.call_later(1.0, _trim_heap)


def _trim_heap() -> None:
    if _malloc_trim is not None:
        _malloc_trim(0)


def _find_malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; other C libraries lack it
    except (OSError, AttributeError):
        return None


_malloc_trim = _find_malloc_trim()


class _Refused(HttpProcessingError):
    """A request refused before it reached the application (answered, then closed)."""

    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(code=code, message=message)
        self.extra = headers or {}


class SEHandler(RequestHandler):
    __slots__ = (
        "_access_on",
        "_allow",
        "_budget",
        "_closed_hook",
        "_feeding",
        "_head_bytes",
        "_head_timeout",
        "_head_timer",
        "_held",
        "_last_payload",
        "_lean",
        "_lean_count",
        "_logged",
        "_max_head_bytes",
        "_pending",
        "_refused",
        "_sent",
    )

    def __init__(
        self,
        manager: web.Server,
        *,
        loop: asyncio.AbstractEventLoop,
        budget: HeadBudget,
        max_head_bytes: int,
        head_timeout: float,
        allow: str,
        lean: fastpath.Lean | None = None,
        closed_hook: Callable[[asyncio.BaseTransport], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        # told when the connection is gone (the SciTags flow a keep-alive connection holds)
        self._closed_hook = closed_hook
        self._lean = lean  # when the lean path (se.web.fastpath) is on
        self._lean_count = 0  # requests answered by it
        self._logged = 0  # answers aiohttp has finished (all written)
        self._pending: fastpath.Pending | None = None  # a lean answer its I/O job is making
        self._held = b""  # what arrived meanwhile (reading is paused; at most a segment)
        self._feeding = False  # in _feed (which parses on until the parser has nothing left)
        self._budget = budget
        self._max_head_bytes = max_head_bytes
        self._head_timeout = head_timeout
        self._allow = allow
        self._head_bytes = 0  # bytes of the unfinished head counted in the budget
        self._head_timer: asyncio.TimerHandle | None = None
        self._last_payload: StreamReader | None = None
        self._refused = False
        # Every request is timed (aiohttp times them only for the access log).
        self._access_on = self._logging_enabled
        self._logging_enabled = True
        self._sent = 0  # body bytes written by the current request's response
        factory = self._request_factory
        assert factory is not None

        def request_factory(*args: Any) -> BaseRequest:
            args[3].on_body_write = self._body_written  # the StreamWriter
            return factory(*args)

        self._request_factory = request_factory

    def _body_written(self, n: int, _total: int) -> None:
        self._sent += n

    def log_access(
        self, request: BaseRequest, response: StreamResponse, time: float | None
    ) -> None:
        self._logged += 1
        took = self._loop.time() - time if time is not None else 0.0
        sent, self._sent = self._sent, 0
        if not _BODY_HOOK:
            sent = response.body_length
        metrics.request_done(
            request.method, response.status, took, request.content.total_bytes, sent
        )
        if self._access_on and self.access_logger is not None:
            self.access_logger.log(request, response, took)

    # -- connection life ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        metrics.connection_opened()
        if self._head_timeout > 0:
            self._head_timer = self._loop.call_later(self._head_timeout, self._head_expired)

    def connection_lost(self, exc: BaseException | None) -> None:
        metrics.connection_closed()
        self._end_head()
        transport = self.transport
        if self._closed_hook is not None and transport is not None:
            self._closed_hook(transport)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._feeding and not data:
            # aiohttp's StreamReader calls resume_reading() when the lean path reads a body,
            # which feeds the parser b"" from here: that would parse (and answer) requests
            # the parser held back before the one being answered.  _feed parses them next.
            return
        if self._pending is not None:  # read on once its answer is written, in order
            self._held += data
            return
        last = self._last_payload
        count = self._request_count
        if (last is not None and not last.is_eof()) or self._upgraded:  # a request body
            super().data_received(data)
            if self._request_count != count:  # and, after its end, the next request
                self._new_messages(self._request_count - count)
            return
        room = self._max_head_bytes - self._head_bytes
        if len(data) > room:
            # The parser never holds more of one head than the limit: feed up to it, and
            # the rest only once a head was complete within it (then it is a body or the
            # next request).
            super().data_received(data[:room])
            if self._request_count == count:
                self._refuse(
                    _Refused(431, f"request head is larger than {self._max_head_bytes} bytes")
                )
                return
            self._new_messages(self._request_count - count)
            self.data_received(data[room:])
            return
        lean = self._lean_count
        if self._lean is not None and self._idle():
            self._feed(data)
        else:
            super().data_received(data)
        if self._request_count != count:
            self._new_messages(self._request_count - count)
        elif self._lean_count != lean:
            self._end_head()
        elif data:
            self._grow_head(len(data))

    # -- the lean path (se.web.fastpath) ---------------------------------------------------
    def _idle(self) -> bool:
        """No request queued or being answered, no body or upgrade under way, and the
        client reading what it was sent: a request parsed now may be answered at once."""
        return (
            self._request_count == self._logged  # aiohttp owes no answer (nor is writing one)
            and not self._force_close
            and not self._close
            and self._payload_parser is None
            and not self._upgraded
            and self.transport is not None
            and not self.transport.is_closing()
            and not self.writing_paused
        )

    def _feed(self, data: bytes) -> None:
        """aiohttp's :meth:`data_received` for request heads, answering the leading
        requests the lean path covers itself; the first it does not cover, and all after
        it, are queued for aiohttp's handler as usual.

        The parser stops after ``_max_msg_queue_size`` requests not yet consumed and keeps
        the rest of the data; aiohttp feeds it again once its queue has drained.  Requests
        answered here are consumed at once, so the rest is fed again here."""
        parser = self._parser
        assert parser is not None
        lean_path = self._lean
        transport = self.transport
        assert lean_path is not None and transport is not None
        ctx, answerers = lean_path.ctx, lean_path.answerers
        lean = True
        limit = self._max_msg_queue_size
        self._feeding = True  # see data_received
        try:
            while True:
                try:
                    messages, upgraded, tail = parser.feed_data(data)
                except HttpProcessingError as exc:
                    messages = [(_ErrInfo(status=400, exc=exc, message=exc.message), EMPTY_PAYLOAD)]
                    upgraded, tail = False, b""
                data = b""
                done = 0
                if lean:
                    for msg, payload in messages:
                        if not isinstance(msg, RawRequestMessage) or self.writing_paused:
                            break
                        answerer = answerers.get(msg.method)
                        deferred = None
                        if answerer is None:
                            # Answered after an I/O job: only the last request of all this
                            # data, so that nothing after it waits unread in the parser.
                            deferred = lean_path.deferred.get(msg.method)
                            last = done + 1 == len(messages) < limit and not upgraded
                            if deferred is None or not last:
                                break
                        body = b""
                        if payload is not EMPTY_PAYLOAD:
                            if not payload.is_eof() or payload.exception() is not None:
                                break  # (still coming: the full path reads it)
                            body = payload.read_nowait(-1)
                        started = self._loop.time()
                        if deferred is not None:
                            pending = deferred(ctx, msg, body, transport)
                            if pending is None:
                                if body:
                                    messages = [*messages]
                                    messages[done] = (msg, self._whole_body(body))
                                break
                            parser.message_consumed()
                            done += 1
                            self._lean_count += 1
                            self._wait_for(pending, msg, body, started)
                            break
                        assert answerer is not None
                        found = answerer(ctx, msg, body, transport)
                        if found is None:
                            if body:  # what the full path reads instead
                                messages = [*messages]
                                messages[done] = (msg, self._whole_body(body))
                            break
                        transport.write(found.data)
                        parser.message_consumed()
                        done += 1
                        self._lean_count += 1
                        self._answered(msg, found, started, len(body))
                queued = messages[done:] if done else messages
                if queued:
                    lean = False
                    for item in queued:  # as aiohttp's data_received
                        self._request_count += 1
                        self._messages.append(item)
                    waiter = self._waiter
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)
                    if not self._buffer_paused and len(self._messages) >= limit:
                        self._pause_reading_for_buffer()
                if upgraded:
                    self._upgraded = True
                    if tail:
                        self._message_tail = tail
                    return
                if len(messages) < limit or len(self._messages) >= limit:
                    return  # nothing held back by the parser, or aiohttp feeds it when drained
        finally:
            self._feeding = False

    def _wait_for(
        self, pending: fastpath.Pending, msg: RawRequestMessage, body: bytes, started: float
    ) -> None:
        """Read nothing more until ``pending``'s answer is written (answers stay in order,
        and a client cannot queue more meanwhile); the keep-alive timer waits too."""
        self._pending = pending
        health.SERVICE.active += 1  # (a graceful stop waits for it)
        transport = self.transport
        assert transport is not None
        with contextlib.suppress(AttributeError, RuntimeError):
            transport.pause_reading()
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None
        pending.job.add_done_callback(lambda job: self._job_done(pending, msg, body, started))

    def _job_done(
        self, pending: fastpath.Pending, msg: RawRequestMessage, body: bytes, started: float
    ) -> None:
        self._pending = None
        health.SERVICE.active -= 1
        job = pending.job
        found = None
        if not job.cancelled() and job.exception() is None:
            found = pending.finish(job.result())
        transport = self.transport
        if transport is None or transport.is_closing():
            if found is not None:  # done, though the client is gone: counted and logged
                self._answered(msg, found, started, len(body))
            return
        if found is not None:
            transport.write(found.data)
            self._answered(msg, found, started, len(body))
        else:
            # The full path answers it (and the error) as always: nothing was stored.
            self._lean_count -= 1
            self._request_count += 1
            self._messages.append((msg, self._whole_body(body)))
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        with contextlib.suppress(AttributeError, RuntimeError):
            transport.resume_reading()
        held, self._held = self._held, b""
        if held:
            self.data_received(held)

    async def shutdown(self, timeout: float | None = 15.0) -> None:  # noqa: ASYNC109 (aiohttp's signature)
        pending = self._pending
        if pending is not None:  # its answer first (the job is on an I/O thread anyway)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(pending.job), timeout)
        await super().shutdown(timeout)

    def _whole_body(self, body: bytes) -> StreamReader:
        """A request body, all received, as the full path reads it."""
        reader = StreamReader(self, 2**16, loop=self._loop)
        reader.feed_data(body)
        reader.feed_eof()
        return reader

    def _answered(
        self, msg: RawRequestMessage, found: fastpath.Answer, started: float, received: int
    ) -> None:
        """What aiohttp does after each answer (keep-alive timer, counts, the access log)."""
        loop = self._loop
        now = loop.time()
        self._next_keepalive_close_time = now + self._keepalive_timeout
        if self._keepalive_handle is None and self._keepalive_timeout > 0:
            self._keepalive_handle = loop.call_at(
                self._next_keepalive_close_time, self._process_keepalive
            )
        manager = self._manager
        if manager is not None:
            manager.requests_count += 1
        took = now - started
        if found.kind:
            count_cached(found.kind)
        metrics.request_done(msg.method, found.status, took, received, found.sent, lean=True)
        logger = self.access_logger
        if self._access_on and logger is not None:
            peer = self.peername
            headers = msg.headers
            write_line(
                logger.logger,
                str(peer[0]) if isinstance(peer, (list, tuple)) else str(peer or "-"),
                msg.method,
                msg.path,
                1,
                1,
                found.status,
                len(found.data),
                headers.get("Referer", "-"),
                headers.get("User-Agent", "-"),
                identity_label(found.grant),
                took,
            )

    # -- request heads --------------------------------------------------------------------
    def _new_messages(self, new: int) -> None:
        queue = self._messages
        self._end_head()
        for i in range(len(queue) - new, len(queue)):
            msg, payload = queue[i]
            if not isinstance(msg, RawRequestMessage):
                continue
            refusal = self._judge(msg)
            if isinstance(refusal, RawRequestMessage):
                queue[i] = (refusal, payload)
            elif refusal is not None:
                queue[i] = (
                    _ErrInfo(status=refusal.code, exc=refusal, message=refusal.message),
                    EMPTY_PAYLOAD,
                )
                self._stop_reading()
                while len(queue) > i + 1:  # nothing after a refused request is served
                    queue.pop()
                self._last_payload = None
                return
            self._last_payload = payload

    def _judge(self, msg: RawRequestMessage) -> _Refused | RawRequestMessage | None:
        version = msg.version
        if version is not HttpVersion11 and version != HttpVersion11 and version != HttpVersion10:
            if version.major == 0:
                return _Refused(400, "request line has no HTTP version (HTTP/0.9 is not served)")
            return _Refused(505, f"HTTP/{version.major}.{version.minor} is not supported here")
        method = msg.method
        if method == "CONNECT":
            return _Refused(
                405, "CONNECT is not supported: this is no proxy", {"Allow": self._allow}
            )
        if msg.path == "*":
            if method != "OPTIONS":
                return _Refused(400, "the request target '*' is only valid for OPTIONS")
            return msg._replace(url=_ROOT)  # the server-wide OPTIONS answer
        return None

    def _grow_head(self, n: int) -> None:
        """``n`` bytes of a request head that is still unfinished arrived."""
        self._head_bytes += n
        budget = self._budget
        budget.add(n)
        if budget.used > budget.limit:
            self._refuse(_Refused(503, "too many unfinished request heads; try again"))
        elif self._head_timer is None and self._head_timeout > 0:
            self._head_timer = self._loop.call_later(self._head_timeout, self._head_expired)

    def _end_head(self) -> None:
        """The head being received is complete (or abandoned): release what it held."""
        if self._head_bytes:
            self._budget.release(self._head_bytes, self._loop)
            self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._refused or self.transport is None:
            return
        if self._head_bytes == 0:
            if self._request_count == 0 and self._lean_count == 0:  # never sent anything
                self.force_close()
            return
        if self._request_in_progress:  # a pipelined head behind a running request
            self._head_timer = self._loop.call_later(self._head_timeout, self._head_expired)
            return
        self._refuse(_Refused(408, f"request head not received within {self._head_timeout:g} s"))

    def _stop_reading(self) -> None:
        """Nothing more is read from a refused connection (what it still sends stays in the
        kernel until the answer is written and the connection closed)."""
        self._refused = True
        transport = self.transport
        if transport is not None:
            with contextlib.suppress(AttributeError, RuntimeError):
                transport.pause_reading()

    def _refuse(self, exc: _Refused) -> None:
        self._end_head()
        self._stop_reading()
        self._last_payload = None
        transport = self.transport
        if transport is not None and not self._request_in_progress and not self._messages:
            # Idle connection (the usual case: a head that is too slow or too big): answer
            # in a few bytes and close, without building a request and a response, so that
            # a thousand of these cost little more than their sockets.
            log.debug("%s: %d %s", self.peername, exc.code, exc.message)
            body = exc.message.encode() + b"\n"
            metrics.request_done("other", exc.code, 0.0, 0, len(body))  # (no request exists)
            transport.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (exc.code, HTTPStatus(exc.code).phrase.encode(), len(body), body)
            )
            self.force_close()
            return
        self._request_count += 1
        self._messages.append(
            (_ErrInfo(status=exc.code, exc=exc, message=exc.message), EMPTY_PAYLOAD)
        )
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, _Refused):
            log.info("%s: %d %s", request.remote, status, exc.message)
            resp = web.Response(status=status, text=exc.message + "\n", headers=exc.extra)
            resp.force_close()
            return resp
        if isinstance(exc, ConnectionError):
            # The client left while its answer was being written (e.g. a benchmark's
            # connections closing at its end): one line, not a traceback.
            log.info("%s %s %s: client gone: %s", request.remote, request.method, request.path, exc)
            if request.writer.output_size:
                raise ConnectionError("client gone after part of the answer") from exc
            resp = web.Response(status=status, text="client gone\n")
            resp.force_close()
            return resp
        if isinstance(exc, HttpProcessingError) and status < 500 and not request.writer.output_size:
            # A malformed request (bad URL, line or field too long, bad framing) is the
            # client's fault and anyone can send one: one line in the log, not a traceback
            # per request, and a one-line reason to the client.
            reason = (exc.message or HTTPStatus(status).phrase).splitlines()[0][:200]
            log.info("%s: %d bad request: %s", request.remote, status, reason)
            resp = web.Response(status=status, text=f"bad request: {reason}\n")
            resp.force_close()
            return resp
        return super().handle_error(request, status, exc, message)
