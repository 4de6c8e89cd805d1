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


def render(ctx: Context) -> str:
    tpc = ctx.tpc
    lines = [
        "# HELP se_tpc_transfers_total Third-party copies finished, by result.",
        "# TYPE se_tpc_transfers_total counter",
        _line("se_tpc_transfers_total", tpc.succeeded, {"result": "success"}),
        _line("se_tpc_transfers_total", tpc.failed, {"result": "failure"}),
        "# HELP se_tpc_active Third-party copies moving data now.",
        "# TYPE se_tpc_active gauge",
        _line("se_tpc_active", tpc.active),
        "# HELP se_tpc_admitted Third-party copies accepted and not finished (active + queued).",
        "# TYPE se_tpc_admitted gauge",
        _line("se_tpc_admitted", tpc.admitted),
    ]
    tags = ctx.scitags
    if tags is not None:
        sender = tags.sender
        labeller = tags.labeller
        lines += [
            "# HELP se_scitags_fireflies_total Firefly datagrams, by outcome.",
            "# TYPE se_scitags_fireflies_total counter",
            _line("se_scitags_fireflies_total", sender.sent, {"outcome": "sent"}),
            _line("se_scitags_fireflies_total", sender.dropped, {"outcome": "dropped"}),
            _line("se_scitags_fireflies_total", sender.skipped, {"outcome": "filtered"}),
            "# HELP se_scitags_flow_labels_total IPv6 connections opened, by labelling outcome.",
            "# TYPE se_scitags_flow_labels_total counter",
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
            "# HELP se_scitags_flowd_lines_total Lines for flowd's named pipe, by outcome.",
            "# TYPE se_scitags_flowd_lines_total counter",
            _line("se_scitags_flowd_lines_total", tags.flowd_lines, {"outcome": "written"}),
            _line("se_scitags_flowd_lines_total", tags.flowd_dropped, {"outcome": "dropped"}),
        ]
    tape = ctx.tape
    if tape is not None:
        lines += [
            "# HELP se_tape_requests_total Stage requests accepted by this worker.",
            "# TYPE se_tape_requests_total counter",
            _line("se_tape_requests_total", tape.requests_created),
            "# HELP se_tape_files_requested_total Files named by accepted stage requests.",
            "# TYPE se_tape_files_requested_total counter",
            _line("se_tape_files_requested_total", tape.files_requested),
            "# HELP se_tape_reads_refused_total GETs refused because the file is on tape only.",
            "# TYPE se_tape_reads_refused_total counter",
            _line("se_tape_reads_refused_total", tape.reads_refused),
        ]
        lib = tape.library
        if lib is not None:
            st = lib.stats()
            lines += [
                "# HELP se_tape_mounts_total Cartridge mounts, by cartridge.",
                "# TYPE se_tape_mounts_total counter",
                *(
                    _line("se_tape_mounts_total", n, {"cartridge": vid})
                    for vid, n in st.mounts.items()
                    if n
                ),
                "# HELP se_tape_recalled_files_total Files read back from tape, by outcome.",
                "# TYPE se_tape_recalled_files_total counter",
                _line("se_tape_recalled_files_total", st.files_recalled, {"outcome": "ok"}),
                _line("se_tape_recalled_files_total", st.files_failed, {"outcome": "failed"}),
                "# HELP se_tape_recalled_bytes_total Bytes read back from tape.",
                "# TYPE se_tape_recalled_bytes_total counter",
                _line("se_tape_recalled_bytes_total", st.bytes_recalled),
                "# HELP se_tape_archived_files_total Files written to tape.",
                "# TYPE se_tape_archived_files_total counter",
                _line("se_tape_archived_files_total", tape.files_archived),
                "# HELP se_tape_drive_failures_total Sessions aborted by a drive failure.",
                "# TYPE se_tape_drive_failures_total counter",
                _line("se_tape_drive_failures_total", st.drive_failures),
                "# HELP se_tape_queued_files Files waiting for a drive.",
                "# TYPE se_tape_queued_files gauge",
                _line("se_tape_queued_files", st.queued_files),
                "# HELP se_tape_drives_in_use Drives holding a cartridge.",
                "# TYPE se_tape_drives_in_use gauge",
                _line("se_tape_drives_in_use", len(st.in_drives)),
            ]
        if tape.buffer is not None:
            lines += [
                "# HELP se_tape_evicted_files_total Files evicted from the disk buffer.",
                "# TYPE se_tape_evicted_files_total counter",
                _line("se_tape_evicted_files_total", tape.buffer.evicted_files),
            ]
    return "\n".join(lines) + "\n"


def response(ctx: Context) -> web.Response:
    return web.Response(text=render(ctx), content_type="text/plain", charset="utf-8")
