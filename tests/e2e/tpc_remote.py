"""A deliberately misbehaving passive party for the third-party-copy tests.

:class:`Remote` runs a small aiohttp application on ``127.0.0.1:0`` in a background thread
(with its own event loop) and records every request it sees.  The first path segment picks
the behaviour, the rest names a file of :attr:`Remote.files` (what a GET serves) or of
:attr:`Remote.stored` (what a PUT wrote):

``ok``          a correct server: GET/HEAD (``Accept-Ranges``, ranges, ``Digest: adler32``),
                PUT (stores, 201), DELETE
``nodigest``    the right bytes, no checksum and no range support
``wrongbytes``  corrupted bytes of the right length with the true file's ``Digest``
``wrongdigest`` the right bytes with a wrong ``Digest: adler32=...``
``stall``       headers and half the body, then nothing until :meth:`Remote.stop`
``nobody``      headers (with ``Content-Length``), never a byte of body
``gate``        half the body, the rest once :meth:`Remote.open_gate` is called
``norange``     announces ``Accept-Ranges: bytes`` but answers every GET with 200 and all
``redirect``    ``/redirect/<code>/<key>`` answers ``<code>`` to ``Remote.redirects[key]``
``put403``      refuses a PUT with 403 (in answer to ``Expect: 100-continue``)
``badsum``      stores a PUT, then declares a wrong adler32 on HEAD; DELETE removes it
``status``      ``/status/<code>/<name>`` answers every request with ``<code>`` and the text
                ``scripted <code>``

Nothing here blocks forever: stalled handlers wait for an event that :meth:`Remote.stop`
sets, and the runner is cleaned up with a short shutdown timeout.
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from dataclasses import dataclass
from types import TracebackType

from aiohttp import web

__all__ = ["Remote", "Seen", "digest_of", "serve_on_loopback"]


def digest_of(data: bytes) -> str:
    """``adler32=<8 lowercase hex>`` as in an RFC 3230 ``Digest`` header."""
    return f"adler32={zlib.adler32(data) & 0xFFFFFFFF:08x}"


async def serve_on_loopback(app: web.Application) -> tuple[web.AppRunner, int]:
    """Run ``app`` on 127.0.0.1 and an ephemeral port: its runner (to clean up) and port."""
    runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    return runner, server.sockets[0].getsockname()[1]


@dataclass(frozen=True)
class Seen:
    """One request as the remote received it."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def has(self, name: str) -> bool:
        return self.header(name) is not None


