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

from se.config import Config, state_dir
from se.tape.model import CartridgeState, FileState
from se.tape.sql import RequestSummary
from se.tape.stores import open_store

__all__ = ["format_requests", "format_status", "ls", "parse_switch", "set_switches", "status"]

_PROBABILITIES = ("bad_file_probability", "drive_failure_probability")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(map(str, header)), *([str(c) for c in row] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def format_requests(rows: Sequence[RequestSummary], now: float) -> str:
    """One line per request: id, owner, age, files per state, done or not."""
    states = list(FileState)
    body = []
    for rid, owner, created, completed, counts in rows:
        total = sum(counts.values())
        body.append(
            [
                rid,
                owner,
                f"{int(now - created)}s",
                total,
                *(counts.get(s, 0) for s in states),
                "done" if completed is not None else "active",
            ]
        )
    return _table(["REQUEST", "OWNER", "AGE", "FILES", *(s.value for s in states), ""], body)


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
                [v, queues.get(v, 0), mounts.get(v, 0), "yes" if v in mounted else ""] for v in vids
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
        rows = [[k, v.get("files", 0), v.get("bytes", 0)] for k, v in sorted(localities.items())]
        out.append(_table(["LOCALITY", "FILES", "BYTES"], rows))
    odd = {v: s for v, s in data.get("cartridges", {}).items() if s != "ACTIVE"}
    if odd:
        out.append(
            "cartridges not ACTIVE: " + ", ".join(f"{v}={s}" for v, s in sorted(odd.items()))
        )
    settings = data.get("settings", {})
    if settings:
        out.append("switches: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in settings.items()))
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
            names = ", ".join(s.value for s in CartridgeState)
            raise ValueError(f"{key}: one of {names}") from None
    if not raw:
        return key, None
    if key == "unreachable":
        if raw.lower() not in ("true", "false"):
            raise ValueError("unreachable: true or false")
        return key, True if raw.lower() == "true" else None
    if key in _PROBABILITIES:
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{key}: a number between 0 and 1")
        return key, value
    raise ValueError(
        f"unknown switch {key!r} (unreachable, {', '.join(_PROBABILITIES)}, cartridge.<vid>)"
    )


def _database(cfg: Config) -> str:
    return cfg.tape.database or str(state_dir(cfg) / "tape.sqlite")


async def _ls(cfg: Config, limit: int) -> list[RequestSummary]:
    store = await open_store(_database(cfg))
    try:
        return await store.request_summaries(limit)
    finally:
        await store.close()


def ls(cfg: Config, limit: int) -> str:
    return format_requests(asyncio.run(_ls(cfg, limit)), time.time())


async def _set(cfg: Config, switches: Sequence[tuple[str, Any]]) -> None:
    store = await open_store(_database(cfg))
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
    switches = [parse_switch(t) for t in texts]
    asyncio.run(_set(cfg, switches))


def status(url: str, token: str | None, timeout: float = 10.0) -> str:
    req = urllib.request.Request(url.rstrip("/") + "/.well-known/se/tape")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return format_status(json.loads(resp.read()))
