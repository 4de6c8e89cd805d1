"""WLCG JWT scopes and groups.  Pure.

``scope`` is a space-separated list; storage capabilities are ``storage.<authz>:<path>``
with authz one of read, create, modify, stage, poll (profile 1.3).  Scope paths are
relative to the issuer's base path; they are normalised strictly (percent-decoded up to four
times; ``..``, a leftover ``%``, ``\\`` or NUL anywhere rejects the whole token) and a raw
trailing ``/`` marks a directory-only scope.  Matching is by whole path segments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = [
    "AUTHZ",
    "Capability",
    "InvalidScope",
    "covers",
    "normalise_scope_path",
    "parse_groups",
    "parse_scope",
]

AUTHZ = ("read", "create", "modify", "stage", "poll")
_GROUP = re.compile(r"(?:/[a-zA-Z0-9][a-zA-Z0-9_.\-]*)+")
MAX_DECODE_ROUNDS = 4


class InvalidScope(ValueError):
    """A scope the profile says must make the whole token invalid."""


@dataclass(frozen=True, slots=True)
class Capability:
    authz: str  # one of AUTHZ
    path: tuple[str, ...]  # normalised segments, relative to the issuer's base path
    dir_only: bool = False  # the raw scope path ended in "/"


def normalise_scope_path(raw: str) -> tuple[tuple[str, ...], bool]:
    """``/a/%2e%2e/b`` -> InvalidScope; ``/a//b/./`` -> (("a", "b"), True)."""
    if not raw.startswith("/"):
        raise InvalidScope(f"scope path {raw[:60]!r} is not absolute")
    dir_only = raw.endswith("/") and raw != "/"
    segments: list[str] = []
    for part in raw.split("/"):
        seg = part
        for _ in range(MAX_DECODE_ROUNDS):
            if "%" not in seg:
                break
            try:
                seg = unquote(seg, errors="strict")
            except UnicodeDecodeError:
                raise InvalidScope(f"scope path {raw[:60]!r} is not UTF-8") from None
        if "%" in seg or "/" in seg or "\\" in seg or "\x00" in seg or seg == "..":
            raise InvalidScope(f"scope path {raw[:60]!r} is not a normalised path")
        if seg in ("", "."):
            continue
        segments.append(seg)
    return tuple(segments), dir_only


def parse_scope(scope: str) -> tuple[list[Capability], bool]:
    """Storage capabilities in a ``scope`` claim, and whether it holds any capability at all
    (``storage.*`` or ``compute.*``, even unknown ones: then groups are not used).

    A storage item without a path is ignored (never widened to ``/``); an item with a path
    that is not normalised raises InvalidScope.
    """
    caps: list[Capability] = []
    any_capability = False
    for item in scope.split():
        if item.startswith(("storage.", "compute.")):
            any_capability = True
        if not item.startswith("storage."):
            continue
        name, sep, path = item[len("storage.") :].partition(":")
        if name not in AUTHZ or not sep or not path:
            continue
        segments, dir_only = normalise_scope_path(path)
        caps.append(Capability(name, segments, dir_only))
    return caps, any_capability


def parse_groups(value: object) -> tuple[str, ...]:
    """The ``wlcg.groups`` claim: a list of ``/vo[/sub...]`` strings; anything else is none."""
    if not isinstance(value, list):
        return ()
    return tuple(g for g in value if isinstance(g, str) and _GROUP.fullmatch(g))


def covers(scope: tuple[str, ...], path: tuple[str, ...]) -> bool:
    """Scope path covers request path: equal, or path lies below it (whole segments)."""
    return path[: len(scope)] == scope
