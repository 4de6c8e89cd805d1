"""Domain errors and the single table that maps them to HTTP statuses.

Every failure a request can meet is raised as an :class:`SEError` subclass; the class
carries the HTTP status, the instance a one-line reason (and optional extra response
headers).  ``se.web.error_handling`` is the only place that turns them into responses.  This
module imports nothing from aiohttp so that pure code can raise these errors.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "BadGateway",
    "BadRequest",
    "ChecksumMismatch",
    "Conflict",
    "ExpectationFailed",
    "Forbidden",
    "InsufficientStorage",
    "MethodNotAllowed",
    "NotFound",
    "NotImplementedYet",
    "PayloadTooLarge",
    "PreconditionFailed",
    "RangeNotSatisfiable",
    "RequestTimeout",
    "SEError",
    "ServiceUnavailable",
    "URITooLong",
    "Unauthorized",
    "UnsupportedMediaType",
]


class SEError(Exception):
    """Base of all errors that become an HTTP response."""

    status: int = 500

    def __init__(self, reason: str, headers: Mapping[str, str] | None = None) -> None:
        # One line only: clients (davix) show the first line, logs stay greppable.
        self.reason = " ".join(str(reason).split()) or self.__class__.__name__
        self.headers: dict[str, str] = dict(headers or {})
        super().__init__(self.reason)


class BadRequest(SEError):
    status = 400


class ChecksumMismatch(BadRequest):
    """Data received does not match the checksum the client declared."""


class Unauthorized(SEError):
    status = 401


class Forbidden(SEError):
    status = 403


class NotFound(SEError):
    status = 404


class MethodNotAllowed(SEError):
    status = 405


class RequestTimeout(SEError):
    status = 408


class Conflict(SEError):
    status = 409


class PreconditionFailed(SEError):
    status = 412


class PayloadTooLarge(SEError):
    status = 413


class URITooLong(BadRequest):
    status = 414


class UnsupportedMediaType(SEError):
    status = 415


class ExpectationFailed(SEError):
    status = 417


class RangeNotSatisfiable(SEError):
    status = 416


class NotImplementedYet(SEError):
    status = 501


class BadGateway(SEError):
    status = 502


class ServiceUnavailable(SEError):
    status = 503


class InsufficientStorage(SEError):
    status = 507
