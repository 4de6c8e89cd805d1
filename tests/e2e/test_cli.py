"""The ``se`` command line, run as a subprocess: check-config, start-up guards, workers."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from se.config import AuthConfig, Config, ConfigError, ServerConfig
from se.server import check_startup
from tests.conftest import BASE_CONFIG
from tests.support import SEProcess, poll

SE = [sys.executable, "-m", "se"]
SERVING = re.compile(r"^se: serving (\S+) at (http://\S+):(\d+)$")
TIMEOUT = aiohttp.ClientTimeout(total=30)


def run_se(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def one_line(text: str) -> str:
    stripped = text.strip()
    assert stripped, "empty message"
    assert "\n" not in stripped, text
    assert "Traceback" not in stripped
    return stripped


# -- check-config ---------------------------------------------------------------------------
_X509 = (
    '[tls]\ncert = "c.pem"\nkey = "k.pem"\nca_dir = "/etc/grid-security/certificates"\n'
    'client_certs = "optional"\n[auth]\n[[auth.x509]]\n'
)


def test_check_config_valid(tmp_path: Path) -> None:
    cfg = tmp_path / "ok.toml"
    cfg.write_text(
        '[server]\nhost = "127.0.0.1"\nport = 2880\n[storage]\nroot = "/srv/data"\n'
        '[auth]\nanonymous = "read"\n[checksums]\nalgorithms = ["adler32", "md5"]\n'
    )
    res = run_se("check-config", str(cfg), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert str(cfg) in res.stdout
    assert "valid" in res.stdout
    assert res.stderr == ""


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('[storage]\nrooot = "/srv"\n', "storage.rooot"),
        ("[server]\nworkers = 2\nthreads = 4\n", "server.threads"),
        ("[frobnicate]\nx = 1\n", "frobnicate"),
        ('[server]\nport = "http"\n', "server.port"),
        ("[server\n", "invalid TOML"),
        (_X509 + 'fqan = "/dteam/Role=x/sub"\n', "auth.x509[0]"),
        (_X509 + 'dn = "not a dn"\n', "auth.x509[0]"),
        (_X509 + 'fqan = "dteam"\n', "auth.x509[0].fqan"),
        (_X509 + 'fqan = "/dteam"\ndeny = ["write"]\n', "auth.x509[0].deny"),
        (_X509.replace("optional", "sometimes") + 'fqan = "/d"\n', "tls.client_certs"),
        (_X509.replace('client_certs = "optional"\n', "") + 'fqan = "/d"\n', "auth.x509"),
    ],
)
def test_check_config_invalid(tmp_path: Path, content: str, needle: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(content)
    res = run_se("check-config", str(cfg), cwd=tmp_path)
    assert res.returncode != 0
    assert needle in one_line(res.stderr)
    assert "valid" not in res.stdout


def test_check_config_missing_file(tmp_path: Path) -> None:
    res = run_se("check-config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert res.returncode != 0
    assert "nope.toml" in one_line(res.stderr)


def test_serve_with_unknown_key_does_not_start(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[webdav]\nallow_depth_infinty = true\n")
    res = run_se(
        "serve", "--config", str(cfg), "--port", "0", "--root", str(tmp_path / "d"), cwd=tmp_path
    )
    assert res.returncode != 0
    assert "webdav.allow_depth_infinty" in one_line(res.stderr)
    assert res.stdout == ""
    assert not (tmp_path / "d").exists()


# -- start-up guard for anonymous write on a network address ---------------------------------
def test_serve_refuses_anonymous_write_on_wildcard(tmp_path: Path) -> None:
    root = tmp_path / "data"
    res = run_se("serve", "--host", "0.0.0.0", "--port", "0", "--root", str(root), cwd=tmp_path)
    assert res.returncode != 0
    msg = one_line(res.stderr)
    assert "0.0.0.0" in msg
    assert "--insecure-anonymous" in msg
    assert "[auth]" in msg
    assert "serving" not in res.stdout
    assert not root.exists()


@pytest.mark.parametrize(
    ("host", "flag", "auth", "allowed"),
    [
        ("127.0.0.1", False, None, True),
        ("::1", False, None, True),
        ("localhost", False, None, True),
        ("0.0.0.0", False, None, False),
        ("::", False, None, False),
        ("192.0.2.7", False, None, False),
        ("0.0.0.0", True, None, True),
        ("0.0.0.0", False, "read", True),
        ("0.0.0.0", False, "none", True),
    ],
)
def test_startup_guard(host: str, flag: bool, auth: str | None, allowed: bool) -> None:
    # The guard itself, without binding anything: tests only ever listen on loopback.
    cfg = Config(
        server=ServerConfig(host=host, insecure_anonymous=flag),
        auth=AuthConfig(anonymous=auth) if auth is not None else None,
    )
    if allowed:
        check_startup(cfg)
    else:
        with pytest.raises(ConfigError, match="--insecure-anonymous"):
            check_startup(cfg)


def test_serve_with_auth_section_on_wildcard_is_allowed_to_start(tmp_path: Path) -> None:
    # An explicit [auth] section lifts the guard; here only the check itself is run.
    cfg = tmp_path / "auth.toml"
    cfg.write_text('[server]\nhost = "0.0.0.0"\n[auth]\nanonymous = "read"\n')
    res = run_se("check-config", str(cfg), cwd=tmp_path)
    assert res.returncode == 0, res.stderr


# -- [auth] anonymous = "read" ---------------------------------------------------------------
async def test_anonymous_read_only(se_factory: Callable[..., SEProcess]) -> None:
    srv = se_factory(config=BASE_CONFIG + '[auth]\nanonymous = "read"\n')
    (srv.root / "public.txt").write_bytes(b"readable")
    async with aiohttp.ClientSession(base_url=srv.url, timeout=TIMEOUT) as client:
        async with client.get("/public.txt") as r:
            assert r.status == 200
            assert await r.read() == b"readable"
        async with client.request("PROPFIND", "/", headers={"Depth": "1"}) as r:
            assert r.status == 207
        for method, path in [
            ("PUT", "/new.txt"),
            ("PUT", "/public.txt"),
            ("MKCOL", "/d"),
            ("DELETE", "/public.txt"),
        ]:
            data = b"nope" if method == "PUT" else None
            async with client.request(method, path, data=data) as r:
                body = await r.read()
                assert r.status == 401, (method, path, r.status)
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                assert r.headers["Content-Type"].startswith("text/plain")
                one_line(body.decode())
        hdrs = {"Destination": srv.url + "/moved.txt"}
        async with client.request("MOVE", "/public.txt", headers=hdrs) as r:
            assert r.status == 401
    assert sorted(n for n in os.listdir(srv.root) if n != ".se-state") == ["public.txt"]
    assert (srv.root / "public.txt").read_bytes() == b"readable"


def test_anonymous_read_only_refuses_before_100_continue(
    se_factory: Callable[..., SEProcess],
) -> None:
    srv = se_factory(config=BASE_CONFIG + '[auth]\nanonymous = "read"\n')
    with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as sock:
        sock.sendall(
            f"PUT /x HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nExpect: 100-continue\r\n"
            "Content-Length: 5\r\n\r\n".encode()
        )
        head = b""
        for _ in range(1000):
            if b"\r\n\r\n" in head:
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            head += chunk
    assert head.startswith(b"HTTP/1.1 401 "), head
    assert not (srv.root / "x").exists()


# -- workers ---------------------------------------------------------------------------------
def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(int(entry))
    return members


async def test_workers_serve_and_stop_on_sigterm(se_factory: Callable[..., SEProcess]) -> None:
    srv = se_factory(extra_args=["--workers", "2"])
    pgid = srv.proc.pid
    try:
        assert poll(lambda: len(_group_members(pgid)) >= 3, timeout=10), _group_members(pgid)
        (srv.root / "w.txt").write_bytes(b"worker data")
        for i in range(12):
            # A new connection each time, so the kernel may pick either worker.
            conn = aiohttp.TCPConnector(force_close=True)
            async with (
                aiohttp.ClientSession(base_url=srv.url, connector=conn, timeout=TIMEOUT) as c,
                c.get("/w.txt") as r,
            ):
                assert r.status == 200, i
                assert await r.read() == b"worker data"
        async with (
            aiohttp.ClientSession(base_url=srv.url, timeout=TIMEOUT) as c,
            c.put("/up.txt", data=b"via workers") as r,
        ):
            assert r.status == 201
        assert (srv.root / "up.txt").read_bytes() == b"via workers"
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(20)
        assert srv.proc.returncode == 0
        assert poll(lambda: not _group_members(pgid), timeout=10), _group_members(pgid)
    finally:
        srv.kill()


# -- --port 0 and the bare default ----------------------------------------------------------
def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _w, _x = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


@contextlib.contextmanager
def _popen(args: list[str], cwd: Path) -> Iterator[subprocess.Popen[str]]:
    with open(cwd / "se.stderr", "w") as err:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


async def test_port_zero_prints_url(tmp_path: Path) -> None:
    root = tmp_path / "served"
    with _popen([*SE, "serve", "--port", "0", "--root", str(root)], tmp_path) as proc:
        line = _read_line(proc, 20).strip()
        m = SERVING.match(line)
        assert m, (line, (tmp_path / "se.stderr").read_text())
        assert m.group(1) == str(root.resolve())
        assert m.group(2) == "http://127.0.0.1"
        port = int(m.group(3))
        assert port > 0
        assert root.is_dir()
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as c,
            c.put(f"http://127.0.0.1:{port}/f", data=b"via printed url") as r,
        ):
            assert r.status == 201
        assert (root / "f").read_bytes() == b"via printed url"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_bare_serve_defaults(tmp_path: Path) -> None:
    if not _port_free(8080):
        pytest.skip("127.0.0.1:8080 is in use")
    with _popen([*SE, "serve"], tmp_path) as proc:
        line = _read_line(proc, 20).strip()
        if not line and "8080" in (tmp_path / "se.stderr").read_text():
            pytest.skip("127.0.0.1:8080 was taken meanwhile")
        assert line == f"se: serving {tmp_path.resolve() / 'data'} at http://127.0.0.1:8080", (
            line,
            (tmp_path / "se.stderr").read_text(),
        )
        assert (tmp_path / "data").is_dir()
        async with aiohttp.ClientSession(timeout=TIMEOUT) as c:
            async with c.put("http://127.0.0.1:8080/hello", data=b"default root") as r:
                assert r.status == 201
            async with c.get("http://127.0.0.1:8080/hello") as r:
                assert await r.read() == b"default root"
        assert (tmp_path / "data" / "hello").read_bytes() == b"default root"
