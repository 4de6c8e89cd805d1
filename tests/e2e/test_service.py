"""A service that keeps running (issue 15): the health page for load balancers, graceful
stop with a bounded drain, SIGHUP reload, the transfer log and systemd notification.

Real servers (``se serve`` subprocesses) driven with aiohttp and raw sockets; a reload is
waited for through the health page's generation, never by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from se.auth import issuer
from tests.conftest import BASE_CONFIG
from tests.pg import postgres_or_skip
from tests.support import SEProcess, poll, poll_async

HEALTH = "/.well-known/se/health"


def health(url: str, method: str = "GET") -> tuple[int, dict[str, object]]:
    """(status, JSON body) of the health page; body {} for HEAD."""
    req = urllib.request.Request(url + HEALTH, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    return status, (json.loads(raw) if raw else {})


# --------------------------------------------------------------------------- health


def test_health_answers_without_credentials(se_factory: Callable[..., SEProcess]) -> None:
    se = se_factory(BASE_CONFIG + '[auth]\nanonymous = "none"\n')
    status, body = health(se.url)
    assert status == 200, body
    assert body["status"] == "ok" and body["draining"] is False
    assert body["generation"] == 0
    assert isinstance(body["pid"], int) and isinstance(body["uptime"], float | int)
    assert isinstance(body["version"], str)
    assert set(body) == {"status", "version", "pid", "uptime", "generation", "draining"}
    status, body = health(se.url, "HEAD")
    assert status == 200 and body == {}
    # Everything else still needs credentials.
    req = urllib.request.Request(se.url + "/")
    try:
        urllib.request.urlopen(req, timeout=5)
        raise AssertionError("anonymous GET / was served")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401


def test_health_is_503_when_the_storage_root_goes(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    se = se_factory(BASE_CONFIG, root=root)
    assert health(se.url)[0] == 200
    moved = tmp_path / "moved"
    root.rename(moved)
    try:
        assert poll(lambda: health(se.url)[0] == 503, timeout=5)
        status, body = health(se.url)
        assert status == 503, body
        assert body["status"] == "unhealthy" and body["reason"] == "storage root is not accessible"
    finally:
        moved.rename(root)
    assert poll(lambda: health(se.url)[0] == 200, timeout=5)


def test_health_is_503_when_the_state_database_goes(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    """The space accounting on PostgreSQL: health turns 503 when the server is gone."""
    with postgres_or_skip() as pg:
        url = pg.create_database("health")
        se = se_factory(BASE_CONFIG + f'[space]\ndatabase = "{url}"\n', root=tmp_path / "r")
        assert poll(lambda: health(se.url)[0] == 200, timeout=10), health(se.url)
        pg.stop()
        assert poll(lambda: health(se.url)[0] == 503, timeout=10)
        status, body = health(se.url)
        assert status == 503 and body["reason"] == "state database is unreachable", body


# --------------------------------------------------------------------------- reload


def logged(se: SEProcess, text: str, timeout: float = 15.0) -> bool:
    return poll(lambda: text in se.stderr(), timeout=timeout, step=0.05)


def make_issuer(tmp_path: Path, name: str) -> tuple[str, Path, Callable[[], str]]:
    """An issuer URL, its JWKS file, and a function minting a read token of it."""
    out = tmp_path / name
    out.mkdir()
    key_path, jwks_path = issuer.keygen(out)
    url = f"https://{name}.example.org"

    def mint() -> str:
        return issuer.issue(
            issuer.load_key(key_path),
            url,
            "storage.read:/",
            ["https://wlcg.cern.ch/jwt/v1/any"],
            600,
            f"user-of-{name}",
            None,
        )

    return url, jwks_path, mint


def auth_config(
    issuers: list[tuple[str, Path]], public: str, access_log: bool, extra: str = ""
) -> str:
    text = (
        f'[logging]\nlevel = "info"\naccess_log = {str(access_log).lower()}\n'
        '[auth]\nanonymous = "none"\n'
    )
    for url, jwks in issuers:
        text += f'[[auth.issuers]]\nissuer = "{url}"\njwks_file = "{jwks}"\n'
    text += f'[[auth.public]]\npath = "{public}"\nallow = ["read"]\n'
    return text + extra


async def status_of(session: aiohttp.ClientSession, url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.get(url, headers=headers) as resp:
        await resp.read()
        return resp.status


async def test_reload_applies_issuers_rules_and_logging_live(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    """SIGHUP with --workers 2: a new issuer's token works, a public rule moves, the access
    log goes quiet, while a long download on a kept-alive connection goes on unharmed."""
    url_a, jwks_a, mint_a = make_issuer(tmp_path, "issuer-a")
    url_b, jwks_b, mint_b = make_issuer(tmp_path, "issuer-b")
    root = tmp_path / "root"
    for name in ("pub", "pub2", "data"):
        (root / name).mkdir(parents=True)
        (root / name / "f").write_bytes(b"x" * 100)
    big = os.urandom(1 << 20) * 48  # 48 MiB: far more than the socket buffers hold
    (root / "data" / "big").write_bytes(big)
    se = se_factory(
        auth_config([(url_a, jwks_a)], "/pub", True), root=root, extra_args=["--workers", "2"]
    )
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        assert await status_of(session, f"{se.url}/data/f", mint_a()) == 200
        assert await status_of(session, f"{se.url}/data/f", mint_b()) == 401
        assert await status_of(session, f"{se.url}/pub/f") == 200
        assert await status_of(session, f"{se.url}/pub2/f") == 401
        assert await status_of(session, f"{se.url}/data/f?before-reload", mint_a()) == 200
        assert logged(se, "/data/f?before-reload")
        # A long download, started before the reload, read slowly across it.
        headers = {"Authorization": f"Bearer {mint_a()}"}
        async with session.get(f"{se.url}/data/big", headers=headers) as download:
            assert download.status == 200
            got = bytearray(await download.content.readexactly(1 << 20))
            assert se.config is not None
            se.config.write_text(auth_config([(url_a, jwks_a), (url_b, jwks_b)], "/pub2", False))
            os.kill(se.proc.pid, signal.SIGHUP)
            assert logged(se, "config reloaded (generation 1)")
            async with aiohttp.ClientSession() as other:  # new connections, either worker
                for _ in range(6):
                    assert await status_of(other, f"{se.url}/data/f", mint_b()) == 200
                    assert await status_of(other, f"{se.url}/pub2/f") == 200
                    assert await status_of(other, f"{se.url}/pub/f") == 401
                    assert (await asyncio.to_thread(health, se.url))[1]["generation"] == 1
                assert await status_of(other, f"{se.url}/data/f?after-reload", mint_a()) == 200
            got += await download.read()
        assert bytes(got) == big
        # The same kept-alive connection serves on, under the new rules.
        assert await status_of(session, f"{se.url}/data/f", mint_b()) == 200
    # No access log line after the reload (the download's own would come at its end).
    after = se.stderr().split("config reloaded (generation 1)", 1)[1]
    assert '"GET /' not in after and "after-reload" not in after, after[-2000:]


def test_reload_applies_fault_rules_shares_and_level(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    """Fault rules of the file, [[shares]] (SRR shows the new one) and the log level, on
    both workers."""

    def config(rule_path: str, share: str, level: str) -> str:
        return (
            f'[logging]\nlevel = "{level}"\naccess_log = false\n'
            "[faults]\nenabled = true\n"
            f'[[faults.rules]]\nmethod = "GET"\npath = "{rule_path}"\nstatus = 418\n'
            f'[[shares]]\nname = "{share}"\npaths = ["/"]\n'
        )

    root = tmp_path / "root"
    root.mkdir()
    for name in ("a", "b"):
        (root / name).write_bytes(b"data")
    se = se_factory(config("/a", "OLDSHARE", "warning"), root=root, extra_args=["--workers", "2"])

    def statuses(path: str) -> set[int]:
        out = set()
        for _ in range(6):  # new connections: both workers
            try:
                with urllib.request.urlopen(se.url + path, timeout=5) as resp:
                    out.add(resp.status)
            except urllib.error.HTTPError as exc:
                out.add(exc.code)
        return out

    def share_names() -> set[str]:
        with urllib.request.urlopen(se.url + "/.well-known/se/srr", timeout=5) as resp:
            doc = json.loads(resp.read())
        return {s["name"] for s in doc["storageservice"]["storageshares"]}

    assert statuses("/a") == {418} and statuses("/b") == {200}
    assert share_names() == {"OLDSHARE"}
    assert se.config is not None
    se.config.write_text(config("/b", "NEWSHARE", "info"))
    os.kill(se.proc.pid, signal.SIGHUP)
    # At level warning before, the INFO line shows that the new level is in force.
    assert logged(se, "config reloaded (generation 1)")
    assert statuses("/a") == {200} and statuses("/b") == {418}
    assert all(share_names() == {"NEWSHARE"} for _ in range(4))  # new connections


def start_on_port(tmp_path: Path, config: str, port: int) -> SEProcess:
    """``se serve -c FILE`` with the port in the file (start_se gives --port 0, a flag,
    which a file's server.port would never override)."""
    cfg = tmp_path / "fixed.toml"
    cfg.write_text(config)
    err = tmp_path / "fixed.stderr"
    args = [sys.executable, "-m", "se", "serve", "-c", str(cfg), "--root", str(tmp_path / "d")]
    with open(err, "w") as fh:
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=fh, text=True, start_new_session=True
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("se: serving"), err.read_text()
    return SEProcess(f"http://127.0.0.1:{port}", tmp_path / "d", proc, cfg, err, args)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_reload_refuses_a_bad_file_and_keeps_the_old_config(tmp_path: Path) -> None:
    port = free_port()
    base = f'[server]\nport = {port}\n[logging]\nlevel = "info"\naccess_log = false\n'
    good = base + '[auth]\nanonymous = "read"\n'
    se = start_on_port(tmp_path, good, port)
    try:
        (se.root / "f").write_bytes(b"old config")
        assert se.config is not None

        def reload(text: str, expect: str) -> None:
            assert se.config is not None
            se.config.write_text(text)
            os.kill(se.proc.pid, signal.SIGHUP)
            assert logged(se, expect), se.stderr()[-2000:]
            # The old configuration serves on, in full: anonymous read, no anonymous write.
            with urllib.request.urlopen(se.url + "/f", timeout=5) as resp:
                assert resp.read() == b"old config"
            put = urllib.request.Request(se.url + "/g", data=b"x", method="PUT")
            try:
                urllib.request.urlopen(put, timeout=5)
                raise AssertionError("anonymous PUT was allowed")
            except urllib.error.HTTPError as exc:
                assert exc.code == 401
            assert health(se.url)[1]["generation"] == 0

        reload(good + "[auth\n", "reload refused, the configuration in force is kept: ")
        assert "invalid TOML" in se.stderr()
        reload(base + '[auth]\nanonymous = "sometimes"\n', "auth.anonymous: must be one of")
        moved = good.replace(f"port = {port}", f"port = {free_port()}")
        reload(moved, "server.port cannot change without a restart")
        reload(
            good + "[tls]\ncert = '/x'\nkey = '/y'\n", "tls.cert cannot change without a restart"
        )
        assert se.stderr().count("reload refused") == 4
        # A good one then applies (the same process: --workers 1 handles SIGHUP itself).
        se.config.write_text(base + '[auth]\nanonymous = "read-write"\n')
        os.kill(se.proc.pid, signal.SIGHUP)
        assert logged(se, "config reloaded (generation 1)")
        put = urllib.request.Request(se.url + "/g", data=b"new", method="PUT")
        with urllib.request.urlopen(put, timeout=5) as resp:
            assert resp.status == 201
        assert health(se.url)[1]["generation"] == 1
    finally:
        se.stop()
    assert se.proc.returncode == 0


# --------------------------------------------------------------------------- graceful stop

SLOW_SOURCE = (
    BASE_CONFIG
    + """
[faults]
enabled = true
[[faults.rules]]
method = "GET"
path = "/slow/*"
throttle = 100000
"""
)


def result_of(body: str) -> str:
    lines = [line for line in body.splitlines() if line.strip()]
    return lines[-1] if lines else ""


async def test_stop_drains_running_transfers_then_aborts_the_rest(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    """SIGTERM: /health is 503 at once, new requests are still served during the drain, a
    short copy and a slow upload finish, a long copy ends "aborted:" when the drain is up."""
    src = se_factory(SLOW_SOURCE, root=tmp_path / "src")
    (src.root / "slow").mkdir()
    short, long = os.urandom(100_000), os.urandom(3_000_000)  # ~1 s and ~30 s at 100 kB/s
    (src.root / "slow" / "short").write_bytes(short)
    (src.root / "slow" / "long").write_bytes(long)
    dst = se_factory(BASE_CONFIG + "[server]\ndrain_timeout = 6.0\n", root=tmp_path / "dst")
    (dst.root / "here").write_bytes(b"still served")

    async def copy(session: aiohttp.ClientSession, name: str) -> str:
        headers = {"Source": f"{src.url}/slow/{name}"}
        async with session.request("COPY", f"{dst.url}/{name}", headers=headers) as resp:
            assert resp.status == 202
            return await resp.text()

    async def slow_body() -> AsyncIterator[bytes]:
        for _ in range(10):
            await asyncio.sleep(0.2)
            yield b"u" * 10_000

    async with aiohttp.ClientSession() as session:
        copies = [asyncio.ensure_future(copy(session, n)) for n in ("short", "long")]
        upload = asyncio.ensure_future(session.put(f"{dst.url}/uploaded", data=slow_body()))
        # Both copies are moving data before the stop.
        assert await poll_async(lambda: health(src.url)[0] == 200, timeout=5)
        await asyncio.sleep(0.5)
        dst.proc.send_signal(signal.SIGTERM)
        assert await poll_async(lambda: health(dst.url)[0] == 503, timeout=2)
        status, body = health(dst.url)
        assert status == 503 and body["draining"] is True and body["status"] == "draining"
        # A new connection, during the drain.
        async with aiohttp.ClientSession() as fresh, fresh.get(f"{dst.url}/here") as resp:
            assert resp.status == 200 and await resp.read() == b"still served"
        async with asyncio.timeout(30):
            short_body, long_body = await asyncio.gather(*copies)
            put = await upload
        assert put.status == 201
        put.release()
    assert result_of(short_body).startswith("success"), short_body[-500:]
    assert result_of(long_body).startswith("aborted: server shutting down"), long_body[-500:]
    assert (dst.root / "short").read_bytes() == short
    assert (dst.root / "uploaded").read_bytes() == b"u" * 100_000
    assert not (dst.root / "long").exists()
    assert dst.proc.wait(20) == 0


def test_stop_behind_a_balancer_keeps_serving_until_its_checks_saw_the_503(
    se_factory: Callable[..., SEProcess],
) -> None:
    """An idle server whose health page a balancer polls stays up drain_min seconds after
    SIGTERM, answering 503 (not refusing), so the balancer takes it out before connections
    are refused; an idle server nobody polled stops at once."""
    polled = se_factory(BASE_CONFIG + "[server]\ndrain_min = 2.0\n")
    assert health(polled.url)[0] == 200  # the balancer's check
    polled.proc.send_signal(signal.SIGTERM)
    answers = []
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # bounded: one second of checks
        answers.append(health(polled.url)[0])
        time.sleep(0.1)
    assert answers and set(answers) == {503}, answers
    assert polled.proc.wait(15) == 0
    alone = se_factory(BASE_CONFIG + "[server]\ndrain_min = 20.0\n")
    started = time.monotonic()
    alone.proc.send_signal(signal.SIGTERM)
    assert alone.proc.wait(15) == 0
    assert time.monotonic() - started < 10  # not the 20 s kept for a balancer


# --------------------------------------------------------------------------- transfer log


def test_a_download_the_client_leaves_is_logged_aborted_without_a_traceback(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    """A client that hangs up in the middle of a large GET: the transfer log says aborted
    with the bytes that went, the access log keeps the 200 that was sent, and the server's
    log has one line for it, not an ERROR with a traceback."""
    log_path = tmp_path / "transfers.jsonl"
    se = se_factory(f'[logging]\nlevel = "info"\ntransfer_log = "{log_path}"\n')
    size = 256 << 20  # far more than the socket buffers hold
    with open(se.root / "big", "wb") as fh:
        fh.truncate(size)
    with socket.create_connection(("127.0.0.1", se.port), timeout=10) as s:
        s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while len(got) < 1 << 20:  # bounded: 1 MiB, then hang up
            chunk = s.recv(65536)
            assert chunk, "the server closed first"
            got += chunk
        assert got.startswith(b"HTTP/1.1 200")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    def logged_line() -> dict[str, Any] | None:
        if not log_path.exists():
            return None
        lines = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
        return lines[-1] if lines else None

    assert poll(lambda: logged_line() is not None, timeout=15)
    line = logged_line()
    assert line is not None
    assert line["kind"] == "download" and line["state"] == "aborted", line
    assert line["status"] == 200 and line["bytes"] < size, line
    se.stop()
    err = se.stderr()
    assert "download cut after" in err, err[-2000:]
    assert "Traceback" not in err and "Error handling request" not in err, err[-3000:]


async def test_transfer_log_lines(se_factory: Callable[..., SEProcess], tmp_path: Path) -> None:
    broken = '[faults]\nenabled = true\n[[faults.rules]]\npath = "/broken"\nreset_after = 1000\n'
    src = se_factory(BASE_CONFIG + broken, root=tmp_path / "src")
    remote_data = os.urandom(300_000)
    (src.root / "f").write_bytes(remote_data)
    (src.root / "broken").write_bytes(remote_data)
    log_path = tmp_path / "transfers.jsonl"
    config = f'[logging]\nlevel = "info"\naccess_log = false\ntransfer_log = "{log_path}"\n'
    dst = se_factory(config, root=tmp_path / "dst", extra_args=["--workers", "2"])
    data = os.urandom(1_000_000)
    async with aiohttp.ClientSession() as session:
        headers = {"User-Agent": "service-test/1"}
        async with session.put(f"{dst.url}/up", data=data, headers=headers) as r:
            assert r.status == 201
        async with session.get(f"{dst.url}/up", headers=headers) as r:
            assert r.status == 200 and await r.read() == data
        copies = [
            ("/pulled", {"Source": f"{src.url}/f?sig=secret"}),
            ("/up", {"Destination": f"{src.url}/pushed"}),
            ("/failed", {"Source": f"{src.url}/broken"}),
        ]
        results = []
        for path, hdrs in copies:
            async with session.request("COPY", dst.url + path, headers=hdrs) as r:
                assert r.status == 202
                results.append(result_of(await r.text()))
        # Refused before any data moved (the source's HEAD is a 404): failed too.
        hdrs = {"Source": f"{src.url}/missing"}
        async with session.request("COPY", f"{dst.url}/refused", headers=hdrs) as r:
            assert r.status == 404
            refusal = (await r.text()).strip()
    assert results[0].startswith("success") and results[1].startswith("success"), results
    assert results[2].startswith("failure"), results

    def lines() -> list[dict[str, Any]]:
        if not log_path.exists():
            return []
        return [json.loads(line) for line in log_path.read_text().splitlines()]

    assert poll(lambda: len(lines()) >= 6, timeout=10), lines()
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for line in lines():
        by_kind.setdefault(line["kind"], []).append(line)
    assert sorted(by_kind) == ["download", "pull", "push", "upload"], lines()
    adler = f"adler32:{zlib.adler32(data):08x}"
    (up,) = by_kind["upload"]
    assert (up["method"], up["path"], up["bytes"], up["size"]) == (
        "PUT",
        "/up",
        len(data),
        len(data),
    )
    assert (up["state"], up["status"], up["error"], up["checksum"]) == ("ok", 201, "", adler)
    assert up["user_agent"] == "service-test/1" and up["client"] == "127.0.0.1"
    assert up["remote"] is None and up["identity"] == ""
    (down,) = by_kind["download"]
    assert (down["bytes"], down["size"], down["state"], down["checksum"]) == (
        len(data),
        len(data),
        "ok",
        adler,
    )
    (push,) = by_kind["push"]
    assert (push["path"], push["remote"], push["state"]) == ("/up", f"{src.url}/pushed", "ok")
    assert (push["bytes"], push["checksum"]) == (len(data), adler)
    pulls = {line["path"]: line for line in by_kind["pull"]}
    pull_ok, pull_failed, refused = pulls["/pulled"], pulls["/failed"], pulls["/refused"]
    assert (refused["state"], refused["status"], refused["error"]) == ("failed", 404, refusal)
    assert (pull_ok["path"], pull_ok["remote"], pull_ok["state"]) == (
        "/pulled",
        f"{src.url}/f",
        "ok",
    )
    assert pull_ok["bytes"] == pull_ok["size"] == len(remote_data)
    assert pull_ok["checksum"] == f"adler32:{zlib.adler32(remote_data):08x}"
    assert (pull_failed["path"], pull_failed["state"], pull_failed["checksum"]) == (
        "/failed",
        "failed",
        None,
    )
    assert pull_failed["error"] == results[2] and pull_failed["status"] == 202
    assert pull_failed["error"].startswith("failure: source body")
    for line in lines():
        assert line["end"] >= line["start"] and line["duration"] >= 0
        assert isinstance(line["pid"], int) and len(line["id"]) == 16
        assert set(line) >= {"throughput", "scitag", "vo", "identity", "status"}
    # logrotate: the file moved away, SIGHUP, the next lines go to a new file of that name.
    rotated = tmp_path / "transfers.jsonl.1"
    log_path.rename(rotated)
    os.kill(dst.proc.pid, signal.SIGHUP)
    assert poll(lambda: "config reloaded (generation 1)" in dst.stderr(), timeout=15)
    async with aiohttp.ClientSession() as session:
        for i in range(4):  # new connections: both workers
            async with session.put(f"{dst.url}/after-{i}", data=b"x") as r:
                assert r.status == 201
    assert poll(lambda: len(lines()) == 4, timeout=10), lines()
    assert {line["path"] for line in lines()} == {f"/after-{i}" for i in range(4)}
    assert len(rotated.read_text().splitlines()) == 6


# --------------------------------------------------------------------------- systemd


class Notifications:
    """A stand-in for systemd's notification socket: an AF_UNIX datagram socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.watchdog = 0

    def next(self, timeout: float = 15.0) -> str:
        """The next message other than a watchdog ping."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            message = self.sock.recv(4096).decode()
            if message == "WATCHDOG=1":
                self.watchdog += 1
                continue
            return message
        raise TimeoutError("no notification")

    def pings(self, count: int, timeout: float = 10.0) -> bool:
        """True once ``count`` more watchdog pings came (and nothing else)."""
        want = self.watchdog + count
        deadline = time.monotonic() + timeout
        while self.watchdog < want and (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            message = self.sock.recv(4096).decode()
            assert message == "WATCHDOG=1", message
            self.watchdog += 1
        return self.watchdog >= want


@pytest.mark.parametrize("workers", ["1", "2"])
def test_systemd_notifications(
    se_factory: Callable[..., SEProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workers: str,
) -> None:
    notify = Notifications(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a ping every 0.2 s
    try:
        se = se_factory(BASE_CONFIG, extra_args=["--workers", workers])
        assert notify.next() == "READY=1"
        # Ready means listening: the port answers at once (every worker's, by now).
        for _ in range(4):
            assert health(se.url)[0] == 200
        assert notify.pings(3)  # the parent (or the single process) keeps pinging
        os.kill(se.proc.pid, signal.SIGHUP)
        reloading = notify.next()
        assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC="), reloading
        usec = int(reloading.rsplit("=", 1)[1])
        assert 0 < usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert notify.next() == "READY=1"
        assert health(se.url)[1]["generation"] == 1
        se.proc.send_signal(signal.SIGTERM)
        assert notify.next() == "STOPPING=1"
        assert se.proc.wait(20) == 0
    finally:
        notify.sock.close()
