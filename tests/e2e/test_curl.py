"""End-to-end HTTP semantics through curl: ranges, digests, upload checks, 100-continue,
conditionals, and one HTTPS request against a throwaway CA."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import need
from tests.e2e.clients import (
    adler32_hex,
    b64,
    crc32c_hex,
    make_tls,
    parse_byteranges,
    random_bytes,
    run,
    run_bytes,
    tls_config,
)
from tests.support import SEProcess

pytestmark = pytest.mark.clients

_seq = itertools.count()
SIZE = 100_000


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # final response, lower-case names
    interim: list[int]  # 1xx statuses received before it
    body: bytes
    uploaded: int  # request body bytes curl actually sent
    verbose: str  # curl -v trace (stderr)


def curl(workdir: Path, url: str, *args: str | Path) -> Reply:
    n = next(_seq)
    hdr = workdir / f"curl-{n}.headers"
    out = workdir / f"curl-{n}.body"
    res = run(
        ["curl", "-sS", "-v", "-D", hdr, "-o", out, "-w", "%{http_code} %{size_upload}",
         *args, url]
    )  # fmt: skip
    assert res.returncode == 0, f"curl {args} {url} -> {res.returncode}: {res.stderr[-2000:]}"
    blocks = [b for b in hdr.read_bytes().decode("latin-1").split("\r\n\r\n") if b.strip()]
    statuses = [int(b.split("\r\n", 1)[0].split()[1]) for b in blocks]
    headers: dict[str, str] = {}
    for line in blocks[-1].split("\r\n")[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    code, uploaded = res.stdout.split()
    assert int(code) == statuses[-1]
    body = out.read_bytes() if out.exists() else b""
    return Reply(statuses[-1], headers, statuses[:-1], body, int(uploaded), res.stderr)


@pytest.fixture(autouse=True)
def _curl_installed() -> None:
    need("curl")


@pytest.fixture
def blob(se: SEProcess) -> bytes:
    """A file placed directly into the data directory (no checksum xattrs yet)."""
    data = random_bytes(SIZE, 1)
    (se.root / "d").mkdir(parents=True, exist_ok=True)
    (se.root / "d" / "blob.bin").write_bytes(data)
    return data


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".se-upload-")]


# --------------------------------------------------------------------------- ranges


def test_single_range(se: SEProcess, blob: bytes, tmp_path: Path) -> None:
    r = curl(tmp_path, se.url + "/d/blob.bin", "-r", "10-19")
    assert r.status == 206
    assert r.headers["content-range"] == f"bytes 10-19/{SIZE}"
    assert r.headers["content-length"] == "10"
    assert r.body == blob[10:20]


def test_open_and_suffix_range(se: SEProcess, blob: bytes, tmp_path: Path) -> None:
    r = curl(tmp_path, se.url + "/d/blob.bin", "-r", "-100")
    assert r.status == 206
    assert r.headers["content-range"] == f"bytes {SIZE - 100}-{SIZE - 1}/{SIZE}"
    assert r.body == blob[-100:]
    r = curl(tmp_path, se.url + "/d/blob.bin", "-r", f"{SIZE - 70_000}-")
    assert r.status == 206
    assert r.headers["content-range"] == f"bytes {SIZE - 70_000}-{SIZE - 1}/{SIZE}"
    assert r.body == blob[-70_000:]


def test_unsatisfiable_range(se: SEProcess, blob: bytes, tmp_path: Path) -> None:
    r = curl(tmp_path, se.url + "/d/blob.bin", "-r", f"{SIZE}-{SIZE + 10}")
    assert r.status == 416
    assert r.headers["content-range"] == f"bytes */{SIZE}"
    assert blob[:16] not in r.body


def test_multi_range(se: SEProcess, blob: bytes, tmp_path: Path) -> None:
    ranges = [(0, 9), (100, 199), (5000, 5000), (SIZE - 50, SIZE - 1)]
    spec = ",".join(f"{a}-{b}" for a, b in ranges)
    r = curl(tmp_path, se.url + "/d/blob.bin", "-r", spec)
    assert r.status == 206
    assert "content-range" not in r.headers
    assert int(r.headers["content-length"]) == len(r.body)
    parts = parse_byteranges(r.body, r.headers["content-type"])
    assert [(p.start, p.end) for p in parts] == ranges
    for p in parts:
        assert p.total == SIZE
        assert p.data == blob[p.start : p.end + 1]


# --------------------------------------------------------------------------- digests

DIGESTS: dict[str, Callable[[bytes], str]] = {
    "adler32": adler32_hex,
    "md5": lambda d: b64(hashlib.md5(d).digest()),
    "sha-256": lambda d: b64(hashlib.sha256(d).digest()),
    "crc32c": crc32c_hex,
}


@pytest.mark.parametrize("alg", list(DIGESTS))
def test_want_digest(se: SEProcess, blob: bytes, tmp_path: Path, alg: str) -> None:
    r = curl(tmp_path, se.url + "/d/blob.bin", "-I", "-H", f"Want-Digest: {alg}")
    assert r.status == 200
    assert r.headers["digest"] == f"{alg}={DIGESTS[alg](blob)}"
    # The digest describes the whole file, also on a 206.
    r = curl(tmp_path, se.url + "/d/blob.bin", "-r", "0-99", "-H", f"Want-Digest: {alg}")
    assert r.status == 206
    assert r.body == blob[:100]
    assert r.headers["digest"] == f"{alg}={DIGESTS[alg](blob)}"


def test_want_digest_preference(se: SEProcess, blob: bytes, tmp_path: Path) -> None:
    r = curl(tmp_path, se.url + "/d/blob.bin", "-I", "-H", "Want-Digest: adler32;q=0.3, md5;q=1")
    assert r.headers["digest"] == f"md5={DIGESTS['md5'](blob)}"
    r = curl(tmp_path, se.url + "/d/blob.bin", "-I")
    assert "digest" not in r.headers


def test_want_repr_digest(se: SEProcess, blob: bytes, tmp_path: Path) -> None:
    r = curl(tmp_path, se.url + "/d/blob.bin", "-I", "-H", "Want-Repr-Digest: sha-256=5")
    assert r.status == 200
    assert r.headers["repr-digest"] == f"sha-256=:{b64(hashlib.sha256(blob).digest())}:"
    assert "digest" not in r.headers


# --------------------------------------------------------------------------- uploads


def test_put_with_correct_digest(se: SEProcess, tmp_path: Path) -> None:
    data = random_bytes(50_000, 2)
    src = tmp_path / "src"
    src.write_bytes(data)
    r = curl(tmp_path, se.url + "/ok.bin", "-T", src, "-H", f"Digest: adler32={adler32_hex(data)}")
    assert r.status == 201
    assert (se.root / "ok.bin").read_bytes() == data


def test_put_with_wrong_digest_stores_nothing(se: SEProcess, tmp_path: Path) -> None:
    data = random_bytes(50_000, 3)
    src = tmp_path / "src"
    src.write_bytes(data)
    good = adler32_hex(data)
    bad = "00000001" if good != "00000001" else "00000002"
    (se.root / "up").mkdir()
    r = curl(tmp_path, se.url + "/up/bad.bin", "-T", src, "-H", f"Digest: adler32={bad}")
    assert 400 <= r.status < 500
    text = r.body.decode("utf-8", "replace")
    assert bad in text
    assert good in text
    assert not (se.root / "up" / "bad.bin").exists()
    assert leftovers(se.root / "up") == []


@pytest.mark.parametrize("encoding", ["hex", "base64"])
def test_put_with_content_md5(se: SEProcess, tmp_path: Path, encoding: str) -> None:
    data = random_bytes(40_000, 4)
    src = tmp_path / "src"
    src.write_bytes(data)
    raw = hashlib.md5(data).digest()
    value = raw.hex() if encoding == "hex" else b64(raw)
    r = curl(tmp_path, se.url + "/m.bin", "-T", src, "-H", f"Content-MD5: {value}")
    assert r.status == 201
    assert (se.root / "m.bin").read_bytes() == data
    wrong_raw = hashlib.md5(data + b"x").digest()
    wrong = wrong_raw.hex() if encoding == "hex" else b64(wrong_raw)
    r = curl(tmp_path, se.url + "/m2.bin", "-T", src, "-H", f"Content-MD5: {wrong}")
    assert 400 <= r.status < 500
    assert not (se.root / "m2.bin").exists()
    assert leftovers(se.root) == []


def test_expect_100_continue_large_body(se: SEProcess, tmp_path: Path) -> None:
    data = random_bytes(3 * 1024 * 1024, 5)  # > 1 MiB: curl adds Expect by itself
    src = tmp_path / "src"
    src.write_bytes(data)
    r = curl(tmp_path, se.url + "/big.bin", "--expect100-timeout", "30", "-T", src)
    assert "Expect: 100-continue" in r.verbose
    assert "HTTP/1.1 100 Continue" in r.verbose
    assert r.interim == [100]
    assert r.status == 201
    assert r.uploaded == len(data)
    assert (se.root / "big.bin").read_bytes() == data


def test_expect_100_continue_explicit(se: SEProcess, tmp_path: Path) -> None:
    data = b"small body\n" * 10
    src = tmp_path / "src"
    src.write_bytes(data)
    r = curl(
        tmp_path, se.url + "/small.bin", "--expect100-timeout", "30",
        "-H", "Expect: 100-continue", "-T", src,
    )  # fmt: skip
    assert "HTTP/1.1 100 Continue" in r.verbose
    assert r.status == 201
    assert (se.root / "small.bin").read_bytes() == data


def test_overwrite_false_refused_before_body(se: SEProcess, tmp_path: Path) -> None:
    old = b"original content\n"
    (se.root / "keep.bin").write_bytes(old)
    data = random_bytes(2 * 1024 * 1024, 6)
    src = tmp_path / "src"
    src.write_bytes(data)
    r = curl(
        tmp_path, se.url + "/keep.bin", "--expect100-timeout", "30",
        "-H", "Overwrite: F", "-T", src,
    )  # fmt: skip
    assert r.status == 412
    assert "Expect: 100-continue" in r.verbose
    assert "100 Continue" not in r.verbose
    assert r.interim == []
    assert r.uploaded == 0
    assert (se.root / "keep.bin").read_bytes() == old
    assert leftovers(se.root) == []
    # The same header on a new name is fine.
    r = curl(
        tmp_path, se.url + "/fresh.bin", "--expect100-timeout", "30",
        "-H", "Overwrite: F", "-T", src,
    )  # fmt: skip
    assert r.status == 201
    assert (se.root / "fresh.bin").read_bytes() == data


# --------------------------------------------------------------------------- conditionals


def test_if_none_match(se: SEProcess, blob: bytes, tmp_path: Path) -> None:
    url = se.url + "/d/blob.bin"
    etag = curl(tmp_path, url, "-I").headers["etag"]
    r = curl(tmp_path, url, "-H", f"If-None-Match: {etag}")
    assert r.status == 304
    assert r.body == b""
    r = curl(tmp_path, url, "-H", 'If-None-Match: "not-the-etag"')
    assert r.status == 200
    assert r.body == blob


def test_if_modified_since(se: SEProcess, blob: bytes, tmp_path: Path) -> None:
    url = se.url + "/d/blob.bin"
    last_modified = curl(tmp_path, url, "-I").headers["last-modified"]
    r = curl(tmp_path, url, "-H", f"If-Modified-Since: {last_modified}")
    assert r.status == 304
    assert r.body == b""
    r = curl(tmp_path, url, "-H", "If-Modified-Since: Mon, 01 Jan 2001 00:00:00 GMT")
    assert r.status == 200
    assert r.body == blob


# --------------------------------------------------------------------------- HTTPS


def test_https_get_with_throwaway_ca(se_factory: Callable[..., SEProcess], tmp_path: Path) -> None:
    need("openssl")
    tls = make_tls(tmp_path)
    srv = se_factory(config=tls_config(tls))
    assert srv.url.startswith("https://127.0.0.1:")
    data = random_bytes(200_000, 7)
    srv.root.mkdir(parents=True, exist_ok=True)
    (srv.root / "s.bin").write_bytes(data)
    r = curl(tmp_path, srv.url + "/s.bin", "--cacert", tls.ca_pem)
    assert r.status == 200
    assert r.body == data
    r = curl(tmp_path, srv.url + "/s.bin", "--cacert", tls.ca_pem, "-r", "5-9")
    assert r.status == 206
    assert r.body == data[5:10]
    # Without the CA the certificate must not verify (curl exit 60).
    res = run(["curl", "-sS", "-o", "/dev/null", srv.url + "/s.bin"])
    assert res.returncode == 60, res.stderr


def test_repeated_ranges_are_coalesced_not_amplified(se: SEProcess) -> None:
    data = os.urandom(100_000)
    (se.root / "amp.bin").write_bytes(data)
    res = run_bytes(
        ["curl", "-sS", "-D", "-", "-r", ",".join(["0-"] * 50 + ["10-20"]), f"{se.url}/amp.bin"]
    )
    assert res.returncode == 0
    head, _, body = res.stdout.partition(b"\r\n\r\n")
    assert b" 206 " in head.split(b"\r\n")[0]
    # fifty copies of the whole file were asked for; one comes back
    assert len(body) < len(data) + 1000
    assert data in body
