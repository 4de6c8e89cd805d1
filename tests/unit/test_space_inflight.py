"""se.space.accounting: a reconciliation against changes in flight, and the recovery after it.

A reconciliation sets a share's totals to a walk of its tree.  A change counted before it is
on disk (an upload between its count and its rename, a delete between its count and its
unlink) or counted after it is on disk (a tree deleted, copied or moved) must neither be
lost nor counted twice by a walk that runs meanwhile; and what a walk has settled, the
recovery of killed writers must not take back again.  Each test sets up one such moment by
hand, with real files, real locks and a real SQLite database.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from se.config import IMPLICIT_SHARE, Config, SpaceConfig, StorageConfig
from se.space.accounting import Accounting
from se.storage.paths import DavPath
from se.storage.usage import DELETE_KEY, Deltas, dir_locked

pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture
def acc(tmp_path: Path) -> Iterator[Accounting]:
    root = tmp_path / "data"
    root.mkdir()
    cfg = Config(
        storage=StorageConfig(root=str(root)),
        space=SpaceConfig(database=str(tmp_path / "space.sqlite")),
    )
    a = Accounting(cfg)
    a.set_usage_sync(IMPLICIT_SHARE, 0, 0)  # reconciled: an empty tree
    try:
        yield a
    finally:
        a.close()


def totals(acc: Accounting) -> tuple[int, int]:
    u = acc.usage(IMPLICIT_SHARE)
    return u.bytes, u.files


def walked(acc: Accounting) -> tuple[int, int]:
    return acc.walk(IMPLICIT_SHARE)


def counted(nbytes: int, files: int) -> Deltas:
    d = Deltas()
    d.add(IMPLICIT_SHARE, nbytes, files)
    return d


def root_of(acc: Accounting) -> Path:
    return Path(acc.root)


def test_a_walk_supersedes_what_recovery_would_take_back(acc: Accounting) -> None:
    """A writer killed between count and rename, and a deleter killed between count and
    unlink, then a reconciliation: the walk is the truth, and the recovery that comes
    after must not correct the same changes a second time."""
    root = root_of(acc)
    (root / "kept").write_bytes(b"k" * 30)
    acc.apply(counted(30, 1))
    temp = root / ".se-upload-dead"
    temp.write_bytes(b"d" * 10)  # counted, never renamed into place; its writer is gone
    acc.admit(counted(10, 1), (str(temp), str(root / "dead")))
    acc.admit(
        counted(-30, -1), (f"{DELETE_KEY}x", str(root / "kept")), (root / "kept").stat().st_ino
    )
    assert totals(acc) == (10, 1)  # both counted, neither on disk
    acc.reconcile_sync()
    assert totals(acc) == walked(acc) == (30, 1)
    assert acc.recover_sync() == 0
    assert totals(acc) == (30, 1)


def _slow_change(
    acc: Accounting, before_disk: threading.Event, walk_done: threading.Event, change: str
) -> None:
    """One change done the way the storage layer does it: under its directory's lock,
    counted (with its pending row) first, then on disk, waiting in between until a walk
    has been made or a second has passed."""
    root = root_of(acc)
    with dir_locked(str(root)):
        if change == "upload":
            temp = root / ".se-upload-slow"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)  # a live writer holds its temp file
            os.write(fd, b"u" * 20)
            where = (str(temp), str(root / "slow"))
            acc.admit(counted(20, 1), where)
            before_disk.set()
            walk_done.wait(1.0)
            os.rename(temp, root / "slow")
            os.close(fd)
            acc.settle(where)
        else:
            victim = root / "victim"
            key = (f"{DELETE_KEY}slow", str(victim))
            acc.admit(counted(-40, -1), key, victim.stat().st_ino)
            before_disk.set()
            walk_done.wait(1.0)
            victim.unlink()
            acc.settle(key)


@pytest.mark.parametrize("change", ["upload", "delete"])
def test_a_walk_waits_for_a_change_between_its_count_and_the_disk(
    acc: Accounting, change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted before the walk starts, on disk after it has passed: without care the walk
    misses an upload (one file short) or still sees a deleted file (one too many)."""
    root = root_of(acc)
    if change == "delete":
        (root / "victim").write_bytes(b"v" * 40)
        acc.reconcile_sync()
    before_disk, walk_done = threading.Event(), threading.Event()
    real_walk = acc.walk

    def walk_and_tell(name: str) -> tuple[int, int]:
        out = real_walk(name)
        walk_done.set()
        return out

    monkeypatch.setattr(acc, "walk", walk_and_tell)
    writer = threading.Thread(target=_slow_change, args=(acc, before_disk, walk_done, change))
    writer.start()
    assert before_disk.wait(5)
    acc.reconcile_sync()
    writer.join(5)
    assert totals(acc) == real_walk(IMPLICIT_SHARE)
    assert acc.recover_sync() == 0
    assert totals(acc) == real_walk(IMPLICIT_SHARE)


def test_a_walk_waits_for_a_tree_change_counted_after_it_is_on_disk(acc: Accounting) -> None:
    """A tree copied in (counted when done, as COPY of a collection is): a reconciliation
    that starts meanwhile waits for it to end, then walks."""
    root = root_of(acc)
    key = acc.begin_change()
    (root / "tree").mkdir()
    (root / "tree" / "one").write_bytes(b"1" * 7)
    result: list[tuple[int, int]] = []

    def reconcile() -> None:
        u = acc.reconcile_sync()[IMPLICIT_SHARE]
        result.append((u.bytes, u.files))

    t = threading.Thread(target=reconcile)
    t.start()
    time.sleep(0.3)
    assert not result  # still waiting for the change to end
    (root / "tree" / "two").write_bytes(b"2" * 5)
    acc.apply(counted(12, 2), settle=key)
    t.join(10)
    assert result == [(12, 2)]
    assert totals(acc) == walked(acc) == (12, 2)


