"""The wire format of the WLCG Tape REST API v1: request parsing and response shapes.  Pure:
no I/O.

The handlers read a body, call :func:`parse_stage` or :func:`parse_paths`, and serialise
what :func:`format_request`, :func:`format_archiveinfo` or :func:`discovery` return.  A
malformed request raises :class:`TapeProblem`, which carries the RFC 7807 fields the
handler answers with (``application/problem+json``).

Paths are namespace paths as gfal2 sends them: the path part of the WebDAV URL with
repeated slashes collapsed, possibly still percent-encoded.  :func:`sanitise_path` keeps
that spelling (gfal2 matches response items to its URLs by comparing the strings) and only
collapses slashes and resolves dot segments; mapping the result onto storage (as-is, then
percent-decoded) is the caller's business.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import unquote

from se.errors import BadRequest, SEError
from se.storage.paths import MAX_PATH_BYTES
from se.tape.model import FileState, Locality, StageRequest

__all__ = [
    "API_VERSION",
    "MAX_DISK_LIFETIME",
    "PROBLEM_TYPE",
    "TapeProblem",
    "discovery",
    "format_archiveinfo",
    "format_request",
    "parse_duration",
    "parse_paths",
    "parse_stage",
    "problem",
    "sanitise_path",
    "user_status",
]

PROBLEM_TYPE = "application/problem+json"
API_VERSION = "v1"
# Longest sanitised path accepted: a 4096-byte path with every byte percent-encoded.
MAX_PATH_CHARS = 3 * MAX_PATH_BYTES
# Longer diskLifetime values are clamped (the server applies its own limits on top).
MAX_DISK_LIFETIME = 2**31 - 1

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*", re.ASCII)
# ISO 8601 duration restricted to fixed-length units (no years or months), as Java's
# Duration (dCache) reads it, plus weeks; a fraction only on seconds.
_DURATION = re.compile(
    r"P(?:(?P<w>\d{1,9})W)?(?:(?P<d>\d{1,9})D)?"
    r"(?:T(?=\d)(?:(?P<h>\d{1,9})H)?(?:(?P<m>\d{1,9})M)?(?:(?P<s>\d{1,9}(?:[.,]\d{1,9})?)S)?)?",
    re.ASCII,
)
_USER_STATUS = {
    Locality.DISK: "ONLINE",
    Locality.TAPE: "NEARLINE",
    Locality.DISK_AND_TAPE: "ONLINE_AND_NEARLINE",
    Locality.LOST: "LOST",
    Locality.NONE: "NONE",
    Locality.UNAVAILABLE: "UNAVAILABLE",
}


class TapeProblem(SEError):
    """A request the Tape REST API refuses, answered as RFC 7807 problem details.

    A subclass of :class:`SEError`, so one that escapes the tape handlers still becomes a
    response with the right status (as ``text/plain``).
    """

    def __init__(self, status: int, title: str, detail: str | None = None) -> None:
        super().__init__(f"{title}: {detail}" if detail else title)
        self.status = status
        self.title = title
        self.detail = detail

    @property
    def body(self) -> dict[str, Any]:
        return problem(self.status, self.title, self.detail)


def problem(status: int, title: str, detail: str | None = None) -> dict[str, Any]:
    """RFC 7807 members; ``type`` is left out (it then means ``about:blank``)."""
    out: dict[str, Any] = {"status": status, "title": title}
    if detail:
        out["detail"] = detail
    return out


def _show(text: str) -> str:
    return repr(text[:60] + "..." if len(text) > 60 else text)


# --------------------------------------------------------------------------- paths


def sanitise_path(raw: str) -> str:
    """Normalised absolute namespace path, in the client's (maybe percent-encoded) spelling.

    Accepts ``/a/b`` or ``scheme://host:port/a/b`` (query and fragment of a URL dropped).
    Collapses ``//``, drops ``.`` segments and resolves ``..`` ones (also when encoded as
    ``%2e``); a trailing ``/`` is kept.  BadRequest for a NUL byte (also ``%00``), ``..``
    above the root, a relative path, text that is not valid UTF-8 and over-long paths.
    """
    if "\x00" in raw or "%00" in raw:
        raise BadRequest(f"path {_show(raw)} contains a NUL byte")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("path is not valid UTF-8 (lone surrogate)") from None
    path = raw
    url = _URL.match(raw)
    if url is not None:
        path = re.split(r"[?#]", raw[url.end() :], maxsplit=1)[0] or "/"
    if not path.startswith("/"):
        raise BadRequest(f"path {_show(raw)} is neither absolute nor a URL")
    segments: list[str] = []
    parts = path.split("/")[1:]
    for seg in parts:
        dot = unquote(seg) if "%" in seg else seg
        if dot == "..":
            if not segments:
                raise BadRequest(f"path {_show(raw)} leaves the root ('..')")
            segments.pop()
        elif seg and dot != ".":
            segments.append(seg)
    out = "/" + "/".join(segments)
    # A trailing slash (or a final dot segment, which names a directory) is kept.
    if segments and (not parts[-1] or (unquote(parts[-1]) in (".", ".."))):
        out += "/"
    if len(out) > MAX_PATH_CHARS:
        raise BadRequest(f"path {_show(raw)} is longer than {MAX_PATH_CHARS} characters")
    return out


def _sanitised(raw: str, where: str) -> str:
    try:
        return sanitise_path(raw)
    except BadRequest as exc:
        raise TapeProblem(400, "Invalid path", f"{where}: {exc.reason}") from None


# --------------------------------------------------------------------------- bodies


def _load(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise TapeProblem(400, "Invalid JSON", "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise TapeProblem(400, "JSON validation error", "the request body must be a JSON object")
    return data


def parse_duration(text: str) -> int:
    """ISO 8601 duration (``PT1H``, ``P1D``, ``P2W``, ``PT1.5S``) in whole seconds.

    Fractions round up; results above :data:`MAX_DISK_LIFETIME` are clamped.  Years and
    months (no fixed length) are refused.  ValueError otherwise.
    """
    match = _DURATION.fullmatch(text.strip().upper())
    if match is None or not any(match.groupdict().values()):
        raise ValueError(f"invalid ISO 8601 duration {_show(text)}")
    weeks, days, hours, minutes = (int(match[unit] or 0) for unit in ("w", "d", "h", "m"))
    seconds = math.ceil(float((match["s"] or "0").replace(",", ".")))
    total = (((weeks * 7 + days) * 24 + hours) * 60 + minutes) * 60 + seconds
    return min(total, MAX_DISK_LIFETIME)


def parse_stage(
    body: bytes, sitename: str, max_files: int
) -> list[tuple[str, int | None, dict[str, Any] | None]]:
    """The files of a STAGE request: ``(path, diskLifetime seconds, our metadata)``.

    Paths are sanitised and duplicates dropped (the first entry wins).  Unknown fields are
    ignored, and so are ``targetedMetadata`` entries for other sites (neither our sitename
    nor ``"default"``) or that are not JSON objects.  TapeProblem 400 for a malformed body,
    413 above ``max_files`` distinct paths.
    """
    data = _load(body)
    files = data.get("files")
    if not isinstance(files, list) or not files:
        raise TapeProblem(
            400, "JSON validation error", "'files' is missing or not a non-empty array"
        )
    out: list[tuple[str, int | None, dict[str, Any] | None]] = []
    seen: set[str] = set()
    for index, entry in enumerate(files):
        where = f"files[{index}]"
        if not isinstance(entry, dict):
            raise TapeProblem(400, "JSON validation error", f"{where} is not an object")
        raw = entry.get("path")
        if not isinstance(raw, str):
            raise TapeProblem(400, "JSON validation error", f"{where} has no string 'path'")
        path = _sanitised(raw, where)
        if path in seen:
            continue
        seen.add(path)
        if len(seen) > max_files:
            raise TapeProblem(
                413, "Too many files", f"a stage request may name at most {max_files} files"
            )
        out.append((path, _lifetime(entry.get("diskLifetime"), where), _metadata(entry, sitename)))
    return out


def _lifetime(value: object, where: str) -> int | None:
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError("not a string")
        return parse_duration(value)
    except ValueError:
        raise TapeProblem(
            400,
            "JSON validation error",
            f"{where}.diskLifetime is not an ISO 8601 duration such as 'PT1H' or 'P1D'",
        ) from None


def _metadata(entry: dict[str, Any], sitename: str) -> dict[str, Any] | None:
    """Our entry of ``targetedMetadata``: keyed by our sitename, else by ``"default"`` (what
    Rucio sends, as agreed with FTS and EOSCTA); the sitename's wins when both are there."""
    targeted = entry.get("targetedMetadata")
    if not isinstance(targeted, dict):
        return None
    for key in (sitename, "default"):
        ours = targeted.get(key)
        if isinstance(ours, dict):
            return ours
    return None


