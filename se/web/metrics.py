"""``GET /.well-known/se/metrics``: this worker's counters in the Prometheus text format.

Each worker answers for itself (the ``worker`` label is its pid); a scraper sees whichever
worker took the connection, as with any SO_REUSEPORT service.  Counters only grow.

The page is the concatenation of the context's metric sources (TPC, SciTags, tape), each of
which renders its own families with :func:`head` and :func:`line`.
"""

from __future__ import annotations

import os

from aiohttp import web

from se.faults import FaultState
from se.scitags.service import SciTagService
from se.web.context import Context

__all__ = ["METRICS_PATH", "SciTagMetrics", "head", "line", "render", "response"]

METRICS_PATH = "/.well-known/se/metrics"


def line(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    """One sample, labelled with this worker's pid first."""
    all_labels = {"worker": str(os.getpid()), **(labels or {})}
    text = ",".join(f'{k}="{v}"' for k, v in all_labels.items())
    return f"{name}{{{text}}} {value:g}"


def head(name: str, kind: str, text: str) -> tuple[str, str]:
    """The HELP and TYPE lines of a metric family."""
    return (f"# HELP {name} {text}", f"# TYPE {name} {kind}")


class FaultMetrics:
    """Fault firings by rule (se.faults keeps one count for all workers; every worker shows
    it whole, labelled with the rule)."""

    def __init__(self, faults: FaultState) -> None:
        self.faults = faults

    def metric_lines(self) -> list[str]:
        out = list(
            head("se_fault_hits_total", "counter", "Fault rule firings (all workers), by rule.")
        )
        for rule in self.faults.listing():
            out.append(line("se_fault_hits_total", rule["hits"], {"rule": str(rule["id"])}))
        return out


class SciTagMetrics:
    """The SciTags counters (the SciTags service sits below this layer and renders nothing)."""

    def __init__(self, tags: SciTagService) -> None:
        self.tags = tags

    def metric_lines(self) -> list[str]:
        tags = self.tags
        sender = tags.sender
        labeller = tags.labeller
        return [
            *head("se_scitags_fireflies_total", "counter", "Firefly datagrams, by outcome."),
            line("se_scitags_fireflies_total", sender.sent, {"outcome": "sent"}),
            line("se_scitags_fireflies_total", sender.dropped, {"outcome": "dropped"}),
            line("se_scitags_fireflies_total", sender.skipped, {"outcome": "filtered"}),
            *head(
                "se_scitags_flow_labels_total",
                "counter",
                "IPv6 connections opened, by labelling outcome.",
            ),
            line(
                "se_scitags_flow_labels_total",
                labeller.labelled if labeller else 0,
                {"outcome": "labelled"},
            ),
            line(
                "se_scitags_flow_labels_total",
                labeller.refused if labeller else 0,
                {"outcome": "refused"},
            ),
            *head(
                "se_scitags_flowd_lines_total",
                "counter",
                "Lines for flowd's named pipe, by outcome.",
            ),
            line("se_scitags_flowd_lines_total", tags.flowd_lines, {"outcome": "written"}),
            line("se_scitags_flowd_lines_total", tags.flowd_dropped, {"outcome": "dropped"}),
        ]


def render(ctx: Context) -> str:
    lines: list[str] = []
    for source in ctx.metric_sources:
        lines += source.metric_lines()
    return "\n".join(lines) + "\n"


def response(ctx: Context) -> web.Response:
    return web.Response(text=render(ctx), content_type="text/plain", charset="utf-8")
