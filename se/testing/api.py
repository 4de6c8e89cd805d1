"""Clients of ``se``'s fault-injection and events APIs (stdlib HTTP only).

- :class:`FaultsClient`: ``/.well-known/se/faults`` — :meth:`~FaultsClient.add` a rule
  (keyword arguments are the rule's JSON fields: ``method``, ``path``, ``status``,
  ``delay``, ``reset_after``, ...), :meth:`~FaultsClient.list`,
  :meth:`~FaultsClient.remove`, :meth:`~FaultsClient.clear`, and
  :meth:`~FaultsClient.injected` (a rule for the duration of a ``with`` block).
- :class:`EventsClient`: ``/.well-known/se/events`` — :meth:`~EventsClient.get` (every
  page from a cursor, oldest first), :meth:`~EventsClient.cursor` (a mark to read from
  later) and :meth:`~EventsClient.wait_for` (bounded polling for an event a predicate
  accepts).

Both APIs answer only a caller allowed ``modify`` on ``/`` (or a configured admin): a
client takes a bearer token, or a callable returning a fresh one per request.  A refusal
or error is an :class:`SEAPIError` carrying the status and the server's one-line reason.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["EVENTS_PATH", "FAULTS_PATH", "EventsClient", "FaultsClient", "SEAPIError"]

FAULTS_PATH = "/.well-known/se/faults"
EVENTS_PATH = "/.well-known/se/events"
PAGE = 1000  # events asked for per request
MAX_PAGES = 1000  # pages one get() follows

Token = str | Callable[[], str | None] | None


class SEAPIError(Exception):
    """An API request answered with an unexpected status."""

    def __init__(self, method: str, url: str, status: int, reason: str) -> None:
        super().__init__(f"{method} {url}: {status} {reason}")
        self.status = status
        self.reason = reason


class _Client:
    def __init__(
        self, url: str, token: Token = None, ca_file: Path | None = None, timeout: float = 10.0
    ) -> None:
        self.base = url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self._ssl = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None

    def _request(
        self, method: str, path: str, body: Any = None, expect: Iterable[int] = (200,)
    ) -> Any:
        """One request; the decoded JSON answer (None when empty)."""
        url = self.base + path
        headers = {"Accept": "application/json"}
        token = self._token() if callable(self._token) else self._token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
            exc.close()
        if status not in tuple(expect):
            reason = raw.decode(errors="replace").strip().splitlines()
            raise SEAPIError(method, url, status, reason[0][:500] if reason else "")
        return json.loads(raw) if raw.strip() else None


class FaultsClient(_Client):
    """The fault-injection API of one server (all its workers share the rules)."""

    def add(self, **rule: Any) -> str:
        """Add a rule (``method="PUT", path="/data/*", status=507``); its id."""
        answer = self._request("POST", FAULTS_PATH, rule, expect=(201,))
        return str(answer["id"])

    def list(self) -> list[dict[str, Any]]:
        """Every rule (from the config and the API) with its ``hits``."""
        rules: list[dict[str, Any]] = self._request("GET", FAULTS_PATH)["rules"]
        return rules

    def get(self, rule_id: str) -> dict[str, Any]:
        """One rule by id (KeyError if there is none)."""
        for rule in self.list():
            if rule.get("id") == rule_id:
                return rule
        raise KeyError(rule_id)

    def remove(self, rule_id: str) -> None:
        """Remove one rule (SEAPIError 404 for an unknown id)."""
        quoted = urllib.parse.quote(rule_id, safe="")
        self._request("DELETE", f"{FAULTS_PATH}/{quoted}", expect=(204,))

    def clear(self) -> None:
        """Remove every rule added through the API (rules from the config stay)."""
        self._request("DELETE", FAULTS_PATH, expect=(204,))

    @contextlib.contextmanager
    def injected(self, **rule: Any) -> Iterator[str]:
        """``with faults.injected(method="PUT", status=507) as rule_id:`` — removed after."""
        rule_id = self.add(**rule)
        try:
            yield rule_id
        finally:
            with contextlib.suppress(SEAPIError):
                self.remove(rule_id)


class EventsClient(_Client):
    """The events API of one server (events of every worker, oldest first)."""

    def page(
        self,
        since: str | None = None,
        kind: str | Iterable[str] | None = None,
        path: str | None = None,
        limit: int | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One answer of the API: its events and its cursor."""
        query: dict[str, str] = {}
        if since is not None:
            query["since"] = since
        if kind is not None:
            query["kind"] = kind if isinstance(kind, str) else ",".join(kind)
        if path is not None:
            query["path"] = path
        if limit is not None:
            query["limit"] = str(limit)
        suffix = "?" + urllib.parse.urlencode(query) if query else ""
        answer = self._request("GET", EVENTS_PATH + suffix)
        cursor = answer.get("cursor")
        return list(answer["events"]), (str(cursor) if cursor is not None else since)

    def get(
        self,
        since: str | None = None,
        kind: str | Iterable[str] | None = None,
        path: str | None = None,
    ) -> list[dict[str, Any]]:
        """Every event after ``since`` (a cursor or event id; None: from the first), of
        the given kinds (``"request"``, ``["tpc", "fault"]``) and path glob."""
        events, _ = self._follow(since, kind, path)
        return events

    def cursor(self) -> str | None:
        """A mark: :meth:`get` ``(since=mark)`` later returns only newer events."""
        _, cursor = self._follow(None, None, None)
        return cursor

    def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 10.0,
        *,
        since: str | None = None,
        kind: str | Iterable[str] | None = None,
        path: str | None = None,
        interval: float = 0.05,
    ) -> dict[str, Any]:
        """The first event (after ``since``) ``predicate`` accepts, polling every
        ``interval`` s; TimeoutError (naming the events seen) after ``timeout`` s."""
        if isinstance(kind, Iterable) and not isinstance(kind, str):
            kind = list(kind)
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        cursor = since
        for _ in range(int(timeout / interval) + 2):
            events, cursor = self._follow(cursor, kind, path)
            for event in events:
                if predicate(event):
                    return event
            seen.extend(events)
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
        summary = ", ".join(
            f"{e.get('kind')} {e.get('method', '')} {e.get('path', '')} {e.get('status', '')}"
            for e in seen[-20:]
        )
        raise TimeoutError(
            f"no matching event within {timeout} s; {len(seen)} seen (last 20: {summary})"
        )

    def _follow(
        self, since: str | None, kind: str | Iterable[str] | None, path: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        out: list[dict[str, Any]] = []
        cursor = since
        for _ in range(MAX_PAGES):
            events, cursor_next = self.page(cursor, kind, path, PAGE)
            out.extend(events)
            if len(events) < PAGE or cursor_next == cursor:
                return out, cursor_next
            cursor = cursor_next
        return out, cursor