def parse_paths(body: bytes, max_paths: int | None) -> list[str]:
    """The sanitised, de-duplicated ``paths`` of a cancel, release or archiveinfo body.

    With ``max_paths`` (archiveinfo) only the first ``max_paths`` distinct paths are kept
    and the rest is not even looked at: too many paths never fails.  TapeProblem 400 for a
    malformed body.
    """
    data = _load(body)
    paths = data.get("paths")
    if not isinstance(paths, list) or not paths:
        raise TapeProblem(
            400, "JSON validation error", "'paths' is missing or not a non-empty array"
        )
    out: list[str] = []
    seen: set[str] = set()
    for index, raw in enumerate(paths):
        if max_paths is not None and len(out) >= max_paths:
            break
        where = f"paths[{index}]"
        if not isinstance(raw, str):
            raise TapeProblem(400, "JSON validation error", f"{where} is not a string")
        path = _sanitised(raw, where)
        if path not in seen:
            seen.add(path)
            out.append(path)
    return out


# --------------------------------------------------------------------------- responses


def format_request(req: StageRequest) -> dict[str, Any]:
    """The body of ``GET /stage/{id}``.

    ``startedAt`` falls back to ``createdAt``; ``completedAt``, a file's ``startedAt`` and
    ``finishedAt`` appear only when set; ``error`` only when set and never on a COMPLETED
    file (gfal2 counts any ``error`` as a failure).
    """
    files: list[dict[str, Any]] = []
    for file in req.files:
        item: dict[str, Any] = {"path": file.shown, "state": file.state.value}
        if file.started_at is not None:
            item["startedAt"] = file.started_at
        if file.finished_at is not None:
            item["finishedAt"] = file.finished_at
        if file.error and file.state is not FileState.COMPLETED:
            item["error"] = file.error
        files.append(item)
    out: dict[str, Any] = {
        "id": req.id,
        "createdAt": req.created_at,
        "startedAt": req.created_at if req.started_at is None else req.started_at,
    }
    if req.completed_at is not None:
        out["completedAt"] = req.completed_at
    out["files"] = files
    return out


def format_archiveinfo(
    items: list[tuple[str, Locality | None, str | None]],
) -> list[dict[str, Any]]:
    """The array ``POST /archiveinfo`` answers: ``locality`` when known, ``error`` when set."""
    out: list[dict[str, Any]] = []
    for path, locality, error in items:
        item: dict[str, Any] = {"path": path}
        if locality is not None:
            item["locality"] = locality.value
        if error:
            item["error"] = error
        out.append(item)
    return out


def discovery(sitename: str, uri: str, description: str) -> dict[str, Any]:
    """The ``/.well-known/wlcg-tape-rest-api`` document: one ``v1`` endpoint at ``uri``."""
    out: dict[str, Any] = {"sitename": sitename}
    if description:
        out["description"] = description
    # Clients append "/stage" etc.; gfal2 joins with exactly one "/", others may not.
    out["endpoints"] = [{"uri": uri.rstrip("/"), "version": API_VERSION, "metadata": {}}]
    return out


def user_status(locality: Locality | None) -> str:
    """The SRM-style ``user.status`` spelling gfal-xattr shows; UNAVAILABLE when unknown."""
    return "UNAVAILABLE" if locality is None else _USER_STATUS[locality]
