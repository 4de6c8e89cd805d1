"""The live dashboard (``/.well-known/se/dashboard`` and its JSON) of real ``se`` servers.

In a real headless Chromium (Debian ``chromium``), driven over the DevTools protocol with
aiohttp's websocket client: the page loads with no console error, no exception and no CSP
violation; it shows a running third-party copy between two ``se`` (the source throttled by
a fault rule) with its progress, the errors that followed (a 5xx and a failed copy whose
attacker-chosen name stays text), and, with tape enabled, a cartridge in a drive after a
recall.  Screenshots (light and dark) go to ``$SE_TEST_ARTIFACTS`` if set, else to a
directory under pytest's temporary directory; the path is printed.

Without a browser (plain aiohttp): the JSON's contents from two workers (the copy and the
errors seen whichever worker answers), the permission (read on ``/`` or an admin identity;
401 without credentials), the page's self-containment (CSP hashes of its inline style and
script, no external reference) and ``dashboard.enabled = false``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import BASE_CONFIG
from tests.e2e.jwt_issuer import JWTIssuer
from tests.e2e.test_tape import data_root, tape_config
from tests.support import SEProcess

pytestmark = [pytest.mark.timeout(120)]

PAGE = "/.well-known/se/dashboard"
DATA = "/.well-known/se/dashboard.json"
FAULTS = "/.well-known/se/faults"
SLOW_SIZE = 8 * 1000 * 1000
SLOW_RATE = 400 * 1000  # bytes/s: the copy takes ~20 s, far longer than the checks
EVIL = "/<img src=x onerror=alert(1)>&amp;.bin"  # a name the page must show as text
FAULTS_CONFIG = BASE_CONFIG + "\n[faults]\nenabled = true\n"
SHARES = """
[[shares]]
name = "ATLASDATADISK"
paths = ["/"]
size = 50000000

[[shares]]
name = "ATLASSCRATCHDISK"
paths = ["/scratch"]
"""
ISSUER = "https://dashboard-issuer.example.org/"

Start = Callable[..., SEProcess]


# --------------------------------------------------------------------------- helpers


def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $SE_TEST_ARTIFACTS, else under pytest's temporary directory."""
    env = os.environ.get("SE_TEST_ARTIFACTS")
    path = Path(env) if env else tmp_path_factory.getbasetemp() / "dashboard-artifacts"
    path.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots: {path}")
    return path


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # A new connection per request: with several workers, each request may land on another.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        yield session


async def add_fault(session: aiohttp.ClientSession, srv: SEProcess, **rule: Any) -> None:
    async with session.post(srv.url + FAULTS, json=rule) as resp:
        assert resp.status == 201, await resp.text()


async def put(session: aiohttp.ClientSession, url: str, data: bytes) -> None:
    async with session.put(url, data=io.BytesIO(data)) as resp:
        assert resp.status in (201, 204), await resp.text()


async def dashboard(session: aiohttp.ClientSession, srv: SEProcess) -> dict[str, Any]:
    async with session.get(srv.url + DATA) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Cache-Control"] == "no-store"
        doc = await resp.json()
    assert isinstance(doc, dict)
    return doc


async def until(
    probe: Callable[[], Any], timeout: float, step: float = 0.25, what: str = "condition"
) -> Any:
    """Await ``probe()`` until it returns something truthy (bounded in time and count)."""
    deadline = time.monotonic() + timeout
    value = None
    for _ in range(int(timeout / step) + 2):
        value = await probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {value!r}")


