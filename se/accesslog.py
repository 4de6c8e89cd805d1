"""The access log, and credentials never in any log: one line per request naming the
identity it was judged as, and a filter that hides token-bearing query parameters
(``authz=``, ``access_token=``) in every record of the loggers it is attached to."""

from __future__ import annotations

import logging
import re
import time as _time

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from se.web.access import grant_of, identity_label

__all__ = ["AccessLogger", "RedactTokens", "redact_query"]

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
    return text.replace("\\", "\\\\").replace('"', '\\"')


class AccessLogger(AbstractAccessLogger):
    """One line per request, in the combined log format followed by the identity the
    request was judged as (quoted) and the time it took in milliseconds, at the event
    loop clock's resolution (1 ms under uvloop):
    ``127.0.0.1 [07/Dec/2026:10:00:00 +0000] "GET /f HTTP/1.1" 200 4096 "-" "curl/7.88"
    "/DC=org/CN=Alice /dteam" 3``."""

    _second = -1
    _stamp = ""

    @property
    def enabled(self) -> bool:
        """logging.access_log (switched live at SIGHUP by disabling the logger)."""
        return not self.logger.disabled

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        now = int(_time.time())
        if now != AccessLogger._second:
            AccessLogger._second = now
            AccessLogger._stamp = _time.strftime("[%d/%b/%Y:%H:%M:%S +0000]", _time.gmtime(now))
        headers = request.headers
        version = request.version
        self.logger.info(
            '%s %s "%s %s HTTP/%d.%d" %d %d "%s" "%s" "%s" %.0f',
            request.remote or "-",
            AccessLogger._stamp,
            request.method,
            request.raw_path,
            version.major,
            version.minor,
            response.status,
            response.body_length,
            _quoted(headers.get("Referer", "-")),
            _quoted(headers.get("User-Agent", "-")),
            _quoted(identity_label(grant_of(request))),
            time * 1000.0,
        )
