"""The se.testing pytest plugin: its fixtures start real servers, its issuer's tokens are
accepted (and refused where the scopes say so), its fault and events clients drive the
real APIs, and loading it costs nothing until a fixture is used."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import jwt
import pytest

from se.testing import ISSUER, JWTIssuer, SEAPIError, SEServer, SEServerFactory

pytestmark = [pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]


def request(
    srv: SEServer,
    method: str,
    path: str,
    token: str | None = None,
    data: bytes | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(srv.url_for(path), data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=15, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def group_gone(pgid: int, timeout: float = 10.0) -> bool:
    """Whether no process is left in the group (killed workers are reaped by init)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.02) + 1):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    return False


def test_registered_by_entry_point(pytestconfig: pytest.Config) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"se.testing": "se.testing"}
    assert pytestconfig.pluginmanager.has_plugin("se.testing")


def test_import_is_cheap() -> None:
    """Loading the plugin (as every pytest run does) imports no server, issuer or client."""
    code = (
        "import sys, se.testing\n"
        "heavy = [m for m in ('jwt', 'aiohttp', 'cryptography', 'trustme', 'se.testing.server',"
        " 'se.testing.issuer', 'se.testing.api', 'se.server', 'se.app') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert res.stdout.strip() == "[]", res.stdout


def test_server_basics(se_server: SEServer, se_issuer: JWTIssuer) -> None:
    assert se_server.url == f"http://127.0.0.1:{se_server.port}"
    assert se_server.dav_url == f"dav://127.0.0.1:{se_server.port}"
    assert se_server.url_for("a/b", dav=True) == se_server.dav_url + "/a/b"
    assert not se_server.https and se_server.ca_file is None
    assert se_server.issuer is se_issuer and se_issuer.issuer == ISSUER
    cfg = tomllib.loads(se_server.config_path.read_text())
    assert cfg["auth"]["issuers"] == [
        {"issuer": ISSUER, "jwks_file": str(se_server.workdir / "jwks.json")}
    ]
    assert cfg["faults"] == {"enabled": True} and cfg["events"] == {"enabled": True}

    # No [auth] rule for anonymous requests: a token is needed.
    assert request(se_server, "PUT", "/d/f", data=b"x")[0] == 401
    token = se_issuer.mint(scopes=["storage.create:/d", "storage.read:/d"], sub="alice")
    assert request(se_server, "PUT", "/d/f", token, b"payload")[0] == 201
    assert request(se_server, "GET", "/d/f", token) == (200, b"payload")
    assert (se_server.root / "d" / "f").read_bytes() == b"payload"
    # The scope names /d only.
    assert request(se_server, "PUT", "/e/f", token, b"x")[0] == 403
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["scope"] == "storage.create:/d storage.read:/d" and claims["sub"] == "alice"
    assert claims["wlcg.ver"] == "1.0" and claims["iss"] == ISSUER
    log = se_server.log()
    assert f"se: serving {se_server.root} at {se_server.url}" in log
    assert '"PUT /d/f HTTP/1.1" 201' in log


def test_stop(se_server_factory: SEServerFactory) -> None:
    srv = se_server_factory(issuer=None)
    assert srv.running
    # Once it has answered (its SIGTERM handler is set: the address line comes before it).
    assert request(srv, "GET", "/")[0] == 200
    assert srv.stop() == 0
    assert srv.returncode == 0
    assert srv.stop() == 0  # again: nothing to do
    assert group_gone(srv.proc.pid)


def test_stop_kills_after_the_bounded_wait(se_server_factory: SEServerFactory) -> None:
    """A server that ignores SIGTERM (here: stopped by SIGSTOP) is killed, group and all."""
    srv = se_server_factory(workers=2)
    os.killpg(srv.proc.pid, signal.SIGSTOP)
    assert srv.stop(timeout=0.5) < 0  # killed by a signal (which one the kernel reports varies)
    assert group_gone(srv.proc.pid)


@pytest.mark.se_server(config={"tpc": {"marker_period": 0.5}}, workers=2)
def test_marker_passes_config_and_workers(se_server: SEServer) -> None:
    assert se_server.workers == 2
    assert "--workers" in se_server.args and se_server.args[se_server.args.index("--workers") + 1]
    cfg = tomllib.loads(se_server.config_path.read_text())
    assert cfg["tpc"] == {"marker_period": 0.5}
    token = se_server.token()
    statuses = {request(se_server, "PUT", f"/w/{i}", token, b"x")[0] for i in range(8)}
    assert statuses == {201}


def test_anonymous_server_without_issuer(se_server_factory: SEServerFactory) -> None:
    srv = se_server_factory(issuer=None)
    assert "auth" not in tomllib.loads(srv.config_path.read_text())
    assert request(srv, "PUT", "/f", data=b"anon")[0] == 201
    with pytest.raises(RuntimeError, match="no issuer"):
        srv.token()
    srv.stop()


def test_issuer_config_and_groups(se_server_factory: SEServerFactory, se_issuer: JWTIssuer) -> None:
    srv = se_server_factory(
        issuer_config={
            "base_path": "/vo",
            "groups": [{"group": "/vo", "path": "/", "allow": ["read", "create"]}],
        }
    )
    member = se_issuer.mint(scope=None, groups=["/vo"])
    assert request(srv, "PUT", "/vo/f", member, b"g")[0] == 201
    assert request(srv, "PUT", "/other", member, b"g")[0] == 403
    assert request(srv, "PUT", "/vo/g", se_issuer.mint(scope=None, groups=["/x"]), b"g")[0] == 403
    srv.stop()


def test_bad_config_is_reported(se_server_factory: SEServerFactory) -> None:
    with pytest.raises(RuntimeError, match=r"se did not start .*server\.nonsense"):
        se_server_factory({"server": {"nonsense": 1}}, timeout=20)


def test_tls(se_server_factory: SEServerFactory) -> None:
    pytest.importorskip("trustme")
    srv = se_server_factory(tls=True, issuer=None)
    assert srv.https and srv.url.startswith("https://127.0.0.1:")
    assert srv.dav_url == "davs://" + srv.url.removeprefix("https://")
    assert srv.ca_file is not None
    ctx = ssl.create_default_context(cafile=str(srv.ca_file))
    assert request(srv, "PUT", "/t", data=b"tls", context=ctx)[0] == 201
    assert request(srv, "GET", "/t", context=ctx) == (200, b"tls")
    srv.stop()


def test_faults_client(se_server: SEServer) -> None:
    faults = se_server.faults
    assert faults.list() == []
    rule_id = faults.add(method="PUT", path="/full/*", status=507, times=1)
    (rule,) = faults.list()
    assert rule["id"] == rule_id and rule["status"] == 507 and rule["hits"] == 0
    token = se_server.token()
    status, body = request(se_server, "PUT", "/full/a", token, b"x")
    assert status == 507 and rule_id in body.decode()
    assert request(se_server, "PUT", "/full/a", token, b"x")[0] == 201  # times=1: spent
    assert faults.get(rule_id)["hits"] == 1
    faults.remove(rule_id)
    assert faults.list() == []
    with pytest.raises(KeyError):
        faults.get(rule_id)
    with pytest.raises(SEAPIError) as unknown:
        faults.remove(rule_id)
    assert unknown.value.status == 404
    with pytest.raises(SEAPIError) as bad:
        faults.add(method="PUT", no_such_field=1)
    assert bad.value.status == 400 and "no_such_field" in bad.value.reason
    with faults.injected(method="GET", path="/full/*", status=503) as rid:
        assert request(se_server, "GET", "/full/a", token)[0] == 503
        assert [r["id"] for r in faults.list()] == [rid]
    assert faults.list() == []
    faults.add(method="GET", path="/x", status=500)
    faults.add(method="HEAD", path="/x", status=500)
    faults.clear()
    assert faults.list() == []


def test_faults_need_an_admin(se_server: SEServer, se_issuer: JWTIssuer) -> None:
    reader = se_issuer.mint(scopes=["storage.read:/"])
    assert request(se_server, "GET", "/.well-known/se/faults", reader)[0] == 403
    assert request(se_server, "GET", "/.well-known/se/events")[0] == 401


@pytest.mark.se_server(config={"faults": {"enabled": False}, "events": {"enabled": False}})
def test_apis_off(se_server: SEServer) -> None:
    with pytest.raises(SEAPIError) as off:
        se_server.faults.list()
    assert off.value.status == 404
    with pytest.raises(SEAPIError) as off:
        se_server.events.get()
    assert off.value.status == 404


def test_events_client(se_server: SEServer) -> None:
    events = se_server.events
    mark = events.cursor()
    token = se_server.token()
    for name in ("a", "b"):
        assert request(se_server, "PUT", f"/ev/{name}", token, b"e")[0] == 201
    put_a = events.wait_for(
        lambda e: e["method"] == "PUT" and e["path"] == "/ev/a", timeout=10, since=mark
    )
    assert put_a["kind"] == "request" and put_a["status"] == 201
    assert put_a["identity"] == f"test-user@{ISSUER}" and put_a["decision"] == "allow"
    puts = events.get(since=mark, kind="request", path="/ev/*")
    assert [(e["method"], e["path"]) for e in puts] == [("PUT", "/ev/a"), ("PUT", "/ev/b")]
    assert events.get(since=puts[-1]["id"], path="/ev/*") == []
    ids = [e["id"] for e in events.get()]
    assert ids == sorted(ids) and len(ids) == len(set(ids))

    with se_server.faults.injected(method="DELETE", path="/ev/b", status=500) as rid:
        assert request(se_server, "DELETE", "/ev/b", token)[0] == 500
    fault = events.wait_for(lambda e: e.get("rule") == rid, kind=["fault"], since=mark)
    assert fault["kind"] == "fault" and fault["path"] == "/ev/b"

    with pytest.raises(TimeoutError, match=r"no matching event within 0\.3 s"):
        events.wait_for(lambda e: False, timeout=0.3, since=mark, interval=0.1)
    with pytest.raises(SEAPIError) as bad:
        events.get(kind="nonsense")
    assert bad.value.status == 400


def test_wrong_scope_is_refused_with_a_reason(se_server: SEServer, se_issuer: JWTIssuer) -> None:
    token = se_issuer.mint(scopes="storage.read:/")
    status, body = request(se_server, "PUT", "/f", token, b"x")
    assert status == 403 and body.strip()
    expired = se_issuer.mint(lifetime=-3600)
    assert request(se_server, "GET", "/", expired)[0] == 401
