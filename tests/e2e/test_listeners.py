"""``[[listeners]]``: several endpoints in one ``se serve``, each with its own address,
TLS, accepted credentials, token audiences and base path into the shared storage root.

One process stands in for a small test grid here: a token-only endpoint with its own
audience, an anonymous read-only one, the default ``[server]`` one; with ``--workers 2``
every worker serves them all.  Third-party copies run between listeners of the same process
(curl COPY pull and push, gfal-copy over davs), and each listener's refusals are its own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from se.auth import issuer
from se.tpc.markers import parse_stream
from tests.conftest import BASE_CONFIG
from tests.e2e.clients import (
    TLSFiles,
    davs_url,
    make_tls,
    need_gfal,
    random_bytes,
    run,
    run_ok,
    trust_env,
)
from tests.support import SEProcess, poll

pytestmark = pytest.mark.timeout(300)

ISS = "https://listeners-issuer.test/"
ANY = "https://wlcg.cern.ch/jwt/v1/any"
XRD1_AUDIENCE = "https://xrd1.test"
RW = "storage.read:/ storage.modify:/"


def serving_lines(srv: SEProcess, count: int) -> list[tuple[Path, str]]:
    """(root, url) of every listener: start_se read the first ``se: serving`` line, the
    others follow it at once (all are printed before the workers start)."""
    out = [(srv.root, srv.url)]
    assert srv.proc.stdout is not None
    for _ in range(count - 1):
        line = srv.proc.stdout.readline().strip()  # EOF ("") if the server died
        prefix, sep, url = line.partition(" at ")
        assert prefix.startswith("se: serving ") and sep, (line, srv.stderr()[-2000:])
        out.append((Path(prefix.removeprefix("se: serving ")), url))
    return out


def keys(tmp_path: Path) -> tuple[Path, Path]:
    return issuer.keygen(tmp_path / "keys")


def mint(key: Path, aud: list[str], scope: str = RW) -> str:
    return issuer.issue(issuer.load_key(key), ISS, scope, aud, 600, "grid-user")


def auth_section(jwks: Path, anonymous: str = "none") -> str:
    return (
        f'\n[auth]\nanonymous = "{anonymous}"\n'
        f'[[auth.issuers]]\nissuer = "{ISS}"\njwks_file = {json.dumps(str(jwks))}\n'
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


GRID = """
[[listeners]]
name = "xrd1"
port = 0
base = "/xrd1"
audiences = ["https://xrd1.test"]
accept_any_audience = false