class Remote:
    """The misbehaving HTTP server; use as a context manager or call start()/stop()."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.stored: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.port = 0
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="tpc-remote", daemon=True)
        self._ready = threading.Event()
        self._release: asyncio.Event | None = None
        self._gate: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Remote:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the test remote did not start")
        if self._error is not None:
            raise RuntimeError(f"the test remote did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        fut.result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> Remote:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._startup())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            self._loop.close()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _startup(self) -> None:
        self._release = asyncio.Event()
        self._gate = asyncio.Event()
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/redirect/{code}/{key}", self._redirect)
        app.router.add_route("PUT", "/put403/{name:.+}", self._put, expect_handler=self._refuse)
        app.router.add_route(
            "*", "/{mode}/{name:.+}", self._dispatch, expect_handler=self._expect_status
        )
        self._runner, self.port = await serve_on_loopback(app)

    async def _shutdown(self) -> None:
        assert self._release is not None and self._gate is not None
        self._release.set()
        self._gate.set()
        if self._runner is not None:
            await self._runner.cleanup()
        me = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not me]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    # ------------------------------------------------------------------ test API
    def seen(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        """Requests received so far, optionally only those with this method / path."""
        with self._lock:
            return [
                s
                for s in self._seen
                if (method is None or s.method == method) and (path is None or s.path == path)
            ]

    def open_gate(self) -> None:
        """Let every ``gate`` GET send the rest of its body."""
        assert self._gate is not None
        self._loop.call_soon_threadsafe(self._gate.set)

    # ------------------------------------------------------------------ handlers
    def _record(self, request: web.Request) -> None:
        with self._lock:
            self._seen.append(Seen(request.method, request.path, tuple(request.headers.items())))

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        mode = request.match_info["mode"]
        name = request.match_info["name"]
        if mode == "status":
            code = int(name.partition("/")[0])
            return web.Response(status=code, text=f"scripted {code}")
        if request.method == "PUT" and mode in ("ok", "badsum"):
            return await self._put(request)
        if request.method == "DELETE" and mode in ("ok", "badsum"):
            found = self.stored.pop(name, None)
            return web.Response(status=204 if found is not None else 404)
        if request.method == "HEAD" and mode == "badsum":
            data = self.stored.get(name)
            if data is None:
                raise web.HTTPNotFound()
            wrong = bytes(b ^ 0xFF for b in data[:1]) + data[1:] + b"x"
            return _head(data, {"Digest": digest_of(wrong)})
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        data = self.stored.get(name) if mode == "ok" and name not in self.files else None
        if data is None:
            data = self.files.get(name)
        if data is None:
            raise web.HTTPNotFound()
        return await self._serve(request, mode, data)

    async def _serve(self, request: web.Request, mode: str, data: bytes) -> web.StreamResponse:
        head = request.method == "HEAD"
        if mode == "ok":
            extra = {"Accept-Ranges": "bytes", "Digest": digest_of(data)}
            rng = request.headers.get("Range")
            if rng is not None and not head:
                return _ranged(data, rng, extra)
            return _head(data, extra) if head else _full(data, extra)
        if mode == "nodigest":
            return _head(data, {}) if head else _full(data, {})
        if mode == "wrongbytes":
            bad = bytes(b ^ 0x5A for b in data)
            extra = {"Digest": digest_of(data)}
            return _head(data, extra) if head else _full(bad, extra)
        if mode == "wrongdigest":
            extra = {"Digest": digest_of(data + b"not the file")}
            return _head(data, extra) if head else _full(data, extra)
        if mode == "norange":
            extra = {"Accept-Ranges": "bytes", "Digest": digest_of(data)}
            return _head(data, extra) if head else _full(data, extra)
        if mode in ("stall", "nobody", "gate", "short"):
            if head:
                return _head(data, {"Digest": digest_of(data)})
            return await self._slow(request, mode, data)
        raise web.HTTPNotFound()

    async def _slow(self, request: web.Request, mode: str, data: bytes) -> web.StreamResponse:
        assert self._release is not None and self._gate is not None
        resp = web.StreamResponse(headers={"Digest": digest_of(data)})
        resp.content_length = len(data)
        await resp.prepare(request)  # sends the status line and headers at once
        half = len(data) // 2
        if mode != "nobody":
            await resp.write(data[:half])
        if mode == "short":  # half the body, then the connection is closed
            await resp.drain()
            if request.transport is not None:
                request.transport.close()
            return resp
        if mode == "gate":
            await self._gate.wait()
            await resp.write(data[half:])
            await resp.write_eof()
            return resp
        await self._release.wait()  # until the test's teardown
        if request.transport is not None:
            request.transport.close()
        return resp

    async def _put(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/put403/"):
            self._record(request)
            return web.Response(status=403, text="no writing here")
        name = request.match_info["name"]
        self.stored[name] = await request.read()
        return web.Response(status=201)

    async def _expect_status(self, request: web.Request) -> web.StreamResponse | None:
        """Expect: 100-continue on /status/<code>/: the scripted answer instead of 100 (as a
        server refusing before the body does); 100 Continue everywhere else."""
        if request.match_info.get("mode") == "status":
            self._record(request)
            code = int(request.match_info["name"].partition("/")[0])
            return web.Response(status=code, text=f"scripted {code}")
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the answer proper has not started
        return None

    async def _refuse(self, request: web.Request) -> web.StreamResponse | None:
        """Expect: 100-continue on put403: answer the final 403 instead of 100."""
        self._record(request)
        return web.Response(status=403, text="no writing here")

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        code = int(request.match_info["code"])
        target = self.redirects.get(request.match_info["key"])
        if target is None or code not in (301, 302, 303, 307, 308):
            raise web.HTTPNotFound()
        return web.Response(status=code, headers={"Location": target})


def _head(data: bytes, extra: dict[str, str]) -> web.StreamResponse:
    """A HEAD answer: aiohttp sends the Content-Length of ``data`` and leaves the body out."""
    return _full(data, extra)


def _full(data: bytes, extra: dict[str, str]) -> web.StreamResponse:
    return web.Response(body=data, headers=extra, content_type="application/octet-stream")


def _ranged(data: bytes, rng: str, extra: dict[str, str]) -> web.StreamResponse:
    """One ``bytes=a-b`` range (all the active party sends)."""
    unit, _, spec = rng.partition("=")
    first, _, last = spec.partition("-")
    if unit.strip() != "bytes" or not first.isdigit():
        raise web.HTTPRequestRangeNotSatisfiable()
    start = int(first)
    end = min(int(last), len(data) - 1) if last.isdigit() else len(data) - 1
    if start > end:
        raise web.HTTPRequestRangeNotSatisfiable()
    headers = {**extra, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
    return web.Response(
        status=206,
        body=data[start : end + 1],
        headers=headers,
        content_type="application/octet-stream",
    )
