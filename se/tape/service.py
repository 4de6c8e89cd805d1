"""The tape tier of one ``se`` process: the store, the simulated library, and what WebDAV asks.

Every frontend (worker process, or ``se`` instance sharing a PostgreSQL store) records stage
requests and catalogue changes in the store.  Exactly one runs the :class:`TapeLibrary` (the
first worker of the ``se`` whose ``tape.library`` is true): it reads tape, flushes new files to
tape, evicts from the disk buffer and forgets old requests, and every ``tape.sync_interval``
it picks up what the other frontends recorded (:meth:`TapeLibrary.sync`).

Flag model: the tape layer never deletes or changes user data.  The catalogue's locality says
whether the disk copy counts as present: a GET of a file that is only on tape (TAPE) is refused
with 503 until a stage request brings it back, although its bytes never left the filesystem.

Files under a tape prefix that the catalogue does not know (written before tape was enabled,
moved in from elsewhere) are adopted as DISK the first time they are looked at.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from se.config import Config, TapeConfig, state_dir
from se.errors import ServiceUnavailable
from se.storage.paths import DavPath, confine
from se.storage.posix import Stat
from se.tape.buffer import BufferConfig, DiskBuffer
from se.tape.model import CartridgeState, Locality
from se.tape.simulator import LibraryConfig, TapeFullError, TapeLibrary, TapeTiming
from se.tape.store import CatalogueEntry, TapeStore, open_store

__all__ = ["TapeService", "library_config"]

log = logging.getLogger("se.tape")

# How often (real seconds) the library forgets requests past their retention.
GC_PERIOD = 60.0
# Most new files looked at per archive flush.
FLUSH_BATCH = 10_000


def pool_name(path: str, pool: str) -> str:
    return pool or "/" + "/".join(seg for seg in path.split("/") if seg)


def library_config(t: TapeConfig) -> LibraryConfig:
    """The simulator's configuration from ``[tape]`` (ValueError for impossible values)."""
    timing = TapeTiming(
        robot_exchange=t.robot_exchange,
        load=t.load,
        locate_base=t.locate_base,
        locate_full=t.locate_full,
        read_rate=t.read_rate,
        file_overhead=t.file_overhead,
        rewind=t.rewind,
        unload=t.unload,
        idle_dismount=t.idle_dismount,
        time_scale=t.time_scale,
    )
    BufferConfig(t.buffer_capacity, t.high_watermark, t.low_watermark)
    return LibraryConfig(
        drives=t.drives,
        cartridges=t.cartridges,
        cartridge_capacity=t.cartridge_capacity,
        mount_min_bytes=t.mount_min_bytes,
        mount_min_files=t.mount_min_files,
        min_request_age=t.min_request_age,
        batch_max_files=t.batch_max_files,
        batch_max_bytes=t.batch_max_bytes,
        pin_lifetime=t.pin_lifetime,
        seed=t.seed,
        bad_file_probability=t.bad_file_probability,
        read_retries=t.read_retries,
        drive_failure_probability=t.drive_failure_probability,
        buffer_wait=t.buffer_wait,
        timing=timing,
        max_drives={pool_name(p.path, p.pool): p.max_drives for p in t.pools if p.max_drives > 0},
    )


class TapeService:
    def __init__(self, cfg: Config, run_library: bool) -> None:
        self.cfg = cfg.tape
        self.database = cfg.tape.database or str(state_dir(cfg) / "tape.sqlite")
        self.run_library = run_library and cfg.tape.library
        # Longest prefix first, so a nested prefix wins over its parent.
        pools = [(confine(p.path), pool_name(p.path, p.pool)) for p in cfg.tape.pools]
        self.pools = sorted(pools, key=lambda item: -len(item[0].segments))
        self._store: TapeStore | None = None
        self.library: TapeLibrary | None = None
        self.buffer: DiskBuffer | None = None
        self.cartridge_states: dict[str, CartridgeState] = {}
        self.settings: dict[str, object] = {}
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[Any]] = set()
        self._last_gc = -GC_PERIOD  # the first tick collects
        # Counters for /.well-known/se/metrics (this process).
        self.requests_created = 0
        self.files_requested = 0
        self.files_archived = 0
        self.reads_refused = 0

    @property
    def store(self) -> TapeStore:
        if self._store is None:
            raise RuntimeError("the tape service is not started")
        return self._store

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._store = await open_store(self.database)
        if self.run_library:
            t = self.cfg
            self.buffer = DiskBuffer(
                self._store, BufferConfig(t.buffer_capacity, t.high_watermark, t.low_watermark)
            )
            self.library = TapeLibrary(self._store, library_config(t), buffer=self.buffer)
            await self.library.start()
            queued = await self.library.sync()  # resumes what a previous run left pending
            if queued:
                log.info("tape: resumed %d pending recall(s)", queued)
        await self._refresh()
        self._task = asyncio.create_task(self._run(), name="tape-service")

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.library is not None:
            await self.library.stop()
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
        if self.library is None or self.buffer is None:
            return
        await self.library.sync()
        await self.flush()
        await self.buffer.collect()
        now = time.monotonic()
        if now - self._last_gc >= GC_PERIOD:
            self._last_gc = now
            await self.store.gc(int(time.time() - self.cfg.request_retention))

    async def _refresh(self) -> None:
        self.settings = await self.store.settings()
        self.cartridge_states = {v: s for v, (_p, s) in (await self.store.cartridges()).items()}

    def queue(self, request_id: str) -> None:
        """Hand a new request to the library now (else the next sync picks it up)."""
        library = self.library
        if library is None:
            return
        task = asyncio.ensure_future(library.recall(request_id))
        self._background.add(task)
        task.add_done_callback(self._finished)

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
                or sum(f[1] for f in files) >= self.cfg.archive_min_bytes
                or now - min(f[2] for f in files) >= age
            )
            if not due:
                continue
            for path, size, _written in files:
                try:
                    entry = await library.archive(path, size, pool, if_unchanged=True)
                except TapeFullError as exc:
                    log.error("tape: cannot archive %s: %s", path, exc)
                    break
                done += entry is not None
        self.files_archived += done
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
        return any(path.is_within(p) or p.is_within(path) for p, _ in self.pools)

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
        todo = [(str(p), size) for p, size in files if self.pool_of(p) is not None]
        out: dict[str, Locality | None] = {}
        known = await self.store.get_files([k for k, _ in todo]) if todo else {}
        new = [(k, Locality.NONE if size == 0 else Locality.DISK, size) for k, size in todo]
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

    async def check_source(self, st: Stat | None, path: DavPath) -> None:
        """:meth:`check_readable` for the source of a COPY (a file or a collection)."""
        if st is None:
            return
        if not st.is_dir:
            await self.check_readable(path, st.size)
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
            self.reads_refused += 1
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
