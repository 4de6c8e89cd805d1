"""Renames under WLCG profile 1.3: storage.create may rename onto a free name within what
it may create; replacing, or moving out of its area, needs storage.modify."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp

from se.auth import issuer
from tests.conftest import BASE_CONFIG
from tests.support import SEProcess

ISS = "https://issuer.test/"


async def test_create_only_rename(se_factory: Callable[..., SEProcess], tmp_path: Path) -> None:
    key, jwks = issuer.keygen(tmp_path / "keys")
    config = BASE_CONFIG + (
        f'\n[auth]\nanonymous = "none"\n[[auth.issuers]]\nissuer = "{ISS}"\njwks_file = "{jwks}"\n'
    )
    srv = se_factory(config=config)
    (srv.root / "up").mkdir(parents=True)
    (srv.root / "up" / "a").write_bytes(b"a")
    (srv.root / "up" / "taken").write_bytes(b"t")
    (srv.root / "other").mkdir()

    def bearer(scope: str) -> dict[str, str]:
        tok = issuer.issue(issuer.load_key(key), ISS, scope, [f"{srv.url}"], 600, "u")
        return {"Authorization": f"Bearer {tok}"}

    create = bearer("storage.create:/up")
    async with aiohttp.ClientSession() as s:
        move = {**create, "Destination": f"{srv.url}/up/b"}
        async with s.request("MOVE", f"{srv.url}/up/a", headers=move) as r:
            assert r.status == 201, await r.text()
        move = {**create, "Destination": f"{srv.url}/up/taken"}
        async with s.request("MOVE", f"{srv.url}/up/b", headers=move) as r:
            assert r.status == 403
        move = {**create, "Destination": f"{srv.url}/other/b"}
        async with s.request("MOVE", f"{srv.url}/up/b", headers=move) as r:
            assert r.status == 403
        modify = {**bearer("storage.modify:/"), "Destination": f"{srv.url}/up/taken"}
        async with s.request("MOVE", f"{srv.url}/up/b", headers=modify) as r:
            assert r.status == 204
    assert (srv.root / "up" / "taken").read_bytes() == b"a"
    assert not (srv.root / "up" / "b").exists()
