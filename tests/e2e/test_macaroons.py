"""Server-issued tokens end to end: request, use as Bearer and ?authz=, limits, and a
third-party copy whose source is only readable with a token (TransferHeaderAuthorization).

Two servers share one secret file, as several frontends of one site would: ``issuer`` lets
anonymous loopback clients ask for tokens; ``protected`` allows nothing anonymously, so
everything that works there works because of the token.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from se.auth import macaroons
from se.storage.paths import DavPath
from se.tpc.markers import parse_stream
from tests.conftest import BASE_CONFIG
from tests.support import SEProcess

MACAROON = "application/macaroon-request"


@pytest.fixture
def servers(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> tuple[SEProcess, SEProcess, Path]:
    secret = tmp_path / "shared.secret"
    tpc = f'\n[tpc]\nmarker_period = 0.3\nmacaroon_secret_file = "{secret}"\n'
    data = tmp_path / "data"
    issuer = se_factory(config=BASE_CONFIG + tpc, root=data)
    protected = se_factory(config=BASE_CONFIG + tpc + '\n[auth]\nanonymous = "none"\n', root=data)
    (data / "vo").mkdir(parents=True)
    (data / "vo" / "f").write_bytes(b"payload")
    return issuer, protected, secret


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def ask(
    http: aiohttp.ClientSession, url: str, caveats: list[str], validity: str = "PT10M"
) -> str:
    body = json.dumps({"caveats": caveats, "validity": validity})
    async with http.post(url, data=body, headers={"Content-Type": MACAROON}) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Cache-Control"] == "no-store"
        reply = await r.json()
    assert reply["expires_in"] <= 600
    token = reply["macaroon"]
    assert isinstance(token, str) and token
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_token_grants_exactly_what_was_asked(
    servers: tuple[SEProcess, SEProcess, Path], http: aiohttp.ClientSession
) -> None:
    issuer, protected, _ = servers
    async with http.get(protected.url + "/vo/f") as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    token = await ask(http, issuer.url + "/vo", ["activity:DOWNLOAD,LIST"])
    async with http.get(protected.url + "/vo/f", headers=bearer(token)) as r:
        assert r.status == 200
        assert await r.read() == b"payload"
    async with http.get(protected.url + "/vo/f?authz=" + token) as r:
        assert r.status == 200
    async with http.request("PROPFIND", protected.url + "/", headers=bearer(token)) as r:
        assert r.status == 403  # no listing of ancestors
    async with http.request(
        "PROPFIND", protected.url + "/", headers={**bearer(token), "Depth": "0"}
    ) as r:
        assert r.status == 207  # but stat of them
    async with http.put(protected.url + "/vo/new", data=b"x", headers=bearer(token)) as r:
        assert r.status == 403
    async with http.delete(protected.url + "/vo/f", headers=bearer(token)) as r:
        assert r.status == 403
    async with http.get(protected.url + "/other", headers=bearer(token)) as r:
        assert r.status == 403


async def test_upload_token_creates_but_does_not_overwrite(
    servers: tuple[SEProcess, SEProcess, Path], http: aiohttp.ClientSession
) -> None:
    issuer, protected, _ = servers
    token = await ask(http, issuer.url + "/vo/up/file", ["activity:UPLOAD"])
    async with http.put(protected.url + "/vo/up/file", data=b"1", headers=bearer(token)) as r:
        assert r.status == 201
    async with http.put(protected.url + "/vo/up/file", data=b"2", headers=bearer(token)) as r:
        assert r.status == 403
    manage = await ask(http, issuer.url + "/vo/up/file", ["activity:MANAGE"])
    async with http.put(protected.url + "/vo/up/file", data=b"2", headers=bearer(manage)) as r:
        assert r.status == 204


async def test_invalid_tokens_are_401_invalid_token(
    servers: tuple[SEProcess, SEProcess, Path], http: aiohttp.ClientSession
) -> None:
    _issuer, protected, secret = servers
    key = macaroons.load_secret(secret)
    expired = macaroons.issue(key, DavPath(("vo",)), ("DOWNLOAD",), 5, "t", now=time.time() - 60)
    foreign = macaroons.issue(b"z" * 64, DavPath(("vo",)), ("DOWNLOAD",), 600, "t")
    for token, needle in ((expired, "expired"), (foreign, "not valid"), ("garbage", "not issued")):
        async with http.get(protected.url + "/vo/f", headers=bearer(token)) as r:
            assert r.status == 401
            assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
            assert needle in await r.text()


async def test_requests_are_checked(
    servers: tuple[SEProcess, SEProcess, Path], http: aiohttp.ClientSession
) -> None:
    issuer, protected, _ = servers
    url = issuer.url + "/vo/f"
    async with http.post(url, data=b"{}") as r:
        assert r.status == 415  # never treated as anything but a token request
    async with http.post(url, skip_auto_headers=["Content-Type"]) as r:
        assert r.status == 405
    big = json.dumps({"caveats": ["activity:LIST"] * 1000})
    async with http.post(url, data=big, headers={"Content-Type": MACAROON}) as r:
        assert r.status == 413
    for body in ("{", '{"caveats": ["activity:FLY"]}', '{"validity": "forever"}'):
        async with http.post(url, data=body, headers={"Content-Type": MACAROON}) as r:
            assert r.status == 400
            assert "\n" not in (await r.text()).strip()
    # Anonymous callers of the protected server get nothing.
    async with http.post(
        protected.url + "/vo/f", data="{}", headers={"Content-Type": MACAROON}
    ) as r:
        assert r.status == 401
    # A token can only be narrowed with another token, never widened.
    read = await ask(http, issuer.url + "/vo", ["activity:DOWNLOAD"])
    body = json.dumps({"caveats": ["activity:DOWNLOAD,DELETE"], "validity": "P30D"})
    async with http.post(
        protected.url + "/vo/f", data=body, headers={"Content-Type": MACAROON, **bearer(read)}
    ) as r:
        assert r.status == 200
        reply = await r.json()
    assert reply["activities"] == ["DOWNLOAD"]
    assert reply["expires_in"] <= 600  # capped by the presenting token's own lifetime
    async with http.get(protected.url + "/vo/f", headers=bearer(reply["macaroon"])) as r:
        assert r.status == 200


async def test_tpc_pull_from_token_protected_source(
    servers: tuple[SEProcess, SEProcess, Path],
    http: aiohttp.ClientSession,
    se_factory: Callable[..., SEProcess],
    tmp_path: Path,
) -> None:
    issuer, protected, _ = servers
    active = se_factory(
        config='[logging]\nlevel = "debug"\naccess_log = true\n',
        root=tmp_path / "active",
    )
    token = await ask(http, issuer.url + "/vo/f", ["activity:DOWNLOAD"])
    source = {"Source": protected.url + "/vo/f"}
    async with http.request("COPY", active.url + "/copy1", headers=source) as r:
        assert r.status == 202
        _markers, result = parse_stream(await r.text())
    assert result is not None and result.kind == "failure"
    assert "401" in result.message
    assert not (tmp_path / "active" / "copy1").exists()
    headers = {**source, "TransferHeaderAuthorization": f"Bearer {token}", "Credential": "none"}
    async with http.request("COPY", active.url + "/copy2", headers=headers) as r:
        assert r.status == 202
        _markers, result = parse_stream(await r.text())
    assert result is not None and result.kind == "success", result
    assert (tmp_path / "active" / "copy2").read_bytes() == b"payload"
    assert token not in active.stderr()
    assert token.split(".")[2] not in protected.stderr()
