"""Space accounting, quotas and SRR end to end: real servers, aiohttp, curl, gfal2.

Every change (PUT, overwrite, chunked PUT, MOVE within and across shares and over an existing
target, local COPY of files and trees, DELETE of files and trees, a third-party pull between
two servers) must move the totals that SRR shows exactly as a walk of the tree says; a PUT or
a third-party pull over a share's size is refused with 507 naming the share before any byte
is taken; reconciliation repairs totals after changes behind se's back; two workers and two
frontends on PostgreSQL keep one total.  Every SRR document fetched validates against the
vendored schema (tests/data/srr/srrschema_4.2.json).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema  # type: ignore[import-untyped]
import pytest

from tests.conftest import BASE_CONFIG, need
from tests.e2e.clients import run
from tests.pg import PGServer, postgres_or_skip
from tests.support import SEProcess, temp_files

pytestmark = [pytest.mark.timeout(120)]

SRR = "/.well-known/se/srr"
SCHEMA = json.loads((Path(__file__).parents[1] / "data" / "srr" / "srrschema_4.2.json").read_text())

# (name, paths, size)
SHARES: list[tuple[str, list[str], int]] = [
    ("ATLASDATADISK", ["/atlas/data"], 0),
    ("ATLASSCRATCH", ["/atlas/scratch", "/scratch"], 10_000),
    ("REST", ["/"], 0),
]


def shares_toml(shares: list[tuple[str, list[str], int]], extra: str = "") -> str:
    out = []
    for name, paths, size in shares:
        out.append(
            f'\n[[shares]]\nname = "{name}"\npaths = {json.dumps(paths)}\nsize = {size}\n'
            f'vos = ["atlas"]\n'
        )
    return "".join(out) + extra


CONFIG = BASE_CONFIG + shares_toml(SHARES)


def walk(root: Path, shares: list[tuple[str, list[str], int]]) -> dict[str, tuple[int, int]]:
    """(bytes, files) per share by a walk of the tree: longest path prefix, regular files
    only, reserved names skipped; written independently of se's own walk."""
    prefixes = sorted(
        ((tuple(s for s in p.split("/") if s), name) for name, paths, _ in shares for p in paths),
        key=lambda item: -len(item[0]),
    )
    out = {name: (0, 0) for name, _p, _s in shares}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".se-")]
        rel = Path(dirpath).relative_to(root).parts
        for f in files:
            full = Path(dirpath) / f
            if f.startswith(".se-") or full.is_symlink() or not full.is_file():
                continue
            segs = (*rel, f)
            for prefix, name in prefixes:
                if segs[: len(prefix)] == prefix:
                    b, n = out[name]
                    out[name] = (b + full.stat().st_size, n + 1)
                    break
    return out


