"""URL path -> confined storage path.  Pure: no filesystem access.

A request path is percent-decoded once (strict UTF-8), split on ``/``, and every segment is
checked: ``..`` (also when it arrived as ``%2e%2e``), NUL bytes, an encoded ``/`` and the
server's reserved names (``.se-*``) are refused; ``.`` and empty segments are dropped.  What
remains can only name something below the root.  Symlinks are the backend's business
(``se.storage.posix`` checks the resolved path), since seeing them needs the filesystem.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

from se.errors import BadRequest, Forbidden, URITooLong

__all__ = [
    "RESERVED_PREFIX",
    "TEMP_PREFIX",
    "DavPath",
    "check_new_name",
    "confine",
    "is_reserved",
    "is_temp_name",
]

# Names the server keeps for itself (upload temp files, the state directory): never served,
# listed or addressable.
RESERVED_PREFIX = ".se-"
# Prefix of in-flight upload files.
TEMP_PREFIX = ".se-upload-"
MAX_PATH_BYTES = 4096
# Deeper paths are refused (414): no client needs them, and creating their parents one
# by one must stay far from any recursion or descriptor limit.
MAX_DEPTH = 256
# Paths made only of these characters, with no segment starting with ".", need no decoding
# and cannot name "..", "." or a reserved temp name.
_PLAIN = re.compile(r"(?:/(?:[A-Za-z0-9_\-~+,=:@][A-Za-z0-9_.\-~+,=:@]*)?)+")
MAX_SEGMENT_BYTES = 255


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX)


def is_reserved(name: str) -> bool:
    return name.startswith(RESERVED_PREFIX)


@dataclass(frozen=True, slots=True)
class DavPath:
    """A normalised path below the storage root, as a tuple of segments."""

    segments: tuple[str, ...]

    @property
    def is_root(self) -> bool:
        return not self.segments

    @property
    def rel(self) -> str:
        """Relative path ("" for the root), for joining onto the root directory."""
        return "/".join(self.segments)

    @property
    def name(self) -> str:
        return self.segments[-1] if self.segments else ""

    @property
    def parent(self) -> DavPath:
        return DavPath(self.segments[:-1])

    def child(self, name: str) -> DavPath:
        return DavPath((*self.segments, name))

    def url(self, collection: bool = False) -> str:
        """Percent-encoded absolute URL path; collections end with ``/``."""
        path = "/" + "/".join(quote(s, safe="!$&'()*+,;=:@~") for s in self.segments)
        if collection and not path.endswith("/"):
            path += "/"
        return path

    def is_within(self, other: DavPath) -> bool:
        """True when self is other or lies below it."""
        return self.segments[: len(other.segments)] == other.segments

    def __str__(self) -> str:
        return "/" + self.rel


def confine(raw_path: str) -> DavPath:
    """Turn a raw (percent-encoded) URL path into a :class:`DavPath` or raise.

    Raises BadRequest for undecodable input and Forbidden for attempts to leave the root
    or to touch reserved names.  Answers for short paths are remembered (the same few
    paths are asked for again and again; a refusal is never remembered)."""
    if len(raw_path) <= _REMEMBERED_LENGTH:
        return _confine_remembered(raw_path)
    return _confine(raw_path)


_REMEMBERED_LENGTH = 256  # at most 4096 of them: about 2 MB at worst


@functools.lru_cache(maxsize=4096)
def _confine_remembered(raw_path: str) -> DavPath:
    return _confine(raw_path)


def _confine(raw_path: str) -> DavPath:
    raw_path = raw_path.split("?", 1)[0]
    if "#" in raw_path:
        # A fragment is never part of a request-target (RFC 9112 §3.2); acting on what is
        # left of the path (DELETE /dir/#x deleting /dir) would be dangerous.
        raise BadRequest("request path contains a fragment ('#'); encode it as %23")
    if not raw_path.startswith("/"):
        raise BadRequest("path must be absolute")
    if _PLAIN.fullmatch(raw_path):
        # Fast path for the common case: nothing encoded, no dot segments, no reserved names.
        plain = tuple(s for s in raw_path.split("/") if s)
        if (
            len(raw_path) <= MAX_PATH_BYTES
            and len(plain) <= MAX_DEPTH
            and all(len(s) <= MAX_SEGMENT_BYTES for s in plain)
        ):
            return DavPath(plain)
    if len(raw_path) > 3 * MAX_PATH_BYTES:  # longer than any encoding of an allowed path
        raise URITooLong(f"path is longer than {MAX_PATH_BYTES} bytes")
    segments: list[str] = []
    for raw_seg in raw_path.split("/"):
        if not raw_seg:
            continue
        try:
            data = unquote_to_bytes(raw_seg)
        except UnicodeEncodeError:  # lone surrogates (surrogateescape'd header bytes)
            raise BadRequest("path is not valid UTF-8") from None
        if b"\x00" in data:
            raise BadRequest("path contains a NUL byte")
        if b"/" in data:
            raise BadRequest("path segment contains an encoded '/'")
        if len(data) > MAX_SEGMENT_BYTES:
            raise BadRequest("path segment is longer than 255 bytes")
        try:
            seg = data.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("path is not valid UTF-8") from None
        if seg == ".":
            continue
        if seg == "..":
            raise Forbidden("path contains '..'")
        if is_reserved(seg):
            raise Forbidden("path uses a reserved name")
        segments.append(seg)
        if len(segments) > MAX_DEPTH:
            raise URITooLong(f"path has more than {MAX_DEPTH} segments")
    if sum(len(s.encode()) + 1 for s in segments) > MAX_PATH_BYTES:
        raise URITooLong(f"path is longer than {MAX_PATH_BYTES} bytes")
    return DavPath(tuple(segments))


# A percent-encoded C0 control character or DEL (a raw one never passes the HTTP parser).
_ENCODED_CONTROL = re.compile(r"%(?:[01][0-9A-Fa-f]|7[Ff])")


def check_new_name(raw_path: str) -> None:
    """Refuse (400) to create a name with a control character in it.

    Such names cannot be carried by XML (PROPFIND) and break line-oriented tools and logs;
    names already on disk stay readable and deletable, only new ones are refused.  Takes a
    raw (percent-encoded) URL path, or a full URL (a MOVE/COPY ``Destination``).
    """
    path = raw_path.split("?", 1)[0]
    if "%" in path and _ENCODED_CONTROL.search(path):
        raise BadRequest("a new name may not contain control characters")
