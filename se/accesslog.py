"""Credentials never reach the logs: a filter that hides token-bearing query parameters
(``authz=``, ``access_token=``) in every record of the loggers it is attached to."""

from __future__ import annotations

import logging
import re

__all__ = ["RedactTokens", "redact_query"]

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
