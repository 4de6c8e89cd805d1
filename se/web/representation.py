"""The headers that describe a file's bytes in a GET or HEAD answer: its ETag,
Last-Modified, Content-Type and Accept-Ranges, and the Server header of every answer.

One definition for both request paths that answer a GET (se.dav.handlers and the lean
path of se.web.fastpath), so that they cannot disagree on a header.
"""

from __future__ import annotations

import email.utils
import functools
import mimetypes

from se import __version__
from se.storage.types import Stat

__all__ = ["SERVER", "content_type", "file_head_fields", "file_headers", "http_date"]

SERVER = f"se/{__version__}"


def http_date(ts: float) -> str:
    """An IMF-fixdate (RFC 9110 §5.6.7) of a POSIX time, to the second."""
    return _http_date_s(int(ts))


@functools.lru_cache(maxsize=8192)
def _http_date_s(ts: int) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def content_type(name: str) -> str:
    """The media type for a file name, by its suffix (application/octet-stream if none)."""
    return _content_type_of_suffix(name.rpartition(".")[2].lower() if "." in name else "")


@functools.lru_cache(maxsize=1024)
def _content_type_of_suffix(suffix: str) -> str:
    ctype, _enc = mimetypes.guess_type("x." + suffix, strict=False) if suffix else (None, None)
    return ctype or "application/octet-stream"


def file_headers(st: Stat, name: str) -> dict[str, str]:
    """ETag, Last-Modified, Accept-Ranges and Content-Type of a file, in that order."""
    return dict(_file_fields(st, name))


@functools.lru_cache(maxsize=4096)
def file_head_fields(st: Stat, name: str) -> str:
    """:func:`file_headers` as the lines of an answer's head (``Name: value\\r\\n`` each)."""
    return "".join(f"{k}: {v}\r\n" for k, v in _file_fields(st, name))


@functools.lru_cache(maxsize=4096)
def _file_fields(st: Stat, name: str) -> tuple[tuple[str, str], ...]:
    return (
        ("Etag", st.etag),
        ("Last-Modified", http_date(st.mtime)),
        ("Accept-Ranges", "bytes"),
        ("Content-Type", content_type(name)),
    )
