"""The listing cache's byte bound holds for the memory it really takes (tracemalloc).

Each kept member costs its fragment's bytes and MEMBER_COST beside them (name, identity
tuple, pair, dict slot); counting less let a worker's listings grow past the bound.
"""

from __future__ import annotations

import gc
import os
import tracemalloc

import pytest

from se.storage.statcache import ListingCache
from se.storage.types import Identity

MAX_BYTES = 8 * 1024 * 1024


def _listing(d: int, members: int, fragment: int) -> dict[str, tuple[Identity, bytes]]:
    out: dict[str, tuple[Identity, bytes]] = {}
    for i in range(members):
        name = f"run{d:04d}-file-{i:06d}-{os.urandom(4).hex()}.root"
        ident: Identity = (False, 2049, 10_000_000 + d * members + i, 4096 + i, 1 << 60, 1 << 61)
        out[name] = (ident, os.urandom(fragment // 2).hex().encode())
    return out


@pytest.mark.parametrize("fragment", [120, 400, 900])
def test_kept_listings_stay_within_max_bytes(fragment: int) -> None:
    gc.collect()
    tracemalloc.start()
    try:
        cache = ListingCache(max_dirs=10_000, max_bytes=MAX_BYTES, settle_ns=0)
        before = tracemalloc.get_traced_memory()[0]
        for d in range(200):  # far more than fits: the oldest are evicted
            cache.replace(("dir", d), _listing(d, 300, fragment))
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache) < 200  # (the bound was reached)
    assert used <= MAX_BYTES * 1.1, f"{used / MAX_BYTES:.2f}x max_bytes"
