"""The Prometheus metric families of ``se``, summed over all worker processes.

Every layer counts in the families defined here (``TPC_FAILURES.labels(reason=...).inc()``);
``/.well-known/se/metrics`` (``se.web.metrics``) shows them once for the whole server.

Multiprocess mode.  ``prometheus_client`` keeps each process's values in small mmap'ed files
of a directory (``PROMETHEUS_MULTIPROC_DIR``) and a scrape adds the files of every process up.
``se.server`` gives each server run a fresh directory of its own (:func:`use_directory`,
before the workers are forked) and tells it when a worker died (:func:`worker_died`: the
``live*`` gauges of that worker go, its counters stay in the sums).  A process that never
called :func:`use_directory` (an application built inside a test process) counts in memory,
for itself alone.

The families are created at import, before anyone can call :func:`use_directory`; so that
function switches prometheus_client's value class and gives every family fresh values (no
process has counted anything by then).

Cost per request: the request path goes through :func:`request_done` only, which looks its
values up in plain dicts (resolved once per method and status) and adds to plain numbers,
written into the shared values a few times a second (see FLUSH_PERIOD).  Nothing is
formatted until a scrape.

:func:`value` is what the dashboard samples: the sum over all workers of one sample name.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

__all__ = [
    "AUTH",
    "CONTENT_TYPE",
    "ENV",
    "FAMILIES",
    "HTTP_CONNECTIONS",
    "HTTP_CONNECTIONS_OPEN",
    "HTTP_DURATION",
    "HTTP_LEAN",
    "HTTP_RECEIVED",
    "HTTP_REQUESTS",
    "HTTP_SENT",
    "SCITAGS_FIREFLIES",
    "SCITAGS_FLOWD_LINES",
    "SCITAGS_FLOW_LABELS",
    "TAPE_ARCHIVED_FILES",
    "TAPE_DRIVES_IN_USE",
    "TAPE_DRIVE_FAILURES",
    "TAPE_EVICTED_FILES",
    "TAPE_FILES_REQUESTED",
    "TAPE_MOUNTS",
    "TAPE_QUEUED_FILES",
    "TAPE_READS_REFUSED",
    "TAPE_RECALLED_BYTES",
    "TAPE_RECALLED_FILES",
    "TAPE_REQUESTS",
    "TPC_ACTIVE",
    "TPC_ADMITTED",
    "TPC_BYTES",
    "TPC_FAILURES",
    "TPC_QUEUED",
    "TPC_TRANSFERS",
    "collect",
    "connection_closed",
    "connection_opened",
    "directory",
    "flush",
    "request_done",
    "samples",
    "use_directory",
    "value",
    "worker_died",
]

ENV = "PROMETHEUS_MULTIPROC_DIR"
# The text exposition format 0.0.4, which every scraper reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Family = Counter | Gauge | Histogram
FAMILIES: list[Family] = []  # every family, in the order of this module
_LOCAL = CollectorRegistry(auto_describe=False)  # what a process without the directory shows
_resets: list[Callable[[], None]] = []  # child caches to empty when the value class changes

GaugeMode = Literal["livesum", "sum", "max", "livemax"]


def _add(family: Family) -> Any:
    FAMILIES.append(family)
    _LOCAL.register(family)
    return family


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
    family: Counter = _add(Counter(name, doc, tuple(labels), registry=None))
    return family


def _gauge(name: str, doc: str, labels: Iterable[str] = (), mode: GaugeMode = "livesum") -> Gauge:
    family: Gauge = _add(Gauge(name, doc, tuple(labels), registry=None, multiprocess_mode=mode))
    return family


# -- HTTP: every request, whatever answered it -----------------------------------------------

HTTP_REQUESTS = _counter(
    "se_http_requests_total",
    "HTTP requests answered, by method and status (every answer: errors, refused "
    "100-continue, injected faults, malformed requests).",
    ("method", "status"),
)
# Seconds; uvloop's clock has a 1 ms resolution.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 300.0)  # fmt: skip
HTTP_DURATION = _add(
    Histogram(
        "se_http_request_duration_seconds",
        "Time from a request's head to the end of its answer, by method.",
        ("method",),
        registry=None,
        buckets=LATENCY_BUCKETS,
    )
)
HTTP_RECEIVED = _counter(
    "se_http_received_bytes_total", "Request body bytes received (uploads and other bodies)."
)
HTTP_SENT = _counter(
    "se_http_sent_bytes_total", "Response body bytes sent (downloads and other bodies)."
)
HTTP_CONNECTIONS = _counter("se_http_connections_total", "Client connections accepted.")
HTTP_LEAN = _counter(
    "se_http_lean_requests_total",
    "Requests (also counted in se_http_requests_total) answered by the lean GET/HEAD path.",
)
HTTP_CONNECTIONS_OPEN = _gauge("se_http_connections_open", "Client connections open now.")

# -- authentication --------------------------------------------------------------------------

AUTH = _counter(
    "se_auth_total",
    "Credentials checked, by kind (token: a WLCG JWT, macaroon: one this server issued, "
    "x509: a client certificate or proxy) and outcome (ok, cached: a token already verified, "
    "refused: answered 401 or 403).",
    ("method", "outcome"),
)

# -- third-party copy ------------------------------------------------------------------------

TPC_TRANSFERS = _counter(
    "se_tpc_transfers_total",
    "Third-party copies finished, by result (success, failure).",
    ("result",),
)
TPC_FAILURES = _counter(
    "se_tpc_failures_total",
    "Third-party copies that failed, by reason (the failure line's tag, e.g. "
    "'source connect', 'local write', 'checksum'; 'aborted', 'injected').",
    ("reason",),
)
TPC_BYTES = _counter(
    "se_tpc_bytes_total",
    "Bytes moved by third-party copies, by direction (in: pulled here, out: pushed away).",
    ("direction",),
)
TPC_ACTIVE = _gauge("se_tpc_active", "Third-party copies moving data now.")
TPC_QUEUED = _gauge("se_tpc_queued", "Third-party copies accepted and waiting for a slot.")
TPC_ADMITTED = _gauge(
    "se_tpc_admitted", "Third-party copies accepted and not finished (active + queued)."
)

# -- tape ------------------------------------------------------------------------------------

TAPE_REQUESTS = _counter("se_tape_requests_total", "Stage requests accepted.")
TAPE_FILES_REQUESTED = _counter(
    "se_tape_files_requested_total", "Files named by accepted stage requests."
)
TAPE_READS_REFUSED = _counter(
    "se_tape_reads_refused_total", "GETs refused because the file is on tape only."
)
TAPE_MOUNTS = _counter("se_tape_mounts_total", "Cartridge mounts, by cartridge.", ("cartridge",))
TAPE_RECALLED_FILES = _counter(
    "se_tape_recalled_files_total",
    "Files read back from tape, by outcome (ok, failed).",
    ("outcome",),
)
TAPE_RECALLED_BYTES = _counter("se_tape_recalled_bytes_total", "Bytes read back from tape.")
TAPE_ARCHIVED_FILES = _counter("se_tape_archived_files_total", "Files written to tape.")
TAPE_DRIVE_FAILURES = _counter(
    "se_tape_drive_failures_total", "Tape sessions aborted by a drive failure."
)
TAPE_EVICTED_FILES = _counter("se_tape_evicted_files_total", "Files evicted from the disk buffer.")
TAPE_QUEUED_FILES = _gauge(
    "se_tape_queued_files", "Files waiting for a drive, by cartridge.", ("cartridge",)
)
TAPE_DRIVES_IN_USE = _gauge("se_tape_drives_in_use", "Drives holding a cartridge.")

# -- SciTags ---------------------------------------------------------------------------------

SCITAGS_FIREFLIES = _counter(
    "se_scitags_fireflies_total",
    "Firefly datagrams, by outcome (sent, dropped, filtered: flows not reported).",
    ("outcome",),
)
SCITAGS_FLOW_LABELS = _counter(
    "se_scitags_flow_labels_total",
    "IPv6 connections opened, by labelling outcome (labelled, refused).",
    ("outcome",),
)
SCITAGS_FLOWD_LINES = _counter(
    "se_scitags_flowd_lines_total",
    "Lines for flowd's named pipe, by outcome (written, dropped).",
    ("outcome",),
)


# -- the request path ------------------------------------------------------------------------

# Methods counted under their own name; any other is "other" (a label per invented method
# would let a client grow the page without bound).
KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PROPFIND", "PROPPATCH", "MKCOL",
     "COPY", "MOVE", "LOCK", "UNLOCK", "PATCH", "TRACE", "CONNECT")
)  # fmt: skip

# The request path adds to plain numbers of this process (a dict update or two per request)
# and writes them into the shared values every FLUSH_PERIOD seconds, on a timer of the event
# loop that counted, and before this process reads the values (a scrape it answers, value()).
# A scrape answered by another worker may so miss up to FLUSH_PERIOD of this worker's latest
# requests; a worker that is killed loses as much.  (prometheus-client's own inc() takes a
# lock, asks the pid and writes the mmap: several microseconds per value, per request.)
FLUSH_PERIOD = 0.25

_pending: dict[Any, float] = {}  # prometheus_client value -> amount not yet added to it
_by_status: dict[tuple[str, int], Any] = {}  # (method, status) -> the requests value
_by_method: dict[str, tuple[Any, list[Any]]] = {}  # method -> histogram (sum, buckets) values
_bounds = (*LATENCY_BUCKETS, math.inf)
_state = {"armed": False, "open": 0, "opened": 0}


def _reset_request_path() -> None:
    _pending.clear()
    _by_status.clear()
    _by_method.clear()


_resets.append(_reset_request_path)


def request_done(
    method: str, status: int, seconds: float, received: int, sent: int, lean: bool = False
) -> None:
    """One answered request (se.web.protocol calls this once per request); ``lean``: by
    the lean path (se.web.fastpath)."""
    if method not in KNOWN_METHODS:
        method = "other"
    pending = _pending
    key = _by_status.get((method, status))
    if key is None:
        key = _by_status[(method, status)] = HTTP_REQUESTS.labels(method, str(status))._value
    pending[key] = pending.get(key, 0) + 1
    histogram = _by_method.get(method)
    if histogram is None:
        child = HTTP_DURATION.labels(method)
        histogram = _by_method[method] = (child._sum, child._buckets)
    total, buckets = histogram
    pending[total] = pending.get(total, 0) + seconds
    bucket = buckets[bisect.bisect_left(_bounds, seconds)]
    pending[bucket] = pending.get(bucket, 0) + 1
    if received:
        key = HTTP_RECEIVED._value
        pending[key] = pending.get(key, 0) + received
    if sent:
        key = HTTP_SENT._value
        pending[key] = pending.get(key, 0) + sent
    if lean:
        key = HTTP_LEAN._value
        pending[key] = pending.get(key, 0) + 1
    if not _state["armed"]:
        _arm()


def connection_opened() -> None:
    _state["open"] += 1
    _state["opened"] += 1
    if not _state["armed"]:
        _arm()


def connection_closed() -> None:
    _state["open"] -= 1
    if not _state["armed"]:
        _arm()


def _arm() -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # counted outside an event loop: at once
        flush()
        return
    _state["armed"] = True
    loop.call_later(FLUSH_PERIOD, flush)


def flush() -> None:
    """Write what this process counted on the request path into the shared values."""
    _state["armed"] = False
    items = list(_pending.items())
    _pending.clear()
    for value, amount in items:
        value.inc(amount)
    if _state["opened"]:
        HTTP_CONNECTIONS.inc(_state["opened"])
        _state["opened"] = 0
    HTTP_CONNECTIONS_OPEN.set(_state["open"])


def cached(child: Callable[[], Any]) -> Callable[[], Any]:
    """A getter of one label child, resolved on first use (and again after
    :func:`use_directory`): ``ok = cached(lambda: AUTH.labels("token", "ok"))``."""
    slot: list[Any] = []
    _resets.append(slot.clear)

    def get() -> Any:
        if not slot:
            slot.append(child())
        return slot[0]

    return get


# -- multiprocess mode -----------------------------------------------------------------------


def directory() -> str | None:
    """The multiprocess directory in force, None when this process counts for itself."""
    path = os.environ.get(ENV)
    return path if path and _multiprocess() else None


def _multiprocess() -> bool:
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def use_directory(path: str) -> None:
    """Count into ``path`` (an empty directory of this server run) from now on, in this
    process and every process forked from it.  Called before anything was counted."""
    os.environ[ENV] = path
    _switch()


def _switch() -> None:
    """Use the multiprocess value class, with fresh values in every family."""
    for family in FAMILIES:
        if family._labelnames:  # (clear() refuses to run in multiprocess mode)
            with family._lock:
                family._metrics.clear()
    for reset in _resets:
        reset()
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    for family in FAMILIES:
        if not family._labelnames:
            family._metric_init()


def worker_died(pid: int) -> None:
    """A worker is gone: its live gauges leave the sums (its counters stay)."""
    path = directory()
    if path is not None:
        mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


if os.environ.get(ENV) and not _multiprocess():  # set before this process started
    _switch()


# -- reading ---------------------------------------------------------------------------------


def collect() -> Iterable[Metric]:
    """Every family, summed over all workers (multiprocess mode) or this process's own."""
    flush()
    path = directory()
    if path is None:
        return _LOCAL.collect()
    collector = MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]
    metrics: Iterable[Metric] = collector.collect()  # type: ignore[no-untyped-call]
    return metrics


def samples() -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample of :func:`collect`."""
    for metric in collect():
        for sample in metric.samples:
            yield sample.name, sample.labels, sample.value


def value(name: str, **labels: str) -> float:
    """The sum over all workers of the samples called ``name`` (a sample name:
    ``se_http_requests_total``, ``se_http_request_duration_seconds_count``, ...) whose
    labels include ``labels``; 0 when there are none."""
    total = 0.0
    wanted = labels.items()
    for sample_name, sample_labels, sample_value in samples():
        if sample_name == name and wanted <= sample_labels.items():
            total += sample_value
    return total
