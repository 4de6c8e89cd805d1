"""Token audiences are this server's own URLs (its listener, server.local_hosts), never
whatever the client puts in its Host header."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp

from se.auth import issuer
from tests.conftest import BASE_CONFIG
from tests.support import SEProcess

ISS = "https://issuer.test/"


async def test_audiences(se_factory: Callable[..., SEProcess], tmp_path: Path) -> None:
    key, jwks = issuer.keygen(tmp_path / "keys")
    config = (
        '[server]\nlocal_hosts = ["se.example.org", "alias.example.org:2880"]\n'
        + BASE_CONFIG
        + f'\n[auth]\nanonymous = "none"\n[[auth.issuers]]\nissuer = "{ISS}"\n'
        + f'jwks_file = "{jwks}"\n'
    )
    srv = se_factory(config=config)
    (srv.root / "f").write_bytes(b"x")

    def bearer(aud: str) -> dict[str, str]:
        tok = issuer.issue(issuer.load_key(key), ISS, "storage.read:/", [aud], 600, "u")
        return {"Authorization": f"Bearer {tok}"}

    async with aiohttp.ClientSession() as s:
        for aud in (
            srv.url,
            f"http://se.example.org:{srv.port}",
            "http://alias.example.org:2880",
        ):
            async with s.get(f"{srv.url}/f", headers=bearer(aud)) as r:
                assert r.status == 200, (aud, await r.text())
        # A token meant for another service stays refused, whatever Host says.
        evil = {**bearer("https://evil.example"), "Host": "evil.example"}
        async with s.get(f"{srv.url}/f", headers=evil) as r:
            assert r.status == 401
            assert "audience" in await r.text()
        other_port = bearer("http://se.example.org:1")
        async with s.get(f"{srv.url}/f", headers=other_port) as r:
            assert r.status == 401
