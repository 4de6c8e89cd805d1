"""Two ``se`` frontends on one filesystem and one PostgreSQL tape database.

Frontend A runs the simulated library (``tape.library = true``), frontend B only records
requests.  Work submitted to B is done by A; what either one writes is archived by A.  When
both may run it, one holds the library's lease and the other takes it over when it dies.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.pg import PGServer, postgres_or_skip
from tests.support import SEProcess

pytest.importorskip("psycopg")


@pytest.fixture(scope="module")
def postgres() -> Iterator[PGServer]:
    with postgres_or_skip() as server:
        yield server


def _config(url: str, library: bool) -> str:
    return f"""
[logging]
access_log = false
level = "warning"
[tape]
enabled = true
database = "{url}"
library = {"true" if library else "false"}
time_scale = 1000.0
sync_interval = 0.1
min_request_age = 5.0
archive_min_age = 1.0
[[tape.pools]]
path = "/tape"
"""


async def _json(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Any:
    async with session.request(method, url, json=body) as resp:
        assert resp.status in (200, 201), await resp.text()
        return await resp.json()


async def _until(check: Callable[[], Any], seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def test_one_library_serves_two_frontends(
    postgres: PGServer, se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    url = postgres.create_database("shared")
    root = tmp_path / "data"
    a = se_factory(_config(url, True), root=root)
    b = se_factory(_config(url, False), root=root)
    async with aiohttp.ClientSession() as s:
        async with s.request("MKCOL", f"{b.url}/tape") as resp:
            assert resp.status == 201
        for i in range(5):
            async with s.put(f"{b.url}/tape/f{i}", data=b"x" * (i + 1)) as resp:
                assert resp.status == 201
        paths = [f"/tape/f{i}" for i in range(5)]

        async def archived() -> bool:
            info = await _json(s, "POST", f"{a.url}/api/v1/archiveinfo", {"paths": paths})
            return all(item.get("locality") == "DISK_AND_TAPE" for item in info)

        await _until(archived)  # written through B, archived by A's library
        status_b = await _json(s, "GET", f"{b.url}/.well-known/se/tape")
        assert status_b["library"] is False
        await _json(s, "POST", f"{a.url}/.well-known/se/tape", {"evict": True})
        async with s.get(f"{b.url}/tape/f0") as resp:
            assert resp.status == 503  # B sees the catalogue A changed
        created = await _json(
            s, "POST", f"{b.url}/api/v1/stage", {"files": [{"path": p} for p in paths]}
        )
        rid = created["requestId"]

        async def done() -> Any:
            req = await _json(s, "GET", f"{b.url}/api/v1/stage/{rid}")
            return req if "completedAt" in req else None

        req = await _until(done)
        assert {f["state"] for f in req["files"]} == {"COMPLETED"}
        async with s.get(f"{b.url}/tape/f4") as resp:
            assert resp.status == 200
            assert await resp.read() == b"xxxxx"
        status_a = await _json(s, "GET", f"{a.url}/.well-known/se/tape")
        assert status_a["files_recalled"] == 5
        # A request and its cancel recorded by B are seen through A (one database); the file
        # ends CANCELLED, or COMPLETED if A's library read it before the cancel.
        await _json(s, "POST", f"{a.url}/.well-known/se/tape", {"evict": True})
        created = await _json(s, "POST", f"{b.url}/api/v1/stage", {"files": [{"path": paths[0]}]})
        rid2 = created["requestId"]
        async with s.post(
            f"{b.url}/api/v1/stage/{rid2}/cancel", data=json.dumps({"paths": [paths[0]]})
        ) as resp:
            assert resp.status == 200
        req2 = await _json(s, "GET", f"{a.url}/api/v1/stage/{rid2}")
        assert req2["files"][0]["state"] in ("CANCELLED", "COMPLETED")
    postgres.drop_database(url)


async def test_two_workers_share_the_sqlite_database(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    """With --workers 2 only the first worker runs the library; requests accepted by
    either worker complete, and both see one catalogue."""
    cfg = _config("", True).replace('database = ""\n', "")
    srv = se_factory(cfg, extra_args=["--workers", "2"])
    paths = [f"/tape/g{i}" for i in range(8)]
    connector = aiohttp.TCPConnector(force_close=True)  # spread requests over both workers
    async with aiohttp.ClientSession(connector=connector) as s:
        async with s.request("MKCOL", f"{srv.url}/tape") as resp:
            assert resp.status == 201
        for p in paths:
            async with s.put(f"{srv.url}{p}", data=b"data") as resp:
                assert resp.status == 201
        # The second worker binds its socket a moment after the server reports its URL: ask
        # until both have answered (one runs the library and flushes), 15 s at most.
        libraries: set[bool] = set()
        deadline = time.monotonic() + 15.0
        while libraries != {True, False} and time.monotonic() < deadline:
            status = await _json(s, "POST", f"{srv.url}/.well-known/se/tape", {"flush": True})
            libraries.add(status["library"])
            await asyncio.sleep(0.02)
        assert libraries == {True, False}  # both workers answered; one runs the library
        info = await _json(s, "POST", f"{srv.url}/api/v1/archiveinfo", {"paths": paths})
        assert {i.get("locality") for i in info} == {"DISK_AND_TAPE"}
        for _ in range(200):
            status = await _json(s, "POST", f"{srv.url}/.well-known/se/tape", {"evict": True})
            if status["library"]:
                break
        info = await _json(s, "POST", f"{srv.url}/api/v1/archiveinfo", {"paths": paths})
        assert {i.get("locality") for i in info} == {"TAPE"}
        ids = []
        for p in paths:
            created = await _json(s, "POST", f"{srv.url}/api/v1/stage", {"files": [{"path": p}]})
            ids.append(created["requestId"])
        for rid in ids:

            async def done(rid: str = rid) -> Any:
                req = await _json(s, "GET", f"{srv.url}/api/v1/stage/{rid}")
                return req if "completedAt" in req else None

            req = await _until(done)
            assert req["files"][0]["state"] == "COMPLETED", req


async def test_the_library_moves_when_its_frontend_dies(
    postgres: PGServer, se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    """Both frontends may run the library (``library = true``); the first to start holds the
    lease (se.tape.lease).  SIGKILLed with a stage request waiting for its mount, it loses the
    lease with its connections: the other one takes the library over and completes it."""
    url = postgres.create_database("lease")
    root = tmp_path / "data"
    # A recall waits 3 s (real) for its mount: the kill comes first.
    cfg = _config(url, True).replace("min_request_age = 5.0", "min_request_age = 3000.0")
    a = se_factory(cfg, root=root)
    b = se_factory(cfg, root=root)
    paths = [f"/tape/h{i}" for i in range(3)]
    async with aiohttp.ClientSession() as s:
        assert (await _json(s, "GET", f"{a.url}/.well-known/se/tape"))["library"] is True
        assert (await _json(s, "GET", f"{b.url}/.well-known/se/tape"))["library"] is False
        for p in paths:
            async with s.put(f"{b.url}{p}", data=b"held") as resp:
                assert resp.status == 201
        await _json(s, "POST", f"{a.url}/.well-known/se/tape", {"flush": True})
        await _json(s, "POST", f"{a.url}/.well-known/se/tape", {"evict": True})
        info = await _json(s, "POST", f"{b.url}/api/v1/archiveinfo", {"paths": paths})
        assert {i.get("locality") for i in info} == {"TAPE"}
        created = await _json(
            s, "POST", f"{b.url}/api/v1/stage", {"files": [{"path": p} for p in paths]}
        )
        rid = created["requestId"]
        assert "completedAt" not in await _json(s, "GET", f"{b.url}/api/v1/stage/{rid}")
        a.kill()

        async def done() -> Any:
            req = await _json(s, "GET", f"{b.url}/api/v1/stage/{rid}")
            return req if "completedAt" in req else None

        req = await _until(done)
        assert {f["state"] for f in req["files"]} == {"COMPLETED"}, req
        assert (await _json(s, "GET", f"{b.url}/.well-known/se/tape"))["library"] is True
        async with s.get(f"{b.url}{paths[0]}") as resp:
            assert resp.status == 200
    postgres.drop_database(url)