def test_a_change_begun_during_the_walk_keeps_its_count(
    acc: Accounting, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tree change that begins after the walk has started and is counted after the totals
    would be set: the walk's totals are not set (it may have seen half of it)."""
    root = root_of(acc)
    real_walk = acc.walk
    keys: list[str] = []

    def walk_then_change(name: str) -> tuple[int, int]:
        out = real_walk(name)
        if not keys:  # the first walk: a change starts and puts a file down meanwhile
            keys.append(acc.begin_change())
            (root / "late").write_bytes(b"l" * 9)
            threading.Timer(0.3, lambda: acc.apply(counted(9, 1), settle=keys[0])).start()
        return out

    monkeypatch.setattr(acc, "walk", walk_then_change)
    acc.reconcile_sync()
    time.sleep(0.5)
    assert totals(acc) == real_walk(IMPLICIT_SHARE) == (9, 1)


def test_a_change_whose_process_died_is_dropped_and_the_shares_walked_again(
    acc: Accounting, tmp_path: Path
) -> None:
    """A process killed in the middle of a tree change: the change's mark does not block
    reconciliation forever; the recovery drops it and marks every share for a walk."""
    script = (
        "import os, sys\n"
        "from se.config import Config, SpaceConfig, StorageConfig\n"
        "from se.space.accounting import Accounting\n"
        "cfg = Config(storage=StorageConfig(root=sys.argv[1]),"
        " space=SpaceConfig(database=sys.argv[2]))\n"
        "Accounting(cfg).begin_change()\n"
        "os._exit(0)\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, acc.root, str(tmp_path / "space.sqlite")], check=True
    )
    (root_of(acc) / "half").write_bytes(b"h" * 3)  # what it did before it died
    assert acc.usage(IMPLICIT_SHARE).reconciled > 0
    acc.recover_sync()
    assert acc.usage(IMPLICIT_SHARE).reconciled == 0  # walked at the next start
    acc.reconcile_sync()  # not blocked by the dead change
    assert totals(acc) == (3, 1)


def test_a_writer_dying_while_recovery_looks_is_taken_back_by_the_sweep(
    acc: Accounting, tmp_path: Path
) -> None:
    """A writer killed between count and rename, still holding its temp file's lock when
    the recovery looks (a process in uninterruptible I/O dies late), gone when the sweep
    comes: the sweep takes its count back as it removes the file.  A temp file linked into
    place (Overwrite: F, the unlink not done) is only forgotten."""
    from concurrent.futures import ThreadPoolExecutor

    from se.storage.posix import PosixBackend

    root = root_of(acc)
    dying = root / ".se-upload-dying"
    dying.write_bytes(b"d" * 50)
    acc.admit(counted(50, 1), (str(dying), str(root / "dying")))
    linked = root / ".se-upload-linked"
    linked.write_bytes(b"l" * 60)
    acc.admit(counted(60, 1), (str(linked), str(root / "linked")))
    os.link(linked, root / "linked")
    past = time.time() - 60  # written before the sweeping server started
    for f in (dying, linked):
        os.utime(f, (past, past))
    fd = os.open(dying, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    assert acc.recover_sync() == 0  # its writer still holds it
    os.close(fd)  # ... and is gone now
    assert totals(acc) == (110, 2)
    with ThreadPoolExecutor(1) as pool:
        backend = PosixBackend(acc.cfg, pool)
        backend.space = acc
        assert backend.sweep_temp_files() == 2
    assert not dying.exists() and not linked.exists()
    assert totals(acc) == walked(acc) == (60, 1)
    assert acc.recover_sync() == 0
    assert totals(acc) == (60, 1)


def test_a_tree_deleted_while_files_land_in_it_keeps_exact_totals(acc: Accounting) -> None:
    """Uploads into a tree and DELETEs of that tree, on threads, over and over (the storage
    layer's real code, on a real filesystem): after each round the totals are the walk's.
    A file landing between the tree's measure and its removal used to keep its count."""
    from concurrent.futures import ThreadPoolExecutor

    from se.errors import SEError
    from se.storage.posix import PosixBackend

    def dav(text: str) -> DavPath:
        return DavPath(tuple(text.split("/")))

    with ThreadPoolExecutor(4) as pool:
        backend = PosixBackend(acc.cfg, pool)
        backend.space = acc
        deadline = time.monotonic() + 8
        for round_ in range(60):
            if time.monotonic() > deadline:
                break
            stop = threading.Event()

            def upload(n: int, stop: threading.Event = stop) -> None:
                for i in range(1 << 30):  # until stopped
                    if stop.is_set():
                        return
                    with contextlib.suppress(SEError, OSError):
                        backend.put_whole(dav(f"t/d{i % 3}/f{n}-{i % 4}"), True, b"x" * (i % 7 + 1))

            workers = [pool.submit(upload, n) for n in range(3)]
            time.sleep(0.005)
            for _ in range(3):
                with contextlib.suppress(SEError):
                    backend._delete_sync(dav("t"), str(root_of(acc) / "t"))
            stop.set()
            for w in workers:
                w.result(10)
            assert totals(acc) == walked(acc), f"round {round_}"
