"""``se tape status | ls | set``: the tape tier for a site admin, as tables.

* ``status`` asks the running server (``GET /.well-known/se/tape``): drives, mounts, queues,
  the disk buffer and the run-time switches live in the process that runs the library.
* ``ls`` reads the database: the newest stage requests and their progress.
* ``set`` writes run-time switches into the database; the library applies them within
  ``tape.sync_interval``: ``unreachable=true``, ``bad_file_probability=0.3``,
  ``drive_failure_probability=0``, ``cartridge.V00001=DISABLED`` (``key=`` resets a switch).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

from se.config import Config
from se.tape.model import PROBABILITY_SWITCHES, UNREACHABLE, CartridgeState, FileState
from se.tape.service import database_path
from se.tape.sql import RequestSummary
from se.tape.stores import open_store

__all__ = ["format_requests", "format_status", "ls", "parse_switch", "set_switches", "status"]


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(map(str, header)), *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def format_requests(rows: Sequence[RequestSummary], now: float) -> str:
    """One line per request: id, owner, age, files per state, done or not."""
    states = list(FileState)
    body: list[list[object]] = []
    for rid, owner, created, completed, counts in rows:
        total = sum(counts.values())
        body.append(
            [
                rid,
                owner,
                f"{int(now - created)}s",
                total,
                *(counts.get(state, 0) for state in states),
                "done" if completed is not None else "active",
            ]
        )
    return _table(
        ["REQUEST", "OWNER", "AGE", "FILES", *(state.value for state in states), ""], body
    )


def format_status(data: dict[str, Any]) -> str:
    """The status document of ``/.well-known/se/tape`` as a few small tables."""
    out: list[str] = []
    if data.get("library"):
        drives = data.get("drives", {})
        mounted = drives.get("mounted", [])
        out.append(
            f"drives: {drives.get('total', 0)} ({len(mounted)} in use: "
            f"{', '.join(mounted) or '-'}); utilisation {data.get('utilisation', 0):.1%}"
        )
        out.append(
            f"recalled: {data.get('files_recalled', 0)} files, {data.get('bytes_recalled', 0)}"
            f" bytes; failed {data.get('files_failed', 0)};"
            f" drive failures {data.get('drive_failures', 0)}"
        )
        queues = data.get("queues", {})
        mounts = data.get("mounts", {})
        vids = sorted(set(queues) | set(mounts) | set(mounted))
        if vids:
            rows = [
                [vid, queues.get(vid, 0), mounts.get(vid, 0), "yes" if vid in mounted else ""]
                for vid in vids
            ]
            out.append(_table(["CARTRIDGE", "QUEUED", "MOUNTS", "MOUNTED"], rows))
        buf = data.get("buffer")
        if buf:
            cap = buf.get("capacity", 0)
            used = buf.get("used", 0)
            share = f" ({used / cap:.1%})" if cap else ""
            out.append(
                f"disk buffer: {used} of {cap or 'unlimited'} bytes{share};"
                f" evicted {buf.get('evicted_files', 0)} files"
            )
    else:
        out.append("library: runs in another se (this one only records requests)")
    localities = data.get("localities", {})
    if localities:
        rows = [
            [name, count.get("files", 0), count.get("bytes", 0)]
            for name, count in sorted(localities.items())
        ]
        out.append(_table(["LOCALITY", "FILES", "BYTES"], rows))
    odd = {vid: state for vid, state in data.get("cartridges", {}).items() if state != "ACTIVE"}
    if odd:
        out.append(
            "cartridges not ACTIVE: "
            + ", ".join(f"{vid}={state}" for vid, state in sorted(odd.items()))
        )
    settings = data.get("settings", {})
    if settings:
        out.append(
            "switches: "
            + ", ".join(f"{key}={json.dumps(value)}" for key, value in settings.items())
        )
    return "\n".join(out)


def parse_switch(text: str) -> tuple[str, Any]:
    """``key=value`` as (key, value); ValueError with a one-line reason."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    raw = raw.strip()
    if not sep:
        raise ValueError(f"{text!r}: expected key=value")
    if key.startswith("cartridge."):
        if not raw:
            return key, CartridgeState.ACTIVE
        try:
            return key, CartridgeState(raw.upper())
        except ValueError:
            names = ", ".join(state.value for state in CartridgeState)
            raise ValueError(f"{key}: one of {names}") from None
    if not raw:
        return key, None
    if key == UNREACHABLE:
        if raw.lower() not in ("true", "false"):
            raise ValueError(f"{UNREACHABLE}: true or false")
        return key, True if raw.lower() == "true" else None
    if key in PROBABILITY_SWITCHES:
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{key}: a number between 0 and 1")
        return key, value
    raise ValueError(
        f"unknown switch {key!r} ({UNREACHABLE}, {', '.join(PROBABILITY_SWITCHES)},"
        " cartridge.<vid>)"
    )


async def _ls(cfg: Config, limit: int) -> list[RequestSummary]:
    store = await open_store(database_path(cfg))
    try:
        return await store.request_summaries(limit)
    finally:
        await store.close()


def ls(cfg: Config, limit: int) -> str:
    return format_requests(asyncio.run(_ls(cfg, limit)), time.time())


async def _set(cfg: Config, switches: Sequence[tuple[str, Any]]) -> None:
    store = await open_store(database_path(cfg))
    try:
        for key, value in switches:
            if key.startswith("cartridge."):
                await store.set_cartridge_state(key.removeprefix("cartridge."), value)
            else:
                await store.set_setting(key, value)
    finally:
        await store.close()


def set_switches(cfg: Config, texts: Sequence[str]) -> None:
    """Parse every ``key=value`` first (nothing is written if one is wrong), then write."""
    switches = [parse_switch(text) for text in texts]
    asyncio.run(_set(cfg, switches))


def status(url: str, token: str | None, timeout: float = 10.0) -> str:
    req = urllib.request.Request(url.rstrip("/") + "/.well-known/se/tape")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return format_status(json.loads(resp.read()))
