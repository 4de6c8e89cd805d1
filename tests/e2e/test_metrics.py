"""``/.well-known/se/metrics``: TPC and SciTags counters in the Prometheus text format."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.conftest import BASE_CONFIG
from tests.support import SEProcess

URL = "/.well-known/se/metrics"


def value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in {text}")


async def test_counters_move(se_factory: Callable[..., SEProcess], tmp_path: Path) -> None:
    src = se_factory(root=tmp_path / "src")
    dst = se_factory(root=tmp_path / "dst")
    (src.root / "f").write_bytes(b"x" * 1000)
    async with aiohttp.ClientSession() as s:
        async with s.get(dst.url + URL) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            before = await r.text()
        assert re.search(r"^# TYPE se_tpc_transfers_total counter$", before, re.M)
        hdrs = {"Source": f"{src.url}/f", "SciTag": "147"}
        async with s.request("COPY", f"{dst.url}/g", headers=hdrs) as r:
            assert (await r.text()).rstrip().endswith("success: Created")
        async with s.request("COPY", f"{dst.url}/h", headers={"Source": f"{src.url}/nope"}) as r:
            assert r.status == 404  # refused before it started: not a finished transfer
        async with s.get(dst.url + URL) as r:
            after = await r.text()
    ok = value(after, "se_tpc_transfers_total", result="success")
    assert ok == value(before, "se_tpc_transfers_total", result="success") + 1
    assert value(after, "se_tpc_active") == 0
    # Loopback flows are not reported by default: filtered, not sent.
    filtered = value(after, "se_scitags_fireflies_total", outcome="filtered")
    assert filtered >= 2
    assert value(after, "se_scitags_fireflies_total", outcome="sent") == 0


async def test_metrics_need_read_access(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    srv = se_factory(config=BASE_CONFIG + '\n[auth]\nanonymous = "none"\n')
    async with aiohttp.ClientSession() as s, s.get(srv.url + URL) as r:
        assert r.status == 401
