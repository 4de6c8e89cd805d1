from __future__ import annotations

import urllib.request

from tests.support import SEProcess


def test_put_then_get_roundtrip(se: SEProcess) -> None:
    data = b"hello grid\n" * 1000
    req = urllib.request.Request(se.url + "/dir/hello.txt", data=data, method="PUT")
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 201
    with urllib.request.urlopen(se.url + "/dir/hello.txt") as resp:
        assert resp.read() == data
    assert (se.root / "dir" / "hello.txt").read_bytes() == data
