"""se.space: share lookup, the SRR builder (against the vendored schema), the accounting's
database rules (limits admitted atomically, reconciliation), and the storage layer's deltas."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import pytest

from se.config import (
    IMPLICIT_SHARE,
    Config,
    ConfigError,
    ShareConfig,
    SpaceConfig,
    StorageConfig,
    TapePoolConfig,
    load_mapping,
)
from se.errors import InsufficientStorage
from se.space import srr
from se.space.accounting import Accounting
from se.space.shares import ShareMap, latency_of, retention_of
from se.storage.paths import DavPath
from se.storage.usage import DELETE_KEY, Deltas, tree_usage

SCHEMA = json.loads((Path(__file__).parents[1] / "data" / "srr" / "srrschema_4.2.json").read_text())


def p(text: str) -> DavPath:
    return DavPath(tuple(s for s in text.split("/") if s))


def test_longest_prefix_and_implicit_share() -> None:
    m = ShareMap.of(
        (
            ShareConfig(name="atlas", paths=("/atlas",)),
            ShareConfig(name="scratch", paths=("/atlas/scratch/", "/tmp")),
        )
    )
    assert m.name_of(p("/atlas/x/y")) == "atlas"
    assert m.name_of(p("/atlas")) == "atlas"
    assert m.name_of(p("/atlas/scratch/f")) == "scratch"
    assert m.name_of(p("/tmp")) == "scratch"
    assert m.name_of(p("/atlasx")) is None
    assert m.name_of(p("/")) is None
    assert m.nested(p("/atlas")) and m.nested(p("/")) and not m.nested(p("/atlas/scratch"))
    assert m.own_paths("atlas") == [(("atlas",), (("atlas", "scratch"),))]
    implicit = ShareMap.of(())
    assert [s.name for s in implicit.shares] == [IMPLICIT_SHARE]
    assert implicit.name_of(p("/any/where")) == IMPLICIT_SHARE


def test_tape_pool_defaults() -> None:
    pools = (TapePoolConfig(path="/tape"),)
    tape = ShareConfig(name="t", paths=("/tape/atlas",))
    disk = ShareConfig(name="d", paths=("/disk",))
    assert (latency_of(tape, pools), retention_of(tape, pools)) == ("nearline", "custodial")
    assert (latency_of(disk, pools), retention_of(disk, pools)) == ("online", "replica")
    own = ShareConfig(name="o", paths=("/tape",), access_latency="online")
    assert latency_of(own, pools) == "online"


@pytest.mark.parametrize(
    ("shares", "space", "message"),
    [
        ([{"name": "a"}, {"name": "a", "paths": ["/b"]}], {}, "used twice"),
        ([{"name": "a", "paths": ["/x"]}, {"name": "b", "paths": ["/x/"]}], {}, "also a path"),
        ([{"name": "a", "paths": ["x"]}], {}, "not an absolute path"),
        ([{"name": "a", "size": -1}], {}, "size"),
        ([{"name": "a", "access_latency": "slow"}], {}, "access_latency"),
        ([{"name": "a", "serving_state": "gone"}], {}, "serving_state"),
        ([], {"srr_access": "nobody"}, "srr_access"),
        ([], {"srr_path": "srr"}, "srr_path"),
        ([], {"quality_level": "great"}, "quality_level"),
    ],
)
def test_config_refusals(
    shares: list[dict[str, object]], space: dict[str, object], message: str
) -> None:
    data: dict[str, object] = {"space": space}
    if shares:
        data["shares"] = shares
    with pytest.raises(ConfigError, match=message):
        load_mapping(data)


def test_serving_state() -> None:
    share = ShareConfig(name="a")
    assert srr.serving_state(share, 100, 50, 0.1) == "open"
    assert srr.serving_state(share, 100, 5, 0.1) == "draining"
    assert srr.serving_state(share, 100, 5, 0.0) == "open"
    closed = ShareConfig(name="a", serving_state="closed")
    assert srr.serving_state(closed, 100, 50, 0.1) == "closed"


def test_document_validates() -> None:
    shares = [
        srr.ShareReport(
            ShareConfig(name="disk", vos=("atlas",)), 10, 2, 100, "open", "online", "replica"
        ),
        srr.ShareReport(
            ShareConfig(name="tape", paths=("/tape",)),
            5,
            1,
            1000,
            "draining",
            "nearline",
            "custodial",
        ),
    ]
    eps = [
        srr.Endpoint("webdav", "https://se.example:8443/", "https"),
        srr.Endpoint("taperest", "https://se.example:8443/api/v1", "taperest", version="v1"),
    ]
    doc = srr.build_document(
        implementation_version="0.1.0",
        name="se.example",
        service_id="",
        quality_level="testing",
        endpoints=eps,
        shares=shares,
        online=(1000, 100),
        nearline=(5000, 5),
        now=1.5e9,
    )
    jsonschema.validate(doc, SCHEMA)
    svc = doc["storageservice"]
    assert svc["storageendpoints"][1]["assignedshares"] == ["tape"]
    assert svc["storageshares"][1]["assignedendpoints"] == ["webdav", "taperest"]
    assert svc["storageshares"][0]["path"] == ["/"]
    assert svc["storagecapacity"]["nearline"] == {"totalsize": 5000, "usedsize": 5}


def _cfg(tmp_path: Path, shares: tuple[ShareConfig, ...]) -> Config:
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    return Config(
        storage=StorageConfig(root=str(root)),
        shares=shares,
        space=SpaceConfig(database=str(tmp_path / "space.sqlite")),
    )


def test_admit_refuses_over_the_limit_and_applies_nothing(tmp_path: Path) -> None:
    acc = Accounting(_cfg(tmp_path, (ShareConfig(name="a", paths=("/a",), size=100),)))
    try:
        d = Deltas()
        d.add("a", 60, 1)
        acc.admit(d)
        with pytest.raises(InsufficientStorage, match="share a is full"):
            acc.admit(d)
        assert (acc.usage("a").bytes, acc.usage("a").files) == (60, 1)
        shrink = Deltas()
        shrink.add("a", -10, 0)
        acc.admit(shrink)  # shrinking is always admitted
        assert acc.usage("a").bytes == 50
    finally:
        acc.close()


def test_reconcile_walks_own_paths_only(tmp_path: Path) -> None:
    shares = (
        ShareConfig(name="outer", paths=("/o",)),
        ShareConfig(name="inner", paths=("/o/i",)),
    )
    cfg = _cfg(tmp_path, shares)
    root = Path(cfg.storage.root)
    (root / "o" / "i" / "deep").mkdir(parents=True)
    (root / "o" / "f").write_bytes(b"x" * 10)
    (root / "o" / "i" / "g").write_bytes(b"x" * 7)
    (root / "o" / "i" / "deep" / "h").write_bytes(b"x" * 3)
    (root / "o" / ".se-upload-abc").write_bytes(b"x" * 1000)  # temp files do not count
    os.symlink("/etc/passwd", root / "o" / "link")  # nor symlinks
    acc = Accounting(cfg)
    try:
        totals = acc.reconcile_sync()
        assert (totals["outer"].bytes, totals["outer"].files) == (10, 1)
        assert (totals["inner"].bytes, totals["inner"].files) == (10, 2)
        assert totals["inner"].reconciled > 0
        # A tree below outer holding inner is attributed directory by directory.
        found = tree_usage(str(root / "o"), p("/o"), acc)
        assert sorted(found.items()) == [("inner", 10, 2), ("outer", 10, 1)]
    finally:
        acc.close()


def test_two_instances_share_one_total(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, ())
    a, b = Accounting(cfg), Accounting(cfg)
    try:
        d = Deltas()
        d.add(IMPLICIT_SHARE, 5, 1)
        for _ in range(10):
            a.apply(d)
            b.apply(d)
        assert a.usage(IMPLICIT_SHARE).bytes == b.usage(IMPLICIT_SHARE).bytes == 100
        assert a.all_usage()[IMPLICIT_SHARE].files == 20
    finally:
        a.close()
        b.close()


def test_recovery_takes_back_uploads_never_put_in_place(tmp_path: Path) -> None:
    import fcntl

    cfg = _cfg(tmp_path, ())
    root = Path(cfg.storage.root)
    acc = Accounting(cfg)
    try:

        def pending(name: str, size: int) -> tuple[str, str]:
            temp = root / f".se-upload-{name}"
            temp.write_bytes(b"x" * size)
            d = Deltas()
            d.add(IMPLICIT_SHARE, size, 1)
            where = (str(temp), str(root / name))
            acc.admit(d, where)
            return where

        dead = pending("dead", 10)  # writer killed before the rename: taken back
        done = pending("done", 20)  # renamed, not settled: kept
        os.rename(done[0], done[1])
        linked = pending("linked", 40)  # linked (Overwrite: F), temp not yet unlinked: kept
        os.link(linked[0], linked[1])
        alive = pending("alive", 80)  # a live writer holds its lock: left alone
        fd = os.open(alive[0], os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        settled = pending("settled", 160)
        acc.settle(settled)
        assert acc.usage(IMPLICIT_SHARE).bytes == 310
        try:
            assert acc.recover_sync() == 1
            assert acc.usage(IMPLICIT_SHARE).bytes == 300
            assert acc.recover_sync() == 0  # each pending upload is judged once
            assert not os.path.exists(dead[1])  # the dead writer's target never appeared
        finally:
            os.close(fd)
        assert acc.recover_sync() == 1  # the writer of "alive" is gone now
        assert (acc.usage(IMPLICIT_SHARE).bytes, acc.usage(IMPLICIT_SHARE).files) == (220, 3)
        # deletes counted before the unlink: one killed before it (still there: taken back),
        # one done
        for name, unlink in (("kept", False), ("removed", True)):
            f = root / name
            f.write_bytes(b"y" * 5)
            d = Deltas()
            d.add(IMPLICIT_SHARE, 5, 1)
            acc.apply(d)
            gone = Deltas()
            gone.add(IMPLICIT_SHARE, -5, -1)
            acc.admit(gone, (f"{DELETE_KEY}{name}", str(f)), f.stat().st_ino)
            if unlink:
                f.unlink()
        assert acc.usage(IMPLICIT_SHARE).bytes == 220
        assert acc.recover_sync() == 1
        assert (acc.usage(IMPLICIT_SHARE).bytes, acc.usage(IMPLICIT_SHARE).files) == (225, 4)
    finally:
        acc.close()


def test_admit_many_refuses_each_upload_on_its_own(tmp_path: Path) -> None:
    """A group commit's uploads are admitted in turn: those that fit are counted (and
    recorded as pending), the one that would go over the size is refused alone."""
    acc = Accounting(_cfg(tmp_path, (ShareConfig(name="a", paths=("/a",), size=100),)))
    root = acc.root_real
    try:
        uploads = []
        for i in range(3):
            d = Deltas()
            d.add("a", 40, 1)
            uploads.append((d, (f"{root}/a/.tmp{i}", f"{root}/a/f{i}")))
        results = acc.admit_many(uploads)
        assert results[:2] == [None, None]
        assert isinstance(results[2], InsufficientStorage)
        assert "share a is full" in str(results[2])
        assert (acc.usage("a").bytes, acc.usage("a").files) == (80, 2)
        for _, pending in uploads[:2]:
            acc.settle(pending)
        acc.flush_settled()
        assert acc.recover_sync() == 0  # nothing counted that was not admitted
        assert (acc.usage("a").bytes, acc.usage("a").files) == (80, 2)
    finally:
        acc.close()
