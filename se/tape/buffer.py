"""The disk buffer in front of the simulated tape: capacity, watermarks, pins and LRU eviction.

Flag model: the tape layer never deletes user data.  A file's bytes stay in the POSIX tree
whatever its locality; "evicting" a file that is on tape (DISK_AND_TAPE) only marks it TAPE in
the catalogue, after which WebDAV reads of it are refused until it is staged again.  The
buffer's usage is what the catalogue holds on disk: DISK and DISK_AND_TAPE files.

* :meth:`DiskBuffer.collect` drops expired pins and, when usage is above the high watermark,
  evicts unpinned DISK_AND_TAPE files, least recently used first, down to the low watermark.
* :meth:`DiskBuffer.make_room` is what a recall waits on before it reads a file: it evicts what
  it may and otherwise waits (a buffer full of pinned files stalls recalls, it does not fail
  them) until its patience passes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from se.tape.model import Locality
from se.tape.store import TapeStore

__all__ = ["BufferConfig", "DiskBuffer"]


@dataclass(frozen=True)
class BufferConfig:
    capacity: int = 10**12  # bytes; 0: unlimited (no eviction, recalls never wait)
    high_watermark: float = 0.9
    low_watermark: float = 0.8
    poll: float = 0.2  # real seconds between two looks while a recall waits for space

    def __post_init__(self) -> None:
        if self.capacity < 0:
            raise ValueError("buffer_capacity: must not be negative")
        if not 0.0 < self.low_watermark <= self.high_watermark <= 1.0:
            raise ValueError("watermarks: 0 < low <= high <= 1")
        if self.poll <= 0:
            raise ValueError("poll must be positive")


class DiskBuffer:
    def __init__(self, store: TapeStore, config: BufferConfig) -> None:
        self.store = store
        self.config = config
        self.evicted_files = 0
        self.evicted_bytes = 0
        # Bytes promised to reads under way (make_room) and not yet in the catalogue.
        self.reserved = 0
        self._lock = asyncio.Lock()

    async def usage(self) -> int:
        return await self.store.disk_usage()

    async def collect(self, now: int | None = None) -> int:
        """Expire pins, then evict down to the low watermark if above the high one; bytes freed."""
        now = int(time.time()) if now is None else now
        await self.store.expire_pins(now)
        cap = self.config.capacity
        if cap == 0:
            return 0
        usage = await self.usage()
        if usage <= cap * self.config.high_watermark:
            return 0
        return await self._evict(usage - int(cap * self.config.low_watermark), now)

    async def make_room(self, size: int, patience: float) -> bool:
        """Wait until ``size`` more bytes fit (evicting what may go) and reserve them; False
        after ``patience`` s.  Every True must be followed by :meth:`settle` once the file is
        in the catalogue (or its read failed)."""
        cap = self.config.capacity
        if cap == 0:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        while True:
            now = int(time.time())
            usage = await self.usage() + self.reserved
            # Only what this file needs: the watermarks are collect()'s business, and a
            # file kept is a recall saved.
            if usage + size > cap:
                await self.store.expire_pins(now)
                await self._evict(usage + size - cap, now)
                usage = await self.usage()
            # No await between this check and the reservation: other readers see it.
            if usage + self.reserved + size <= cap:
                self.reserved += size
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(self.config.poll, left))

    def settle(self, size: int) -> None:
        """A reserved file is in the catalogue now (or will not be): release its reservation."""
        self.reserved = max(0, self.reserved - size)

    async def evict_unpinned(self) -> int:
        """Evict every on-tape file without a live pin now (an admin's "drop the cache")."""
        now = int(time.time())
        await self.store.expire_pins(now)
        return await self._evict(1 << 62, now)

    async def _evict(self, wanted: int, now: int) -> int:
        """Evict unpinned on-tape files, LRU first, until ``wanted`` bytes are freed; freed."""
        freed = 0
        async with self._lock:
            for _round in range(10_000):  # bounded: each round marks its victims TAPE
                if freed >= wanted:
                    break
                victims = await self.store.lru_evictable(now, 256)
                if not victims:
                    break
                for path, size in victims:
                    entry = await self.store.get_file(path)
                    if entry is None or entry[0] is not Locality.DISK_AND_TAPE:
                        continue
                    await self.store.set_locality(path, Locality.TAPE, entry[1], entry[2], entry[3])
                    freed += size
                    self.evicted_files += 1
                    self.evicted_bytes += size
                    if freed >= wanted:
                        break
        return freed
