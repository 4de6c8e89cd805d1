"""End-to-end tests driving rclone's webdav backend (vendor "other") against se."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import need
from tests.e2e.clients import random_bytes, run_ok, tree_bytes
from tests.support import SEProcess

pytestmark = pytest.mark.clients

# No retries: a flaky server must fail the test rather than be papered over.
FLAGS = ["--retries", "1", "--low-level-retries", "1", "--transfers", "4", "--checkers", "4"]


@pytest.fixture(autouse=True)
def _rclone_installed() -> None:
    need("rclone")


def rclone(se: SEProcess, tmp_path: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {
        "RCLONE_CONFIG": str(tmp_path / "rclone.conf"),  # never the user's
        "RCLONE_CONFIG_SE_TYPE": "webdav",
        "RCLONE_CONFIG_SE_URL": se.url,
        "RCLONE_CONFIG_SE_VENDOR": "other",
        "RCLONE_CACHE_DIR": str(tmp_path / "rclone-cache"),
    }
    return run_ok(["rclone", *FLAGS, *args], env=env, timeout=180)


def make_tree(root: Path) -> dict[str, bytes]:
    """~20 files in nested directories, sizes from 0 to ~1 MiB, a few awkward names."""
    names = [
        "top.txt",
        "empty.bin",
        "a/one.bin",
        "a/two.bin",
        "a/b/three.bin",
        "a/b/c/four.bin",
        "a/b/c/five.bin",
        "a/b/c/d/six.bin",
        "a/b/c/d/seven.bin",
        "x/eight.dat",
        "x/nine.dat",
        "x/ten.dat",
        "x/y/eleven.dat",
        "x/y/twelve.dat",
        "x/y/z/thirteen.dat",
        "with space/fourteen file.txt",
        "with space/fifteen.txt",
        "p%c/sixteen.txt",
        "unicodé/seventeen.txt",
        "unicodé/eighteen+plus.txt",
        "big/nineteen.bin",
        "big/twenty.bin",
    ]
    content: dict[str, bytes] = {}
    for i, name in enumerate(names):
        size = 0 if name == "empty.bin" else (1 << 20) + i if name.startswith("big/") else 97 * i
        data = random_bytes(size, 100 + i)
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        content[name] = data
    return content


def test_copy_sync_check_and_copy_back(se: SEProcess, tmp_path: Path) -> None:
    local = tmp_path / "local"
    content = make_tree(local)
    assert len(content) >= 20
    remote = "se:dest/tree"  # parents are created by rclone's MKCOL walk
    on_disk = se.root / "dest" / "tree"

    rclone(se, tmp_path, "copy", local, remote)
    assert tree_bytes(on_disk) == content
    rclone(se, tmp_path, "check", "--download", local, remote)

    # Modify (size changes, so rclone must notice without hashes), delete, add.
    (local / "a" / "one.bin").write_bytes(b"changed, and longer than before" * 10)
    (local / "x" / "y" / "twelve.dat").write_bytes(b"")
    (local / "top.txt").unlink()
    (local / "with space" / "fourteen file.txt").unlink()
    for p in sorted((local / "a" / "b" / "c" / "d").iterdir()):
        p.unlink()
    (local / "a" / "b" / "c" / "d").rmdir()
    (local / "new").mkdir()
    (local / "new" / "added.txt").write_bytes(b"added after the first copy\n")
    expected = tree_bytes(local)
    assert expected != content

    rclone(se, tmp_path, "sync", local, remote)
    assert tree_bytes(on_disk) == expected
    assert not (on_disk / "top.txt").exists()
    assert not (on_disk / "a" / "b" / "c" / "d" / "six.bin").exists()
    rclone(se, tmp_path, "check", "--download", local, remote)
    assert not [p for p in on_disk.rglob(".se-upload-*")]

    back = tmp_path / "back"
    rclone(se, tmp_path, "copy", remote, back)
    assert tree_bytes(back) == expected


def test_lsl_sizes(se: SEProcess, tmp_path: Path) -> None:
    files = {"l/a.bin": 0, "l/b.bin": 12_345, "l/sub/c.bin": 1}
    for rel, size in files.items():
        p = se.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(random_bytes(size, size))
    res = rclone(se, tmp_path, "lsf", "-R", "--format", "sp", "--separator", "|", "se:l")
    rows = {line.split("|")[1]: int(line.split("|")[0]) for line in res.stdout.splitlines()}
    assert rows.pop("sub/") == -1
    assert rows == {"a.bin": 0, "b.bin": 12_345, "sub/c.bin": 1}
