"""Several frontends: two ``se`` on one shared root, one PostgreSQL, HAProxy in front.

The topology of README "Several frontends", run from the documented files themselves:
``examples/frontend.toml`` (each frontend: ``se serve --workers 2`` on 127.0.0.1, its own
``storage.state_dir``, TLS, the shared-filesystem cache settings, the tape database in
PostgreSQL) and ``examples/haproxy.cfg`` (TLS passed through, leastconn, HTTP health checks,
redispatch).  Only the site-specific values are replaced (addresses, paths, the database URL,
certificates, ``[auth]``, the simulated tape's timings); every replacement is asserted to hit.

* Caches on a shared filesystem: a file and a listing changed through frontend A are served
  fresh by frontend B at once (no inotify: ``webdav.listing_watches = 0``).
* Uploads (aiohttp and curl, with checksums) and third-party copies (pull from, and push to, a
  third ``se``; gfal-copy over davs:// with macaroons issued by one frontend and honoured by
  the other) through the balancer; both frontends take connections.
* One frontend (parent and workers) is SIGKILLed in the middle of concurrent uploads: every
  upload answered 2xx is complete with its checksum, the failed ones succeed when the client
  tries again, no temp file shows in the namespace (and the restarted frontend sweeps the dead
  one's), HAProxy takes the dead frontend out and back in, and the tape stage request
  submitted before the kill completes: the killed frontend ran the library, the survivor takes
  its lease over (se.tape.lease); the per-share totals in PostgreSQL equal a walk of the tree.
* A restart done the documented way (out of HAProxy, stopped once idle, back in) costs no
  client an error; a bare SIGTERM mid-load loses no acknowledged upload.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import stat
import time
import tomllib
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from se.config import load_mapping
from se.space.accounting import Accounting
from tests.conftest import BASE_CONFIG
from tests.e2e.clients import (
    TLSFiles,
    adler32_hex,
    client_env,
    davs_url,
    make_tls,
    random_bytes,
    run_ok,
    trust_env,
)
from tests.haproxy import HAProxy, find_haproxy, start_haproxy
from tests.pg import PGServer, postgres_or_skip
from tests.support import SEProcess, poll, start_se, temp_files

pytest.importorskip("psycopg")

pytestmark = [pytest.mark.timeout(180)]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BACKEND = "se_frontends"
MIB = 1 << 20
DISK = "/dteam/disk"  # the shares of examples/frontend.toml (DTEAMDISK, DTEAMTAPE: a tape pool)
TAPE = "/dteam/tape"


# -- the documented configuration, with the site's values replaced ---------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def dump_toml(doc: dict[str, Any]) -> str:
    """TOML for the shapes of examples/frontend.toml: tables of scalars and lists of scalars,
    arrays of tables at the top level and one level down."""
    out: list[str] = []
    for name, table in doc.items():
        if isinstance(table, list):  # [[shares]]
            for item in table:
                out.append(f"[[{name}]]")
                out.extend(f"{k} = {_toml_value(v)}" for k, v in item.items())
                out.append("")
            continue
        out.append(f"[{name}]")
        nested: list[tuple[str, list[dict[str, Any]]]] = []
        for key, value in table.items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                nested.append((key, value))
            else:
                out.append(f"{key} = {_toml_value(value)}")
        for key, items in nested:
            for item in items:
                out.append(f"[[{name}.{key}]]")
                out.extend(f"{k} = {_toml_value(v)}" for k, v in item.items())
        out.append("")
    return "\n".join(out)


def frontend_config(
    *, root: Path, state: Path, database: str, tls: TLSFiles, secret: Path, vomsdir: Path
) -> str:
    doc = tomllib.loads((EXAMPLES / "frontend.toml").read_text())
    # What a shared filesystem needs, as documented, is what runs here.
    assert doc["webdav"]["listing_watches"] == 0
    assert doc["storage"]["file_cache_bytes"] > 0 and doc["webdav"]["listing_cache_dirs"] > 0
    assert doc["server"]["workers"] == 2
    assert doc["tape"]["library"] is True and doc["tape"]["database"].startswith("postgresql://")

    def replace(table: str, **values: Any) -> None:
        for key, value in values.items():
            assert key in doc[table], f"examples/frontend.toml has no {table}.{key}"
            doc[table][key] = value

    replace("server", host="127.0.0.1", port=0, local_hosts=[])
    # cache_settle_time: this host's clock is the only clock; short so the caches fill at once
    replace("storage", root=str(root), state_dir=str(state), cache_settle_time=0.2)
    replace("tls", cert=str(tls.cert_pem), key=str(tls.key_pem), ca_dir=str(tls.ca_dir))
    replace("tpc", macaroon_secret_file=str(secret))
    replace("auth", anonymous="read-write", vomsdir=str(vomsdir))  # loopback only
    replace("tape", database=database)
    replace("space", database=database)
    assert [(s["name"], s["paths"]) for s in doc["shares"]] == [
        ("DTEAMDISK", [DISK]),
        ("DTEAMTAPE", [TAPE]),
    ]
    assert doc["tape"]["pools"] == [{"path": TAPE}]
    # The simulated library: a recall waits 8 s for its mount (min_request_age), then takes
    # about a second; the test kills the library's frontend in that wait.
    doc["tape"].update(time_scale=25.0, sync_interval=0.1, min_request_age=200.0)
    doc["tape"].update(archive_min_age=1.0e6)  # flushed on demand only
    replace("logging", access_log=False, level="warning")
    doc["tpc"]["marker_period"] = 0.5
    return dump_toml(doc)


def haproxy_config(port: int, admin: Path, frontends: dict[str, int]) -> str:
    text = (EXAMPLES / "haproxy.cfg").read_text()

    def sub(pattern: str, new: str) -> None:
        nonlocal text
        text, count = re.subn(pattern, new, text, flags=re.MULTILINE)
        assert count == 1, f"examples/haproxy.cfg: {pattern!r} matched {count} times"

    sub(r"^(\s*stats socket )\S+", rf"\g<1>{admin}")
    sub(r"^(\s*bind )\S+", rf"\g<1>127.0.0.1:{port}")
    for name, fe_port in frontends.items():
        sub(rf"^(\s*server {name} )\S+", rf"\g<1>127.0.0.1:{fe_port}")
    return text


# -- the topology ----------------------------------------------------------------------------


@dataclass
class Topology:
    workdir: Path
    root: Path
    configs: dict[str, str]
    frontends: dict[str, SEProcess]
    remote: SEProcess  # a third se: the other side of third-party copies
    haproxy: HAProxy
    tls: TLSFiles
    database: str
    ssl: ssl.SSLContext = field(init=False)
    started_at: float = field(default_factory=time.time)  # all up and checked healthy

    def __post_init__(self) -> None:
        self.ssl = ssl.create_default_context(cafile=str(self.tls.ca_pem))

    @property
    def url(self) -> str:
        return self.haproxy.url

    def start(self, name: str, port: int = 0) -> SEProcess:
        srv = start_se(
            self.workdir,
            root=self.root,
            config=self.configs[name],
            extra_args=["--port", str(port)] if port else None,
        )
        self.frontends[name] = srv
        return srv

    def session(self) -> aiohttp.ClientSession:
        # A new connection per request: the balancer spreads connections, not requests.
        connector = aiohttp.TCPConnector(ssl=self.ssl, force_close=True, limit=32)
        return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))

    def stats(self, column: str) -> dict[str, int]:
        """One counter of HAProxy's ``show stat`` for each server of the backend and the
        backend itself (``BACKEND``): stot (sessions), wretr (retries), wredis (redispatches)."""
        lines = self.haproxy.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        out: dict[str, int] = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == BACKEND and row.get("svname"):
                out[row["svname"]] = int(row.get(column) or 0)
        return out


@pytest.fixture(scope="module")
def postgres() -> Iterator[PGServer]:
    with postgres_or_skip() as server:
        yield server


@pytest.fixture(scope="module")
def topology(postgres: PGServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    if find_haproxy() is None:
        pytest.skip("not installed: haproxy (apt-get install haproxy)")
    workdir = tmp_path_factory.mktemp("topology")
    tls = make_tls(workdir)
    vomsdir = workdir / "vomsdir"
    vomsdir.mkdir()
    database = postgres.create_database("topology")
    root = workdir / "shared"  # the "shared filesystem"
    configs = {
        name: frontend_config(
            root=root,
            state=workdir / f"state-{name}",  # each frontend's local disk
            database=database,
            tls=tls,
            secret=workdir / "macaroon.secret",
            vomsdir=vomsdir,
        )
        for name in ("se1", "se2")
    }
    remote = start_se(workdir, root=workdir / "remote", config=BASE_CONFIG)
    topo: Topology | None = None
    started: list[SEProcess] = [remote]
    try:
        frontends: dict[str, SEProcess] = {}
        for name in configs:  # se1 first: it takes the tape library's lease
            frontends[name] = start_se(workdir, root=root, config=configs[name])
            started.append(frontends[name])
        ports = {name: srv.port for name, srv in frontends.items()}
        haproxy = start_haproxy(workdir, lambda port, admin: haproxy_config(port, admin, ports))
        topo = Topology(workdir, root, configs, frontends, remote, haproxy, tls, database)
        haproxy.wait_servers(BACKEND, {"se1": True, "se2": True})
        topo.started_at = time.time()
        yield topo
    finally:
        if topo is not None:
            topo.haproxy.stop()
            started.extend(topo.frontends.values())
        for srv in started:
            srv.stop()
        postgres.drop_database(database)


@pytest.fixture
async def http(topology: Topology) -> AsyncIterator[aiohttp.ClientSession]:
    async with topology.session() as s:
        yield s
    # TLS connections end with a close_notify exchange after the session closes: give it
    # time before the test's event loop is closed (else "unclosed transport" warnings).
    await asyncio.sleep(0.5)


async def _put(s: aiohttp.ClientSession, url: str, data: bytes, **headers: str) -> tuple[int, str]:
    hdrs = {"Digest": f"adler32={adler32_hex(data)}", **headers}
    async with s.put(url, data=data, headers=hdrs) as resp:
        return resp.status, await resp.text()


async def _digest(s: aiohttp.ClientSession, url: str) -> tuple[bytes, str]:
    async with s.get(url, headers={"Want-Digest": "adler32"}) as resp:
        assert resp.status == 200, (url, resp.status, await resp.text())
        return await resp.read(), resp.headers.get("Digest", "")


async def _propfind(s: aiohttp.ClientSession, url: str) -> str:
    async with s.request("PROPFIND", url, headers={"Depth": "1"}) as resp:
        assert resp.status == 207, await resp.text()
        return await resp.text()


async def _json(s: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Any:
    async with s.request(method, url, json=body) as resp:
        assert resp.status in (200, 201), (method, url, resp.status, await resp.text())
        return await resp.json()


async def _runs_library(s: aiohttp.ClientSession, srv: SEProcess) -> bool:
    """Whether a worker of ``srv`` runs the tape library: its first worker does, so ask until
    one answers yes (new connections land on either worker), 40 times at most."""
    for _ in range(40):
        if (await _json(s, "GET", f"{srv.url}/.well-known/se/tape"))["library"]:
            return True
    return False


async def _on_library(s: aiohttp.ClientSession, srv: SEProcess, body: dict[str, bool]) -> None:
    """POST a tape switch (flush, evict) until the worker running the library took it."""
    for _ in range(40):
        if (await _json(s, "POST", f"{srv.url}/.well-known/se/tape", body))["library"]:
            return
    raise AssertionError(f"no worker of {srv.url} runs the library")


def _walk(top: Path) -> tuple[int, int]:
    """(bytes, files) of the regular files below ``top``, as a site's own walk finds them:
    no symlink followed, se's hidden names (``.se-*``: temp files, state) left out."""
    nbytes = files = 0
    for here, dirs, names in os.walk(top):
        dirs[:] = [d for d in dirs if not d.startswith(".se-")]
        for name in names:
            st = os.lstat(os.path.join(here, name))
            if not name.startswith(".se-") and stat.S_ISREG(st.st_mode):
                nbytes += st.st_size
                files += 1
    return nbytes, files


