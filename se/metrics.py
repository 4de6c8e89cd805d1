"""``GET /.well-known/se/metrics``: this worker's counters in the Prometheus text format.

Each worker answers for itself (the ``worker`` label is its pid); a scraper sees whichever
worker took the connection, as with any SO_REUSEPORT service.  Counters only grow.
"""

from __future__ import annotations

import os

from aiohttp import web

from se.dav.context import Context

__all__ = ["METRICS_PATH", "render"]

METRICS_PATH = "/.well-known/se/metrics"


def _line(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    all_labels = {"worker": str(os.getpid()), **(labels or {})}
    text = ",".join(f'{k}="{v}"' for k, v in all_labels.items())
    return f"{name}{{{text}}} {value:g}"


def _head(name: str, kind: str, text: str) -> tuple[str, str]:
    """The HELP and TYPE lines of a metric family."""
    return (f"# HELP {name} {text}", f"# TYPE {name} {kind}")


def render(ctx: Context) -> str:
    tpc = ctx.tpc
    lines = [
        *_head("se_tpc_transfers_total", "counter", "Third-party copies finished, by result."),
        _line("se_tpc_transfers_total", tpc.succeeded, {"result": "success"}),
        _line("se_tpc_transfers_total", tpc.failed, {"result": "failure"}),
        *_head("se_tpc_active", "gauge", "Third-party copies moving data now."),
        _line("se_tpc_active", tpc.active),
        *_head(
            "se_tpc_admitted",
            "gauge",
            "Third-party copies accepted and not finished (active + queued).",
        ),
        _line("se_tpc_admitted", tpc.admitted),
    ]
    tags = ctx.scitags
    if tags is not None:
        sender = tags.sender
        labeller = tags.labeller
        lines += [
            *_head("se_scitags_fireflies_total", "counter", "Firefly datagrams, by outcome."),
            _line("se_scitags_fireflies_total", sender.sent, {"outcome": "sent"}),
            _line("se_scitags_fireflies_total", sender.dropped, {"outcome": "dropped"}),
            _line("se_scitags_fireflies_total", sender.skipped, {"outcome": "filtered"}),
            *_head(
                "se_scitags_flow_labels_total",
                "counter",
                "IPv6 connections opened, by labelling outcome.",
            ),
            _line(
                "se_scitags_flow_labels_total",
                labeller.labelled if labeller else 0,
                {"outcome": "labelled"},
            ),
            _line(
                "se_scitags_flow_labels_total",
                labeller.refused if labeller else 0,
                {"outcome": "refused"},
            ),
            *_head(
                "se_scitags_flowd_lines_total",
                "counter",
                "Lines for flowd's named pipe, by outcome.",
            ),
            _line("se_scitags_flowd_lines_total", tags.flowd_lines, {"outcome": "written"}),
            _line("se_scitags_flowd_lines_total", tags.flowd_dropped, {"outcome": "dropped"}),
        ]
    tape = ctx.tape
    if tape is not None:
        lines += [
            *_head("se_tape_requests_total", "counter", "Stage requests accepted by this worker."),
            _line("se_tape_requests_total", tape.requests_created),
            *_head(
                "se_tape_files_requested_total",
                "counter",
                "Files named by accepted stage requests.",
            ),
            _line("se_tape_files_requested_total", tape.files_requested),
            *_head(
                "se_tape_reads_refused_total",
                "counter",
                "GETs refused because the file is on tape only.",
            ),
            _line("se_tape_reads_refused_total", tape.reads_refused),
        ]
        lib = tape.library
        if lib is not None:
            st = lib.stats()
            lines += [
                *_head("se_tape_mounts_total", "counter", "Cartridge mounts, by cartridge."),
                *(
                    _line("se_tape_mounts_total", n, {"cartridge": vid})
                    for vid, n in st.mounts.items()
                    if n
                ),
                *_head(
                    "se_tape_recalled_files_total",
                    "counter",
                    "Files read back from tape, by outcome.",
                ),
                _line("se_tape_recalled_files_total", st.files_recalled, {"outcome": "ok"}),
                _line("se_tape_recalled_files_total", st.files_failed, {"outcome": "failed"}),
                *_head("se_tape_recalled_bytes_total", "counter", "Bytes read back from tape."),
                _line("se_tape_recalled_bytes_total", st.bytes_recalled),
                *_head("se_tape_archived_files_total", "counter", "Files written to tape."),
                _line("se_tape_archived_files_total", tape.files_archived),
                *_head(
                    "se_tape_drive_failures_total",
                    "counter",
                    "Sessions aborted by a drive failure.",
                ),
                _line("se_tape_drive_failures_total", st.drive_failures),
                *_head("se_tape_queued_files", "gauge", "Files waiting for a drive."),
                _line("se_tape_queued_files", st.queued_files),
                *_head("se_tape_drives_in_use", "gauge", "Drives holding a cartridge."),
                _line("se_tape_drives_in_use", len(st.in_drives)),
            ]
        if tape.buffer is not None:
            lines += [
                *_head(
                    "se_tape_evicted_files_total", "counter", "Files evicted from the disk buffer."
                ),
                _line("se_tape_evicted_files_total", tape.buffer.evicted_files),
            ]
    return "\n".join(lines) + "\n"


def response(ctx: Context) -> web.Response:
    return web.Response(text=render(ctx), content_type="text/plain", charset="utf-8")
