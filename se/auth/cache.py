"""Verified credentials, remembered: raw token (and the URL it was presented to, since the
audience check depends on it) -> grant, until the token expires or five minutes (or the
given time) pass.
Bounded (least recently used first out).  Pure."""

from __future__ import annotations

import collections
import time

from se.auth.policy import Grant

__all__ = ["CACHE_SECONDS", "GrantCache"]

CACHE_SECONDS = 300.0


class GrantCache:
    def __init__(self, max_entries: int, seconds: float = CACHE_SECONDS) -> None:
        self._max = max_entries
        self._seconds = seconds
        self._data: collections.OrderedDict[tuple[str, str], tuple[Grant, float]] = (
            collections.OrderedDict()
        )

    def get(self, token: str, where: str, now: float | None = None) -> Grant | None:
        key = (token, where)
        hit = self._data.get(key)
        if hit is None:
            return None
        grant, until = hit
        if (time.time() if now is None else now) >= until:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return grant

    def put(self, token: str, where: str, grant: Grant, now: float | None = None) -> None:
        if self._max <= 0:
            return
        now = time.time() if now is None else now
        until = now + self._seconds
        if grant.expires:
            until = min(until, grant.expires)
        self._data[(token, where)] = (grant, until)
        self._data.move_to_end((token, where))
        while len(self._data) > self._max:
            self._data.popitem(last=False)
