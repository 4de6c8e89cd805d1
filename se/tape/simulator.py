"""The simulated tape tier: a library of drives and cartridges that archives and recalls files.

:class:`TapeLibrary` is an asyncio component on top of a :class:`~se.tape.store.TapeStore`.  The
store is the only persistent state (requests, file states, pins, the cartridge catalogue); the
library's queues, drives and counters live in memory and are rebuilt by :meth:`TapeLibrary.resume`
after a restart.

Model (spec section 7, CTA-like):

* Archive: :meth:`TapeLibrary.archive` flushes a file *immediately* (no archive queue, no write
  mounts, no ``archive_delay``): it gets the next (cartridge, position) of its pool, in write
  order, and becomes DISK_AND_TAPE (or TAPE with ``keep_on_disk=False``).  A zero-length file is
  never written to tape: NONE.  Each pool fills one cartridge at a time, taking the first unused
  cartridge of the library when the current one is full.  Which pool owns which cartridge is kept
  in the store's cartridge table: after a restart a pool carries on where it was.
* Recall: one queue per cartridge.  A queue is mountable when it holds ``mount_min_files`` files or
  ``mount_min_bytes`` bytes, or its oldest job is ``min_request_age`` (simulated) seconds old.  A
  free drive takes the mountable queue with the oldest job.  A file is STARTED when its queue has a
  drive (at mount, or on arrival for a tape already mounted: it joins the session).  The session
  reads batches (``batch_max_files`` / ``batch_max_bytes``) ordered by position (linear RAO), and
  each read file becomes COMPLETED with a pin, DISK_AND_TAPE in the catalogue.  A tape whose queue
  is empty stays mounted for ``idle_dismount``, but gives its drive up as soon as another queue is
  mountable and no drive is free.  The same path recalled by two requests is read twice (no
  coalescing of jobs across requests).
* Timings (:class:`TapeTiming`) are simulated seconds, slept as ``seconds / time_scale``.
* Failures: a bad read (probability ``bad_file_probability`` per attempt, deterministic from the
  seed and the path) is retried ``read_retries`` times in the session, then the file is FAILED and
  LOST.  A drive failure (``drive_failure_probability`` per file read) aborts the session: the
  unread jobs go back to their queue (still STARTED) and the tape is remounted later.
* Files the catalogue does not know, zero-length (NONE), LOST or UNAVAILABLE files, and files on a
  cartridge the library does not have, are FAILED with an error at once; files with a disk copy
  (DISK, DISK_AND_TAPE) are COMPLETED at once with a pin.

Tape pools: a pool listed in ``LibraryConfig.pools`` writes to its own cartridges, in the order
given; any other pool takes the first empty unlisted cartridge when it needs one and records
that in the store's cartridge table, so after a restart it carries on with the same cartridge.
``max_drives`` caps the drives reading a pool's cartridges at once (CTA's per-VO
``readMaxDrives``; a pool stands for the VO).

Cartridge states (DISABLED, BROKEN, REPACKING: its files fail with "tape unavailable", its queue
is failed and never mounted) and the switches ``unreachable``, ``bad_file_probability`` and
``drive_failure_probability`` live in the store and are re-read by :meth:`TapeLibrary.sync`, so
an admin can change them while the server runs.  With a :class:`~se.tape.buffer.DiskBuffer`,
each read first waits for room in the buffer (``buffer_wait`` simulated seconds, then FAILED
"no space in disk buffer").

Fairness: when a mounted cartridge's queue holds more than one batch, requests take turns in
filling it (round robin), and each batch is read in tape order.

Not modelled: mount-policy priorities, several robots (the robot exchange never queues), mount
timeouts, write mounts (archiving is immediate; the archive criteria are applied by the
caller).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Literal, overload

from se.tape.buffer import DiskBuffer
from se.tape.model import (
    ERR_EMPTY,
    ERR_GONE,
    ERR_LOST,
    ERR_NO_SPACE,
    ERR_UNAVAILABLE,
    ERR_UNKNOWN,
    ERR_UNREACHABLE,
    PROBABILITY_SWITCHES,
    UNREACHABLE,
    CartridgeState,
    FileState,
    Locality,
)
from se.tape.sql import CatalogueEntry, FileUpdate
from se.tape.store import TapeStore

__all__ = [
    "LibraryConfig",
    "LibraryStats",
    "TapeFullError",
    "TapeLibrary",
    "TapeTiming",
]

GB = 10**9
TB = 10**12


@dataclass(frozen=True)
class TapeTiming:
    """Durations of the drive operations, in simulated seconds (LTO-9 defaults, spec 7.2)."""

    robot_exchange: float = 12.0
    load: float = 16.0
    locate_base: float = 5.0  # locate = base + full * |delta position| / tape length
    locate_full: float = 130.0
    read_rate: float = 400e6  # bytes per second
    file_overhead: float = 2.0  # per file: filemark, disk open/close, checksum
    rewind: float = 62.0
    unload: float = 56.0
    idle_dismount: float = 60.0
    time_scale: float = 1.0  # 1000: a 100 s operation takes 0.1 s

    def __post_init__(self) -> None:
        for duration in fields(self):  # durations, and the two rates (positive: checked next)
            if getattr(self, duration.name) < 0:
                raise ValueError(f"{duration.name} must not be negative")
        if self.read_rate <= 0 or self.time_scale <= 0:
            raise ValueError("read_rate and time_scale must be positive")

    def mount(self) -> float:
        return self.robot_exchange + self.load

    def locate(self, distance: int, tape_length: int) -> float:
        """From one position to another; none when the next file follows the last one read."""
        if distance == 0:
            return 0.0
        return self.locate_base + self.locate_full * min(1.0, abs(distance) / tape_length)

    def read(self, size: int) -> float:
        return self.file_overhead + size / self.read_rate

    def dismount(self) -> float:
        return self.rewind + self.unload

    def real(self, seconds: float) -> float:
        """Wall-clock seconds for ``seconds`` of simulated time."""
        return seconds / self.time_scale


@dataclass(frozen=True)
class LibraryConfig:
    """The library: drives, cartridges, CTA's mount and batch criteria, failure injection.

    Durations (``min_request_age``) are simulated seconds; ``pin_lifetime`` (used when a request
    gives no ``diskLifetime``) is real seconds, as the API reports it.
    """

    drives: int = 4
    cartridges: tuple[str, ...] | int = 10  # vids, or how many (named V00000, V00001, ...)
    cartridge_capacity: int = 18 * TB
    mount_min_bytes: int = 500 * GB
    mount_min_files: int = 10_000
    min_request_age: float = 60.0
    batch_max_files: int = 4000
    batch_max_bytes: int = 80 * GB
    pin_lifetime: int = 86_400
    seed: int = 0
    bad_file_probability: float = 0.0  # per read attempt
    read_retries: int = 2  # further attempts after a bad read
    drive_failure_probability: float = 0.0  # per file read
    # Simulated seconds a recall waits for room in the disk buffer before it fails.
    buffer_wait: float = 86_400.0
    timing: TapeTiming = field(default_factory=TapeTiming)
    # Tape pools with their own cartridges, filled in this order (other pools share the rest).
    pools: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Most drives reading the cartridges of a pool at once (CTA's per-VO readMaxDrives).
    max_drives: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.drives < 1:
            raise ValueError("drives: a library has at least one drive")
        if not self.vids or len(set(self.vids)) != len(self.vids):
            raise ValueError("cartridges: at least one, no duplicate vids")
        if self.cartridge_capacity <= 0 or self.batch_max_files < 1 or self.batch_max_bytes < 1:
            raise ValueError(
                "cartridge_capacity, batch_max_files and batch_max_bytes must be positive"
            )
        if self.read_retries < 0 or self.min_request_age < 0:
            raise ValueError("read_retries and min_request_age must not be negative")
        owned = [vid for vids in self.pools.values() for vid in vids]
        if len(set(owned)) != len(owned) or not set(owned) <= set(self.vids):
            raise ValueError("pools: cartridges of the library, each in one pool at most")
        if any(cap < 1 for cap in self.max_drives.values()):
            raise ValueError("max_drives: at least one drive per pool")
        for name in PROBABILITY_SWITCHES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: a probability, between 0 and 1")

    @property
    def vids(self) -> tuple[str, ...]:
        if isinstance(self.cartridges, int):
            return tuple(f"V{number:05d}" for number in range(self.cartridges))
        return tuple(self.cartridges)


@dataclass(frozen=True)
class LibraryStats:
    """Counters since :meth:`TapeLibrary.start`; times in simulated seconds."""

    mounts: dict[str, int]
    files_recalled: int
    bytes_recalled: int
    files_failed: int  # read failures (FAILED and LOST), not the ones failed at submission
    read_errors: int
    drive_failures: int
    drive_busy: float  # mounting, locating, reading, dismounting; not idle-mounted time
    elapsed: float
    drives: int
    queued_files: int
    mounted: tuple[str, ...]  # cartridges in a drive and taking jobs
    in_drives: tuple[str, ...]  # cartridges in a drive: also the ones being dismounted

    @property
    def utilisation(self) -> float:
        """Fraction of the drives' time spent on operations."""
        return self.drive_busy / (self.drives * self.elapsed) if self.elapsed > 0 else 0.0


