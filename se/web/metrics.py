"""``GET /.well-known/se/metrics``: the server's metrics in the Prometheus text format.

One scrape shows the whole server: the families of :mod:`se.metrics` summed over all worker
processes (prometheus-client's multiprocess mode), then what the context's metric sources
read at scrape time from state that all workers already share (fault firings, share usage),
shown once, not once per worker.  Nothing is formatted until a scrape.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from aiohttp import web
from prometheus_client import Metric, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from se import metrics
from se.config import ShareConfig
from se.faults import FaultState
from se.space.accounting import Usage
from se.web.context import Context, MetricSource

__all__ = ["METRICS_PATH", "FaultMetrics", "ShareMetrics", "response"]

METRICS_PATH = "/.well-known/se/metrics"


class FaultMetrics:
    """Fault firings by rule, from se.faults' own count (one for all workers)."""

    def __init__(self, faults: FaultState) -> None:
        self.faults = faults

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "se_fault_hits", "Fault rule firings (all workers), by rule.", labels=("rule",)
        )
        for rule in self.faults.listing():
            family.add_metric((str(rule["id"]),), float(rule["hits"]))
        return (family,)


class ShareMetrics:
    """Used bytes, files and the limit of every share, from the accounting (shared by all
    workers), as read for this scrape."""

    def __init__(self, shares: Iterable[ShareConfig], usage: dict[str, Usage]) -> None:
        self.shares = tuple(shares)
        self.usage = usage

    def collect(self) -> Iterable[Metric]:
        used = GaugeMetricFamily(
            "se_share_used_bytes", "Bytes stored in each share.", labels=("share",)
        )
        files = GaugeMetricFamily(
            "se_share_files", "Files stored in each share.", labels=("share",)
        )
        limit = GaugeMetricFamily(
            "se_share_limit_bytes", "The size limit of each share (0: none).", labels=("share",)
        )
        for share in self.shares:
            usage = self.usage.get(share.name)
            if usage is not None:
                used.add_metric((share.name,), float(usage.bytes))
                files.add_metric((share.name,), float(usage.files))
            limit.add_metric((share.name,), float(share.size))
        return (used, files, limit)


class _Page:
    """The collector of one scrape: the summed families, then the state all workers share."""

    def __init__(self, sources: Iterable[MetricSource]) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        yield from metrics.collect()
        for source in self.sources:
            yield from source.collect()


async def response(ctx: Context) -> web.Response:
    """The page (the share accounting is read off the event loop)."""
    sources: list[MetricSource] = list(ctx.metric_sources)
    if ctx.faults is not None:
        sources.append(FaultMetrics(ctx.faults))
    space = ctx.space
    if space is not None:
        sources.append(ShareMetrics(space.shares, await space.all_usage_async()))
    body = generate_latest(_Page(sources))
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})
