"""What the gfal2 2.21 functional suite found (issue 12, finding 12).

* ``Want-Digest: CRC32`` (IEEE CRC-32, which DPM and XRootD answer) gets a ``Digest``:
  ``crc32=`` and the base64 of the 4 big-endian bytes.  XRootD sends hex, which davix
  (hence gfal-sum and FTS) decodes as base64 into a garbled value; with base64, gfal-sum
  prints the true checksum.
* ARCHIVEINFO of a disk-only file on a tape-enabled server answers locality ``DISK`` with
  no per-file ``error``: gfal2 before 2.23 fails ``user.status`` on any ``error`` key.
"""

from __future__ import annotations

import base64
import http.client
import json
import zlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.clients import need_gfal, run
from tests.e2e.test_tape import data_root, tape_config
from tests.support import SEProcess

pytestmark = [pytest.mark.timeout(120)]

DATA = b"THIS IS A STATIC MESSAGE USED FOR CHECKSUMING"  # the suite's test content


def _call(
    srv: SEProcess, method: str, path: str, body: bytes | None = None, *, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    u = urlsplit(srv.url)
    assert u.hostname is not None and u.port is not None
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture
def srv(se_factory: Callable[..., SEProcess], tmp_path: Path) -> SEProcess:
    """Anonymous read-write on loopback, the tape API on with the pool ``/tape``."""
    server = se_factory(tape_config(), root=data_root(tmp_path))
    status, _, _ = _call(server, "PUT", "/other/f", DATA, headers={})
    assert status in (201, 204)
    return server


@pytest.mark.parametrize("token", ["CRC32", "crc32", "crc32;q=1, md5;q=0.5"])
def test_want_digest_crc32(srv: SEProcess, token: str) -> None:
    expected = "crc32=" + base64.b64encode(zlib.crc32(DATA).to_bytes(4, "big")).decode()
    for method in ("HEAD", "GET"):
        status, headers, _ = _call(srv, method, "/other/f", headers={"Want-Digest": token})
        assert status == 200
        assert headers.get("digest") == expected, headers


def test_crc32c_is_not_taken_for_crc32(srv: SEProcess) -> None:
    _, headers, _ = _call(srv, "HEAD", "/other/f", headers={"Want-Digest": "crc32c"})
    assert headers["digest"].startswith("crc32c="), headers


def test_gfal_sum_crc32(srv: SEProcess) -> None:
    """gfal-sum prints the true IEEE CRC-32 (in hex, as it prints every checksum)."""
    need_gfal("gfal-sum")
    res = run(["gfal-sum", srv.url + "/other/f", "CRC32"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == [srv.url + "/other/f", f"{zlib.crc32(DATA):08x}"], res.stdout


def test_archiveinfo_of_a_disk_only_file_has_no_error(srv: SEProcess) -> None:
    body = json.dumps({"paths": ["/other/f", "/other/missing"]}).encode()
    status, _, answer = _call(
        srv, "POST", "/api/v1/archiveinfo", body, headers={"Content-Type": "application/json"}
    )
    assert status == 200, answer
    items = json.loads(answer)
    assert items[0] == {"path": "/other/f", "locality": "DISK"}
    assert "locality" not in items[1] and items[1]["error"], items  # missing: still an error


def test_gfal_xattr_user_status_of_a_disk_only_file(srv: SEProcess) -> None:
    need_gfal("gfal-xattr")
    res = run(["gfal-xattr", srv.url + "/other/f", "user.status"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "ONLINE"
