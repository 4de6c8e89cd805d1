"""End-to-end tests driving the davix command-line tools.

The davix CLI has no vector read (that is libdavix's ``DavPosix::preadVec``, which sends
one multi-range GET and maps each ``multipart/byteranges`` part back by its
``Content-Range``).  So the same request is made with ``davix-http`` (headers traced on
stderr, raw body on stdout) and with curl, and both bodies are parsed the way davix does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import need
from tests.e2e.clients import (
    check_vector_read,
    make_tls,
    parse_byteranges,
    random_bytes,
    run,
    run_bytes,
    run_ok,
    tls_config,
)
from tests.support import SEProcess

pytestmark = pytest.mark.clients

NO_RETRY = ["--retry", "0"]


@pytest.fixture(autouse=True)
def _davix_installed() -> None:
    need("davix-put", "davix-get", "davix-ls", "davix-rm", "davix-mkdir", "davix-http")


def test_put_and_get(se: SEProcess, tmp_path: Path) -> None:
    data = random_bytes(4 * 1024 * 1024 + 3, 20)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    (se.root / "dv").mkdir(parents=True)
    run_ok(["davix-put", *NO_RETRY, src, se.url + "/dv/put.bin"])
    assert (se.root / "dv" / "put.bin").read_bytes() == data
    back = tmp_path / "back.bin"
    run_ok(["davix-get", *NO_RETRY, se.url + "/dv/put.bin", back])
    assert back.read_bytes() == data
    # Overwrite with smaller content.
    src.write_bytes(b"short")
    run_ok(["davix-put", *NO_RETRY, src, se.url + "/dv/put.bin"])
    assert (se.root / "dv" / "put.bin").read_bytes() == b"short"
    res = run(["davix-get", *NO_RETRY, se.url + "/dv/missing.bin", tmp_path / "missing.bin"])
    assert res.returncode != 0
    assert "404" in res.stderr


def test_empty_file_roundtrip(se: SEProcess, tmp_path: Path) -> None:
    src = tmp_path / "empty"
    src.write_bytes(b"")
    run_ok(["davix-put", *NO_RETRY, src, se.url + "/empty"])
    assert (se.root / "empty").read_bytes() == b""
    back = tmp_path / "back"
    run_ok(["davix-get", *NO_RETRY, se.url + "/empty", back])
    assert back.read_bytes() == b""


def test_ls_long(se: SEProcess) -> None:
    sizes = {"one.bin": 1, "big.bin": 300_000, "zero.bin": 0, "mid.txt": 4097}
    base = se.root / "list"
    base.mkdir(parents=True)
    for name, size in sizes.items():
        (base / name).write_bytes(random_bytes(size, size))
    (base / "subdir").mkdir()
    res = run_ok(["davix-ls", *NO_RETRY, "-l", se.url + "/list"])
    seen: dict[str, tuple[bool, int]] = {}
    for line in res.stdout.splitlines():
        fields = line.split()
        if not fields:
            continue
        assert len(fields) == 6, line  # mode nlink size date time name
        seen[fields[-1]] = (fields[0].startswith("d"), int(fields[2]))
    assert "subdir" in seen
    assert seen.pop("subdir")[0], "subdir is not listed as a directory"
    assert seen == {name: (False, size) for name, size in sizes.items()}
    res = run_ok(["davix-ls", *NO_RETRY, se.url + "/list"])
    assert sorted(res.stdout.split()) == sorted([*sizes, "subdir"])


def test_mkdir_and_rm(se: SEProcess) -> None:
    run_ok(["davix-mkdir", *NO_RETRY, se.url + "/made"])
    assert (se.root / "made").is_dir()
    res = run(["davix-mkdir", *NO_RETRY, se.url + "/made"])
    assert res.returncode != 0
    assert "405" in res.stderr
    res = run(["davix-mkdir", *NO_RETRY, se.url + "/missing/child"])
    assert res.returncode != 0
    assert "409" in res.stderr
    assert not (se.root / "missing").exists()
    (se.root / "made" / "f.bin").write_bytes(b"x" * 10)
    run_ok(["davix-rm", *NO_RETRY, se.url + "/made/f.bin"])
    assert not (se.root / "made" / "f.bin").exists()
    run_ok(["davix-rm", *NO_RETRY, se.url + "/made"])
    assert not (se.root / "made").exists()
    res = run(["davix-rm", *NO_RETRY, se.url + "/made"])
    assert res.returncode != 0
    assert "404" in res.stderr


RANGES = [(0, 9), (100, 109), (4096, 8191), (65_530, 65_600), (299_990, 299_999)]
RANGE_HEADER = "Range: bytes=" + ",".join(f"{a}-{b}" for a, b in RANGES)


def test_vector_read_with_davix_http(se: SEProcess) -> None:
    data = random_bytes(300_000, 21)
    (se.root / "vec.bin").write_bytes(data)
    res = run_bytes(
        ["davix-http", *NO_RETRY, "--trace", "header", "-X", "GET", "-H", RANGE_HEADER,
         se.url + "/vec.bin"]
    )  # fmt: skip
    trace = res.stderr.decode("latin-1")
    assert res.returncode == 0, trace[-2000:]
    assert re.search(r"^< HTTP/1\.1 206 ", trace, re.MULTILINE), trace
    m = re.search(r"^< Content-Type: (multipart/byteranges;[^\r\n]*)", trace, re.MULTILINE | re.I)
    assert m is not None, trace
    parts = parse_byteranges(res.stdout, m.group(1))
    check_vector_read(parts, RANGES, data)


def test_vector_read_with_curl(se: SEProcess, tmp_path: Path) -> None:
    need("curl")
    data = random_bytes(300_000, 22)
    (se.root / "vec.bin").write_bytes(data)
    body = tmp_path / "body"
    res = run_ok(
        ["curl", "-sS", "-o", body, "-w", "%{http_code}\n%{content_type}", "-H", RANGE_HEADER,
         se.url + "/vec.bin"]
    )  # fmt: skip
    status, ctype = res.stdout.split("\n", 1)
    assert status == "206"
    parts = parse_byteranges(body.read_bytes(), ctype)
    check_vector_read(parts, RANGES, data)
    # Many small ranges, as davix sends after merging (its header is up to ~3.9 KB).
    many = [(i * 997, i * 997 + 13) for i in range(250)]
    header = "Range: bytes=" + ",".join(f"{a}-{b}" for a, b in many)
    assert len(header) < 4000
    res = run_ok(
        ["curl", "-sS", "-o", body, "-w", "%{http_code}\n%{content_type}", "-H", header,
         se.url + "/vec.bin"]
    )  # fmt: skip
    status, ctype = res.stdout.split("\n", 1)
    assert status == "206"
    check_vector_read(parse_byteranges(body.read_bytes(), ctype), many, data)


def test_get_over_https_with_capath(se_factory: Callable[..., SEProcess], tmp_path: Path) -> None:
    need("openssl")
    tls = make_tls(tmp_path)
    srv = se_factory(config=tls_config(tls))
    assert srv.url.startswith("https://127.0.0.1:")
    data = random_bytes(250_000, 23)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    capath = ["--capath", str(tls.ca_dir)]
    run_ok(["davix-put", *NO_RETRY, *capath, src, srv.url + "/t.bin"])
    assert (srv.root / "t.bin").read_bytes() == data
    back = tmp_path / "back.bin"
    run_ok(["davix-get", *NO_RETRY, *capath, srv.url + "/t.bin", back])
    assert back.read_bytes() == data
    res = run(
        ["davix-get", *NO_RETRY, srv.url + "/t.bin", tmp_path / "untrusted.bin"],
        env={"X509_CERT_DIR": str(tmp_path)},
    )
    assert res.returncode != 0
    assert "certificate" in res.stderr.lower()
