"""HTTP-TPC interoperability of ``se`` with a real XRootD (XrdHttp + libXrdHttpTPC 5.5).

Both directions, both roles: ``se`` pulls from XRootD and pushes to it (the COPY is sent to
``se``), XRootD pulls from ``se`` (the COPY is sent to XRootD), single- and multi-stream, over
http and https.  Everything runs in one loopback-only network namespace (tests/xrootd.py).

XRootD only answers ``Want-Digest`` when a checksum is configured (``xrootd.chksum``); the
shared instance here has ``adler32``, as every WLCG XRootD does, so ``se`` can verify what it
pulls from it and what it pushed to it.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.clients import TLSFiles, make_tls, random_bytes
from tests.support import SEProcess
from tests.xrootd import (
    Netns,
    TPCReply,
    XRootD,
    give_to_xrootd,
    scratch_dir,
    start_se_in,
    start_xrootd,
    tpc_copy,
    xrootd_test_marks,
)

pytestmark = xrootd_test_marks()

MIB = 1 << 20
XRD_PORT = 1094
XRD_CHECKSUM = "xrootd.chksum adler32"
SE_LOGGING = '[logging]\naccess_log = true\nlevel = "info"\n'
SE_TPC = "[tpc]\nmarker_period = 0.5\nstall_timeout = 10.0\n"
COPY_TIMEOUT = 60.0

# aiohttp's C (llhttp) response parser rejects XRootD's "100 Continue" interim response, which
# carries "Connection: Close", as soon as the final response follows it ("Data after
# `Connection: close`"): that is why se's push sends no "Expect: 100-continue" by default
# (tpc.push_expect_continue).
_XRD_STRUCT = struct.Struct(">16sqihbb64s")  # XRootD's user.XrdCks.<alg> xattr


@dataclass
class Site:
    ns: Netns
    scratch: Path
    tls: TLSFiles
    xrd: XRootD
    se: SEProcess  # plain http


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """One namespace holding one XRootD (http+https, adler32) and one se (http)."""
    with scratch_dir() as scratch, Netns() as ns:
        tls = make_tls(scratch)  # one CA: XRootD, se and curl all trust each other
        xrd = start_xrootd(
            ns, scratch, scratch / "xrd-data", XRD_PORT, tls=tls, extra_config=XRD_CHECKSUM
        )
        root = scratch / "se-root"
        root.mkdir()
        se = start_se_in(ns, scratch, root, SE_LOGGING + SE_TPC)
        try:
            yield Site(ns, scratch, tls, xrd, se)
        finally:
            se.stop()
            xrd.stop()


def _seed_xrootd(xrd: XRootD, name: str, data: bytes) -> Path:
    """A file in XRootD's namespace, written on disk and handed to the xrootd user."""
    path = xrd.data_dir / name
    path.write_bytes(data)
    give_to_xrootd(path)
    return path


def _check_se_stream(reply: TPCReply, remote: str, size: int) -> None:
    """What se's marker stream must look like after a successful transfer."""
    assert reply.status == 202, reply
    assert reply.headers.get("content-type", "").startswith("text/perf-marker-stream"), reply
    assert reply.final == "success: Created", reply.body
    assert reply.markers, reply.body
    last = reply.markers[-1]  # the one right before the result line
    assert last.get("RemoteConnections") == remote, reply.body
    assert last["Stripe Bytes Transferred"] == str(size), reply.body
    assert reply.body.rstrip().endswith("success: Created"), reply.body


def _check_xrootd_stream(reply: TPCReply) -> None:
    assert reply.status == 201, reply  # XRootD's answer to COPY (text/plain marker stream)
    assert reply.final == "success: Created", reply.body


# --------------------------------------------------------------------------- se pulls


@pytest.mark.parametrize("size", [MIB, 0], ids=["1MiB", "empty"])
def test_se_pulls_from_xrootd(site: Site, size: int) -> None:
    data = random_bytes(size, seed=10 + size)
    _seed_xrootd(site.xrd, f"pull-src-{size}", data)
    reply = tpc_copy(
        site.ns,
        f"{site.se.url}/pulled-{size}",
        source=f"{site.xrd.url}/pull-src-{size}",
        headers={"RequireChecksumVerification": "true"},  # fails unless adler32 was compared
        timeout=COPY_TIMEOUT,
    )
    _check_se_stream(reply, f"tcp:127.0.0.1:{XRD_PORT}", size)
    assert (site.se.root / f"pulled-{size}").read_bytes() == data


