"""How a client project (Rucio, FTS, gfal2, DIRAC) tests against a real ``se``.

Written as such a project would, with the se.testing plugin's fixtures only (``pip install
se[testing]`` registers them): ``se_server`` (one server per test), ``se_server_factory``
(more servers, other configs), ``se_issuer`` (tokens every server accepts).  se runs these
in its own suite, so the example stays true.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request

import pytest

from se.testing import JWTIssuer, SEServer, SEServerFactory


def http(
    method: str, url: str, token: str | None = None, data: bytes | None = None
) -> tuple[int, bytes]:
    """The status and body of one request (errors included)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


def test_upload_with_a_token_and_read_back(se_server: SEServer, se_issuer: JWTIssuer) -> None:
    token = se_issuer.mint(scopes=["storage.create:/rucio", "storage.read:/rucio"], sub="rucio")
    url = se_server.url + "/rucio/user/jdoe/file.root"
    status, _ = http("PUT", url, token, b"event data" * 1000)
    assert status == 201
    assert http("GET", url, token) == (200, b"event data" * 1000)
    # What the storage holds, as an operator would check it.
    assert (se_server.root / "rucio/user/jdoe/file.root").stat().st_size == 10000


def test_wrong_scope_is_refused(se_server: SEServer, se_issuer: JWTIssuer) -> None:
    reader = se_issuer.mint(scopes=["storage.read:/"])
    status, body = http("PUT", se_server.url + "/data/f", reader, b"x")
    assert status == 403, body
    assert not (se_server.root / "data/f").exists()
    # Without any token, nothing (the server has an [auth] section: no anonymous access).
    assert http("GET", se_server.url + "/", None)[0] == 401


def test_third_party_copy_between_two_se(
    se_server_factory: SEServerFactory, se_issuer: JWTIssuer
) -> None:
    """An HTTP-TPC pull, as FTS asks for one: COPY to the destination with a Source."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    source = se_server_factory({"tpc": {"marker_period": 0.2}})
    destination = se_server_factory({"tpc": {"marker_period": 0.2}})
    try:
        read = se_issuer.mint(scopes=["storage.read:/"], sub="fts")
        write = se_issuer.mint(scopes=["storage.create:/", "storage.read:/"], sub="fts")
        payload = bytes(range(256)) * 4096
        assert http("PUT", source.url + "/src/f", write, payload)[0] == 201
        out = subprocess.run(
            [
                *(curl, "--silent", "--show-error", "--fail", "-X", "COPY"),
                *("-H", f"Authorization: Bearer {write}"),
                *("-H", f"Source: {source.url}/src/f"),
                *("-H", f"TransferHeaderAuthorization: Bearer {read}"),
                destination.url + "/dst/f",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert out.stdout.strip().splitlines()[-1].startswith("success"), out.stdout
        assert http("GET", destination.url + "/dst/f", read) == (200, payload)
    finally:
        source.stop()
        destination.stop()


def test_an_injected_507_is_seen_by_the_client_and_in_the_events(
    se_server: SEServer, se_issuer: JWTIssuer
) -> None:
    """The destination is full (507) for the next upload: the client must report it."""
    token = se_issuer.mint(scopes=["storage.create:/", "storage.read:/"])
    mark = se_server.events.cursor()
    rule = se_server.faults.add(method="PUT", path="/data/*", status=507, times=1)
    status, body = http("PUT", se_server.url + "/data/big", token, b"x" * 1024)
    assert status == 507, body
    fault = se_server.events.wait_for(lambda e: e.get("rule") == rule, kind="fault", since=mark)
    assert (fault["method"], fault["path"]) == ("PUT", "/data/big")
    request = se_server.events.wait_for(
        lambda e: e["path"] == "/data/big", kind="request", since=mark
    )
    assert request["status"] == 507
    # times=1: the retry goes through.
    assert http("PUT", se_server.url + "/data/big", token, b"x" * 1024)[0] == 201
