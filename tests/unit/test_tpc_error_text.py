"""The text of a failed request to the remote party: the phase it failed in, the remote's
HTTP status or the errno, and never file data.  Real sockets and servers on loopback."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from se.tpc.markers import Failure
from se.tpc.remote import describe_client_error, error_text


async def test_error_text(aiohttp_server: Any) -> None:
    async def answer(request: web.Request) -> web.Response:
        status = int(request.match_info["status"])
        return web.Response(
            status=status, text="FILE-CONTENT " * 100 if status < 300 else "no\nway"
        )

    app = web.Application()
    app.router.add_get("/{status}", answer)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/203")) as resp:
            text = await error_text(resp)
        assert text == "HTTP 203 Non-Authoritative Information"
        async with session.get(server.make_url("/404")) as resp:
            text = await error_text(resp)
        assert text == "HTTP 404 Not Found: no way"


async def _error_of(request: Awaitable[Any]) -> BaseException:
    try:
        await request
    except (aiohttp.ClientError, OSError) as exc:
        return exc
    raise AssertionError("the request did not fail")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_refused_is_connect_with_errno() -> None:
    port = _closed_port()
    async with aiohttp.ClientSession() as session:
        exc = await _error_of(session.get(f"http://127.0.0.1:{port}/f"))
    failure = describe_client_error(exc, "source", "first byte")
    assert failure == Failure(
        "source",
        "connect",
        f"cannot connect to 127.0.0.1:{port}: Connection refused (errno {errno.ECONNREFUSED})",
    )


async def test_unresolvable_name_is_connect_without_errno() -> None:
    async with aiohttp.ClientSession() as session:
        exc = await _error_of(session.get("http://no-such-host.invalid/f"))
    failure = describe_client_error(exc, "destination", "first byte")
    assert failure.tag == "destination connect", failure
    assert failure.detail.startswith("cannot resolve no-such-host.invalid"), failure
    assert "errno" not in failure.detail  # resolver codes are not errnos


@pytest.fixture
async def tls_server() -> AsyncIterator[int]:
    """An HTTPS server whose certificate comes from a CA nobody trusts."""
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)

    async def secret(request: web.Request) -> web.Response:
        return web.Response(text="secret")

    app = web.Application()
    app.router.add_get("/f", secret)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        await runner.cleanup()


async def test_untrusted_certificate_is_tls(tls_server: int) -> None:
    async with aiohttp.ClientSession() as session:
        exc = await _error_of(session.get(f"https://127.0.0.1:{tls_server}/f"))
    failure = describe_client_error(exc, "source", "first byte")
    assert failure.tag == "source TLS", failure
    assert failure.detail.startswith(f"certificate of 127.0.0.1:{tls_server} not trusted: ")
    assert "certificate" in failure.detail.split("not trusted: ", 1)[1], failure


async def test_plain_http_server_spoken_to_in_tls_is_tls(aiohttp_server: Any) -> None:
    app = web.Application()
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        exc = await _error_of(session.get(f"https://127.0.0.1:{server.port}/f"))
    failure = describe_client_error(exc, "destination", "first byte")
    assert failure.tag == "destination TLS", failure
    assert failure.detail.startswith(f"TLS handshake with 127.0.0.1:{server.port} failed"), failure


async def _raw_server(
    answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> asyncio.Server:
    return await asyncio.start_server(answer, "127.0.0.1", 0)


async def test_server_closing_before_answering_keeps_the_callers_phase() -> None:
    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await _raw_server(close_at_once)
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            exc = await _error_of(session.head(f"http://127.0.0.1:{port}/f"))
    finally:
        server.close()
        await server.wait_closed()
    failure = describe_client_error(exc, "source", "HEAD")
    assert failure == Failure("source", "HEAD", "the remote closed the connection"), failure


async def test_body_ending_early_is_body() -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
        await writer.drain()
        writer.close()

    server = await _raw_server(half)
    port = server.sockets[0].getsockname()[1]
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/f") as resp,
        ):
            exc = await _error_of(resp.read())
    finally:
        server.close()
        await server.wait_closed()
    failure = describe_client_error(exc, "source", "first byte")
    assert failure.tag == "source body", failure
    assert failure.detail.startswith("the data ended early"), failure


def test_os_errors_keep_their_errno() -> None:
    failure = describe_client_error(
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "destination", "body"
    )
    assert failure == Failure(
        "destination", "body", f"Connection reset by peer (errno {errno.ECONNRESET})"
    )
    assert describe_client_error(TimeoutError(), "source", "first byte") == Failure(
        "source", "first byte", "timed out"
    )
