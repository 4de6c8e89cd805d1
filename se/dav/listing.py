"""Collection listings for people (HTML) and scripts (JSON).  Pure.

Served on GET of a collection, chosen by the ``Accept`` header; WebDAV clients use
PROPFIND and never see this.  Checksums shown are the cached ones only: a listing never
triggers a checksum computation.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Sequence

from se.storage import checksums
from se.storage.paths import DavPath
from se.storage.types import DirEntry

__all__ = ["preferred_format", "render_html", "render_json"]


def preferred_format(accept: str) -> str:
    """ "json" when the client asks for JSON over HTML, else "html"."""
    best, best_q = "html", -1.0
    for member in accept.split(","):
        mtype, _, params = member.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            k, _, v = param.strip().partition("=")
            if k == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        kind = {"application/json": "json", "text/html": "html"}.get(mtype.strip().lower())
        if kind is not None and q > 0 and q > best_q:  # q=0: "not acceptable"
            best, best_q = kind, q
    return best


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)  # pragma: no cover


def _when(mtime: float) -> str:
    return dt.datetime.fromtimestamp(mtime, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _checksum(e: DirEntry) -> str:
    return ", ".join(checksums.format_digest(a, v) for a, v in sorted(e.checksums.items()))


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{padding:.2em 1em;text-align:left}td.n{text-align:right}"
    "tr:nth-child(even){background:#f4f4f4}code{font-size:.9em}"
)


def render_html(path: DavPath, entries: Sequence[DirEntry]) -> str:
    title = html.escape(str(path) if path.is_root else str(path) + "/")
    rows = []
    if not path.is_root:
        rows.append(
            f'<tr><td><a href="{html.escape(path.parent.url(True))}">../</a></td>'
            "<td></td><td></td><td></td></tr>"
        )
    for e in entries:
        name = html.escape(e.path.name + ("/" if e.stat.is_dir else ""))
        size = "" if e.stat.is_dir else _size(e.stat.size)
        rows.append(
            f'<tr><td><a href="{html.escape(e.path.url(e.stat.is_dir))}">{name}</a></td>'
            f'<td class="n">{size}</td><td>{_when(e.stat.mtime)}</td>'
            f"<td><code>{html.escape(_checksum(e))}</code></td></tr>"
        )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Index of {title}</title>"
        f"<style>{_STYLE}</style></head><body><h1>Index of {title}</h1><table>"
        "<tr><th>Name</th><th>Size</th><th>Modified</th><th>Checksum</th></tr>"
        + "".join(rows)
        + "</table></body></html>\n"
    )


def render_json(path: DavPath, entries: Sequence[DirEntry]) -> str:
    return (
        json.dumps(
            {
                "path": str(path),
                "entries": [
                    {
                        "name": e.path.name,
                        "type": "collection" if e.stat.is_dir else "file",
                        "size": e.stat.size,
                        "mtime": e.stat.mtime,
                        "checksums": {
                            a: checksums.format_digest_value(a, v)
                            for a, v in sorted(e.checksums.items())
                        },
                    }
                    for e in entries
                ],
            }
        )
        + "\n"
    )
