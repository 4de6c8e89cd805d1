"""se.storage.dirwatch: the parsers, and the watcher against real inotify on a real tree.

Each change a process other than the server can make to a listed collection (through any
path) must make the listing's token stale; what no listing shows (an upload's temp file in
the listed directory) must not.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from se.storage import dirwatch
from se.storage.dirwatch import (
    IN_ATTRIB,
    IN_CREATE,
    IN_IGNORED,
    IN_Q_OVERFLOW,
    DirWatch,
    Token,
    filesystem_type,
    parse_events,
)
from se.storage.paths import is_reserved

pytestmark = pytest.mark.skipif(not hasattr(os, "scandir"), reason="POSIX only")


def event(wd: int, mask: int, name: bytes = b"", pad: int = 0) -> bytes:
    raw = name + b"\0" * pad if name or pad else b""
    return struct.pack("iIII", wd, mask, 0, len(raw)) + raw


def test_parse_events_reads_names_padding_and_self_events() -> None:
    buf = event(3, IN_CREATE, b"f1", pad=14) + event(4, IN_ATTRIB) + event(-1, IN_Q_OVERFLOW)
    buf += event(5, IN_CREATE, "é\udcff".encode("utf-8", "surrogateescape"), pad=3)
    assert parse_events(buf) == [
        (3, IN_CREATE, "f1"),
        (4, IN_ATTRIB, ""),
        (-1, IN_Q_OVERFLOW, ""),
        (5, IN_CREATE, "é\udcff"),
    ]


def test_parse_events_ignores_a_truncated_tail() -> None:
    assert parse_events(event(3, IN_IGNORED) + b"\0\0\0") == [(3, IN_IGNORED, "")]


MOUNTINFO = """\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
35 22 0:31 / /dev/shm rw,nosuid shared:3 - tmpfs tmpfs rw,size=100k
40 22 0:52 / /mnt/data rw,relatime shared:9 master:2 - nfs4 srv:/export rw,vers=4.2
41 22 0:53 / /mnt/odd rw - fuse.sshfs host: rw
"""


@pytest.mark.parametrize(
    ("dev", "fstype"),
    [
        (os.makedev(253, 1), "ext4"),
        (os.makedev(0, 31), "tmpfs"),
        (os.makedev(0, 52), "nfs4"),  # optional fields before the separator
        (os.makedev(0, 53), "fuse.sshfs"),
        (os.makedev(8, 1), None),
    ],
)
def test_filesystem_type_by_device(dev: int, fstype: str | None) -> None:
    assert filesystem_type(dev, MOUNTINFO) == fstype


def test_network_filesystems_are_not_watched() -> None:
    assert {"nfs", "nfs4", "ceph", "lustre", "gpfs", "fuse.sshfs", "overlay"}.isdisjoint(
        dirwatch.LOCAL_FILESYSTEMS
    )


# -- the watcher on a real tree -------------------------------------------------------------

ROOT_MEMBERS = 5


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    for i in range(ROOT_MEMBERS):
        (d / f"f{i}").write_bytes(b"x" * i)
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


def make_watch(root: Path, budget: int = 1000) -> DirWatch:
    return DirWatch(os.stat(root).st_dev, budget, is_reserved, dirwatch._Inotify())


def listing(watch: DirWatch, d: Path) -> Token | None:
    """What PosixBackend does: watch the directory, read it, watch then stat each member."""
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        token = watch.begin(fd, os.fstat(fd))
        assert token is not None
        with os.scandir(fd) as it:
            found = sorted((e.name, e.inode(), e.is_dir(follow_symlinks=False)) for e in it)
        watch.sync()
        for name, inode, was_dir in found:
            if is_reserved(name):
                continue
            watch.attach(token, fd, name, inode, was_dir)
            watch.confirm(token, inode, os.lstat(name, dir_fd=fd), was_dir)
        if token.stale:
            watch.release(token)
            return None
        return token
    finally:
        os.close(fd)


def current(watch: DirWatch, token: Token, d: Path) -> bool:
    st = os.stat(d)
    return watch.current(token, (st.st_dev, st.st_ino))


@pytest.fixture
def watch(tree: Path) -> Iterator[DirWatch]:
    yield make_watch(tree)


def _write_through_hard_link(t: Path) -> None:
    os.link(t / "d" / "f2", t / "elsewhere" / "g")
    with open(t / "elsewhere" / "g", "r+b") as f:
        f.write(b"Y")


def _link_only(t: Path) -> None:
    os.link(t / "d" / "f2", t / "elsewhere" / "g")  # the link count a listing may show


def _write_open_fd(t: Path) -> None:
    with open(t / "d" / "f3", "r+b") as f:
        f.write(b"Z")


def _append(t: Path) -> None:
    with open(t / "d" / "f1", "ab") as f:
        f.write(b"more")


def _utime(t: Path) -> None:
    os.utime(t / "d" / "f1", ns=(1, 1))


def _chmod(t: Path) -> None:
    os.chmod(t / "d" / "f1", 0o600)


def _setxattr(t: Path) -> None:
    os.setxattr(str(t / "d" / "f4"), "user.se.prop.x", b"v")


def _truncate(t: Path) -> None:
    os.truncate(t / "d" / "f4", 0)


def _create(t: Path) -> None:
    (t / "d" / "new").write_bytes(b"")


def _unlink(t: Path) -> None:
    os.unlink(t / "d" / "f0")


def _replace_by_rename(t: Path) -> None:
    (t / "elsewhere" / "r").write_bytes(b"r")
    os.rename(t / "elsewhere" / "r", t / "d" / "f1")


def _rename_within(t: Path) -> None:
    os.rename(t / "d" / "f1", t / "d" / "f9")


def _subdir_gets_a_member(t: Path) -> None:
    (t / "d" / "sub" / "x").write_bytes(b"")  # the subdirectory's mtime, shown in d's listing


def _subdir_gets_a_temp_file(t: Path) -> None:
    (t / "d" / "sub" / ".se-upload-x").write_bytes(b"")  # still sub's mtime


def _symlink_replaces_member(t: Path) -> None:
    os.unlink(t / "d" / "f1")
    os.symlink("/etc/passwd", t / "d" / "f1")


CHANGES: list[Callable[[Path], None]] = [
    _write_through_hard_link,
    _link_only,
    _write_open_fd,
    _append,
    _utime,
    _chmod,
    _setxattr,
    _truncate,
    _create,
    _unlink,
    _replace_by_rename,
    _rename_within,
    _subdir_gets_a_member,
    _subdir_gets_a_temp_file,
    _symlink_replaces_member,
]


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__.strip("_"))
def test_every_change_makes_the_listing_stale(
    tree: Path, watch: DirWatch, change: Callable[[Path], None]
) -> None:
    token = listing(watch, tree / "d")
    assert token is not None and current(watch, token, tree / "d")
    change(tree)
    assert not current(watch, token, tree / "d")


def test_a_temp_file_in_the_listed_directory_changes_nothing_listed(
    tree: Path, watch: DirWatch
) -> None:
    token = listing(watch, tree / "d")
    assert token is not None
    tmp = tree / "d" / ".se-upload-1"
    with open(tmp, "wb") as f:
        f.write(b"data" * 1000)
    os.setxattr(str(tmp), "user.se.checksum.adler32", b"1")
    os.unlink(tmp)
    assert current(watch, token, tree / "d")


def test_the_path_must_still_name_the_watched_directory(tree: Path, watch: DirWatch) -> None:
    token = listing(watch, tree / "d")
    assert token is not None
    os.rename(tree / "d", tree / "old")  # an ancestor's rename looks the same from d's path
    (tree / "d").mkdir()
    assert not current(watch, token, tree / "d")


def test_a_reused_inode_number_is_watched_again(tree: Path, watch: DirWatch) -> None:
    d = tree / "d"
    first = listing(watch, d)
    assert first is not None
    for i in range(ROOT_MEMBERS):  # free the members' inodes, then make new files
        os.unlink(d / f"f{i}")
    for i in range(ROOT_MEMBERS):
        (d / f"n{i}").write_bytes(b"")
    second = listing(watch, d)
    assert second is not None
    watch.release(first)
    (d / "n3").write_bytes(b"changed")
    assert not current(watch, second, d)


def test_overflow_makes_everything_stale(tree: Path, watch: DirWatch) -> None:
    token = listing(watch, tree / "d")
    assert token is not None
    watch._apply([(-1, IN_Q_OVERFLOW, "")])
    assert not current(watch, token, tree / "d")


def test_release_ends_the_watches_no_listing_needs(tree: Path, watch: DirWatch) -> None:
    one = listing(watch, tree / "d")
    two = listing(watch, tree / "d")
    assert one is not None and two is not None
    assert watch.watches == ROOT_MEMBERS + 2  # d, sub, the files: shared by both tokens
    watch.release(one)
    assert watch.watches == ROOT_MEMBERS + 2 and current(watch, two, tree / "d")
    watch.release(two)
    assert watch.watches == 0


def test_over_budget_a_listing_is_not_watched(tree: Path) -> None:
    small = make_watch(tree, budget=3)
    assert listing(small, tree / "d") is None
    assert small.watches == 0  # what was placed for it is ended


def test_a_listing_with_a_symlink_or_fifo_is_not_watched(tree: Path, watch: DirWatch) -> None:
    os.symlink("f1", tree / "d" / "link")
    assert listing(watch, tree / "d") is None
    os.unlink(tree / "d" / "link")
    os.mkfifo(tree / "d" / "fifo")
    assert listing(watch, tree / "d") is None


def test_another_device_is_not_watched(tree: Path) -> None:
    other = DirWatch(os.stat(tree).st_dev + 1, 100, is_reserved, dirwatch._Inotify())
    fd = os.open(tree / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert other.begin(fd, os.fstat(fd)) is None
    finally:
        os.close(fd)


def test_for_root_follows_the_setting(tree: Path) -> None:
    assert DirWatch.for_root(str(tree), 0, is_reserved) is None
    got = DirWatch.for_root(str(tree), -1, is_reserved)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        local = filesystem_type(os.stat(tree).st_dev, f.read()) in dirwatch.LOCAL_FILESYSTEMS
    assert (got is not None) == local
    if got is not None:
        assert got.budget >= 1
