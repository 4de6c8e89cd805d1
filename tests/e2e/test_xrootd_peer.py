"""The XRootD test peer itself works (tests/xrootd.py), independently of se's own TPC:
plain http/https I/O, XRootD-to-XRootD third-party copies both ways, and se reachable in the
same network namespace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BASE_CONFIG
from tests.e2e.clients import make_tls, random_bytes
from tests.xrootd import (
    Netns,
    XRootD,
    scratch_dir,
    start_se_in,
    start_xrootd,
    tpc_copy,
    xrootd_test_marks,
)

pytestmark = xrootd_test_marks()

MIB = 1 << 20


@pytest.fixture
def scratch() -> Iterator[Path]:
    with scratch_dir() as path:
        yield path


@pytest.fixture
def ns(scratch: Path) -> Iterator[Netns]:
    # Depends on scratch so that everything in the namespace is killed before it is removed.
    with Netns() as netns:
        yield netns


@pytest.fixture
def pair(ns: Netns, scratch: Path) -> Iterator[tuple[XRootD, XRootD]]:
    a = start_xrootd(ns, scratch, scratch / "a-data", 1094)
    try:
        b = start_xrootd(ns, scratch, scratch / "b-data", 1095)
    except BaseException:
        a.stop()
        raise
    yield a, b
    b.stop()
    a.stop()


def _put(ns: Netns, src: Path, url: str) -> None:
    res = ns.curl(["-f", "-o", "/dev/null", "-w", "%{http_code}", "-T", src, url], timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout in ("200", "201", "204"), res.stdout


def _mkcol(ns: Netns, url: str, *extra: str) -> None:
    res = ns.curl(
        ["-f", "-X", "MKCOL", "-o", "/dev/null", "-w", "%{http_code}", *extra, url], timeout=30
    )
    assert res.returncode == 0 and res.stdout == "201", (res.stdout, res.stderr)


def _stage_copy(ns: Netns, scratch: Path, pair: tuple[XRootD, XRootD], seed: int) -> bytes:
    """Before a copy from the first XRootD to the second: 1 MiB PUT to the first's /src/file
    over http, and /dst made on the second (XRootD does not create the parents of a pulled
    file).  Returns the bytes."""
    a, b = pair
    data = random_bytes(MIB, seed=seed)
    src = scratch / "src"
    src.write_bytes(data)
    _put(ns, src, f"{a.url}/src/file")
    _mkcol(ns, f"{b.url}/dst")
    return data


def test_put_then_get_over_http_and_https(ns: Netns, scratch: Path) -> None:
    xrd = start_xrootd(ns, scratch, scratch / "data", 1094)
    data = random_bytes(100_000, seed=1)
    src = scratch / "src"
    src.write_bytes(data)
    _put(ns, src, f"{xrd.url}/dir/sub/file")
    assert (xrd.data_dir / "dir/sub/file").read_bytes() == data
    for url, extra in ((xrd.url, []), (xrd.https_url, ["--cacert", str(xrd.ca_pem)])):
        out = scratch / "out"
        got = ns.curl(["-f", "-o", out, *extra, f"{url}/dir/sub/file"], timeout=30)
        assert got.returncode == 0, got.stderr
        assert out.read_bytes() == data
    missing = ns.curl(["-o", "/dev/null", "-w", "%{http_code}", f"{xrd.url}/nope"], timeout=30)
    assert missing.stdout == "404"
    xrd.stop()
    assert xrd.proc.returncode is not None


def test_xrootd_to_xrootd_pull(ns: Netns, scratch: Path, pair: tuple[XRootD, XRootD]) -> None:
    a, b = pair
    data = _stage_copy(ns, scratch, pair, seed=2)
    reply = tpc_copy(ns, f"{b.url}/dst/file", source=f"{a.url}/src/file")
    assert reply.status in (201, 202), reply
    assert reply.markers, reply.body
    assert reply.markers[0]["Stripe Index"] == "0"
    assert reply.markers[0]["RemoteConnections"] == "tcp:127.0.0.1:1094"
    assert reply.final == "success: Created", reply.body
    assert (b.data_dir / "dst/file").read_bytes() == data


def test_xrootd_to_xrootd_pull_over_https(ns: Netns, scratch: Path) -> None:
    tls = make_tls(scratch)  # one CA for both, so each trusts the other's certificate
    a = start_xrootd(ns, scratch, scratch / "a-data", 1094, tls=tls)
    b = start_xrootd(ns, scratch, scratch / "b-data", 1095, tls=tls)
    data = random_bytes(MIB, seed=3)
    (a.data_dir / "f").write_bytes(data)  # seeded on disk: XRootD reads what root wrote
    _mkcol(ns, f"{b.https_url}/dst", "--cacert", str(tls.ca_pem))
    reply = tpc_copy(ns, f"{b.https_url}/dst/f", source=f"{a.https_url}/f", cacert=tls.ca_pem)
    assert reply.final == "success: Created", reply.body
    assert (b.data_dir / "dst/f").read_bytes() == data
    b.stop()
    a.stop()


def test_xrootd_to_xrootd_push(ns: Netns, scratch: Path, pair: tuple[XRootD, XRootD]) -> None:
    a, b = pair
    data = _stage_copy(ns, scratch, pair, seed=4)
    reply = tpc_copy(ns, f"{a.url}/src/file", destination=f"{b.url}/dst/file")
    assert reply.status in (201, 202), reply
    assert reply.markers, reply.body
    assert reply.final == "success: Created", reply.body
    assert (b.data_dir / "dst/file").read_bytes() == data


def test_se_in_the_namespace(ns: Netns, scratch: Path) -> None:
    root = scratch / "se-root"
    root.mkdir()
    data = random_bytes(64 * 1024, seed=5)
    (root / "hello").write_bytes(data)
    se = start_se_in(ns, scratch, root, BASE_CONFIG)
    try:
        assert se.url.startswith("http://127.0.0.1:"), se.url
        out = scratch / "got"
        res = ns.curl(["-f", "-o", out, f"{se.url}/hello"], timeout=30)
        assert res.returncode == 0, (res.stderr, se.stderr())
        assert out.read_bytes() == data
    finally:
        se.stop()