async def srr(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with session.get(base + SRR) as resp:
        assert resp.status == 200, await resp.text()
        doc: dict[str, Any] = await resp.json()
    jsonschema.validate(doc, SCHEMA)
    return doc


def totals(doc: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {
        s["name"]: (s["usedsize"], s["numberoffiles"])
        for s in doc["storageservice"]["storageshares"]
    }


async def check(session: aiohttp.ClientSession, srv: SEProcess, shares: Any = SHARES) -> None:
    assert totals(await srr(session, srv.url)) == walk(srv.root, shares)


async def put(session: aiohttp.ClientSession, url: str, data: bytes, status: int = 201) -> None:
    async with session.put(url, data=data) as resp:
        assert resp.status in (status, 204 if status == 201 else status), await resp.text()


async def method(
    session: aiohttp.ClientSession, verb: str, url: str, status: int, **headers: str
) -> str:
    async with session.request(verb, url, headers=headers) as resp:
        text = await resp.text()
        assert resp.status == status, (verb, url, resp.status, text)
        return text


@pytest.fixture
def srv(se_factory: Callable[..., SEProcess]) -> SEProcess:
    return se_factory(config=CONFIG)


def test_every_write_moves_the_totals_exactly(srv: SEProcess) -> None:
    async def body() -> None:
        u = srv.url
        async with aiohttp.ClientSession() as s:
            await check(s, srv)
            await put(s, f"{u}/atlas/data/a", b"a" * 1000)
            await put(s, f"{u}/atlas/data/sub/b", b"b" * 500)
            await put(s, f"{u}/other/c", b"c" * 300)
            await check(s, srv)
            await put(s, f"{u}/atlas/data/a", b"A" * 10, status=204)  # overwrite, smaller
            await check(s, srv)
            await put(s, f"{u}/atlas/data/a", b"A" * 2000, status=204)  # and bigger

            async def chunks() -> Any:
                for _ in range(5):
                    yield b"x" * 100

            async with s.put(f"{u}/scratch/chunked", data=chunks()) as resp:  # no length
                assert resp.status == 201
            await check(s, srv)
            # MOVE across shares: a file, then a tree, then over an existing target
            await method(s, "MKCOL", f"{u}/atlas/scratch", 201)
            await method(s, "MOVE", f"{u}/other/c", 201, Destination=f"{u}/atlas/scratch/c")
            await check(s, srv)
            await method(s, "MOVE", f"{u}/atlas/data/sub", 201, Destination=f"{u}/moved")
            await check(s, srv)
            await put(s, f"{u}/atlas/data/target", b"t" * 50)
            await method(
                s, "MOVE", f"{u}/moved", 204, Destination=f"{u}/atlas/data/target", Overwrite="T"
            )
            await check(s, srv)
            # MOVE within a share
            await method(s, "MOVE", f"{u}/atlas/data/a", 201, Destination=f"{u}/atlas/data/a2")
            await check(s, srv)
            # COPY of a file and of a tree into another share
            await method(s, "COPY", f"{u}/atlas/data/a2", 201, Destination=f"{u}/copy-a2")
            await method(s, "COPY", f"{u}/atlas/data", 201, Destination=f"{u}/treecopy")
            await check(s, srv)
            # DELETE of a file and of a tree
            await method(s, "DELETE", f"{u}/copy-a2", 204)
            await method(s, "DELETE", f"{u}/treecopy", 204)
            await check(s, srv)
            await method(s, "DELETE", f"{u}/atlas", 204)
            await check(s, srv)
            assert totals(await srr(s, u))["ATLASDATADISK"] == (0, 0)

    asyncio.run(body())


def test_put_over_the_limit_is_refused_before_the_body(srv: SEProcess, tmp_path: Path) -> None:
    need("curl")
    big = tmp_path / "big"
    big.write_bytes(b"z" * 9_000)
    res = run(["curl", "-sS", "-v", "-T", big, f"{srv.url}/scratch/first"])
    assert "< HTTP/1.1 201" in res.stderr
    # Expect: 100-continue (curl's default for -T of this size is forced here): the 507 comes
    # instead of the 100, and no body byte is sent.
    res = run(
        ["curl", "-sS", "-v", "-H", "Expect: 100-continue", "-T", big, f"{srv.url}/scratch/second"]
    )
    assert "< HTTP/1.1 507" in res.stderr, res.stderr
    assert "100 Continue" not in res.stderr
    assert "upload completely sent off" not in res.stderr
    assert "share ATLASSCRATCH is full" in res.stdout
    # Without Expect, with a Content-Length: 507 all the same, nothing stored.
    res = run(
        [
            "curl",
            "-sS",
            "-H",
            "Expect:",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-T",
            big,
            f"{srv.url}/atlas/scratch/third",
        ]
    )
    assert res.stdout == "507"

    async def body() -> None:
        async with aiohttp.ClientSession() as s:

            async def chunks() -> Any:
                for _ in range(20):
                    yield b"y" * 100

            # A body of unknown length that ends over the limit: refused at commit.
            async with s.put(f"{srv.url}/scratch/chunked", data=chunks()) as resp:
                assert resp.status == 507
                assert "ATLASSCRATCH" in await resp.text()
            # PROPFIND quota agrees with the accounting.
            propfind = (
                '<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop>'
                "<D:quota-used-bytes/><D:quota-available-bytes/></D:prop></D:propfind>"
            )
            async with s.request(
                "PROPFIND", f"{srv.url}/atlas/scratch/", data=propfind, headers={"Depth": "0"}
            ) as resp:
                assert resp.status == 404  # no such collection yet
            os.makedirs(srv.root / "atlas" / "scratch", exist_ok=True)
            async with s.request(
                "PROPFIND", f"{srv.url}/atlas/scratch/", data=propfind, headers={"Depth": "0"}
            ) as resp:
                text = await resp.text()
            assert "<D:quota-used-bytes>9000</D:quota-used-bytes>" in text
            assert "<D:quota-available-bytes>1000</D:quota-available-bytes>" in text
            await check(s, srv)
            # MOVE and COPY into the full share: 507 too, nothing moved
            await put(s, f"{srv.url}/elsewhere/f", b"e" * 2000)
            dest = f"{srv.url}/scratch/moved"
            text = await method(s, "MOVE", f"{srv.url}/elsewhere/f", 507, Destination=dest)
            assert "ATLASSCRATCH" in text
            await method(s, "COPY", f"{srv.url}/elsewhere/f", 507, Destination=dest)
            await method(s, "MOVE", f"{srv.url}/elsewhere", 507, Destination=dest)
            assert (srv.root / "elsewhere" / "f").exists()
            await check(s, srv)

    asyncio.run(body())
    assert not (srv.root / "scratch" / "moved").exists()
    assert not (srv.root / "scratch" / "second").exists()
    assert not (srv.root / "scratch" / "chunked").exists()
    assert not temp_files(srv.root)


def test_tpc_pull_over_the_limit_gets_507_before_the_202(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    need("curl")
    src = se_factory(root=tmp_path / "src")
    dst = se_factory(config=CONFIG, root=tmp_path / "dst")
    (src.root / "small").write_bytes(b"s" * 4000)
    (src.root / "large").write_bytes(b"l" * 20_000)
    res = run(
        ["curl", "-sS", "-X", "COPY", "-H", f"Source: {src.url}/small", f"{dst.url}/scratch/small"]
    )
    assert "success" in res.stdout, res.stdout
    res = run(
        [
            "curl",
            "-sS",
            "-i",
            "-X",
            "COPY",
            "-H",
            f"Source: {src.url}/large",
            f"{dst.url}/scratch/large",
        ]
    )
    assert res.stdout.startswith("HTTP/1.1 507"), res.stdout
    assert "share ATLASSCRATCH is full" in res.stdout
    assert not (dst.root / "scratch" / "large").exists()

    async def body() -> None:
        async with aiohttp.ClientSession() as s:
            await check(s, dst)
            assert totals(await srr(s, dst.url))["ATLASSCRATCH"] == (4000, 1)

    asyncio.run(body())
    if all(_which(t) for t in ("gfal-copy", "gfal-rm")):
        res = run(["gfal-copy", "--copy-mode", "pull", f"{src.url}/large", f"{dst.url}/scratch/g"])
        assert res.returncode != 0
        text = res.stdout + res.stderr
        assert "507" in text, text
        # and an ordinary pull into another share lands and is counted
        res = run(
            ["gfal-copy", "--copy-mode", "pull", f"{src.url}/large", f"{dst.url}/atlas/data/g"]
        )
        assert res.returncode == 0, res.stderr
        res = run(["gfal-rm", f"{dst.url}/scratch/small"])
        assert res.returncode == 0, res.stderr
        asyncio.run(_check_once(dst))


def _which(tool: str) -> bool:
    import shutil

    return shutil.which(tool) is not None


async def _check_once(srv: SEProcess, shares: Any = SHARES) -> None:
    async with aiohttp.ClientSession() as s:
        await check(s, srv, shares)


def test_reconcile_after_changes_behind_se_back(srv: SEProcess) -> None:
    async def body() -> None:
        async with aiohttp.ClientSession() as s:
            await put(s, f"{srv.url}/atlas/data/a", b"a" * 100)
            (srv.root / "atlas" / "data" / "behind").write_bytes(b"b" * 77)
            (srv.root / "scratch").mkdir()
            (srv.root / "scratch" / "x").write_bytes(b"x" * 5)
            (srv.root / "atlas" / "data" / "a").unlink()
            assert totals(await srr(s, srv.url)) != walk(srv.root, SHARES)
            text = await method(s, "POST", f"{srv.url}{SRR}?reconcile=ATLASDATADISK", 200)
            assert json.loads(text) == {"ATLASDATADISK": {"bytes": 77, "files": 1}}
            await method(s, "POST", f"{srv.url}{SRR}?reconcile", 200)
            await check(s, srv)
            await method(s, "POST", f"{srv.url}{SRR}?reconcile=NOPE", 404)

    asyncio.run(body())


async def _parallel_puts(url: str, count: int, size: int, tag: str = "") -> None:
    async with aiohttp.ClientSession() as s:
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            async with sem:
                where = ("atlas/data", "scratch", f"misc{tag}")[i % 3]
                await put(s, f"{url}/{where}/{tag}f{i}", os.urandom(size + i))

        await asyncio.gather(*(one(i) for i in range(count)))
        async with s.delete(f"{url}/misc{tag}") as resp:
            assert resp.status == 204


def test_reconciliations_under_load_keep_the_totals_exact(
    se_factory: Callable[..., SEProcess],
) -> None:
    """Reconciliations asked for again and again while two workers upload, overwrite, delete,
    move and copy files across shares (several at once on one name), copy trees and delete
    them while files land in them: no count is lost or doubled by a walk that ran while a
    change was between its count and its effect on disk (or the other way round), nor by a
    MOVE, COPY or DELETE racing a PUT."""
    srv = se_factory(config=CONFIG, extra_args=["--workers", "2"])

    async def body() -> None:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            u = srv.url
            sem = asyncio.Semaphore(16)

            async def one(i: int) -> None:
                where = ("atlas/data", "misc", "atlas/scratch")[i % 3]
                name = f"{u}/{where}/d{i % 5}/f{i % 17}"
                async with sem:
                    kind = i % 6
                    if kind <= 2:
                        async with s.put(name, data=os.urandom(100 * (i % 9 + 1))) as resp:
                            await resp.read()
                    elif kind == 3:  # a file, or now and then the whole directory
                        victim = f"{u}/{where}/d{i % 5}" if i % 12 == 3 else name
                        async with s.delete(victim) as resp:
                            await resp.read()
                    else:
                        verb = "MOVE" if kind == 4 else "COPY"
                        other = ("misc", "atlas/data")[i % 2]
                        src, dst = name, f"{u}/{other}/{verb.lower()}{i % 7}"
                        if kind == 5 and i % 4 == 0:  # a tree, to a name of its own
                            src, dst = f"{u}/{where}/d{i % 5}", f"{u}/{other}/tree{i}"
                        headers = {"Destination": dst, "Overwrite": "T"}
                        async with s.request(verb, src, headers=headers) as resp:
                            await resp.read()

            async def reconcile_until(done: asyncio.Event) -> int:
                n = 0
                for _ in range(200):
                    if done.is_set():
                        break
                    async with s.post(f"{u}{SRR}?reconcile") as resp:
                        assert resp.status == 200, await resp.text()
                    n += 1
                return n

            dirs = ["atlas", "atlas/data", "atlas/scratch", "misc"]
            dirs += [f"{w}/d{d}" for w in ("atlas/data", "misc", "atlas/scratch") for d in range(5)]
            for path in dirs:
                async with s.request("MKCOL", f"{u}/{path}") as resp:
                    assert resp.status in (201, 405), (path, resp.status)
            done = asyncio.Event()
            walker = asyncio.ensure_future(reconcile_until(done))
            await asyncio.gather(*(one(i) for i in range(900)))
            done.set()
            assert await walker > 1
            await check(s, srv)

    asyncio.run(body())


def test_two_workers_keep_one_total(se_factory: Callable[..., SEProcess]) -> None:
    srv = se_factory(config=CONFIG, extra_args=["--workers", "2"])
    asyncio.run(_parallel_puts(srv.url, 60, 50))

    async def body() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for _ in range(6):  # whichever worker answers
                await check(s, srv)

    asyncio.run(body())


@pytest.fixture(scope="module")
def pg() -> Iterator[PGServer]:
    with postgres_or_skip() as server:
        yield server


def test_two_frontends_on_postgresql_keep_one_total(
    se_factory: Callable[..., SEProcess], tmp_path: Path, pg: PGServer
) -> None:
    url = pg.create_database("space")
    config = CONFIG + f'\n[space]\ndatabase = "{url}"\nreconcile_interval = 0\n'
    root = tmp_path / "shared"
    a = se_factory(config=config, root=root, extra_args=["--workers", "2"])
    b = se_factory(config=config, root=root)

    async def body() -> None:
        await asyncio.gather(_parallel_puts(a.url, 30, 40, "a"), _parallel_puts(b.url, 30, 40, "b"))
        async with aiohttp.ClientSession() as s:
            await check(s, a)
            await check(s, b)
            # a DELETE through one is seen by the other
            await method(s, "DELETE", f"{b.url}/atlas", 204)
            await check(s, a)

    asyncio.run(body())


def test_srr_with_tape_and_draining_shares(se_factory: Callable[..., SEProcess]) -> None:
    shares = [
        ("TAPE", ["/tape"], 0),
        ("FULL", ["/full"], 1000),
        ("CLOSING", ["/closing"], 0),
        ("REST", ["/"], 0),
    ]
    config = (
        BASE_CONFIG
        + "\n[tape]\nenabled = true\ntime_scale = 1000.0\nsync_interval = 0.1\n"
        + "archive_min_age = 1e9\ncartridges = 3\ncartridge_capacity = 1000000\n"
        + '\n[[tape.pools]]\npath = "/tape"\n'
        + shares_toml(shares)
        + '\n[[shares]]\nname = "GONE"\npaths = ["/gone"]\nserving_state = "closed"\n'
    ).replace('name = "CLOSING"', 'name = "CLOSING"\nserving_state = "draining"')
    all_shares = [*shares, ("GONE", ["/gone"], 0)]
    srv = se_factory(config=config)

    async def body() -> None:
        async with aiohttp.ClientSession() as s:
            await put(s, f"{srv.url}/tape/f", b"t" * 3000)
            await put(s, f"{srv.url}/full/f", b"f" * 990)
            doc = await srr(s, srv.url)
            svc = doc["storageservice"]
            by_name = {sh["name"]: sh for sh in svc["storageshares"]}
            assert by_name["TAPE"]["accesslatency"] == "nearline"
            assert by_name["TAPE"]["retentionpolicy"] == "custodial"
            assert by_name["REST"]["accesslatency"] == "online"
            assert by_name["FULL"]["servingstate"] == "draining"  # 10 of 1000 bytes free
            assert by_name["CLOSING"]["servingstate"] == "draining"  # the admin says so
            assert by_name["GONE"]["servingstate"] == "closed"
            assert by_name["REST"]["servingstate"] == "open"
            assert by_name["FULL"]["totalsize"] == 1000
            kinds = {ep["interfacetype"]: ep for ep in svc["storageendpoints"]}
            assert kinds["taperest"]["endpointurl"] == f"{srv.url}/api/v1"
            assert kinds["taperest"]["assignedshares"] == ["TAPE"]
            assert svc["storagecapacity"]["nearline"] == {"totalsize": 3_000_000, "usedsize": 0}
            # flushed to tape, then evicted from the buffer: tape used grows, the share's
            # usage does not shrink (eviction frees no tape, nor the namespace)
            async with s.post(f"{srv.url}/.well-known/se/tape", json={"flush": True}) as resp:
                assert resp.status == 200
            used = 0
            for _ in range(100):
                used = (await srr(s, srv.url))["storageservice"]["storagecapacity"]["nearline"][
                    "usedsize"
                ]
                if used:
                    break
                await asyncio.sleep(0.1)
            assert used == 3000
            async with s.post(f"{srv.url}/.well-known/se/tape", json={"evict": True}) as resp:
                assert resp.status == 200
            assert totals(await srr(s, srv.url))["TAPE"] == (3000, 1)
            await check(s, srv, all_shares)

    asyncio.run(body())


def test_srr_path_and_access(se_factory: Callable[..., SEProcess], tmp_path: Path) -> None:
    config = BASE_CONFIG + '\n[space]\nsrr_path = "/srr.json"\nservice_name = "se.example"\n'
    srv = se_factory(config=config)

    async def body() -> None:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{srv.url}/srr.json") as resp:
                assert resp.status == 200
                doc = await resp.json()
            jsonschema.validate(doc, SCHEMA)
            svc = doc["storageservice"]
            assert svc["name"] == "se.example"
            assert [sh["name"] for sh in svc["storageshares"]] == ["default"]
            assert svc["storageshares"][0]["path"] == ["/"]
            await method(s, "DELETE", f"{srv.url}{SRR}", 405)

    asyncio.run(body())


def test_totals_match_the_tree_after_a_sigkill_mid_load(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    """Killed with uploads, overwrites and deletes in flight, restarted on the same tree:
    the totals are the tree's (each change was committed with it; uploads counted but never
    put in place are taken back at start, before the sweep)."""
    root = tmp_path / "data"
    srv = se_factory(config=CONFIG, root=root, extra_args=["--workers", "2"])

    async def load() -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            sem = asyncio.Semaphore(16)

            async def one(i: int) -> None:
                async with sem:
                    where = ("atlas/data", "misc")[i % 2]
                    url = f"{srv.url}/{where}/f{i % 40}"
                    try:
                        if i % 7 == 6:
                            async with s.delete(url) as resp:
                                await resp.read()
                        else:
                            async with s.put(url, data=os.urandom(1000 * (i % 50 + 1))) as resp:
                                await resp.read()
                    except (aiohttp.ClientError, OSError, TimeoutError):
                        pass  # the server was killed under it

            tasks = [asyncio.ensure_future(one(i)) for i in range(2000)]
            await asyncio.sleep(1.0)
            srv.kill()
            await asyncio.gather(*tasks)

    asyncio.run(load())
    again = se_factory(config=CONFIG, root=root)

    async def body() -> None:
        async with aiohttp.ClientSession() as s:
            for _ in range(100):  # the restart's sweep runs in the background
                if not temp_files(root):
                    break
                await asyncio.sleep(0.05)
            assert not temp_files(root)
            await check(s, again)
            assert totals(await srr(s, again.url))["ATLASDATADISK"][1] > 0

    asyncio.run(body())