class TapeFullError(RuntimeError):
    """No cartridge has room for a file to archive."""


_Key = tuple[str, str]  # (request id, path)


@dataclass(eq=False)
class _Job:
    request_id: str
    path: str
    vid: str
    position: int
    size: int
    pin_lifetime: int
    enqueued: float  # loop time
    cancelled: bool = False


@dataclass(eq=False)
class _Session:
    vid: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    accepting: bool = True  # False once dismounting: new jobs wait for the next mount
    task: asyncio.Task[None] | None = None
    head: int = 0  # the tape position under the head


OnRead = Callable[[str, str, int], None]


class TapeLibrary:
    """The recall/archive engine.  Create, :meth:`start`, then :meth:`resume` after a restart.

    The tape service (:class:`~se.tape.service.TapeService`) calls :meth:`recall` after
    ``store.create_request`` (with the request's files that are SUBMITTED), :meth:`cancel` /
    :meth:`delete` instead of the store's methods of the same purpose, and :meth:`archive` when
    it flushes files written under a tape-backed prefix.
    ``on_read(vid, path, position)`` is called after each successful read (for tests and tracing).
    """

    def __init__(
        self,
        store: TapeStore,
        config: LibraryConfig,
        *,
        on_read: OnRead | None = None,
        buffer: DiskBuffer | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.buffer = buffer
        # Run-time switches (failure injection); :meth:`sync` reads them from the store.
        self.unreachable = False
        self.bad_file_probability = config.bad_file_probability
        self.drive_failure_probability = config.drive_failure_probability
        self._cartridge_state: dict[str, CartridgeState] = dict.fromkeys(
            config.vids, CartridgeState.ACTIVE
        )
        self._timing = config.timing
        self._on_read = on_read
        # Per-path stage faults (se.faults): path -> (error or None, delay in real seconds),
        # None when no rule fires; and who hears of each file's final state.
        self.stage_fault: Callable[[str], Awaitable[tuple[str | None, float] | None]] | None = None
        self.on_settled: Callable[[str, str, FileState, str | None], None] | None = None
        self._queues: dict[str, dict[_Key, _Job]] = {vid: {} for vid in config.vids}
        self._jobs: dict[_Key, _Job] = {}  # queued or in a session's batch
        self._sessions: dict[str, _Session] = {}
        self._wake = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._started_at = 0.0
        self._stopped_at: float | None = None
        self._archive_lock = asyncio.Lock()
        self._loaded = False  # cartridge states and ownership read from the store
        self._pool_tape: dict[str, tuple[str, int]] = {}  # pool -> (vid, next position)
        self._claimed: set[str] | None = None  # shared cartridges holding files
        # The pool of each cartridge: configured, or claimed by archive() (in the store).
        self._pool_of: dict[str, str] = {
            vid: pool for pool, vids in config.pools.items() for vid in vids
        }
        self._mounts: dict[str, int] = dict.fromkeys(config.vids, 0)
        self._files_recalled = 0
        self._bytes_recalled = 0
        self._files_failed = 0
        self._read_errors = 0
        self._drive_failures = 0
        self._busy = 0.0

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._scheduler is not None:
            raise RuntimeError("the tape library is already started")
        await self._load_cartridges()
        self._started_at = asyncio.get_running_loop().time()
        self._stopped_at = None
        self._scheduler = asyncio.create_task(self._schedule(), name="tape-scheduler")

    async def stop(self) -> None:
        """Stop the scheduler and abandon the sessions; queued work stays pending in the store."""
        tasks = [session.task for session in self._sessions.values() if session.task is not None]
        if self._scheduler is not None:
            tasks.append(self._scheduler)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._scheduler is not None:
            self._stopped_at = asyncio.get_running_loop().time()
        self._scheduler = None
        self._sessions.clear()
        self._jobs.clear()
        for queue in self._queues.values():
            queue.clear()

    async def _load_cartridges(self) -> None:
        """Cartridge states and pool ownership from the store (they survive restarts)."""
        known = await self.store.cartridges()
        self._loaded = True
        for vid, (pool, state) in known.items():
            if vid in self._cartridge_state:
                self._cartridge_state[vid] = state
                if pool is not None and vid not in self._pool_of:
                    self._pool_of[vid] = pool

    def cartridge_state(self, vid: str) -> CartridgeState | None:
        return self._cartridge_state.get(vid)

    async def sync(self) -> int:
        """Catch up with the store: run-time switches, cartridge states, and stage work.

        Several frontends (worker processes, or ``se`` instances sharing a PostgreSQL store)
        record requests; only the one running the library reads tape.  It calls this
        periodically: files that became pending elsewhere are queued, queued files that were
        cancelled elsewhere are dropped, and queued files that can no longer be read
        (backend unreachable, cartridge not ACTIVE) fail.  Returns how many were queued.
        """
        self.apply_settings(await self.store.settings())
        await self._load_cartridges()
        pending = await self.store.pending_files()
        pending_keys = set(pending)
        gone = [key for key in self._jobs if key not in pending_keys]
        for request_id, path in gone:
            self._drop(request_id, {path})
        await self._fail_unreadable()
        by_request: dict[str, list[str]] = {}
        for request_id, path in pending:
            if (request_id, path) not in self._jobs:
                by_request.setdefault(request_id, []).append(path)
        queued = 0
        for request_id, paths in by_request.items():
            queued += await self.recall(request_id, paths)
        return queued

    def apply_settings(self, settings: Mapping[str, object]) -> None:
        """Set the run-time switches; a missing key falls back to the configured value."""
        self.unreachable = bool(settings.get(UNREACHABLE, False))
        for name in PROBABILITY_SWITCHES:
            value = settings.get(name)
            if isinstance(value, int | float) and 0.0 <= value <= 1.0:
                setattr(self, name, float(value))
            else:
                setattr(self, name, getattr(self.config, name))

    async def _fail_unreadable(self) -> None:
        """Fail the queued jobs that cannot be read now (not the ones a drive is reading)."""
        for vid, queue in self._queues.items():
            error = self._unreadable(vid)
            if error is None or not queue:
                continue
            jobs = list(queue.values())
            await self._fail(jobs, error)  # before the drop, which marks them cancelled
            for job in jobs:
                self._drop(job.request_id, {job.path})

    def _unreadable(self, vid: str) -> str | None:
        if self.unreachable:
            return ERR_UNREACHABLE
        if self._cartridge_state.get(vid) is not CartridgeState.ACTIVE:
            return ERR_UNAVAILABLE
        return None

    def _settled(self, job: _Job, state: FileState, error: str | None) -> None:
        if self.on_settled is not None:
            self.on_settled(job.request_id, job.path, state, error)

    async def _fail(self, jobs: Sequence[_Job], error: str) -> None:
        await self._set_states(jobs, FileState.FAILED, error)

    async def _set_states(
        self, jobs: Iterable[_Job], state: FileState, error: str | None = None
    ) -> None:
        """Move the files of (not cancelled) jobs to ``state``: one store call per request."""
        by_request: dict[str, list[FileUpdate]] = {}
        for job in jobs:
            if not job.cancelled:
                by_request.setdefault(job.request_id, []).append((job.path, state, error, None))
                self._settled(job, state, error)
        at = _now()
        for request_id, updates in by_request.items():
            await self.store.set_file_states(request_id, updates, at)

    async def resume(self) -> int:
        """Queue again every non-terminal file of the store (after a restart); how many."""
        by_request: dict[str, list[str]] = {}
        for request_id, path in await self.store.pending_files():
            by_request.setdefault(request_id, []).append(path)
        queued = 0
        for request_id, paths in by_request.items():
            queued += await self.recall(request_id, paths)
        return queued

    # -- the service's calls ------------------------------------------------------------------

    async def recall(self, request_id: str, paths: Sequence[str] | None = None) -> int:
        """Stage ``paths`` (default: every non-terminal file) of a request; how many were queued.

        Files that need no tape (on disk already) or cannot be read are settled in the store at
        once; the others join their cartridge's queue.  Files already queued are left alone.
        """
        req = await self.store.get_request(request_id)
        if req is None:
            return 0
        lifetimes = {file.path: file.disk_lifetime for file in req.files if not file.state.terminal}
        wanted = list(lifetimes) if paths is None else [path for path in paths if path in lifetimes]
        settle: list[tuple[str, FileState, str | None, int]] = []
        jobs: list[_Job] = []
        now = asyncio.get_running_loop().time()
        wanted = [path for path in wanted if (request_id, path) not in self._jobs]
        entries = await self.store.get_files(wanted)
        for path in wanted:
            lifetime = lifetimes[path]
            pin = self.config.pin_lifetime if lifetime is None else lifetime
            entry = entries.get(path)
            outcome = self._classify(entry)
            if outcome is None:
                assert entry is not None and entry[2] is not None and entry[3] is not None
                jobs.append(_Job(request_id, path, entry[2], entry[3], entry[1], pin, now))
            else:
                settle.append((path, *outcome, pin))
        # Enqueue all at once, without awaiting in between: a queue is judged on the whole request.
        joined: list[_Job] = []
        for job in jobs:
            if (job.request_id, job.path) in self._jobs:
                continue
            self._jobs[job.request_id, job.path] = job
            self._queues[job.vid][job.request_id, job.path] = job
            session = self._sessions.get(job.vid)
            if session is not None and session.accepting:
                joined.append(job)
                session.wake.set()
        self._wake.set()
        at = _now()
        if settle:
            updates: list[FileUpdate] = [
                (path, state, error, at + pin if state is FileState.COMPLETED else None)
                for path, state, error, pin in settle
            ]
            await self.store.set_file_states(request_id, updates, at)
        await self._mark_started(joined)
        return len(jobs)

    async def cancel(self, request_id: str, paths: Sequence[str], at: int | None = None) -> bool:
        """``store.cancel`` (all or nothing), then drop the queued jobs of those files."""
        if not await self.store.cancel(request_id, paths, at):
            return False
        self._drop(request_id, set(paths))
        return True

    async def delete(self, request_id: str, at: int | None = None) -> bool:
        """``store.delete_request``, then drop every queued job of the request."""
        if not await self.store.delete_request(request_id, at):
            return False
        self._drop(request_id, None)
        return True

    @overload
    async def archive(
        self,
        path: str,
        size: int,
        pool: str,
        *,
        keep_on_disk: bool = True,
        if_unchanged: Literal[False] = False,
    ) -> CatalogueEntry: ...

    @overload
    async def archive(
        self,
        path: str,
        size: int,
        pool: str,
        *,
        keep_on_disk: bool = True,
        if_unchanged: Literal[True],
    ) -> CatalogueEntry | None: ...

    async def archive(
        self,
        path: str,
        size: int,
        pool: str,
        *,
        keep_on_disk: bool = True,
        if_unchanged: bool = False,
    ) -> CatalogueEntry | None:
        """Write a file to tape now: its (cartridge, position) comes next in its pool's order.

        Returns the catalogue entry.  Raises :class:`TapeFullError` when no cartridge has room.
        With ``if_unchanged`` (the archive flush), the file is written only if the catalogue
        still has it as DISK, not on tape, of this size (not deleted or rewritten since it
        was picked): None otherwise, and no tape space is used.
        """
        if size < 0:
            raise ValueError("negative size")
        if size == 0:
            await self.store.set_locality(path, Locality.NONE, 0)
            return (Locality.NONE, 0, None, None)
        locality = Locality.DISK_AND_TAPE if keep_on_disk else Locality.TAPE
        async with self._archive_lock:
            vid, position = await self._allocate(pool, size)
            if if_unchanged:
                if not await self.store.archived(path, size, locality, vid, position):
                    return None
            else:
                await self.store.set_locality(path, locality, size, vid, position)
            self._pool_tape[pool] = (vid, position + size)
        return (locality, size, vid, position)

    async def evict(self, path: str) -> bool:
        """Drop the disk copy of a file that is on tape (DISK_AND_TAPE -> TAPE); False otherwise."""
        entry = await self.store.get_file(path)
        if entry is None or entry[0] is not Locality.DISK_AND_TAPE:
            return False
        await self.store.set_locality(path, Locality.TAPE, entry[1], entry[2], entry[3])
        return True

    def queue_depths(self) -> dict[str, int]:
        """Files waiting per cartridge (non-empty queues only)."""
        return {vid: len(queue) for vid, queue in self._queues.items() if queue}

    def stats(self) -> LibraryStats:
        elapsed = 0.0
        if self._scheduler is not None or self._stopped_at is not None:
            end = self._stopped_at or asyncio.get_running_loop().time()
            elapsed = (end - self._started_at) * self._timing.time_scale
        return LibraryStats(
            mounts=dict(self._mounts),
            files_recalled=self._files_recalled,
            bytes_recalled=self._bytes_recalled,
            files_failed=self._files_failed,
            read_errors=self._read_errors,
            drive_failures=self._drive_failures,
            drive_busy=self._busy,
            elapsed=elapsed,
            drives=self.config.drives,
            queued_files=sum(len(queue) for queue in self._queues.values()),
            mounted=tuple(vid for vid, session in self._sessions.items() if session.accepting),
            in_drives=tuple(self._sessions),
        )

    # -- internals --------------------------------------------------------------------------

    def _classify(self, entry: CatalogueEntry | None) -> tuple[FileState, str | None] | None:
        """None when the file must come from tape, else its final state and error."""
        if entry is None:
            return (FileState.FAILED, ERR_UNKNOWN)
        locality, size, vid, position = entry
        if locality in (Locality.DISK, Locality.DISK_AND_TAPE):
            return (FileState.COMPLETED, None)
        if self.unreachable:
            return (FileState.FAILED, ERR_UNREACHABLE)
        if locality is Locality.NONE or size == 0:
            return (FileState.FAILED, ERR_EMPTY)
        if locality is Locality.LOST:
            return (FileState.FAILED, ERR_LOST)
        if locality is Locality.UNAVAILABLE or vid not in self._queues or position is None:
            return (FileState.FAILED, ERR_UNAVAILABLE)
        if self._cartridge_state.get(vid) is not CartridgeState.ACTIVE:
            return (FileState.FAILED, ERR_UNAVAILABLE)
        return None

    def _drop(self, request_id: str, paths: set[str] | None) -> None:
        if paths is None:
            keys = [key for key in self._jobs if key[0] == request_id]
        else:
            keys = [(request_id, path) for path in paths]
        for key in keys:
            job = self._jobs.pop(key, None)
            if job is not None:
                job.cancelled = True
                self._queues[job.vid].pop(key, None)

    async def _mark_started(self, jobs: Iterable[_Job]) -> None:
        await self._set_states(jobs, FileState.STARTED)

    async def _allocate(self, pool: str, size: int) -> tuple[str, int]:
        if not self._loaded:
            await self._load_cartridges()  # the pools' cartridges, also before start()
        cap = self.config.cartridge_capacity
        current = self._pool_tape.get(pool)
        if current is not None and current[1] + size <= cap:
            return current
        if size > cap:
            raise TapeFullError(f"a file of {size} bytes does not fit on a cartridge")
        own = self.config.pools.get(pool)
        if own is not None:
            # Continue on the first of the pool's cartridges with room (after a full one).
            start = 0 if current is None else own.index(current[0]) + 1
            for vid in own[start:]:
                position = await self.store.next_position(vid)
                if position + size <= cap:
                    return (vid, position)
            raise TapeFullError(f"no room left on the cartridges of pool {pool}")
        if self._claimed is None:
            shared = [vid for vid in self.config.vids if vid not in self._pool_of]
            self._claimed = {vid for vid in shared if await self.store.next_position(vid) > 0}
        if current is None:
            # After a restart: carry on with a cartridge the pool claimed before (in the store).
            for vid in self.config.vids:
                if self._pool_of.get(vid) == pool:
                    position = await self.store.next_position(vid)
                    if position + size <= cap:
                        return (vid, position)
        for vid in self.config.vids:
            if vid not in self._claimed and vid not in self._pool_of:
                self._claimed.add(vid)
                if not await self.store.claim_cartridge(vid, pool):
                    continue  # another frontend's pool got it first
                self._pool_of[vid] = pool
                return (vid, 0)
        raise TapeFullError("no empty cartridge left in the library")

    def _mountable_at(self, queue: dict[_Key, _Job]) -> float:
        """Loop time from which a non-empty queue is mountable (now or earlier: it is)."""
        oldest = min(job.enqueued for job in queue.values())
        size = sum(job.size for job in queue.values())
        if len(queue) >= self.config.mount_min_files or size >= self.config.mount_min_bytes:
            return oldest
        return oldest + self._timing.real(self.config.min_request_age)

    def _waiting(self, now: float) -> list[tuple[float, str]]:
        """(oldest job, vid) of the mountable queues without a drive, oldest first."""
        found = []
        for vid, queue in self._queues.items():
            if (
                queue
                and vid not in self._sessions
                and self._unreadable(vid) is None
                and self._mountable_at(queue) <= now
            ):
                found.append((min(job.enqueued for job in queue.values()), vid))
        return sorted(found)

    def _pool_allows(self, vid: str, leaving: str | None = None) -> bool:
        """Whether the pool of ``vid`` is under its drive cap (once ``leaving`` gave its up)."""
        pool = self._pool_of.get(vid)
        cap = None if pool is None else self.config.max_drives.get(pool)
        if cap is None:
            return True
        used = sum(1 for vid in self._sessions if vid != leaving and self._pool_of.get(vid) == pool)
        return used < cap

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            now = loop.time()
            blocked = False
            for _, vid in self._waiting(now):
                if not self._pool_allows(vid) or len(self._sessions) >= self.config.drives:
                    blocked = True
                else:
                    session = _Session(vid)
                    self._sessions[vid] = session
                    session.task = asyncio.create_task(self._session(session), name=f"tape-{vid}")
            if blocked:
                # Queues wait for a drive: an idle-mounted tape may give its drive up now.
                for session in self._sessions.values():
                    session.wake.set()
            # Sleep until woken (new jobs, a drive freed) or until a queue comes of age.
            later = [
                self._mountable_at(queue)
                for vid, queue in self._queues.items()
                if queue and vid not in self._sessions and self._unreadable(vid) is None
            ]
            due = [moment for moment in later if moment > now]
            timeout = min(due) - now if due else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _spend(self, seconds: float) -> None:
        self._busy += seconds
        await asyncio.sleep(self._timing.real(seconds))

    def _take_batch(self, vid: str) -> list[_Job]:
        """The next batch of a mounted cartridge, read in tape order.

        When the queue holds more than one batch, its requests take turns (round robin, one
        job each, each request's jobs in tape order) so that a huge request does not starve
        a small one that arrived later; the chosen jobs are then read in tape order.
        """
        queue = self._queues[vid]
        limit_files = self.config.batch_max_files
        limit_bytes = self.config.batch_max_bytes
        ordered = sorted(queue.values(), key=lambda job: job.position)
        if len(ordered) > limit_files or sum(job.size for job in ordered) > limit_bytes:
            per_request: dict[str, list[_Job]] = {}
            for job in ordered:
                per_request.setdefault(job.request_id, []).append(job)
            lanes = [iter(jobs) for jobs in per_request.values()]
            ordered = []
            while lanes:
                for lane in list(lanes):
                    turn = next(lane, None)
                    if turn is None:
                        lanes.remove(lane)
                    else:
                        ordered.append(turn)
        batch: list[_Job] = []
        size = 0
        for job in ordered:
            if batch and (len(batch) >= limit_files or size + job.size > limit_bytes):
                break
            batch.append(job)
            size += job.size
        for job in batch:
            del queue[job.request_id, job.path]
        return sorted(batch, key=lambda job: job.position)

    async def _session(self, session: _Session) -> None:
        """One mount of a cartridge: mount it, read batches of its queue until the queue
        stays empty (or another tape wants the drive), the tape becomes unreadable or the
        drive fails, then unmount it."""
        try:
            await self._mount(session)
            failed = False
            while not failed:
                batch = self._take_batch(session.vid)
                if batch:
                    failed = not await self._read_batch(session, batch)
                elif not await self._idle(session):
                    break
            await self._unmount(session, failed)
        finally:
            del self._sessions[session.vid]
            self._wake.set()

    async def _mount(self, session: _Session) -> None:
        """The robot brings the cartridge; the files waiting for it are STARTED."""
        self._mounts[session.vid] += 1
        await self._mark_started(list(self._queues[session.vid].values()))
        await self._spend(self._timing.mount())

    async def _idle(self, session: _Session) -> bool:
        """Stay mounted with an empty queue: True when new jobs came, False when the drive
        should go (another tape can use it, or ``idle_dismount`` passed)."""
        now = asyncio.get_running_loop().time()
        if any(self._pool_allows(other, session.vid) for _, other in self._waiting(now)):
            return False  # another tape can use this drive
        session.wake.clear()
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel.
        try:
            async with asyncio.timeout(self._timing.real(self._timing.idle_dismount)):
                await session.wake.wait()
        except TimeoutError:
            return False
        return True

    async def _read_batch(self, session: _Session, batch: Sequence[_Job]) -> bool:
        """Read a batch in tape order; False when the session must end (the tape became
        unreadable: the rest of the batch fails; the drive failed: the rest is queued again)."""
        for index, job in enumerate(batch):
            if job.cancelled:
                continue
            error = self._unreadable(session.vid)
            if error is not None:
                await self._give_up([left for left in batch[index:] if not left.cancelled], error)
                return False
            if not await self._room_for(job):
                await self._give_up([job], ERR_NO_SPACE)
                continue
            try:  # the room reserved in the buffer is given back whatever happens
                read = await self._locate_and_read(session, job)
            finally:
                if self.buffer is not None:
                    self.buffer.settle(job.size)
            if not read:
                self._requeue(session.vid, batch[index:])
                return False
        return True

    async def _locate_and_read(self, session: _Session, job: _Job) -> bool:
        """Move the head to the file and read it; False when the drive fails on the way."""
        distance = job.position - session.head
        await self._spend(self._timing.locate(distance, self.config.cartridge_capacity))
        session.head = job.position
        draw = self._draw("drive", session.vid, self._mounts[session.vid], job.path)
        if draw < self.drive_failure_probability:
            self._drive_failures += 1
            return False
        session.head = await self._read(session.vid, job)
        return True

    async def _give_up(self, jobs: Sequence[_Job], error: str) -> None:
        """Fail jobs of a session that will not be read, and forget them."""
        await self._fail(jobs, error)
        for job in jobs:
            self._jobs.pop((job.request_id, job.path), None)

    def _requeue(self, vid: str, jobs: Iterable[_Job]) -> None:
        """Put the unread (not cancelled) jobs of an aborted session back in their queue."""
        for job in jobs:
            if not job.cancelled:
                self._queues[vid][job.request_id, job.path] = job

    async def _unmount(self, session: _Session, failed: bool) -> None:
        """Rewind and unload (after a failure: unload only); no new jobs join meanwhile."""
        session.accepting = False
        await self._spend(self._timing.unload if failed else self._timing.dismount())

    async def _room_for(self, job: _Job) -> bool:
        """Wait for room in the disk buffer for one file (False: waited too long)."""
        if self.buffer is None:
            return True
        return await self.buffer.make_room(job.size, self._timing.real(self.config.buffer_wait))

    def _draw(self, *what: object) -> float:
        """A deterministic draw in [0, 1) from the seed and ``what``, whatever the task order."""
        return random.Random(":".join(map(str, (self.config.seed, *what)))).random()

    async def _read(self, vid: str, job: _Job) -> int:
        """Read one file (with retries); settle it in the store; the head position after it."""
        if self.stage_fault is not None:
            fault = await self.stage_fault(job.path)
            if fault is not None:
                error, delay = fault
                if delay:
                    await asyncio.sleep(delay)
                if error:
                    self._files_failed += 1
                    await self.store.set_file_state(
                        job.request_id, job.path, FileState.FAILED, _now(), error
                    )
                    self._jobs.pop((job.request_id, job.path), None)
                    self._settled(job, FileState.FAILED, error)
                    return job.position
        attempts = 1 + self.config.read_retries
        for attempt in range(attempts):
            if attempt:
                await self._spend(self._timing.locate_base)  # back to the start of the file
            await self._spend(self._timing.read(job.size))
            if self._draw("read", job.path, attempt) >= self.bad_file_probability:
                break
            self._read_errors += 1
        else:
            self._files_failed += 1
            at = _now()
            error = f"read error on tape {vid} after {attempts} attempts"
            await self.store.set_file_state(job.request_id, job.path, FileState.FAILED, at, error)
            await self.store.set_locality(job.path, Locality.LOST, job.size, vid, job.position)
            self._jobs.pop((job.request_id, job.path), None)
            self._settled(job, FileState.FAILED, error)
            return job.position + job.size
        self._files_recalled += 1
        self._bytes_recalled += job.size
        at = _now()
        # The file is on disk now, even if its request was cancelled meanwhile (then no pin),
        # unless the user deleted, renamed or rewrote it while it was read: then the catalogue
        # entry is not this tape copy's any more and stays as it is.
        pin = None if job.cancelled else at + job.pin_lifetime
        known = await self.store.recalled(
            job.request_id, job.path, job.size, vid, job.position, at, pin
        )
        if not known:
            await self.store.set_file_state(
                job.request_id, job.path, FileState.FAILED, at, ERR_GONE
            )
        self._settled(
            job, FileState.COMPLETED if known else FileState.FAILED, None if known else ERR_GONE
        )
        # Only now: a sync() meanwhile still sees the job and does not queue the file again.
        self._jobs.pop((job.request_id, job.path), None)
        if self._on_read is not None:
            self._on_read(vid, job.path, job.position)
        return job.position + job.size


def _now() -> int:
    return int(time.time())