[[listeners]]
name = "web1"
port = 0
base = "/web1"
anonymous = "read"
issuers = []
"""


async def test_three_listeners_with_two_workers(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    key, jwks = keys(tmp_path)
    srv = se_factory(BASE_CONFIG + auth_section(jwks) + GRID, extra_args=["--workers", "2"])
    (top_root, top), (xrd1_root, xrd1), (web1_root, web1) = serving_lines(srv, 3)
    root = srv.root.resolve()
    assert (top_root, xrd1_root, web1_root) == (root, root / "xrd1", root / "web1")
    assert len({top, xrd1, web1}) == 3 and all(
        u.startswith("http://127.0.0.1:") for u in (xrd1, web1)
    )
    assert xrd1_root.is_dir() and web1_root.is_dir()
    (web1_root / "open.txt").write_bytes(b"public")

    for_xrd1 = mint(key, [XRD1_AUDIENCE])
    for_any = mint(key, [ANY])
    for_xrd1_url = mint(key, [xrd1])  # a listener's own URL is always one of its audiences
    # A new connection per request, so that both workers answer in turn.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:

        async def status(
            method: str, url: str, token: str | None = None, data: bytes | None = None
        ) -> int:
            headers = bearer(token) if token else {}
            async with s.request(method, url, headers=headers, data=data) as r:
                await r.read()
                return r.status

        async def text(url: str, token: str | None = None) -> tuple[int, str]:
            async with s.get(url, headers=bearer(token) if token else {}) as r:
                return r.status, await r.text()

        for i in range(4):
            # xrd1: tokens naming its audience (or its URL) only; its "/" is <root>/xrd1.
            assert await status("PUT", f"{xrd1}/f{i}", for_xrd1, data=b"x%d" % i) == 201
            assert (xrd1_root / f"f{i}").read_bytes() == b"x%d" % i
            assert await status("GET", f"{xrd1}/f{i}", for_xrd1_url) == 200
            code, body = await text(f"{xrd1}/f{i}", for_any)
            assert code == 401 and "audience" in body, body
            code, body = await text(f"{xrd1}/f{i}")
            assert code == 401, body  # anonymous: none
            # [server]: the "any" audience and its own URL; all of the root, xrd1 within it.
            assert await status("GET", f"{top}/xrd1/f{i}", for_any) == 200
            code, body = await text(f"{top}/xrd1/f{i}", for_xrd1)
            assert code == 401 and "audience" in body, body
            assert await status("GET", f"{top}/xrd1/f{i}", for_xrd1_url) == 401
            assert await status("GET", f"{top}/xrd1/f{i}") == 401
            # web1: anonymous read of <root>/web1 only; no issuer's token counts there.
            assert await text(f"{web1}/open.txt") == (200, "public")
            assert await status("GET", f"{web1}/xrd1/f{i}") == 404
            assert await status("PUT", f"{web1}/new{i}", data=b"n") in (401, 403)
            code, body = await text(f"{web1}/open.txt", for_any)
            assert code == 401 and "not issued by this server" in body, body
    assert not (web1_root / "new0").exists()


async def test_macaroons_open_only_the_listener_that_issued_them(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    """Two listeners on one base share its state directory, never a macaroon secret: what
    an anonymous caller gets from the open listener does not open the token-only one."""
    key, jwks = keys(tmp_path)
    config = (
        BASE_CONFIG
        + auth_section(jwks)
        + '\n[[listeners]]\nname = "open"\nport = 0\nanonymous = "read-write"\nissuers = []\n'
    )
    srv = se_factory(config)
    (root, closed), (_same, open_) = serving_lines(srv, 2)
    (root / "f").write_bytes(b"data")
    request = json.dumps({"caveats": ["activity:DOWNLOAD,UPLOAD,LIST"], "validity": "PT10M"})
    async with aiohttp.ClientSession() as s:
        headers = {"Content-Type": "application/macaroon-request"}
        async with s.post(f"{open_}/", data=request, headers=headers) as r:
            assert r.status == 200, await r.text()
            macaroon = (await r.json())["macaroon"]
        async with s.get(f"{open_}/f", headers=bearer(macaroon)) as r:
            assert r.status == 200
        async with s.get(f"{closed}/f", headers=bearer(macaroon)) as r:
            assert r.status == 401, await r.text()
        async with s.put(f"{closed}/g", headers=bearer(macaroon), data=b"x") as r:
            assert r.status == 401
        # The token-only listener issues macaroons to token holders, for itself alone.
        token = mint(key, [closed])
        async with s.post(f"{closed}/", data=request, headers={**headers, **bearer(token)}) as r:
            assert r.status == 200, await r.text()
            own = (await r.json())["macaroon"]
        async with s.get(f"{closed}/f", headers=bearer(own)) as r:
            assert r.status == 200
        async with s.get(f"{open_}/f", headers=bearer(own)) as r:
            assert r.status == 401
    assert not (root / "g").exists()
    secrets = sorted(p.name for p in (root / ".se-state").glob("macaroon*.secret"))
    assert secrets == ["macaroon-open.secret", "macaroon.secret"]


def tpc_config(tls: TLSFiles, jwks: Path) -> str:
    return (
        BASE_CONFIG
        + "\n[tls]\n"
        + f"cert = {json.dumps(str(tls.cert_pem))}\n"
        + f"key = {json.dumps(str(tls.key_pem))}\n"
        + f"ca_dir = {json.dumps(str(tls.ca_dir))}\n"
        + "\n[tpc]\nmarker_period = 0.3\n"
        + auth_section(jwks)
        + '\n[[listeners]]\nname = "anon"\nport = 0\nbase = "/anon"\ntls = false\n'
        + 'anonymous = "read-write"\nissuers = []\n'
    )


def curl_copy(url: str, headers: list[str], cacert: Path) -> tuple[int, str]:
    args = ["curl", "-sS", "-N", "--max-time", "60", "--cacert", str(cacert), "-X", "COPY"]
    args += ["-w", "\n%{http_code}\n"]
    for h in headers:
        args += ["-H", h]
    res = run_ok([*args, url])
    body, _, code = res.stdout.rstrip("\n").rpartition("\n")
    return int(code), body


def test_tpc_between_a_token_listener_and_an_anonymous_one(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    """https token-only [server] and a plain-HTTP anonymous listener of the same process:
    COPY pull and push both ways, as between two servers (tpc.local_remotes "auto": both
    listen on loopback only)."""
    tls = make_tls(tmp_path)
    key, jwks = keys(tmp_path)
    srv = se_factory(tpc_config(tls, jwks))
    (tok_root, tok), (anon_root, anon) = serving_lines(srv, 2)
    assert tok.startswith("https://") and anon.startswith("http://")
    data = random_bytes(3 * 1024 * 1024 + 7, 61)
    (anon_root / "src.bin").write_bytes(data)
    token = mint(key, [tok])

    def ok(result: tuple[int, str]) -> None:
        code, body = result
        assert code == 202, (code, body)
        _markers, res = parse_stream(body)
        assert res is not None and res.kind == "success", body

    # Pull into the token listener from the anonymous one.
    auth = f"Authorization: Bearer {token}"
    ok(curl_copy(f"{tok}/pulled.bin", [f"Source: {anon}/src.bin", auth], tls.ca_pem))
    assert (tok_root / "pulled.bin").read_bytes() == data
    # Push from the token listener to the anonymous one.
    ok(curl_copy(f"{tok}/pulled.bin", [f"Destination: {anon}/pushed.bin", auth], tls.ca_pem))
    assert (anon_root / "pushed.bin").read_bytes() == data
    # Pull into the anonymous listener from the token one, over TLS verified with the
    # inherited tls.ca_dir, with the source's token handed over.
    handed = f"TransferHeaderAuthorization: Bearer {token}"
    ok(curl_copy(f"{anon}/back.bin", [f"Source: {tok}/pulled.bin", handed], tls.ca_pem))
    assert (anon_root / "back.bin").read_bytes() == data
    # Without it the token listener refuses the remote GET: the copy fails naming 401.
    code, body = curl_copy(f"{anon}/back2.bin", [f"Source: {tok}/pulled.bin"], tls.ca_pem)
    assert code == 202, (code, body)
    _markers, res = parse_stream(body)
    assert res is not None and res.kind == "failure" and "401" in res.message, body
    assert not (anon_root / "back2.bin").exists()
    # Each listener's refusals: no anonymous COPY on the token listener, no token on the
    # anonymous one (it takes no issuer's tokens).
    code, _ = curl_copy(f"{tok}/x.bin", [f"Source: {anon}/src.bin"], tls.ca_pem)
    assert code == 401
    code, body = curl_copy(f"{anon}/y.bin", [f"Source: {anon}/src.bin", auth], tls.ca_pem)
    assert code == 401 and "not issued by this server" in body, body
    assert not (tok_root / "x.bin").exists() and not (anon_root / "y.bin").exists()
    assert token.split(".")[2] not in srv.stderr()


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_gfal_copy_between_listeners(
    mode: str, se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    """gfal-copy over davs:// between a token-only listener (its own audience, no anonymous
    access) and an anonymous read-write one of the same process.  gfal2 sends its one
    BEARER_TOKEN to both, so the anonymous listener accepts the issuer too."""
    need_gfal()
    tls = make_tls(tmp_path)
    key, jwks = keys(tmp_path)
    config = (
        '[logging]\naccess_log = false\nlevel = "info"\n'  # for the "tpc pull" lines
        + "\n[tls]\n"
        + f"cert = {json.dumps(str(tls.cert_pem))}\n"
        + f"key = {json.dumps(str(tls.key_pem))}\n"
        + f"ca_dir = {json.dumps(str(tls.ca_dir))}\n"
        + "\n[tpc]\nmarker_period = 0.5\n"
        + auth_section(jwks)
        + '\n[[listeners]]\nname = "tok"\nport = 0\nbase = "/tok"\n'
        + 'audiences = ["https://tok.test"]\naccept_any_audience = false\n'
        + '\n[[listeners]]\nname = "anon"\nport = 0\nbase = "/anon"\nanonymous = "read-write"\n'
    )
    srv = se_factory(config)
    _top, (tok_root, tok), (anon_root, anon) = serving_lines(srv, 3)
    token = mint(key, ["https://tok.test", anon])
    env = {**trust_env(tls), "BEARER_TOKEN": token}
    data = random_bytes(2 * 1024 * 1024 + 3, 62)
    (tok_root / "s.bin").write_bytes(data)
    # Token-only -> anonymous, then anonymous -> token-only.
    there = f"{davs_url(anon)}/from-tok-{mode}.bin"
    run_ok(
        ["gfal-copy", "--copy-mode", mode, "-K", "ADLER32", davs_url(tok) + "/s.bin", there], env
    )
    assert (anon_root / f"from-tok-{mode}.bin").read_bytes() == data
    back = f"{davs_url(tok)}/from-anon-{mode}.bin"
    run_ok(["gfal-copy", "--copy-mode", mode, "-K", "ADLER32", there, back], env)
    assert (tok_root / f"from-anon-{mode}.bin").read_bytes() == data
    # Third-party copies proper, no streamed fallback through the client.
    assert srv.stderr().count(f"tpc {mode} ") == 2, srv.stderr()[-3000:]
    # Without the token, the token-only listener is closed and the anonymous one open.
    plain = trust_env(tls)
    assert run(["gfal-ls", davs_url(tok) + "/"], plain).returncode != 0
    listing = run_ok(["gfal-ls", davs_url(anon) + "/"], plain).stdout.split()
    assert f"from-tok-{mode}.bin" in listing
    # A token naming only another audience is refused on the token-only listener.
    other = {**env, "BEARER_TOKEN": mint(key, [anon])}
    assert run(["gfal-ls", davs_url(tok) + "/"], other).returncode != 0


def se_cli(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "se", *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("listeners", "reason"),
    [
        ('port = 0\nbase = "xrd1"', "listeners[0].base: an absolute path like /xrd1"),
        ('port = 0\nbase = "/../x"', "listeners[0].base: '..' cannot be"),
        ("port = 0\nprot = 1", "unknown config key: listeners[0].prot"),
        ('port = 0\ntls.cert = "/c.pem"', "listeners[0].tls: cert and key must be set"),
        ('port = 0\ntls.client_certs = "required"', "listeners[0].tls.client_certs: needs"),
        ("port = 8080", "listeners[0]: 127.0.0.1:8080 is also server's address"),
        ('port = 0\nissuers = ["https://nope/"]', "https://nope/ is not one of the"),
        ('port = 0\nanonymous = "write"', "listeners[0].anonymous: must be one of"),
        ('base = "/x"', "listeners[0]: missing key port"),
    ],
)
def test_check_config_refuses_bad_listeners(listeners: str, reason: str, tmp_path: Path) -> None:
    f = tmp_path / "se.toml"
    f.write_text(f"[[listeners]]\n{listeners}\n")
    res = se_cli("check-config", f)
    assert res.returncode == 2, res
    assert res.stderr.startswith(f"se: {reason}") or reason in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1, res.stderr


def test_serve_refuses_what_a_listener_cannot_do(tmp_path: Path) -> None:
    """Checked per listener at start: anonymous read-write on a public address, and an
    address already taken (nothing is served, no line printed)."""
    f = tmp_path / "se.toml"
    f.write_text('[[listeners]]\nport = 0\nhost = "0.0.0.0"\n')
    res = se_cli("serve", "--root", tmp_path / "d", "--port", "0", "--config", f)
    assert res.returncode == 2
    assert "refusing to serve anonymous read-write on non-loopback address 0.0.0.0" in res.stderr
    assert "se: serving" not in res.stdout
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        f.write_text(f"[[listeners]]\nport = {port}\n")
        res = se_cli("serve", "--root", tmp_path / "d", "--port", "0", "--config", f)
    assert res.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in res.stderr
    assert "se: serving" not in res.stdout


def test_worker_restart_serves_every_listener(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    """A worker started again by the supervisor binds every listener again."""
    from tests.e2e.test_supervision import get_status, workers_of

    srv = se_factory(BASE_CONFIG + GRID, extra_args=["--workers", "2"])
    ports = [int(u.rsplit(":", 1)[1]) for _r, u in serving_lines(srv, 3)]
    assert poll(lambda: len(workers_of(srv.proc.pid)) == 2, timeout=10)
    before = workers_of(srv.proc.pid)
    os.kill(min(before), signal.SIGKILL)
    assert poll(
        lambda: len(workers_of(srv.proc.pid)) == 2 and workers_of(srv.proc.pid) != before,
        timeout=15,
    )

    def all_answer() -> bool:
        # Without [auth] every listener reads anonymously (web1 "read", the others the
        # loopback read-write); 20 new connections per listener reach both workers.
        return all(get_status(port) == 200 for port in ports for _ in range(20))

    assert poll(all_answer, timeout=15)
