"""The only place that turns errors into responses.

:func:`error_response` renders an :class:`SEError` as ``text/plain`` with the one-line
reason; the wrapper made by :func:`handle_errors` applies it to everything a handler
raises, and turns any other exception into a logged 500 so that no traceback reaches a
client.  The 100-continue
hook (which runs before middlewares in aiohttp) uses :func:`error_response` directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from se.errors import SEError

__all__ = ["error_response", "handle_errors"]

log = logging.getLogger("se.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(exc: SEError) -> web.Response:
    resp = web.Response(
        status=exc.status, text=exc.reason + "\n", content_type="text/plain", headers=exc.headers
    )
    if exc.status in (400, 413, 415, 417) or exc.headers.get("Connection") == "close":
        # The body of a refused request may still be on the wire; don't reuse the link.
        resp.force_close()
    return resp


def handle_errors(handler: Handler) -> Handler:
    """Wrap the request handler so that every error it raises becomes a response.

    A plain wrapper rather than an aiohttp middleware: same effect, one less layer of
    per-request indirection on the hot path.
    """

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except SEError as exc:
            if exc.status >= 500:
                log.warning("%s %s -> %d %s", request.method, request.path, exc.status, exc.reason)
            return error_response(exc)
        except web.HTTPException:
            raise
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            return error_response(SEError("internal server error"))

    return guarded
