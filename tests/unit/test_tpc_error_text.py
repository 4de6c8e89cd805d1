"""The text of an unexpected remote answer quotes error bodies, never file data."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web

from se.tpc.remote import error_text


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
        assert text == "203 Non-Authoritative Information"
        async with session.get(server.make_url("/404")) as resp:
            text = await error_text(resp)
        assert text == "404 Not Found: no way"
