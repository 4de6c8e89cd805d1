"""The tape tier of one ``se`` process: the tape domain's one facade.

:class:`TapeService` owns the store, the simulated library and the disk buffer.  The HTTP
front (:mod:`se.tape.http`) parses, authorises and responds; what a request does to the
tape tier (submit, poll, cancel, delete, release, archiveinfo, the run-time switches and the
status) is a method here.  Other fronts ask :meth:`TapeService.check_readable`,
:meth:`TapeService.check_source`, :meth:`TapeService.file_localities` and
:meth:`TapeService.metric_lines`; the storage backend reports namespace changes
(:meth:`TapeService.written`, ``removed``, ``renamed``, ``copied``).

Every frontend (worker process, or ``se`` instance sharing a PostgreSQL store) records stage
requests and catalogue changes in the store.  Exactly one runs the :class:`TapeLibrary` (the
first worker of an ``se`` whose ``tape.library`` is true; on a shared PostgreSQL database, the
one of those that holds the library's lease, :mod:`se.tape.lease`, which another takes over
when its holder dies): it reads tape, flushes new files to tape, evicts from the disk buffer
and forgets old requests, and every ``tape.sync_interval`` it picks up what the other
frontends recorded (:meth:`TapeLibrary.sync`).

Flag model: the tape layer never deletes or changes user data.  The catalogue's locality says
whether the disk copy counts as present: a GET of a file that is only on tape (TAPE) is refused
with 503 until a stage request brings it back, although its bytes never left the filesystem.

Files under a tape prefix that the catalogue does not know (written before tape was enabled,
moved in from elsewhere) are adopted as DISK the first time they are looked at.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from se import metrics
from se.config import Config, TapeConfig, state_dir
from se.errors import BadRequest, ServiceUnavailable
from se.events import EventLog
from se.faults import FaultState, Rule
from se.storage.paths import DavPath, confine
from se.storage.types import Stat
from se.tape.buffer import BufferConfig, DiskBuffer
from se.tape.model import (
    ERR_DENIED,
    ERR_DIRECTORY,
    ERR_EMPTY,
    ERR_INVALID_PATH,
    ERR_LOST,
    ERR_MISSING,
    ERR_NOT_TAPE,
    ERR_UNAVAILABLE,
    ERR_UNREACHABLE,
    PROBABILITY_SWITCHES,
    UNREACHABLE,
    CartridgeState,
    FileState,
    Locality,
    StageRequest,
)
from se.tape.simulator import LibraryConfig, TapeFullError, TapeLibrary, TapeTiming
from se.tape.sql import CatalogueEntry, DuplicateRequestError
from se.tape.store import TapeStore
from se.tape.stores import open_store
from se.tape.wire import TapeProblem, user_status

if TYPE_CHECKING:
    from se.tape.lease import LibraryLease

__all__ = ["ArchiveItem", "StageItem", "TapeService", "database_path", "library_config"]

log = logging.getLogger("se.tape")

# How often (real seconds) the library forgets requests past their retention.
GC_PERIOD = 60.0
# Most new files looked at per archive flush.
FLUSH_BATCH = 10_000


# LibraryConfig fields that are not ``[tape]`` keys of the same name.
_NOT_TAPE_KEYS = frozenset({"timing", "pools", "max_drives"})
_CARTRIDGE_STATES = {state.value for state in CartridgeState}


def database_path(cfg: Config) -> str:
    """The tape database: ``tape.database``, else ``<state_dir>/tape.sqlite``."""
    return cfg.tape.database or str(state_dir(cfg) / "tape.sqlite")


def _same_names(cls: type[Any], tape: TapeConfig, leave_out: frozenset[str]) -> dict[str, Any]:
    """The ``[tape]`` values of the dataclass fields of ``cls`` (the same names)."""
    names = (field.name for field in dataclasses.fields(cls) if field.name not in leave_out)
    return {name: getattr(tape, name) for name in names}


def buffer_config(tape: TapeConfig) -> BufferConfig:
    return BufferConfig(tape.buffer_capacity, tape.high_watermark, tape.low_watermark)


def library_config(tape: TapeConfig) -> LibraryConfig:
    """The simulator's configuration from ``[tape]``; ValueError for impossible values (of
    the library, its timings or the disk buffer)."""
    timing = TapeTiming(**_same_names(TapeTiming, tape, frozenset()))
    buffer_config(tape)  # checks the buffer's settings
    return LibraryConfig(
        **_same_names(LibraryConfig, tape, _NOT_TAPE_KEYS),
        timing=timing,
        max_drives={pool.name: pool.max_drives for pool in tape.pools if pool.max_drives > 0},
    )


@dataclasses.dataclass(frozen=True, slots=True)
class StageItem:
    """One file of a STAGE request, as the HTTP front saw it (parsed, stat'ed, authorised)."""

    spelling: str  # the path as the client sent it (sanitised), echoed in polls
    path: DavPath | None  # the namespace path it names; None: not a valid path
    lifetime: int | None  # the diskLifetime asked for, seconds; None: the default
    metadata: dict[str, Any] | None  # our sitename's targetedMetadata entry
    stat: Stat | None  # None: missing (or invalid)
    denied: bool  # the caller may not stage it

    @property
    def key(self) -> str:
        """The key of the file in the store: its namespace path, else the spelling."""
        return self.spelling if self.path is None else str(self.path)


# One ARCHIVEINFO answer: (the path as the client spelled it, locality, error).
ArchiveItem = tuple[str, Locality | None, str | None]


class TapeService:
    def __init__(self, cfg: Config, run_library: bool) -> None:
        self.cfg = cfg.tape
        self.database = database_path(cfg)
        self.run_library = run_library and cfg.tape.library
        # Longest prefix first, so a nested prefix wins over its parent.
        pools = [(confine(pool.prefix), pool.name) for pool in cfg.tape.pools]
        self.pools = sorted(pools, key=lambda item: -len(item[0].segments))
        self._store: TapeStore | None = None
        self.library: TapeLibrary | None = None
        self.buffer: DiskBuffer | None = None
        self._lease: LibraryLease | None = None  # on a shared (PostgreSQL) database
        self.cartridge_states: dict[str, CartridgeState] = {}
        # Set by the application when enabled: per-path tape faults, and tape events.
        self.faults: FaultState | None = None
        self.events: EventLog | None = None
        self._archive_faulted: set[str] = set()  # paths whose archive fault was recorded
        self.settings: dict[str, object] = {}
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[Any]] = set()
        self._last_gc = -GC_PERIOD  # the first tick collects
        # What the library's own counters showed at the last metrics sync (sync_metrics).
        self._synced: dict[str, int] = {}
        self._synced_library: TapeLibrary | None = None
        self._queues_seen: set[str] = set()

    @property
    def store(self) -> TapeStore:
        if self._store is None:
            raise RuntimeError("the tape service is not started")
        return self._store

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._store = await open_store(self.database)
        if self.run_library and self.database.startswith(("postgresql://", "postgres://")):
            # Several frontends may share the database: the lease holder runs the library
            # (the others take it over when it dies; se.tape.lease).
            from se.tape.lease import LibraryLease

            self._lease = LibraryLease(self.database)
        await self._claim_library()
        await self._refresh()
        self._task = asyncio.create_task(self._run(), name="tape-service")

    async def _claim_library(self) -> None:
        """Start the library here if this frontend may run it (and holds the lease, on a
        shared database); stop it when the lease was lost."""
        if not self.run_library:
            return
        lease = self._lease
        if lease is not None:
            if self.library is not None:
                if await lease.held():
                    return
                log.error("tape: library lease lost; the library stops here")
                await self.library.stop()
                self.library = self.buffer = None
            if not await lease.acquire():
                return
            log.warning("tape: this frontend runs the library (lease taken)")
        elif self.library is not None:
            return
        store = self.store
        self.buffer = DiskBuffer(store, buffer_config(self.cfg))
        self.library = TapeLibrary(store, library_config(self.cfg), buffer=self.buffer)
        if self.faults is not None:
            self.library.stage_fault = self._stage_fault
        if self.events is not None:
            self.library.on_settled = self._settled
        await self.library.start()
        queued = await self.library.sync()  # resumes what a previous run left pending
        if queued:
            log.info("tape: resumed %d pending recall(s)", queued)

    async def _stage_fault(self, path: str) -> tuple[str | None, float] | None:
        """A fault rule for the tape read of ``path``: (error, delay), recorded as an event."""
        assert self.faults is not None
        loop = asyncio.get_running_loop()
        rule = await loop.run_in_executor(None, self.faults.tape, "stage", path)
        if rule is None:
            return None
        self.event("fault", rule=rule.id, actions=["stage"], method="STAGE", path=path)
        return rule.stage_error, rule.stage_delay

    def _archive_fault(self, path: str) -> Rule | None:
        """The archive rule of ``path`` (a look: archive polls and flushes do not count)."""
        if self.faults is None:
            return None
        rule = self.faults.tape("archive", path, count=False)
        if rule is not None and path not in self._archive_faulted:
            self._archive_faulted.add(path)
            self.event("fault", rule=rule.id, actions=["archive"], method="ARCHIVE", path=path)
        return rule

    def _settled(self, request_id: str, path: str, state: FileState, error: str | None) -> None:
        self.event(
            "tape",
            operation="recall",
            request=request_id,
            path=path,
            state=state.value,
            error=error,
        )

    def event(self, kind: str, **fields: Any) -> None:
        """Record a tape event (events enabled)."""
        if self.events is not None:
            self.events.record(kind, **fields)

    async def close(self) -> None:
        tasks = [task for task in (self._task, *self._background) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.library is not None:
            await self.library.stop()
        if self._lease is not None:
            await self._lease.close()
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.sync_interval)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("tape: periodic work failed")

    async def tick(self) -> None:
        """One round of the periodic work (also called by tests to skip the wait)."""
        await self._refresh()
        await self._claim_library()
        if self.library is None or self.buffer is None:
            self.sync_metrics()
            return
        await self.library.sync()
        await self.flush()
        await self.buffer.collect()
        self.sync_metrics()
        now = time.monotonic()
        if now - self._last_gc >= GC_PERIOD:
            self._last_gc = now
            await self.store.gc(int(time.time() - self.cfg.request_retention))

    async def _refresh(self) -> None:
        self.settings = await self.store.settings()
        cartridges = await self.store.cartridges()
        self.cartridge_states = {vid: state for vid, (_pool, state) in cartridges.items()}

    def queue(self, request_id: str) -> None:
        """Hand a new request to the library now (else the next sync picks it up)."""
        library = self.library
        if library is None:
            return
        task = asyncio.ensure_future(library.recall(request_id))
        self._background.add(task)
        task.add_done_callback(self._finished)

    # -- stage requests ---------------------------------------------------------------------

    async def submit(self, owner: str, items: Sequence[StageItem]) -> str:
        """Record a stage request of ``owner``; its id.

        Each file starts settled (invalid, denied, missing, a directory, not tape-backed,
        already on disk, not recallable) or SUBMITTED; the SUBMITTED ones are handed to the
        library in the background.  A diskLifetime above ``max_pin_lifetime`` is cut.
        TapeProblem 429 when the owner has ``max_active_requests`` active requests already.
        """
        cfg = self.cfg
        if await self.store.count_active(owner) >= cfg.max_active_requests:
            raise TapeProblem(
                429,
                "Too many requests",
                f"{owner} has {cfg.max_active_requests} active stage requests already",
            )
        lifetimes = [
            None if item.lifetime is None else min(item.lifetime, cfg.max_pin_lifetime)
            for item in items
        ]
        now = int(time.time())
        on_tape = [
            (item.path, item.stat.size)
            for item in items
            if item.path is not None and item.stat is not None and not item.stat.is_dir
        ]
        localities = await self.localities(on_tape)
        unreachable = bool(self.settings.get(UNREACHABLE))
        states: list[tuple[FileState, str | None]] = []
        pins: list[int | None] = []
        for item, lifetime in zip(items, lifetimes, strict=True):
            state = self._initial_state(item, localities.get(item.key), unreachable)
            completed = state[0] is FileState.COMPLETED
            states.append(state)
            pins.append(
                now + (cfg.pin_lifetime if lifetime is None else lifetime) if completed else None
            )
        files = [
            (item.key, lifetime, item.metadata)
            for item, lifetime in zip(items, lifetimes, strict=True)
        ]
        request_id = str(uuid.uuid4())
        try:
            await self.store.create_request(
                request_id,
                owner,
                now,
                files,
                states,
                spellings=[item.spelling for item in items],
                pins=pins,
            )
        except DuplicateRequestError:  # pragma: no cover - a uuid4 collision
            raise TapeProblem(500, "Internal error", "request id collision; retry") from None
        metrics.TAPE_REQUESTS.inc()
        metrics.TAPE_FILES_REQUESTED.inc(len(files))
        if any(state is FileState.SUBMITTED for state, _error in states):
            self.queue(request_id)  # in the background: the caller does not wait for the queues
        return request_id

    def _initial_state(
        self, item: StageItem, locality: Locality | None, unreachable: bool
    ) -> tuple[FileState, str | None]:
        """What a file of a new request starts as: settled at once, or SUBMITTED."""
        if item.path is None:
            return (FileState.FAILED, ERR_INVALID_PATH)
        if item.denied:
            return (FileState.FAILED, ERR_DENIED)
        if item.stat is None:
            return (FileState.FAILED, ERR_MISSING)
        if item.stat.is_dir:
            return (FileState.FAILED, ERR_DIRECTORY)
        if self.pool_of(item.path) is None:
            return (FileState.FAILED, ERR_NOT_TAPE)
        if locality in (Locality.DISK, Locality.DISK_AND_TAPE):
            return (FileState.COMPLETED, None)
        settled = {
            Locality.NONE: ERR_EMPTY,
            Locality.LOST: ERR_LOST,
            Locality.UNAVAILABLE: ERR_UNAVAILABLE,
        }
        if locality in settled:
            return (FileState.FAILED, settled[locality])
        if unreachable:
            return (FileState.FAILED, ERR_UNREACHABLE)
        return (FileState.SUBMITTED, None)

    async def get(self, request_id: str) -> StageRequest | None:
        """A stage request, None when there is none of that id (or it was forgotten)."""
        return await self.store.get_request(request_id)

    async def cancel(self, request_id: str, keys: Sequence[str]) -> None:
        """Cancel files of a request (all or nothing); their queued recalls are dropped."""
        if self.library is not None:
            await self.library.cancel(request_id, keys)
        else:
            await self.store.cancel(request_id, keys)

    async def delete(self, request_id: str) -> None:
        """Delete a request: its unfinished files are cancelled, its pins released."""
        if self.library is not None:
            await self.library.delete(request_id)
        else:
            await self.store.delete_request(request_id)

    async def release(self, request_id: str, keys: Sequence[str]) -> None:
        """Release the pins a request holds on these files."""
        await self.store.release(request_id, keys)

    async def release_owner(self, owner: str, keys: Sequence[str]) -> None:
        """Release the pins every request of ``owner`` holds on these files."""
        await self.store.release_owner(owner, keys)

    async def archive_info(
        self,
        files: Sequence[tuple[str, DavPath | None, Stat | None]],
        writing: Collection[DavPath] = (),
    ) -> list[ArchiveItem]:
        """ARCHIVEINFO of (spelling, path, stat) triples; the path is None when invalid or
        not visible to the caller, the stat None when the file is missing.

        A missing file in ``writing`` (an upload or TPC pull into it is in progress) is on
        disk only: DISK, so that FTS may clean up after a transfer it gives up on.  Once the
        write ends, the file's own locality applies (a failed write leaves it missing)."""
        on_tape = [
            (path, stat.size)
            for _spelling, path, stat in files
            if path is not None and stat is not None and not stat.is_dir
        ]
        localities = await self.localities(on_tape)
        items: list[ArchiveItem] = []
        for spelling, path, stat in files:
            if path is not None and stat is None and path in writing:
                items.append((spelling, Locality.DISK, None))
            elif path is None or stat is None:
                items.append((spelling, None, ERR_MISSING))
            elif stat.is_dir:
                items.append((spelling, None, ERR_DIRECTORY))
            elif self.pool_of(path) is None:
                # Never going to tape: on disk, and nothing more.  No per-file error: gfal2
                # before 2.23 (Debian's 2.21) fails ``user.status`` on any ``error`` key,
                # locality or not.  (An archive poll of such a file therefore waits, as for
                # any file not yet on tape.)
                items.append((spelling, Locality.DISK, None))
            else:
                locality = localities.get(str(path))
                rule = self._archive_fault(str(path)) if locality is Locality.DISK else None
                error = rule.archive_error if rule is not None else None
                items.append((spelling, locality, error))
        return items

    # -- run-time switches and status -------------------------------------------------------

    async def set_switches(self, switches: Mapping[str, object]) -> None:
        """Apply switches in order (BadRequest at the first bad one), then one :meth:`tick`.

        ``unreachable``: bool; the probabilities: a number in [0, 1] or None for the
        configured value; ``cartridges``: {vid: state}; ``flush`` / ``evict``: true to
        archive every waiting file / to evict every unpinned on-tape file now.
        """
        for key, value in switches.items():
            await self._switch(key, value)
        await self.tick()

    async def _switch(self, key: str, value: object) -> None:
        if key == UNREACHABLE:
            if not isinstance(value, bool):
                raise BadRequest(f"{UNREACHABLE}: true or false")
            await self.store.set_setting(key, value or None)
        elif key in PROBABILITY_SWITCHES:
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1
            ):
                raise BadRequest(f"{key}: a number between 0 and 1, or null for the default")
            await self.store.set_setting(key, value)
        elif key == "cartridges":
            if not isinstance(value, dict) or not all(
                isinstance(state, str) and state.upper() in _CARTRIDGE_STATES
                for state in value.values()
            ):
                raise BadRequest(f"cartridges: {{vid: state}}, states {sorted(_CARTRIDGE_STATES)}")
            for vid, state in value.items():
                await self.store.set_cartridge_state(str(vid), CartridgeState(state.upper()))
        elif key in ("flush", "evict"):
            if not isinstance(value, bool):
                raise BadRequest(f"{key}: true or false")
            if value and key == "flush":
                await self.flush(force=True)
            elif value and self.buffer is not None:
                await self.buffer.evict_unpinned()
        else:
            raise BadRequest(f"unknown switch {key!r}")

    async def status(self) -> dict[str, Any]:
        """What ``se tape status`` prints: drives, queues, buffer, switches, requests."""
        counts = await self.store.locality_counts()
        out: dict[str, Any] = {
            "library": self.library is not None,
            "settings": self.settings,
            "cartridges": {vid: state.value for vid, state in self.cartridge_states.items()},
            "localities": {
                locality.value: {"files": files, "bytes": size}
                for locality, (files, size) in counts.items()
            },
        }
        library = self.library
        if library is not None:
            stats = library.stats()
            out["drives"] = {"total": stats.drives, "mounted": list(stats.in_drives)}
            out["queued_files"] = stats.queued_files
            out["queues"] = library.queue_depths()
            out["mounts"] = {vid: mounts for vid, mounts in stats.mounts.items() if mounts}
            out["files_recalled"] = stats.files_recalled
            out["bytes_recalled"] = stats.bytes_recalled
            out["files_failed"] = stats.files_failed
            out["drive_failures"] = stats.drive_failures
            out["utilisation"] = round(stats.utilisation, 4)
        if self.buffer is not None:
            out["buffer"] = {
                "capacity": self.buffer.config.capacity,
                "used": await self.buffer.usage(),
                "evicted_files": self.buffer.evicted_files,
            }
        return out

    def sync_metrics(self) -> None:
        """Bring the tape families of ``se.metrics`` up to the library's own counters (the
        library runs in one worker; each tick adds what changed since the last one)."""
        library = self.library
        if library is None:
            metrics.TAPE_DRIVES_IN_USE.set(0)
            for vid in self._queues_seen:
                metrics.TAPE_QUEUED_FILES.labels(vid).set(0)
            self._queues_seen.clear()
            return
        if self._synced_library is not library:  # (a new one counts from 0)
            self._synced_library = library
            self._synced = {}
        stats = library.stats()
        now = {
            "recalled": stats.files_recalled,
            "failed": stats.files_failed,
            "bytes": stats.bytes_recalled,
            "drive_failures": stats.drive_failures,
            "evicted": self.buffer.evicted_files if self.buffer is not None else 0,
        }
        now.update({f"mounts {vid}": mounts for vid, mounts in stats.mounts.items()})
        synced = self._synced
        for key, total in now.items():
            step = total - synced.get(key, 0)
            if step <= 0:
                continue
            synced[key] = total
            if key == "recalled":
                metrics.TAPE_RECALLED_FILES.labels("ok").inc(step)
            elif key == "failed":
                metrics.TAPE_RECALLED_FILES.labels("failed").inc(step)
            elif key == "bytes":
                metrics.TAPE_RECALLED_BYTES.inc(step)
            elif key == "drive_failures":
                metrics.TAPE_DRIVE_FAILURES.inc(step)
            elif key == "evicted":
                metrics.TAPE_EVICTED_FILES.inc(step)
            else:
                metrics.TAPE_MOUNTS.labels(key.removeprefix("mounts ")).inc(step)
        metrics.TAPE_DRIVES_IN_USE.set(len(stats.in_drives))
        depths = library.queue_depths()
        for vid in self._queues_seen - depths.keys():
            metrics.TAPE_QUEUED_FILES.labels(vid).set(0)
        for vid, depth in depths.items():
            metrics.TAPE_QUEUED_FILES.labels(vid).set(depth)
        self._queues_seen = set(depths)

    # -- archive ----------------------------------------------------------------------------

    async def flush(self, force: bool = False) -> int:
        """Write the waiting new files of each pool whose archive criteria are met; how many."""
        library = self.library
        if library is None:
            return 0
        waiting: dict[str, list[tuple[str, int, int]]] = {}
        for path, size, written in await self.store.unarchived(FLUSH_BATCH):
            pool = self.pool_of(confine(path))
            if pool is not None:
                waiting.setdefault(pool, []).append((path, size, written))
        age = self.cfg.archive_min_age / self.cfg.time_scale
        now = time.time()
        done = 0
        for pool, files in waiting.items():
            due = (
                force
                or len(files) >= self.cfg.archive_min_files
                or sum(size for _path, size, _written in files) >= self.cfg.archive_min_bytes
                or now - min(written for _path, _size, written in files) >= age
            )
            if not due:
                continue
            for path, size, written in files:
                rule = self._archive_fault(path)
                if rule is not None and (rule.archive_error or now - written < rule.archive_delay):
                    continue  # held on disk by a fault rule (failed, or not yet due)
                try:
                    entry = await library.archive(path, size, pool, if_unchanged=True)
                except TapeFullError as exc:
                    log.error("tape: cannot archive %s: %s", path, exc)
                    break
                done += entry is not None
        metrics.TAPE_ARCHIVED_FILES.inc(done)
        return done

    # -- the namespace ----------------------------------------------------------------------

    def pool_of(self, path: DavPath) -> str | None:
        """The tape pool of a path, None when it is not tape-backed."""
        for prefix, pool in self.pools:
            if path.is_within(prefix):
                return pool
        return None

    def _involved(self, path: DavPath) -> bool:
        """Whether ``path`` is tape-backed or contains tape-backed paths."""
        return any(path.is_within(prefix) or prefix.is_within(path) for prefix, _ in self.pools)

    async def written(self, path: DavPath, size: int) -> None:
        """A file was (re)written: new data is on disk only (a zero-length file: NONE)."""
        if self.pool_of(path) is None:
            return
        key = str(path)
        await self.store.set_locality(key, Locality.NONE if size == 0 else Locality.DISK, size)
        await self.store.touch(key, int(time.time()))  # when it was written: the archive age

    async def removed(self, path: DavPath) -> None:
        if self._involved(path):
            await self.store.forget_tree(str(path))

    async def renamed(self, src: DavPath, dst: DavPath) -> None:
        """A rename keeps the tape copies; out of the tape area, the entries are dropped."""
        if not (self._involved(src) or self._involved(dst)):
            return
        if self.pool_of(dst) is None:
            await self.store.forget_tree(str(src))
            await self.store.forget_tree(str(dst))
        else:
            await self.store.rename(str(src), str(dst))

    async def copied(self, dst: DavPath, size: int | None) -> None:
        """A copy landed at ``dst`` (``size`` None: a tree, adopted when looked at)."""
        if not self._involved(dst):
            return
        await self.store.forget_tree(str(dst))
        if size is not None:
            await self.written(dst, size)

    async def localities(self, files: Iterable[tuple[DavPath, int]]) -> dict[str, Locality | None]:
        """Locality of existing files (path, size): None outside the tape area.

        Unknown files under a tape prefix are adopted as DISK (NONE when empty); a TAPE file
        on a cartridge that is not ACTIVE shows UNAVAILABLE.
        """
        todo = [(str(path), size) for path, size in files if self.pool_of(path) is not None]
        out: dict[str, Locality | None] = {}
        known = await self.store.get_files([key for key, _size in todo]) if todo else {}
        new = [(key, Locality.NONE if size == 0 else Locality.DISK, size) for key, size in todo]
        new = [item for item in new if item[0] not in known]
        if new:
            await self.store.adopt(new, int(time.time()))
        for key, locality, size in new:
            known[key] = (locality, size, None, None)
        for key, _size in todo:
            out[key] = self._shown(known[key])
        return out

    async def locality(self, path: DavPath, size: int) -> Locality | None:
        return (await self.localities([(path, size)])).get(str(path))

    def _shown(self, entry: CatalogueEntry) -> Locality:
        locality, _size, vid, _pos = entry
        if locality is Locality.TAPE and vid is not None:
            state = self.cartridge_states.get(vid, CartridgeState.ACTIVE)
            if state is not CartridgeState.ACTIVE:
                return Locality.UNAVAILABLE
        return locality

    async def file_localities(self, files: Iterable[tuple[DavPath, int]]) -> dict[str, str]:
        """The SRM FileLocality (``ONLINE``, ``NEARLINE``...) PROPFIND shows for each file
        (path, size) given: from the catalogue under tape prefixes, else ONLINE."""
        files = list(files)
        found = await self.localities(files)
        return {str(path): user_status(found.get(str(path), Locality.DISK)) for path, _ in files}

    async def check_source(self, stat: Stat | None, path: DavPath) -> None:
        """:meth:`check_readable` for the source of a COPY (a file or a collection)."""
        if stat is None:
            return
        if not stat.is_dir:
            await self.check_readable(path, stat.size)
            return
        if self._involved(path):
            bad = await self.store.offline_below(str(path))
            if bad is not None:
                raise ServiceUnavailable(
                    f"{bad}: is on tape only (NEARLINE): stage it before copying {path}",
                    headers={"Retry-After": str(self.cfg.retry_after)},
                )

    async def check_readable(self, path: DavPath, size: int) -> None:
        """Refuse reading a file whose disk copy is gone (no recall is triggered: v1.3
        separates read from stage); note the access for LRU eviction otherwise."""
        if self.pool_of(path) is None:
            return
        locality = await self.locality(path, size)
        if locality in (Locality.TAPE, Locality.UNAVAILABLE, Locality.LOST):
            metrics.TAPE_READS_REFUSED.inc()
            what = {
                Locality.TAPE: "is on tape only (NEARLINE): stage it with the tape REST API",
                Locality.UNAVAILABLE: "is on a tape that is unavailable",
                Locality.LOST: "is lost on tape",
            }[locality]
            raise ServiceUnavailable(
                f"{path}: {what}", headers={"Retry-After": str(self.cfg.retry_after)}
            )
        if locality is Locality.DISK_AND_TAPE:
            task = asyncio.ensure_future(self.store.touch(str(path), int(time.time())))
            self._background.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("tape: background call failed: %s", task.exception())
