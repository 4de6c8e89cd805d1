"""End-to-end tests driving the real gfal2 command-line tools (HTTP plugin, via davix)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.clients import (
    adler32_hex,
    davs_url,
    make_tls,
    random_bytes,
    run,
    run_ok,
    tls_config,
    trust_env,
)
from tests.support import SEProcess

pytestmark = [pytest.mark.clients, pytest.mark.usefixtures("gfal_installed")]

ADLER_XATTR = "user.se.checksum.adler32"


def place(root: Path, rel: str, data: bytes) -> Path:
    """Put a file straight into the data directory, bypassing the server."""
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def xattr(path: Path, name: str) -> str | None:
    try:
        return os.getxattr(path, name).decode("ascii")
    except OSError:
        return None


def gfal_sum(url: str, alg: str) -> str:
    res = run_ok(["gfal-sum", url, alg])
    fields = res.stdout.split()
    assert len(fields) == 2, res.stdout
    assert fields[0] == url
    return fields[1]


def test_copy_upload_and_download(se: SEProcess, tmp_path: Path) -> None:
    data = random_bytes(5 * 1024 * 1024 + 17, 10)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    (se.root / "up").mkdir(parents=True)
    url = se.url + "/up/copied.bin"
    run_ok(["gfal-copy", src.as_uri(), url])
    assert (se.root / "up" / "copied.bin").read_bytes() == data
    back = tmp_path / "back.bin"
    run_ok(["gfal-copy", url, back.as_uri()])
    assert back.read_bytes() == data
    # Without -f an existing destination is refused, and left alone.
    other = tmp_path / "other.bin"
    other.write_bytes(b"other")
    res = run(["gfal-copy", other.as_uri(), url])
    assert res.returncode != 0
    assert (se.root / "up" / "copied.bin").read_bytes() == data
    run_ok(["gfal-copy", "-f", other.as_uri(), url])
    assert (se.root / "up" / "copied.bin").read_bytes() == b"other"


def test_copy_creates_parents(se: SEProcess, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"deep\n")
    run_ok(["gfal-copy", "-p", src.as_uri(), se.url + "/x/y/z/deep.txt"])
    assert (se.root / "x" / "y" / "z" / "deep.txt").read_bytes() == b"deep\n"


def test_ls_long(se: SEProcess) -> None:
    sizes = {"a.bin": 0, "b.bin": 1, "c.dat": 123_457, "d.txt": 70_000}
    for name, size in sizes.items():
        place(se.root, f"dir/{name}", random_bytes(size, size))
    (se.root / "dir" / "sub").mkdir()
    res = run_ok(["gfal-ls", "-l", se.url + "/dir"])
    seen: dict[str, tuple[bool, int]] = {}
    for line in res.stdout.splitlines():
        fields = line.split()
        if not fields:
            continue
        assert len(fields) == 9, line
        seen[fields[-1]] = (fields[0].startswith("d"), int(fields[4]))
    assert "sub" in seen
    assert seen.pop("sub")[0], "sub is not listed as a directory"
    assert seen == {name: (False, size) for name, size in sizes.items()}
    # Plain listing: the names only.
    res = run_ok(["gfal-ls", se.url + "/dir"])
    assert sorted(res.stdout.split()) == sorted([*sizes, "sub"])


def test_sum_adler32_of_uploaded_file(se: SEProcess, tmp_path: Path) -> None:
    data = random_bytes(1_234_567, 11)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    url = se.url + "/up.bin"
    run_ok(["gfal-copy", src.as_uri(), url])
    expected = adler32_hex(data)
    # Stored while the upload streamed.
    cached = xattr(se.root / "up.bin", ADLER_XATTR)
    assert cached is not None
    assert cached.split(";")[0] == expected
    assert gfal_sum(url, "ADLER32") == expected
    assert gfal_sum(url, "adler32") == expected


def test_sum_adler32_of_placed_file_is_computed_then_cached(se: SEProcess) -> None:
    data = random_bytes(3_000_001, 12)
    path = place(se.root, "placed/p.bin", data)
    assert xattr(path, ADLER_XATTR) is None
    expected = adler32_hex(data)
    url = se.url + "/placed/p.bin"
    assert gfal_sum(url, "ADLER32") == expected
    cached = xattr(path, ADLER_XATTR)
    assert cached is not None, "adler32 was not cached in an xattr"
    assert cached.split(";")[0] == expected
    assert path.read_bytes() == data
    # Served from the cache from now on: a planted value that still matches the file's
    # size and mtime is what the server reports (proof that it does not recompute).
    st = path.stat()
    os.setxattr(path, ADLER_XATTR, f"0badcafe;{st.st_size};{st.st_mtime_ns}".encode())
    assert gfal_sum(url, "ADLER32") == "0badcafe"
    # Rewriting the file invalidates the cache.
    path.write_bytes(data[:-1])
    assert gfal_sum(url, "ADLER32") == adler32_hex(data[:-1])


def test_sum_md5(se: SEProcess, tmp_path: Path) -> None:
    data = random_bytes(777_777, 13)
    place(se.root, "m/p.bin", data)
    assert gfal_sum(se.url + "/m/p.bin", "MD5") == hashlib.md5(data).hexdigest()
    src = tmp_path / "src.bin"
    src.write_bytes(data[::-1])
    run_ok(["gfal-copy", src.as_uri(), se.url + "/m/u.bin"])
    assert gfal_sum(se.url + "/m/u.bin", "MD5") == hashlib.md5(data[::-1]).hexdigest()


def test_mkdir(se: SEProcess) -> None:
    run_ok(["gfal-mkdir", "-p", se.url + "/a/b/c"])
    assert (se.root / "a" / "b" / "c").is_dir()
    # -p on an existing path is fine, and so is extending it.
    run_ok(["gfal-mkdir", "-p", se.url + "/a/b/c"])
    run_ok(["gfal-mkdir", "-p", se.url + "/a/b/c/d/e"])
    assert (se.root / "a" / "b" / "c" / "d" / "e").is_dir()
    run_ok(["gfal-mkdir", se.url + "/a/single"])
    assert (se.root / "a" / "single").is_dir()
    # Without -p: an existing directory (405 -> EEXIST) and a missing parent (409 -> ENOENT).
    res = run(["gfal-mkdir", se.url + "/a/b"])
    assert res.returncode != 0
    assert "exist" in res.stderr.lower()
    res = run(["gfal-mkdir", se.url + "/nope/child"])
    assert res.returncode != 0
    assert "no such file" in res.stderr.lower()
    assert not (se.root / "nope").exists()


def test_rm_recursive(se: SEProcess) -> None:
    for rel in ("t/f1", "t/a/f2", "t/a/b/f3", "t/a/b/c/f4", "t/e/f5", "keep/k"):
        place(se.root, rel, rel.encode())
    (se.root / "t" / "empty").mkdir()
    res = run_ok(["gfal-rm", "-r", se.url + "/t"])
    assert "DELETED" in res.stdout
    assert not (se.root / "t").exists()
    assert (se.root / "keep" / "k").read_bytes() == b"keep/k"
    # A single file, then a missing one.
    run_ok(["gfal-rm", se.url + "/keep/k"])
    assert not (se.root / "keep" / "k").exists()
    res = run(["gfal-rm", se.url + "/keep/k"])
    assert res.returncode != 0


def test_rename(se: SEProcess) -> None:
    data = random_bytes(100_000, 14)
    place(se.root, "r/old.bin", data)
    (se.root / "r2").mkdir()
    run_ok(["gfal-rename", se.url + "/r/old.bin", se.url + "/r2/new.bin"])
    assert not (se.root / "r" / "old.bin").exists()
    assert (se.root / "r2" / "new.bin").read_bytes() == data
    place(se.root, "r/dir/inner.txt", b"inner")
    run_ok(["gfal-rename", se.url + "/r/dir", se.url + "/r2/moved"])
    assert not (se.root / "r" / "dir").exists()
    assert (se.root / "r2" / "moved" / "inner.txt").read_bytes() == b"inner"


def test_stat(se: SEProcess) -> None:
    place(se.root, "s/file.bin", random_bytes(4321, 15))
    res = run_ok(["gfal-stat", se.url + "/s/file.bin"])
    assert "Size: 4321" in res.stdout
    assert "regular file" in res.stdout
    res = run_ok(["gfal-stat", se.url + "/s"])
    assert "directory" in res.stdout
    assert "regular file" not in res.stdout
    res = run(["gfal-stat", se.url + "/s/missing"])
    assert res.returncode != 0
    assert "no such file" in res.stderr.lower()


def test_copy_with_checksum_verification(se: SEProcess, tmp_path: Path) -> None:
    data = random_bytes(2_500_000, 16)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    good = adler32_hex(data)
    # Source, destination (after upload) and user checksums compared by gfal2.
    run_ok(["gfal-copy", "-K", "ADLER32", src.as_uri(), se.url + "/k1.bin"])
    assert (se.root / "k1.bin").read_bytes() == data
    run_ok(["gfal-copy", "-K", f"ADLER32:{good}", src.as_uri(), se.url + "/k2.bin"])
    assert (se.root / "k2.bin").read_bytes() == data
    run_ok(["gfal-copy", "-K", "MD5", src.as_uri(), se.url + "/k3.bin"])
    assert (se.root / "k3.bin").read_bytes() == data
    back = tmp_path / "back.bin"
    run_ok(["gfal-copy", "-K", "ADLER32", se.url + "/k1.bin", back.as_uri()])
    assert back.read_bytes() == data
    # A wrong user checksum fails the copy and leaves no destination behind.
    bad = "00000001" if good != "00000001" else "00000002"
    res = run(["gfal-copy", "-K", f"ADLER32:{bad}", src.as_uri(), se.url + "/k4.bin"])
    assert res.returncode != 0
    assert "mismatch" in res.stderr.lower()
    assert not (se.root / "k4.bin").exists()
    # A download whose source checksum (served by se) disagrees with the data must fail:
    # plant a wrong cached value, valid for the file's size and mtime.
    st = (se.root / "k2.bin").stat()
    os.setxattr(se.root / "k2.bin", ADLER_XATTR, f"{bad};{st.st_size};{st.st_mtime_ns}".encode())
    res = run(["gfal-copy", "-K", "ADLER32", se.url + "/k2.bin", (tmp_path / "x.bin").as_uri()])
    assert res.returncode != 0
    assert "mismatch" in res.stderr.lower()


def test_copy_over_davs_with_throwaway_ca(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    tls = make_tls(tmp_path)
    srv = se_factory(config=tls_config(tls))
    assert srv.url.startswith("https://127.0.0.1:")
    davs = davs_url(srv.url)
    env = trust_env(tls)
    data = random_bytes(1_500_000, 17)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    run_ok(["gfal-copy", src.as_uri(), davs + "/tls.bin"], env=env)
    assert (srv.root / "tls.bin").read_bytes() == data
    back = tmp_path / "back.bin"
    run_ok(["gfal-copy", "-K", "ADLER32", srv.url + "/tls.bin", back.as_uri()], env=env)
    assert back.read_bytes() == data
    # Without the CA directory the server is not trusted.
    empty = tmp_path / "no-cas"
    empty.mkdir()
    res = run(
        ["gfal-copy", davs + "/tls.bin", (tmp_path / "untrusted.bin").as_uri()],
        env={"X509_CERT_DIR": str(empty)},
    )
    assert res.returncode != 0
    assert "certificate" in res.stderr.lower()