@contextlib.asynccontextmanager
async def slow_copy(
    session: aiohttp.ClientSession, src: SEProcess, dst: SEProcess, name: str = "/copied.bin"
) -> AsyncIterator[asyncio.Task[str]]:
    """A third-party pull by ``dst`` from ``src``, throttled at the source; the task reads
    the marker stream.  Leaving the block cancels it (the client goes: the copy aborts)."""
    await put(session, src.url + "/slow.bin", os.urandom(SLOW_SIZE))
    await add_fault(session, src, method="GET", path="/slow.bin", throttle=SLOW_RATE)

    async def run() -> str:
        async with session.request(
            "COPY", dst.url + name, headers={"Source": src.url + "/slow.bin"}
        ) as resp:
            assert resp.status == 202, await resp.text()
            return await resp.text()

    task = asyncio.create_task(run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def provoke_errors(session: aiohttp.ClientSession, src: SEProcess, dst: SEProcess) -> None:
    """A 500 (a fault rule on ``dst``) and a copy that fails (the source resets the
    connection mid-body), named with markup."""
    await add_fault(session, dst, method="GET", path="/boom", status=500, body="kaboom")
    async with session.get(dst.url + "/boom") as resp:
        assert resp.status == 500
    await put(session, src.url + "/flaky.bin", os.urandom(100_000))
    await add_fault(session, src, method="GET", path="/flaky.bin", reset_after=1000)
    quoted = "".join(c if c.isalnum() or c in "/._-" else f"%{ord(c):02X}" for c in EVIL)
    async with session.request(
        "COPY", dst.url + quoted, headers={"Source": src.url + "/flaky.bin"}
    ) as resp:
        assert resp.status == 202
        body = await resp.text()
    assert "failure" in body, body


# --------------------------------------------------------------------------- Chromium


class DevTools:
    """One page of a headless Chromium, over the DevTools protocol (aiohttp websocket)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._next = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                future = self._waiting.pop(data["id"], None) if "id" in data else None
                if future is not None:
                    if not future.done():
                        future.set_result(data)
                else:
                    self.events.append(data)
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError("DevTools connection closed"))

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        future = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = future
        await self.ws.send_json({"id": self._next, "method": method, "params": params})
        async with asyncio.timeout(30):
            answer = await future
        if "error" in answer:
            raise AssertionError(f"{method}: {answer['error']}")
        result = answer.get("result", {})
        assert isinstance(result, dict)
        return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """The value of ``expression`` once it is truthy (bounded)."""

        async def probe() -> Any:
            return await self.evaluate(expression)

        return await until(probe, timeout, what=expression)

    async def open(self, url: str) -> None:
        """Navigate and wait for the load event and the page's first update."""
        seen = len(self.events)
        await self.call("Page.navigate", url=url)

        async def loaded() -> bool:
            return any(e.get("method") == "Page.loadEventFired" for e in self.events[seen:])

        await until(loaded, 20, step=0.05, what=f"load of {url}")
        await self.wait_for("document.body.dataset.updated || ''")

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (CSP violations,
        failed loads) seen so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(f"exception: {params.get('exceptionDetails')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(f"console.error: {params.get('args')}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                found.append(f"log: {entry.get('text')} {entry.get('url', '')}")
        return found

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        assert path.stat().st_size > 1000

    async def dark(self, on: bool) -> None:
        await self.call(
            "Emulation.setEmulatedMedia",
            features=[{"name": "prefers-color-scheme", "value": "dark" if on else "light"}],
        )


def need_chromium() -> str:
    """The browser's path; the test is skipped (naming it) when it is not installed."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("not installed: chromium (Debian package chromium)")
    return exe


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path) -> AsyncIterator[DevTools]:
    """A fresh headless Chromium (its own profile in ``tmp_path``) and its first page."""
    exe = need_chromium()
    proc = await asyncio.create_subprocess_exec(
        exe,
        "--headless=new",
        "--remote-debugging-port=0",
        "--no-sandbox",  # CI runs as root
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-gpu",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--mute-audio",
        "--window-size=1280,1200",
        "about:blank",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stderr is not None
    drain: asyncio.Task[None] | None = None
    try:
        endpoint = None
        async with asyncio.timeout(30):
            while endpoint is None:
                line = await proc.stderr.readline()
                if not line:
                    raise AssertionError(f"chromium exited ({await proc.wait()}) before DevTools")
                m = re.search(rb"DevTools listening on (ws://\S+)", line)
                if m:
                    endpoint = m.group(1).decode()

        async def swallow() -> None:  # chromium keeps writing; a full pipe would block it
            assert proc.stderr is not None
            while await proc.stderr.read(65536):
                pass

        drain = asyncio.create_task(swallow())
        base = "http://" + endpoint.split("/")[2]
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/json/list") as resp:
                targets = await resp.json()
            pages = [t for t in targets if t.get("type") == "page"]
            assert pages, targets
            async with session.ws_connect(
                pages[0]["webSocketDebuggerUrl"], max_msg_size=256 << 20
            ) as ws:
                tools = DevTools(ws)
                for domain in ("Runtime", "Log", "Page"):
                    await tools.call(f"{domain}.enable")
                yield tools
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if drain is not None:
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)


TRANSFERS = """JSON.stringify([...document.querySelectorAll('.tpc-row')].map(r => ({
  role: r.dataset.role, text: r.textContent,
  progress: r.querySelector('.tpc-progress').textContent})))"""
ERRORS = """JSON.stringify({
  rows: [...document.querySelectorAll('.error-row')].map(r => r.textContent),
  markup: document.querySelectorAll('#errors img, #errors b, #errors script').length})"""
SHARES_SHOWN = """(() => {
  const found = Object.fromEntries([...document.querySelectorAll('.share[data-share]')].map(
    s => [s.dataset.share, s.textContent]));
  return Object.keys(found).length === 2 ? found : null;
})()"""
DRIVES = """JSON.stringify([...document.querySelectorAll('.drive')].map(d => ({
  state: d.dataset.state, cartridge: d.dataset.cartridge || null})))"""


@pytest.mark.clients
async def test_page_in_chromium_shows_a_running_copy_and_errors(
    se_factory: Start,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    need_chromium()
    shots = artifacts(tmp_path_factory)
    src = se_factory(FAULTS_CONFIG, root=tmp_path / "src")
    dst = se_factory(FAULTS_CONFIG + SHARES, root=tmp_path / "dst")
    await put(http, dst.url + "/data.bin", os.urandom(5_000_000))
    async with chromium(tmp_path) as page, slow_copy(http, src, dst) as copy:
        await page.open(dst.url + PAGE)
        shares = await page.wait_for(SHARES_SHOWN)
        assert "5.00 MB of 50.0 MB · 10%" in shares["ATLASDATADISK"], shares
        assert "0 B · no limit" in shares["ATLASSCRATCHDISK"], shares

        async def moving() -> list[dict[str, Any]]:
            rows = json.loads(await page.evaluate(TRANSFERS))
            # Some way in (10%: a few seconds), so that rate and plot have something to show.
            return [r for r in rows if re.search(r" · (?:[1-9]\d)%$", r["progress"])]

        rows = await until(moving, 40, what="a copy with progress on the page")
        assert not copy.done()
        assert len(rows) == 1 and rows[0]["role"] == "pull", rows
        assert "/copied.bin" in rows[0]["text"] and src.url + "/slow.bin" in rows[0]["text"]
        assert re.match(r"[\d.]+ [kM]B / 8\.00 MB · \d+%$", rows[0]["progress"]), rows
        await page.screenshot(shots / "dashboard-copy-light.png")
        await page.dark(True)
        await page.screenshot(shots / "dashboard-copy-dark.png")
        assert page.problems() == []
    # The client went away: the copy aborts and leaves the page.
    async with chromium(tmp_path / "second") as page:
        await page.open(dst.url + PAGE)
        await page.wait_for(
            "document.querySelectorAll('.tpc-row').length === 0 && "
            "document.getElementById('tpc-body').textContent.includes('No third-party')"
        )
        await provoke_errors(http, src, dst)

        async def listed() -> dict[str, Any] | None:
            found: dict[str, Any] = json.loads(await page.evaluate(ERRORS))
            return found if len(found["rows"]) >= 2 else None

        errors = await until(listed, 20, what="two errors on the page")
        assert errors["markup"] == 0, errors  # the name stayed text
        assert any("500" in r and "/boom" in r and "kaboom" in r for r in errors["rows"]), errors
        assert any("TPC failed" in r and EVIL in r for r in errors["rows"]), errors
        await page.screenshot(shots / "dashboard-errors.png")
        assert page.problems() == []
        assert await page.evaluate("document.getElementById('status').textContent") == "live"


@pytest.mark.clients
async def test_page_in_chromium_shows_a_mounted_cartridge(
    se_factory: Start,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    need_chromium()
    shots = artifacts(tmp_path_factory)
    # A drive keeps its cartridge after the recall (idle_dismount: ~17 min at this scale).
    config = tape_config({"idle_dismount": 1e6, "buffer_capacity": 40_000_000})
    srv = se_factory(config, root=data_root(tmp_path))
    await put(http, srv.url + "/tape/f.bin", os.urandom(4_000_000))
    for switch in ({"flush": True}, {"evict": True}):
        async with http.post(srv.url + "/.well-known/se/tape", json=switch) as resp:
            assert resp.status == 200, await resp.text()
    async with chromium(tmp_path) as page:
        await page.open(srv.url + PAGE)
        assert json.loads(await page.evaluate(DRIVES)), "no drives shown"
        async with http.post(
            srv.url + "/api/v1/stage", json={"files": [{"path": "/tape/f.bin"}]}
        ) as resp:
            assert resp.status == 201, await resp.text()

        async def mounted() -> list[dict[str, Any]]:
            drives = json.loads(await page.evaluate(DRIVES))
            return [d for d in drives if d["cartridge"] and d["state"] in ("busy", "idle")]

        drives = await until(mounted, 30, what="a cartridge in a drive")
        assert len(drives) == 1, drives
        summary = await page.evaluate("document.getElementById('tape-body').textContent")
        assert "Disk buffer" in summary and "recalled" in summary, summary
        await page.screenshot(shots / "dashboard-tape.png")
        await page.dark(True)
        await page.screenshot(shots / "dashboard-tape-dark.png")
        assert page.problems() == []


# --------------------------------------------------------------------------- plain HTTP


async def test_json_merges_workers(
    se_factory: Start, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    src = se_factory(FAULTS_CONFIG, root=tmp_path / "src")
    dst = se_factory(FAULTS_CONFIG, root=tmp_path / "dst", extra_args=["--workers", "2"])
    doc = await dashboard(http, dst)
    assert doc["transfers"] == [] and doc["errors"] == [] and doc["tape"] is None
    async with slow_copy(http, src, dst) as copy:

        async def seen() -> list[dict[str, Any]]:
            doc = await dashboard(http, dst)
            if doc["server"]["workers"] != 2:
                return []
            return [t for t in doc["transfers"] if t["bytes"] > 0]

        await until(seen, 30, what="the copy, seen with both workers publishing")
        # Whichever worker answers (a new connection each time), the copy is there.
        for _ in range(8):
            doc = await dashboard(http, dst)
            assert doc["server"]["workers"] == 2, doc["server"]
            [transfer] = doc["transfers"]
            assert transfer["role"] == "pull" and transfer["state"] == "active"
            assert transfer["local"] == "/copied.bin"
            assert transfer["remote"] == src.url + "/slow.bin"
            assert transfer["size"] == SLOW_SIZE and 0 < transfer["bytes"] < SLOW_SIZE
            assert transfer["rate"] >= 0
        assert not copy.done()
    await provoke_errors(http, src, dst)
    for _ in range(6):
        errors = (await dashboard(http, dst))["errors"]
        kinds = {(e["kind"], e["status"], e["path"]) for e in errors}
        if len(kinds) == 2:
            break
        await asyncio.sleep(0.5)
    assert kinds == {("http", 500, "/boom"), ("tpc", 202, EVIL)}, errors
    boom = next(e for e in errors if e["kind"] == "http")
    assert boom["method"] == "GET" and boom["detail"] == "kaboom"
    failed = next(e for e in errors if e["kind"] == "tpc")
    assert failed["method"] == "COPY" and failed["detail"].startswith("failure: ")
    assert "/flaky.bin" in failed["detail"] and EVIL in failed["detail"]


async def test_throughput_history(se_factory: Start, http: aiohttp.ClientSession) -> None:
    """Bytes in and out of any worker show in the history whichever worker answers."""
    srv = se_factory(extra_args=["--workers", "2"])
    doc = await dashboard(http, srv)
    throughput = doc["throughput"]
    assert throughput["series"] == ["http_in", "tpc_in", "http_out", "tpc_out"]
    assert throughput["interval"] == 2.0 and throughput["window"] == 900.0
    data = os.urandom(3_000_000)
    await put(http, srv.url + "/upload.bin", data)
    for _ in range(2):
        async with http.get(srv.url + "/upload.bin") as resp:
            assert await resp.read() == data

    async def moved() -> dict[str, Any] | None:
        doc = (await dashboard(http, srv))["throughput"]
        points = doc["points"]
        seen_in = any(p[1] > 0 for p in points)
        seen_out = any(p[3] > 0 for p in points)
        return doc if seen_in and seen_out else None

    doc = await until(moved, 20, what="the upload and downloads in the history")
    assert doc["totals"]["http_in"] >= len(data)
    assert doc["totals"]["http_out"] >= 2 * len(data)
    # Rates: the bytes of each interval over its length, never negative.
    assert all(len(p) == 5 and min(p[1:]) >= 0 for p in doc["points"])
    assert [p[0] for p in doc["points"]] == sorted(p[0] for p in doc["points"])
    # Share usage from the space accounting (one implicit share without [[shares]]).
    [share] = (await dashboard(http, srv))["space"]
    assert share["name"] == "default" and share["path"] == "/" and share["limit"] is None
    assert share["used"] == len(data) and share["files"] == 1


async def test_refusal_before_the_body_is_an_error(
    se_factory: Start, http: aiohttp.ClientSession
) -> None:
    """A 507 answered to ``Expect: 100-continue`` (the share is full) is listed too."""
    srv = se_factory(BASE_CONFIG + '[[shares]]\nname = "SMALL"\npaths = ["/"]\nsize = 1000000\n')
    async with http.put(
        srv.url + "/big.bin", data=io.BytesIO(os.urandom(2_000_000)), expect100=True
    ) as resp:
        assert resp.status == 507
    [error] = (await dashboard(http, srv))["errors"]
    assert (error["kind"], error["status"], error["method"], error["path"]) == (
        "http",
        507,
        "PUT",
        "/big.bin",
    )
    assert "SMALL" in error["detail"]


async def test_tape_from_the_library_worker(
    se_factory: Start, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The library runs in the first worker; every worker's answer shows its drives."""
    config = tape_config({"idle_dismount": 1e6})
    srv = se_factory(config, root=data_root(tmp_path), extra_args=["--workers", "2"])
    await put(http, srv.url + "/tape/t.bin", os.urandom(100_000))

    async def on_tape_only() -> bool:
        # Flush and evict act in the library's worker: ask until one of them lands there.
        for switch in ({"flush": True}, {"evict": True}):
            async with http.post(srv.url + "/.well-known/se/tape", json=switch) as resp:
                assert resp.status == 200, await resp.text()
        async with http.get(srv.url + "/tape/t.bin") as resp:
            await resp.read()
            return resp.status == 503

    await until(on_tape_only, 20, step=0.1, what="the file on tape only")
    async with http.post(
        srv.url + "/api/v1/stage", json={"files": [{"path": "/tape/t.bin"}]}
    ) as resp:
        assert resp.status == 201, await resp.text()

    async def mounted() -> bool:
        doc = await dashboard(http, srv)
        tape = doc["tape"] or {}
        loaded = [d for d in tape.get("drives", []) if d["cartridge"]]
        return doc["server"]["workers"] == 2 and len(loaded) == 1

    await until(mounted, 30, what="a mounted cartridge with both workers publishing")
    for _ in range(6):
        tape = (await dashboard(http, srv))["tape"]
        assert tape["library"] is True
        assert [d["state"] for d in tape["drives"] if d["cartridge"]] in (["idle"], ["busy"])
        assert tape["files_recalled"] == 1 and tape["mounts"] == 1
        assert tape["buffer"]["used"] >= 100_000


async def test_snapshots_of_dead_or_silent_workers_are_ignored(
    se: SEProcess, http: aiohttp.ClientSession
) -> None:
    directory = se.root / ".se-state" / "dashboard"
    await dashboard(http, se)  # the directory exists once the server runs
    fake = {"transfers": [{"role": "push", "local": "/ghost", "started": 1.0}], "errors": []}
    dead = subprocess.Popen(["true"])  # a pid that has exited
    dead.wait()
    (directory / f"{dead.pid}.0.json").write_text(json.dumps({**fake, "time": time.time()}))
    silent = directory / f"{os.getpid()}.0.json"  # alive, but its file is old
    silent.write_text(json.dumps({**fake, "time": time.time() - 60}))
    os.utime(silent, (time.time() - 60, time.time() - 60))
    doc = await dashboard(http, se)
    assert doc["transfers"] == [] and doc["server"]["workers"] == 1
    assert not (directory / f"{dead.pid}.0.json").exists()
    assert silent.exists()
    silent.unlink()


async def test_permission(se_factory: Start, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    issuer = JWTIssuer(tmp_path / "issuer", issuer=ISSUER)
    jwks = issuer.write_jwks()
    srv = se_factory(
        BASE_CONFIG
        + f"""
[auth]
anonymous = "none"

[[auth.issuers]]
issuer = "{ISSUER}"
base_path = "/"
jwks_file = "{jwks}"

[dashboard]
admins = ["dash-admin"]
"""
    )

    async def status(path: str, scopes: str | None = None, sub: str = "someone") -> int:
        headers = {}
        if scopes is not None:
            headers["Authorization"] = "Bearer " + issuer.mint(scopes=scopes, sub=sub)
        async with http.get(srv.url + path, headers=headers) as resp:
            await resp.read()
            return resp.status

    for path in (PAGE, DATA):
        assert await status(path) == 401
        assert await status(path, "storage.create:/inbox") == 403
        assert await status(path, "storage.read:/inbox") == 403
        assert await status(path, "storage.read:/") == 200
        assert await status(path, "storage.create:/inbox", sub="dash-admin") == 200
    token = issuer.mint(scopes="storage.read:/")
    async with http.post(srv.url + DATA, headers={"Authorization": "Bearer " + token}) as resp:
        assert resp.status == 405
    # A browser without a certificate: the token in the query (the page passes it on).
    for path in (PAGE, DATA):
        async with http.get(srv.url + path, params={"authz": token}) as resp:
            assert resp.status == 200


async def test_page_is_self_contained(se: SEProcess, http: aiohttp.ClientSession) -> None:
    async with http.get(se.url + PAGE) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        policy = resp.headers["Content-Security-Policy"]
        html = await resp.text()
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    for tag in ("script", "style"):
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        assert bodies
        for body in bodies:
            digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in policy
    assert re.findall(r"""(?:src|href)\s*=\s*["']?(?!data:)[^"'\s>]""", html) == []
    assert re.findall(r"https?://(?!www\.w3\.org/2000/svg)", html) == []
    assert "innerHTML" not in html and "insertAdjacentHTML" not in html
    assert "document.write" not in html
    async with http.head(se.url + PAGE) as resp:
        assert resp.status == 200


async def test_disabled(se_factory: Start, http: aiohttp.ClientSession) -> None:
    srv = se_factory(BASE_CONFIG + "\n[dashboard]\nenabled = false\n")
    for path in (PAGE, DATA):
        async with http.get(srv.url + path) as resp:
            assert resp.status == 404
