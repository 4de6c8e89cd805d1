"""What happened, for tests to ask instead of grepping logs: requests, third-party copies,
tape request changes and fault firings, as JSON events.

Each worker process appends one JSON line per event to its own file under
``<state dir>/events/`` (one ``write`` on an ``O_APPEND`` descriptor: visible to readers at
once, never interleaved with another process's lines); a file past ``max_bytes`` is
renamed ``<name>.1`` (the older generation is dropped).  :func:`read_events` merges every
worker's files, oldest first.  An event's ``id`` sorts by time (``<ns>-<pid>-<seq>``, fixed
width), so ``since=<id>`` pages through them.  Files from earlier runs are removed at start.
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

__all__ = ["KINDS", "EventLog", "read_events", "reset_events"]

KINDS = ("request", "tpc", "tape", "fault")
_SECRET_HEADERS = re.compile(r".*(authorization|cookie|token|secret|password|x-auth).*", re.I)


def redact_headers(items: Collection[tuple[str, str]]) -> dict[str, str]:
    """Header names to values, credentials replaced by ``<redacted>``."""
    out: dict[str, str] = {}
    for name, value in items:
        out[name] = "<redacted>" if _SECRET_HEADERS.fullmatch(name) else value[:500]
    return out


def reset_events(directory: Path) -> None:
    """Remove the event files of earlier runs (at server start, before the workers)."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if entry.name.endswith((".jsonl", ".jsonl.1")):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


class EventLog:
    """One per worker process: appends its events to its own file."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._fd: int | None = None
        self._pid = 0
        self._size = 0
        self._seq = itertools.count()
        self._lock = threading.Lock()  # events may come from executor threads

    def _path(self) -> Path:
        return self.directory / f"{os.getpid()}.jsonl"

    def _open(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self.directory.mkdir(parents=True, exist_ok=True)
            self._pid = os.getpid()
            self._fd = os.open(self._path(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def record(self, kind: str, **fields: Any) -> None:
        """Append one event (never raises: an event that cannot be written is dropped)."""
        now = time.time_ns()
        with self._lock:
            try:
                fd = self._open()
                event = {
                    **fields,
                    "id": f"{now:019d}-{os.getpid():07d}-{next(self._seq):08d}",
                    "time": now / 1e9,
                    "worker": os.getpid(),
                    "kind": kind,
                }
                line = (json.dumps(event, default=str, separators=(",", ":")) + "\n").encode()
                if self._size + len(line) > self.max_bytes:
                    os.close(fd)
                    self._fd = None
                    path = self._path()
                    os.replace(path, path.with_name(path.name + ".1"))
                    fd = self._open()
                os.write(fd, line)
                self._size += len(line)
            except OSError:
                pass

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _lines(directory: Path) -> Iterator[bytes]:
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if not entry.name.endswith((".jsonl", ".jsonl.1")):
                continue
            with contextlib.suppress(FileNotFoundError), open(entry.path, "rb") as f:
                yield from f


def read_events(
    directory: Path,
    since: str = "",
    kinds: Collection[str] = (),
    path: str = "",
    limit: int = 1000,
) -> tuple[list[dict[str, Any]], str]:
    """Events after ``since`` (an event id), of ``kinds`` (all when empty), whose ``path``
    (or one of ``paths``, or ``local``) matches the glob ``path``; oldest first, at most
    ``limit``.  Returns them and the cursor to pass next time."""
    found: list[dict[str, Any]] = []
    for raw in _lines(directory):
        if not raw.endswith(b"\n"):
            continue  # being written
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(event, dict) or str(event.get("id", "")) <= since:
            continue
        if kinds and event.get("kind") not in kinds:
            continue
        if path and not _path_matches(event, path):
            continue
        found.append(event)
    found.sort(key=lambda e: str(e["id"]))
    found = found[:limit]
    return found, (str(found[-1]["id"]) if found else since)


def _path_matches(event: dict[str, Any], pattern: str) -> bool:
    names = [event.get("path"), event.get("local"), *(event.get("paths") or ())]
    return any(isinstance(n, str) and fnmatch.fnmatchcase(n, pattern) for n in names)