def _sizes(multistatus: str) -> dict[str, int]:
    """href -> getcontentlength of the members of a Depth 1 PROPFIND answer."""
    out: dict[str, int] = {}
    for response in re.findall(r"<D:response>(.*?)</D:response>", multistatus, re.S):
        href = re.search(r"<D:href>([^<]*)</D:href>", response)
        size = re.search(r"<D:getcontentlength>(\d+)</D:getcontentlength>", response)
        if href and size:
            out[href.group(1).rsplit("/", 1)[-1]] = int(size.group(1))
    return out


# -- caches on a shared filesystem -----------------------------------------------------------


async def test_changes_through_one_frontend_are_fresh_on_the_other(
    topology: Topology, http: aiohttp.ClientSession
) -> None:
    a, b = (topology.frontends[n].url for n in ("se1", "se2"))
    small = random_bytes(1000, 1)
    assert (await _put(http, f"{a}{DISK}/fresh/f", small))[0] == 201
    # A listing big enough for the listing cache (>= 32 members).
    for i in range(40):
        assert (await _put(http, f"{a}{DISK}/fresh/dir/m{i:02d}", b"x" * i))[0] == 201
    await asyncio.sleep(0.3)  # past cache_settle_time: B may now cache what it reads
    for _ in range(2):  # the second answer may come from B's caches
        assert await _digest(http, f"{b}{DISK}/fresh/f") == (small, f"adler32={adler32_hex(small)}")
        assert _sizes(await _propfind(http, f"{b}{DISK}/fresh/dir/"))["m05"] == 5
    # Rewritten through A, same size: B serves the new bytes at once.
    new = random_bytes(1000, 2)
    assert (await _put(http, f"{a}{DISK}/fresh/f", new))[0] == 204
    assert await _digest(http, f"{b}{DISK}/fresh/f") == (new, f"adler32={adler32_hex(new)}")
    # Rewritten in place by another writer of the shared filesystem (no se involved).
    await asyncio.sleep(0.3)
    assert await _digest(http, f"{b}{DISK}/fresh/f") == (new, f"adler32={adler32_hex(new)}")
    other = random_bytes(1000, 3)
    with open(topology.root / DISK[1:] / "fresh" / "f", "r+b") as fh:
        fh.write(other)
    body, _ = await _digest(http, f"{b}{DISK}/fresh/f")
    assert body == other
    # The listing: a member added, one rewritten with another size, one removed, through A.
    assert (await _put(http, f"{a}{DISK}/fresh/dir/new", b"n" * 7))[0] == 201
    assert (await _put(http, f"{a}{DISK}/fresh/dir/m05", b"y" * 50))[0] == 204
    async with http.delete(f"{a}{DISK}/fresh/dir/m06") as resp:
        assert resp.status == 204
    sizes = _sizes(await _propfind(http, f"{b}{DISK}/fresh/dir/"))
    assert sizes["new"] == 7 and sizes["m05"] == 50 and "m06" not in sizes
    assert len(sizes) == 40


