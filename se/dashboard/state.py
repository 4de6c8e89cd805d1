"""What the dashboard shows, as kept by one worker, and the merge of every worker's share.

* Throughput: every :data:`INTERVAL` seconds the sampler (in one application per server:
  the primary, the one that runs the tape library) reads the byte counters summed over all
  workers (``se.metrics``) and keeps :data:`WINDOW` seconds of them, so that a page opened
  now shows the last 15 minutes.  The others take its samples from its snapshot (one
  reader of the counter files per server, not one per worker).
* Third-party copies (the TPC service's running transfers), recent errors (5xx responses
  and failed copies, :meth:`Dashboard.record`) and, in the worker that runs it, the tape
  library live in each worker.  While a page is open (a JSON request touched
  ``<state dir>/dashboard/watched`` in the last :data:`WATCH_TTL` seconds) every worker
  writes a small JSON snapshot of its own, ``<pid>.<n>.json``, once a second; the worker
  that answers merges its own live state with the fresh snapshots of the other live
  processes (the files of dead ones are removed).  Nothing is written while nobody looks.
* Share usage comes from the space accounting, when the server has one.

Every text that comes from a request (paths, remote URLs, failure lines) is clipped to
:data:`MAX_TEXT` characters; the page renders it as text, never as markup.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

from se import __version__, metrics
from se.config import Config, state_dir
from se.tape.service import TapeService
from se.tpc.remote import redact
from se.tpc.service import TPCService
from se.tpc.state import Transfer

__all__ = [
    "COUNTERS",
    "DASHBOARD",
    "INTERVAL",
    "WINDOW",
    "Dashboard",
]

log = logging.getLogger("se.dashboard")

INTERVAL = 2.0  # seconds between two samples of the byte counters
WINDOW = 900.0  # seconds of throughput history kept
PUBLISH = 1.0  # seconds between two snapshots of a worker while a page is open
WATCH_TTL = 10.0  # a page counts as open this long after its last JSON request
STALE = 4.0  # a snapshot older than this is ignored (its worker stopped publishing)
MAX_TEXT = 300  # characters kept of a path, URL or reason

# The series of the throughput plot: (name, counter, labels), summed over all workers.
COUNTERS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("http_in", "se_http_received_bytes_total", {}),
    ("tpc_in", "se_tpc_bytes_total", {"direction": "in"}),
    ("http_out", "se_http_sent_bytes_total", {}),
    ("tpc_out", "se_tpc_bytes_total", {"direction": "out"}),
)

_instances = itertools.count()


def _totals() -> tuple[float, ...]:
    """The :data:`COUNTERS`, each summed over all workers (what :func:`se.metrics.value`
    gives, in one pass over the samples instead of one per counter)."""
    totals = [0.0] * len(COUNTERS)
    wanted = [(name, labels.items()) for _, name, labels in COUNTERS]
    for sample_name, sample_labels, sample_value in metrics.samples():
        for i, (name, labels) in enumerate(wanted):
            if sample_name == name and labels <= sample_labels.items():
                totals[i] += sample_value
    return tuple(totals)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` at once (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Dashboard:
    """One application's (one worker's, one listener's) part of the dashboard."""

    def __init__(
        self, cfg: Config, tpc: TPCService, tape: TapeService | None, sampler: bool = True
    ) -> None:
        self.cfg = cfg
        self.sampler = sampler  # this one samples the byte counters for all
        self.tpc = tpc
        self.tape = tape
        self.directory = state_dir(cfg) / "dashboard"
        self.errors: deque[dict[str, Any]] = deque(maxlen=cfg.dashboard.errors)
        self.samples: deque[tuple[float, tuple[float, ...]]] = deque(
            maxlen=round(WINDOW / INTERVAL) + 1
        )
        self._instance = next(_instances)
        self._rates: dict[Transfer, tuple[float, int, float]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._started = time.time()

    @property
    def name(self) -> str:
        """This application's snapshot file (the pid is read now: workers are forked)."""
        return f"{os.getpid()}.{self._instance}.json"

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._prepare)
        self._tasks = [asyncio.create_task(self._publish(), name="dashboard-publish")]
        if self.sampler:
            self._tasks.append(asyncio.create_task(self._sample(), name="dashboard-sample"))

    async def running(self, _app: web.Application) -> AsyncIterator[None]:
        """For the application's cleanup context: started with it, closed with it."""
        await self.start()
        yield
        await self.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        with contextlib.suppress(OSError):
            (self.directory / self.name).unlink()

    def _prepare(self) -> None:
        """Remove the snapshots of processes that are gone.  The directory itself is made
        by the first page that asks (a server nobody watches writes nothing)."""
        try:
            if not self.directory.is_dir():
                return
            for entry in os.scandir(self.directory):
                pid = _pid_of(entry.name)
                if pid is not None and not _alive(pid):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
        except OSError as exc:
            log.warning("dashboard: %s: %s", self.directory, exc.strerror or exc)

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        warned = False
        while True:
            try:
                totals = await loop.run_in_executor(None, _totals)
            except Exception as exc:  # a torn metrics file must not end the sampler
                if not warned:
                    log.warning("dashboard: reading the byte counters failed: %s", exc)
                    warned = True
            else:
                self.samples.append((time.time(), totals))
            await asyncio.sleep(INTERVAL)

    async def _publish(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PUBLISH)
            try:
                if not await loop.run_in_executor(None, self._watched):
                    continue
                text = json.dumps(await self.snapshot())
                await loop.run_in_executor(None, _write, self.directory / self.name, text)
            except Exception as exc:  # the next second tries again
                log.debug("dashboard: snapshot not written: %s", exc)

    def _watched(self) -> bool:
        try:
            return time.time() - (self.directory / "watched").stat().st_mtime < WATCH_TTL
        except OSError:
            return False

    # -- this worker's state ----------------------------------------------------------------

    def record(self, request: web.BaseRequest, status: int, detail: str, kind: str) -> None:
        """Keep one error: ``kind`` "http" (a 5xx response) or "tpc" (a failed copy)."""
        self.errors.append(
            {
                "time": round(time.time(), 3),
                "kind": kind,
                "status": status,
                "method": request.method,
                "path": _clip(request.path),
                "detail": _clip(detail),
                "worker": os.getpid(),
            }
        )

    def history(self) -> list[list[float]]:
        """The samples, ``[time, *totals]`` each, oldest first."""
        return [[t, *totals] for t, totals in self.samples]

    @staticmethod
    def throughput(history: list[list[float]]) -> dict[str, Any]:
        """Rates (bytes/s) between successive samples, oldest first, and the totals."""
        points: list[list[float]] = []
        samples = [(float(h[0]), tuple(map(float, h[1:]))) for h in history]
        for (t0, before), (t1, after) in itertools.pairwise(samples):
            dt = t1 - t0
            if dt <= 0:
                continue
            rates = [max(0.0, (b - a) / dt) for a, b in zip(before, after, strict=True)]
            points.append([round(t1, 3), *(round(rate, 1) for rate in rates)])
        totals = dict(zip((c[0] for c in COUNTERS), samples[-1][1], strict=True)) if samples else {}
        return {
            "interval": INTERVAL,
            "window": WINDOW,
            "series": [c[0] for c in COUNTERS],
            "points": points,
            "totals": totals,
        }

    def transfers(self) -> list[dict[str, Any]]:
        """The running third-party copies, with a rate over the last second or more."""
        now = time.monotonic()
        wall = time.time()
        rates: dict[Transfer, tuple[float, int, float]] = {}
        out = []
        for transfer in list(self.tpc.running):
            done = transfer.bytes
            mark = self._rates.get(transfer)
            if mark is None:  # first look: the average since it became active
                began = transfer.active_since
                rate = done / (now - began) if began is not None and now - began > 0.5 else 0.0
                mark = (now, done, rate)
            elif now - mark[0] >= 1.0:
                mark = (now, done, (done - mark[1]) / (now - mark[0]))
            rates[transfer] = mark
            spec = transfer.spec
            out.append(
                {
                    "role": spec.mode.value,
                    "local": _clip(str(transfer.local)),
                    "remote": _clip(redact(spec.remote)),
                    "bytes": done,
                    "size": transfer.size,
                    "rate": round(mark[2], 1),
                    "started": round(wall - (now - transfer.created), 3),
                    "state": "queued" if transfer.active_since is None else "active",
                    "streams": spec.streams,
                    "worker": os.getpid(),
                }
            )
        self._rates = rates
        return out

    async def tape_status(self) -> dict[str, Any] | None:
        """The library's drives, queues and disk buffer (None: it does not run here)."""
        tape = self.tape
        library = tape.library if tape is not None else None
        if tape is None or library is None:
            return None
        stats = library.stats()
        queues = library.queue_depths()
        drives: list[dict[str, Any]] = []
        for vid in stats.in_drives:
            if vid not in stats.mounted:
                state = "unloading"
            else:
                state = "busy" if queues.get(vid) else "idle"
            drives.append({"state": state, "cartridge": vid})
        drives += [{"state": "empty", "cartridge": None}] * max(0, stats.drives - len(drives))
        buffer = None
        if tape.buffer is not None:
            buffer = {"capacity": tape.buffer.config.capacity, "used": await tape.buffer.usage()}
        return {
            "library": True,
            "drives": drives,
            "queues": dict(sorted(queues.items())),
            "queued_files": stats.queued_files,
            "mounts": sum(stats.mounts.values()),
            "files_recalled": stats.files_recalled,
            "bytes_recalled": stats.bytes_recalled,
            "files_failed": stats.files_failed,
            "drive_failures": stats.drive_failures,
            "utilisation": round(stats.utilisation, 4),
            "buffer": buffer,
        }

    async def snapshot(self) -> dict[str, Any]:
        """What this application publishes for the others."""
        return {
            "pid": os.getpid(),
            "time": round(time.time(), 3),
            "transfers": self.transfers(),
            "errors": list(self.errors),
            "tape": await self.tape_status(),
            "history": self.history() if self.sampler else None,
        }

    # -- all workers ------------------------------------------------------------------------

    def _others(self) -> list[dict[str, Any]]:
        """Mark the page as open; the fresh snapshots of the other live applications."""
        directory = self.directory
        watched = directory / "watched"
        try:
            os.utime(watched)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                directory.mkdir(parents=True, exist_ok=True)
                watched.touch()
        except OSError:
            pass
        out: list[dict[str, Any]] = []
        own = self.name
        now = time.time()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return out
        for entry in entries:
            pid = _pid_of(entry.name)
            if pid is None or entry.name == own:
                continue
            if not _alive(pid):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                continue
            try:
                if now - entry.stat().st_mtime > STALE:
                    continue
                data = json.loads(Path(entry.path).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and now - float(data.get("time", 0)) <= STALE:
                out.append(data)
        return out

    async def document(self, space: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The JSON the page polls: this worker's live state merged with the others'."""
        mine = await self.snapshot()
        others = await asyncio.get_running_loop().run_in_executor(None, self._others)
        snaps = [mine, *others]
        transfers = sorted(_items(snaps, "transfers"), key=lambda t: float(t.get("started", 0)))
        errors = sorted(_items(snaps, "errors"), key=lambda e: -float(e.get("time", 0)))
        tape = next((s["tape"] for s in snaps if isinstance(s.get("tape"), dict)), None)
        if tape is None and self.tape is not None:
            tape = {"library": False}  # the library runs in another se sharing the database
        history: list[list[float]] = next(
            (s["history"] for s in snaps if isinstance(s.get("history"), list)), []
        )
        return {
            "server": {
                "version": __version__,
                "time": mine["time"],
                "started": round(self._started, 3),
                "workers": len({s.get("pid") for s in snaps}),
                "tpc_max_active": self.cfg.tpc.max_active,
            },
            "throughput": self.throughput(history),
            "transfers": transfers,
            "tape": tape,
            "space": space,
            "errors": errors[: self.cfg.dashboard.errors],
        }


def _pid_of(name: str) -> int | None:
    """The pid in a snapshot file's name (``<pid>.<n>.json``), None for other files."""
    if not name.endswith(".json") or name.startswith("."):
        return None
    head = name.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _items(snaps: Iterable[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [item for s in snaps if isinstance(s.get(key), list) for item in s[key]]


DASHBOARD: web.AppKey[Dashboard] = web.AppKey("se_dashboard", Dashboard)