def test_se_pull_compares_xrootd_checksum(site: Site) -> None:
    """XRootD declares a wrong adler32 (a planted user.XrdCks.adler32 xattr, which it trusts
    while the file's mtime matches): se must refuse the copy, so it really compares."""
    data = random_bytes(MIB, seed=11)
    path = _seed_xrootd(site.xrd, "lying-src", data)
    mtime = int(path.stat().st_mtime)
    bogus = bytes.fromhex("deadbeef")
    cks = _XRD_STRUCT.pack(b"adler32", mtime, int(time.time()) - mtime, 0, 0, 4, bogus)
    os.setxattr(path, "user.XrdCks.adler32", cks)
    head = site.ns.curl(["-sS", "-I", "-H", "Want-Digest: adler32", f"{site.xrd.url}/lying-src"])
    assert re.search(r"(?im)^Digest: adler32=deadbeef\s*$", head.stdout), head.stdout
    reply = tpc_copy(
        site.ns,
        f"{site.se.url}/lying-dst",
        source=f"{site.xrd.url}/lying-src",
        timeout=COPY_TIMEOUT,
    )
    assert reply.status == 202, reply
    assert reply.final.startswith("failure:"), reply.body
    assert "adler32 mismatch" in reply.final and "deadbeef" in reply.final, reply.final
    assert not (site.se.root / "lying-dst").exists()


def test_se_pulls_from_xrootd_over_https(site: Site) -> None:
    root = site.scratch / "se-tls-root"
    root.mkdir()
    tls = site.tls
    config = (
        SE_LOGGING
        + SE_TPC
        + "[tls]\n"
        + f"cert = {json.dumps(str(tls.cert_pem))}\n"
        + f"key = {json.dumps(str(tls.key_pem))}\n"
        + f"ca_dir = {json.dumps(str(tls.ca_dir))}\n"
    )
    se = start_se_in(site.ns, site.scratch, root, config)
    try:
        assert se.url.startswith("https://"), se.url
        data = random_bytes(MIB, seed=12)
        _seed_xrootd(site.xrd, "https-src", data)
        reply = tpc_copy(
            site.ns,
            f"{se.url}/https-dst",
            source=f"{site.xrd.https_url}/https-src",
            headers={"RequireChecksumVerification": "true"},
            cacert=tls.ca_pem,
            timeout=COPY_TIMEOUT,
        )
        _check_se_stream(reply, f"tcp:127.0.0.1:{XRD_PORT}", MIB)
        assert (root / "https-dst").read_bytes() == data
    finally:
        se.stop()


def test_se_pulls_from_xrootd_without_checksum_config(site: Site) -> None:
    plain = start_xrootd(site.ns, site.scratch, site.scratch / "plain-data", XRD_PORT + 1)
    try:
        data = random_bytes(MIB, seed=13)
        _seed_xrootd(plain, "src", data)
        reply = tpc_copy(
            site.ns,
            f"{site.se.url}/from-plain",
            source=f"{plain.url}/src",
            timeout=COPY_TIMEOUT,
        )
        assert reply.final == "success: Created", reply.body
        assert (site.se.root / "from-plain").read_bytes() == data
    finally:
        plain.stop()


# --------------------------------------------------------------------------- XRootD pulls


def test_xrootd_pulls_from_se(site: Site) -> None:
    data = random_bytes(MIB, seed=20)
    (site.se.root / "xpull-src").write_bytes(data)
    reply = tpc_copy(
        site.ns,
        f"{site.xrd.url}/xpull-dst",
        source=f"{site.se.url}/xpull-src",
        timeout=COPY_TIMEOUT,
    )
    _check_xrootd_stream(reply)
    assert reply.markers, reply.body
    assert reply.markers[-1].get("RemoteConnections") == f"tcp:127.0.0.1:{site.se.port}"
    assert (site.xrd.data_dir / "xpull-dst").read_bytes() == data


def test_xrootd_multistream_pull_from_se(site: Site) -> None:
    data = random_bytes(40 * MIB, seed=21)
    (site.se.root / "xmulti-src").write_bytes(data)
    reply = tpc_copy(
        site.ns,
        f"{site.xrd.url}/xmulti-dst",
        source=f"{site.se.url}/xmulti-src",
        headers={"X-Number-Of-Streams": "4"},
        timeout=COPY_TIMEOUT,
    )
    _check_xrootd_stream(reply)
    assert (site.xrd.data_dir / "xmulti-dst").read_bytes() == data
    # XRootD really fetched it in ranges (its multi-stream mode), answered 206 by se
    ranged = re.findall(r'"GET /xmulti-src HTTP/1\.1" 206 .*xrootd-tpc', site.se.stderr())
    assert len(ranged) >= 2, site.se.stderr()[-3000:]


# --------------------------------------------------------------------------- se pushes


def test_se_pushes_to_xrootd(site: Site) -> None:
    data = random_bytes(MIB, seed=30)
    (site.se.root / "push-src").write_bytes(data)
    reply = tpc_copy(
        site.ns,
        f"{site.se.url}/push-src",
        destination=f"{site.xrd.url}/push-dst",
        headers={"RequireChecksumVerification": "true"},  # se HEADs XRootD's adler32 afterwards
        timeout=COPY_TIMEOUT,
    )
    _check_se_stream(reply, f"tcp:127.0.0.1:{XRD_PORT}", MIB)
    assert (site.xrd.data_dir / "push-dst").read_bytes() == data