# -- uploads and third-party copies through the balancer -------------------------------------


async def test_uploads_and_copies_through_the_balancer(
    topology: Topology, http: aiohttp.ClientSession
) -> None:
    url = topology.url
    before = topology.stats("stot")
    files = {f"{DISK}/lb/up/f{i:02d}": random_bytes(64 * 1024 + i * 4099, i) for i in range(24)}
    sem = asyncio.Semaphore(8)

    async def upload(path: str, data: bytes) -> None:
        async with sem:
            status, text = await _put(http, url + path, data)
            assert status == 201, (path, status, text)

    await asyncio.gather(*(upload(p, d) for p, d in files.items()))
    # curl too, with its own checksum header, and a wrong one refused.
    curl_file = topology.workdir / "curl.bin"
    curl_data = random_bytes(300_000, 99)
    curl_file.write_bytes(curl_data)
    base = ["curl", "-sS", "--cacert", str(topology.tls.ca_pem), "-o", "/dev/null"]
    res = await asyncio.to_thread(
        run_ok,
        [
            *base,
            "-w",
            "%{http_code}",
            "-T",
            str(curl_file),
            "-H",
            f"Digest: adler32={adler32_hex(curl_data)}",
            f"{url}{DISK}/lb/curl.bin",
        ],
    )
    assert res.stdout == "201"
    res = await asyncio.to_thread(
        run_ok,
        [
            *base,
            "-w",
            "%{http_code}",
            "-T",
            str(curl_file),
            "-H",
            "Digest: adler32=00000001",
            f"{url}{DISK}/lb/curl-bad.bin",
        ],
    )
    assert res.stdout == "400"
    files[f"{DISK}/lb/curl.bin"] = curl_data
    for path, data in files.items():
        assert await _digest(http, url + path) == (data, f"adler32={adler32_hex(data)}")
    assert not (topology.root / DISK[1:] / "lb" / "curl-bad.bin").exists()

    # Third-party copies: pull from the third se into the topology, push from it to there.
    remote = topology.remote
    src = random_bytes(3 * MIB + 17, 7)
    (remote.root / "tpc").mkdir(parents=True, exist_ok=True)
    (remote.root / "tpc" / "src.bin").write_bytes(src)
    async with http.request(
        "COPY", f"{url}{DISK}/lb/pulled.bin", headers={"Source": f"{remote.url}/tpc/src.bin"}
    ) as resp:
        assert resp.status == 202
        assert "success" in (await resp.text()).splitlines()[-1]
    assert await _digest(http, f"{url}{DISK}/lb/pulled.bin") == (src, f"adler32={adler32_hex(src)}")
    async with http.request(
        "COPY",
        f"{url}{DISK}/lb/pulled.bin",
        headers={"Destination": f"{remote.url}/tpc/pushed.bin"},
    ) as resp:
        assert resp.status == 202
        assert "success" in (await resp.text()).splitlines()[-1]
    assert (remote.root / "tpc" / "pushed.bin").read_bytes() == src

    # A macaroon issued by one frontend opens the other (one secret for all of them).
    a, b = (topology.frontends[n].url for n in ("se1", "se2"))
    body = json.dumps({"caveats": ["activity:DOWNLOAD"], "validity": "PT10M"})
    async with http.post(
        f"{a}{DISK}/lb/pulled.bin",
        data=body,
        headers={"Content-Type": "application/macaroon-request"},
    ) as resp:
        assert resp.status == 200, await resp.text()
        token = (await resp.json())["macaroon"]
    for bearer, want in ((token, 200), (token[:-2] + "AA", 401)):
        async with http.get(
            f"{b}{DISK}/lb/pulled.bin", headers={"Authorization": f"Bearer {bearer}"}
        ) as resp:
            got = await resp.read()  # all of it: a body left unread is a reset on the server
            assert resp.status == want, got[:200]
            assert want != 200 or got == src

    # gfal-copy through the balancer (davs://, its own macaroons, ADLER32 compared), both ways.
    env = client_env(trust_env(topology.tls))
    pulled = davs_url(f"{url}{DISK}/lb/gfal-pulled.bin")
    gfal = ["gfal-copy", "-K", "ADLER32", "--copy-mode"]
    await asyncio.to_thread(run_ok, [*gfal, "pull", f"{remote.url}/tpc/src.bin", pulled], env)
    await asyncio.to_thread(
        run_ok, [*gfal, "push", pulled, f"{remote.url}/tpc/gfal-pushed.bin"], env
    )
    assert (remote.root / "tpc" / "gfal-pushed.bin").read_bytes() == src

    after = topology.stats("stot")
    assert all(after[n] > before.get(n, 0) for n in ("se1", "se2")), (before, after)
    assert temp_files(topology.root) == []


