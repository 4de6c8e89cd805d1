from __future__ import annotations

import urllib.request

from se.testing import SEServer
from tests.support import SEProcess


def test_put_then_get_roundtrip(se: SEProcess) -> None:
    data = b"hello grid\n" * 1000
    req = urllib.request.Request(se.url + "/dir/hello.txt", data=data, method="PUT")
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 201
    with urllib.request.urlopen(se.url + "/dir/hello.txt") as resp:
        assert resp.read() == data
    assert (se.root / "dir" / "hello.txt").read_bytes() == data


def test_put_then_get_with_a_token(se_server: SEServer) -> None:
    """The same through the se.testing plugin: a server that wants a token, and one."""
    data = b"hello grid\n" * 1000
    auth = {"Authorization": f"Bearer {se_server.token(['storage.create:/dir', 'storage.read:/'])}"}
    url = se_server.url_for("/dir/hello.txt")
    req = urllib.request.Request(url, data=data, method="PUT", headers=auth)
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 201
    with urllib.request.urlopen(urllib.request.Request(url, headers=auth)) as resp:
        assert resp.read() == data
    assert (se_server.root / "dir" / "hello.txt").read_bytes() == data