# -- one frontend dies in the middle of the load ---------------------------------------------


@dataclass
class Attempts:
    acknowledged: dict[str, bytes] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)  # path, what the client saw

    async def wait_acknowledged(self, count: int) -> None:
        for _ in range(600):  # 30 s at most
            if len(self.acknowledged) >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{len(self.acknowledged)} uploads acknowledged, not {count}")


async def _paced(data: bytes) -> AsyncIterator[bytes]:
    step = len(data) // 16 + 1
    for i in range(0, len(data), step):
        yield data[i : i + step]
        await asyncio.sleep(0.01)


async def _load(
    http: aiohttp.ClientSession,
    url: str,
    work: dict[str, bytes],
    action: Callable[[Attempts], Awaitable[None]],
    clients: int = 8,
) -> Attempts:
    """Upload ``work`` (path -> bytes) with ``clients`` concurrent clients, each body sent in
    16 paced pieces so that several uploads are always in flight, while ``action`` runs; a
    failed attempt is tried again (at most 5 times).  What each attempt got."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for path in work:
        queue.put_nowait(path)
    seen = Attempts()

    async def client() -> None:
        while not queue.empty():
            path = queue.get_nowait()
            data = work[path]
            for attempt in range(5):
                headers = {
                    "Digest": f"adler32={adler32_hex(data)}",
                    "Content-Length": str(len(data)),
                }
                try:
                    async with http.put(url + path, data=_paced(data), headers=headers) as resp:
                        text = await resp.text()
                        if 200 <= resp.status < 300:
                            seen.acknowledged[path] = data
                            break
                        seen.failed.append((path, f"{resp.status} {text}"))
                except (TimeoutError, aiohttp.ClientError) as exc:
                    seen.failed.append((path, repr(exc)))
                assert attempt < 4, f"{path} failed 5 times: {seen.failed[-5:]}"
                await asyncio.sleep(0.2)

    await asyncio.gather(action(seen), *(client() for _ in range(clients)))
    return seen


async def test_a_frontend_dies_mid_load(topology: Topology, http: aiohttp.ClientSession) -> None:
    url = topology.url
    # The tape: files flushed to tape and evicted, then a stage request, all before the kill.
    tape_files = {f"{TAPE}/t{i}": random_bytes(10_000 + i, 100 + i) for i in range(4)}
    for path, data in tape_files.items():
        assert (await _put(http, url + path, data))[0] == 201
    holders = [name for name, srv in topology.frontends.items() if await _runs_library(http, srv)]
    assert len(holders) == 1, holders  # one library per database, whoever started first
    victim = holders[0]
    survivor = next(n for n in topology.frontends if n != victim)
    lib = topology.frontends[victim]
    paths = list(tape_files)
    await _on_library(http, lib, {"flush": True})
    info = await _json(http, "POST", f"{url}/api/v1/archiveinfo", {"paths": paths})
    assert {i.get("locality") for i in info} == {"DISK_AND_TAPE"}, info
    await _on_library(http, lib, {"evict": True})
    info = await _json(http, "POST", f"{url}/api/v1/archiveinfo", {"paths": paths})
    assert {i.get("locality") for i in info} == {"TAPE"}, info
    created = await _json(
        http, "POST", f"{url}/api/v1/stage", {"files": [{"path": p} for p in paths]}
    )
    rid = created["requestId"]

    n_files = 48
    work = {f"{DISK}/load/f{i:02d}": random_bytes(MIB - i * 1000, 1000 + i) for i in range(n_files)}
    killed = asyncio.Event()

    async def killer(seen: Attempts) -> None:
        await seen.wait_acknowledged(n_files // 3)
        stage = await _json(http, "GET", f"{url}/api/v1/stage/{rid}")
        assert "completedAt" not in stage, stage  # still waiting for its mount
        topology.frontends[victim].kill()  # SIGKILL to the process group: parent and workers
        killed.set()

    seen = await _load(http, url, work, killer)
    assert killed.is_set()
    assert set(seen.acknowledged) == set(work)  # every file in, some after a retry
    await asyncio.to_thread(
        topology.haproxy.wait_servers, BACKEND, {victim: False, survivor: True}, 10.0
    )

    # Every acknowledged upload is complete: size and adler32 on disk, and through the balancer.
    for path, data in seen.acknowledged.items():
        on_disk = (topology.root / path.lstrip("/")).read_bytes()
        assert len(on_disk) == len(data) and zlib.adler32(on_disk) == zlib.adler32(data), path
    sem = asyncio.Semaphore(8)

    async def check(path: str, data: bytes) -> None:
        async with sem:
            assert await _digest(http, url + path) == (data, f"adler32={adler32_hex(data)}")

    await asyncio.gather(*(check(p, d) for p, d in seen.acknowledged.items()))
    # No temp file in the namespace: not listed, not served.
    listing = await _propfind(http, f"{url}{DISK}/load/")
    assert ".se-" not in listing
    assert len(_sizes(listing)) == n_files
    leftovers = temp_files(topology.root)
    for temp in leftovers[:3]:
        async with http.get(f"{url}{DISK}/load/{temp.name}") as resp:
            assert resp.status in (403, 404)

    # The stage request submitted before the kill completes: the survivor took the library.
    async def completed() -> Any:
        req = await _json(http, "GET", f"{url}/api/v1/stage/{rid}")
        return req if "completedAt" in req else None

    req = None
    for _ in range(300):  # 30 s at most
        req = await completed()
        if req:
            break
        await asyncio.sleep(0.1)
    assert req is not None, "the stage request did not complete after the library's frontend died"
    assert {f["state"] for f in req["files"]} == {"COMPLETED"}, req
    assert await _runs_library(http, topology.frontends[survivor])
    for path, data in tape_files.items():
        assert await _digest(http, url + path) == (data, f"adler32={adler32_hex(data)}")

    # The dead frontend comes back on its port: its start-up sweep removes the temp files of
    # the uploads it was killed in (their locks died with it), and HAProxy takes it back.
    old_port = topology.frontends[victim].port
    await asyncio.to_thread(topology.start, victim, old_port)
    swept = await asyncio.to_thread(poll, lambda: temp_files(topology.root) == [], 10.0)
    assert swept, temp_files(topology.root)
    await asyncio.to_thread(
        topology.haproxy.wait_servers, BACKEND, {victim: True, survivor: True}, 10.0
    )
    assert not await _runs_library(http, topology.frontends[victim])  # the survivor keeps it
    # The accounting in PostgreSQL, kept by every write of both frontends (the dead one's
    # included), agrees with a walk of the tree, with no reconciliation since they started.
    cfg = load_mapping(tomllib.loads(topology.configs[survivor]))
    accounting = Accounting.open(cfg)
    try:
        usage = accounting.all_usage()
    finally:
        accounting.close()
    for share, prefix in (("DTEAMDISK", DISK), ("DTEAMTAPE", TAPE)):
        walked = _walk(topology.root / prefix.lstrip("/"))
        assert (usage[share].bytes, usage[share].files) == walked, (share, usage[share], walked)
        assert usage[share].reconciled <= topology.started_at, usage[share]
    print(
        f"killed {victim}: {len(seen.failed)} failed attempt(s) retried, "
        f"{len(leftovers)} temp file(s) left until its restart; haproxy retried "
        f"{topology.stats('wretr')['BACKEND']} and redispatched "
        f"{topology.stats('wredis')['BACKEND']} connection(s)"
    )


# -- one frontend stops (SIGTERM: a restart, an upgrade) in the middle of the load -----------


async def _stop_mid_load(
    topology: Topology, http: aiohttp.ClientSession, name: str, tag: str, drain_first: bool
) -> Attempts:
    """Upload 32 files through the balancer and stop frontend ``name`` with SIGTERM when a
    third are in (if ``drain_first``, after taking it out of HAProxy and waiting for its
    sessions to end); every file ends up acknowledged and complete; the frontend exits 0, and
    is started again."""
    srv = topology.frontends[name]
    n_files = 32
    work = {
        f"{DISK}/{tag}/f{i:02d}": random_bytes(MIB // 2 - i, len(tag) * 1000 + i)
        for i in range(n_files)
    }
    stopped = asyncio.Event()

    async def stopper(seen: Attempts) -> None:
        await seen.wait_acknowledged(n_files // 3)
        if drain_first:
            # What an operator does before a restart: no new connections to it from now on,
            # and the stop once its sessions have ended.
            assert topology.haproxy.command(f"set server {BACKEND}/{name} state drain") == "\n"
            for _ in range(300):  # 30 s at most
                if topology.stats("scur")[name] == 0:
                    break
                await asyncio.sleep(0.1)
            assert topology.stats("scur")[name] == 0
        srv.proc.send_signal(signal.SIGTERM)  # the parent passes it on to its workers
        stopped.set()

    seen = await _load(http, topology.url, work, stopper)
    assert stopped.is_set()
    code = await asyncio.to_thread(srv.proc.wait, 40)
    srv.stop()
    assert code == 0
    assert set(seen.acknowledged) == set(work)
    for path, data in seen.acknowledged.items():
        assert (topology.root / path.lstrip("/")).read_bytes() == data, path
    await asyncio.to_thread(topology.haproxy.wait_servers, BACKEND, {name: False}, 10.0)
    await asyncio.to_thread(topology.start, name, srv.port)
    if drain_first:
        assert topology.haproxy.command(f"set server {BACKEND}/{name} state ready") == "\n"
    await asyncio.to_thread(topology.haproxy.wait_servers, BACKEND, {name: True}, 10.0)
    return seen


async def test_a_frontend_restarts_mid_load(
    topology: Topology, http: aiohttp.ClientSession
) -> None:
    """A restart as README "Several frontends" describes it: out of HAProxy (state drain),
    stopped once its sessions have ended, started, back in: no client sees an error."""
    seen = await _stop_mid_load(topology, http, "se2", "restart", drain_first=True)
    assert seen.failed == []


async def test_a_bare_sigterm_mid_load(topology: Topology, http: aiohttp.ClientSession) -> None:
    """SIGTERM with no word to HAProxy: se answers 503 on its health page and finishes the
    uploads it runs, but stops as soon as none runs, which can be before HAProxy's checks
    (2 x 500 ms) have noticed: a connection HAProxy has just handed over is then reset, or
    (a request that arrives while the server is being torn down) answered 500.  The client
    tries those again; no upload answered 2xx is lost or wrong (checked by _stop_mid_load)."""
    seen = await _stop_mid_load(topology, http, "se1", "sigterm", drain_first=False)
    connection = ("ClientConnectorError", "ServerDisconnectedError", "ClientOSError")
    for path, what in seen.failed:
        assert what.startswith(connection) or what[:1] == "5", (path, what)
    print(f"bare SIGTERM: {len(seen.failed)} attempt(s) failed and retried: {seen.failed}")
