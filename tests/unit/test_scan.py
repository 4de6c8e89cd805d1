"""se.scan's pure parts: the XRootD xattr format, the keep/compute/mismatch decision, the walk
order a resumed scan relies on, and the journal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from se.config import ShareConfig
from se.scan import (
    LIST_LIMIT,
    Journal,
    Record,
    Result,
    Tally,
    judge,
    make_plan,
    records_from,
    walk,
)
from se.space.shares import ShareMap
from se.storage import xattrs
from se.storage.paths import DavPath

# user.XrdCks.adler32 as xrdadler32 (XRootD 5.5) stored it on a file with mtime 1577836800.
XRDADLER32_VALUE = bytes.fromhex(
    "61646c65723332000000000000000000000000005e0be1000d0aeee900000004eb7fbf6e" + "00" * 60
)
MTIME_S = 1577836800
NS = 1_000_000_000


def test_parse_xrdcks_of_xrdadler32() -> None:
    assert len(XRDADLER32_VALUE) == 96
    assert xattrs.parse_xrdcks(XRDADLER32_VALUE) == ("adler32", MTIME_S, bytes.fromhex("eb7fbf6e"))


def test_xrdcks_round_trip_and_malformed() -> None:
    raw = xattrs.pack_xrdcks("md5", bytes(range(16)), 1234 * NS + 5)
    assert xattrs.parse_xrdcks(raw) == ("md5", 1234, bytes(range(16)))
    assert xattrs.parse_xrdcks(raw[:-1]) is None
    bad_length = bytearray(raw)
    bad_length[31] = 65  # the length byte
    assert xattrs.parse_xrdcks(bytes(bad_length)) is None
    assert xattrs.parse_own(b"0a0b0c0d;10;99") == (bytes.fromhex("0a0b0c0d"), 10, 99)
    assert xattrs.parse_own(b"zz;10;99") is None
    assert xattrs.parse_own(b"\xff") is None


def own(digest: bytes, size: int, mtime_ns: int) -> bytes:
    return f"{digest.hex()};{size};{mtime_ns}".encode()


A = bytes.fromhex("eb7fbf6e")
B = bytes.fromhex("00000001")
MT = MTIME_S * NS + 123


def test_records_freshness() -> None:
    attrs = {
        "user.XrdCks.adler32": XRDADLER32_VALUE,
        "user.se.checksum.md5": own(bytes(16), 100, MT),
        "user.se.checksum.sha1": own(bytes(20), 99, MT),  # stale: size
        "user.XrdCks.sha1": xattrs.pack_xrdcks("sha1", bytes(20), MT),  # stale with ours
        "user.XrdCks.unknownalg": XRDADLER32_VALUE,
        "user.se.checksum.crc32c": b"garbage",
        "user.other": b"x",
    }
    recs = {(r.source, r.algorithm): r for r in records_from(attrs, 100, MT)}
    assert recs[("xrootd", "adler32")] == Record("xrootd", "adler32", A, True)
    assert recs[("se", "md5")].fresh
    assert not recs[("se", "sha1")].fresh
    assert not recs[("xrootd", "sha1")].fresh
    assert recs[("se", "crc32c")] == Record("se", "crc32c", b"", False)
    assert len(recs) == 5
    # XRootD's entry is fresh to the second: another second, stale.
    (r,) = records_from({"user.XrdCks.adler32": XRDADLER32_VALUE}, 100, MT + NS)
    assert not r.fresh


def test_backfill_keeps_fresh_and_computes_missing() -> None:
    fresh_a = Record("xrootd", "adler32", A, True)
    plan = make_plan([fresh_a], ("adler32",), verify=False)
    assert plan.compute == () and plan.missing == ()
    plan = make_plan([fresh_a], ("adler32", "sha256"), verify=False)
    assert plan.compute == ("sha256",) and plan.missing == ("sha256",) and not plan.stale
    v = judge(plan, {"sha256": b"s" * 32}, fix=False)
    assert v.kind == "computed" and v.write == {"sha256": b"s" * 32} and not v.mismatches
    stale = Record("se", "adler32", A, False)
    plan = make_plan([stale], ("adler32",), verify=False)
    assert plan.compute == ("adler32",) and plan.stale


def test_backfill_reads_when_fresh_entries_disagree() -> None:
    ours = Record("se", "adler32", A, True)
    theirs = Record("xrootd", "adler32", B, True)
    plan = make_plan([ours, theirs], ("adler32",), verify=False)
    assert plan.compute == ("adler32",) and plan.missing == ()
    v = judge(plan, {"adler32": A}, fix=False)
    assert v.kind == "mismatch" and v.write == {}
    assert v.mismatches == ((theirs, A),)
    fixed = judge(plan, {"adler32": A}, fix=True)
    assert fixed.write == {"adler32": A} and fixed.xrootd


def test_verify_recomputes_everything_and_never_overwrites_without_fix() -> None:
    recs = [Record("se", "adler32", A, True), Record("se", "md5", bytes(16), True)]
    plan = make_plan(recs, ("adler32", "sha256"), verify=True)
    assert plan.compute == ("adler32", "sha256", "md5")
    assert plan.missing == ("sha256",)
    good = {"adler32": A, "sha256": b"s" * 32, "md5": bytes(16)}
    v = judge(plan, good, fix=False)
    assert v.kind == "computed" and v.write == {"sha256": b"s" * 32}
    bad = {**good, "adler32": B}
    v = judge(plan, bad, fix=False)
    assert v.kind == "mismatch" and "adler32" not in v.write and not v.xrootd
    v = judge(plan, bad, fix=True)
    assert v.write["adler32"] == B and not v.xrootd  # only ours disagreed
    plan = make_plan([Record("se", "adler32", A, True)], ("adler32",), verify=True)
    assert judge(plan, {"adler32": A}, fix=False).kind == "kept"


def test_share_map() -> None:
    shares = ShareMap.of(
        (
            ShareConfig(name="atlas", paths=("/atlas", "/atlas/sub/", "/x")),
            ShareConfig(name="tape", paths=("/atlas/tape",)),
        )
    )
    assert shares.name_of(DavPath(("atlas", "f"))) == "atlas"
    assert shares.name_of(DavPath(("atlas", "tape", "f"))) == "tape"
    assert shares.name_of(DavPath(("atlastape",))) is None
    assert shares.walk_roots("atlas") == [("atlas",), ("x",)]
    assert shares.walk_roots(None) == [()]
    assert ShareMap.of(()).name_of(DavPath(("a",))) == "default"


def make_tree(root: Path) -> None:
    for rel in ("a/1", "a/b/2", "a/b/3", "a/c", "b", "c/d/e/4", "c/z", "ä", ".se-upload-x"):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rel.encode())
    (root / "empty").mkdir()
    (root / "a" / "link").symlink_to("/etc/passwd")
    os.mkfifo(root / "a" / "fifo")


def test_walk_order_and_resume(tmp_path: Path) -> None:
    make_tree(tmp_path)
    items = list(walk(str(tmp_path)))
    segs = [i.segs for i in items]
    assert segs == sorted(segs)
    kinds = {"/".join(i.segs): i.kind for i in items}
    assert kinds["a/fifo"] == "special" and kinds["a/link"] == "symlink"
    assert kinds[".se-upload-x"] == "temp" and kinds["c/d/e/4"] == "file"
    # Resuming after any entry (or a path that is not there) yields exactly what follows.
    for cut in [*segs, ("a", "b"), ("a", "bb"), ("c", "d"), ("0",), ("zz",)]:
        assert [i.segs for i in walk(str(tmp_path), after=cut)] == [s for s in segs if s > cut]


def result(path: str, kind: str = "computed", size: int = 1) -> Result:
    return Result(
        path, kind, size=size, share="default", hashed=True, read=size, algorithms=["adler32"]
    )


def test_journal_round_trip(tmp_path: Path) -> None:
    j = Journal(tmp_path / "scan", "k")
    assert j.load() is None
    j.open_log()
    tally = Tally()
    tally.add(result("/a"))
    j.checkpoint(("a",), tally, [result("/c")])
    j.append(result("/a"))  # at or before the checkpoint: ignored on load
    j.append(result("/d", "mismatch"))
    j.flush()
    j.close()
    with j.log_path.open("ab") as fh:
        fh.write(b'{"path": "/e", "ki')  # cut by a kill
    loaded = j.load()
    assert loaded is not None
    watermark, t, done = loaded
    assert watermark == ("a",) and t.files == 1 and t.computed == 1
    assert sorted(done) == [("c",), ("d",)] and done[("d",)].kind == "mismatch"
    j.clear()
    assert j.load() is None


def test_journal_is_held_by_one_scan(tmp_path: Path) -> None:
    first = Journal(tmp_path, "k")
    first.open_log()
    assert first.load() is None  # an empty log is no earlier run
    second = Journal(tmp_path, "k")
    with pytest.raises(BlockingIOError):
        second.open_log()
    first.close()
    second.open_log()
    second.clear()


def test_tally_bounded_lists() -> None:
    t = Tally()
    for i in range(LIST_LIMIT + 5):
        t.add(Result(f"/e{i}", "error", size=3, share="s", detail="Permission denied"))
        t.add(Result(f"/l{i}", "symlink"))
    assert t.errors == LIST_LIMIT + 5 and len(t.error_paths) == LIST_LIMIT
    assert t.files == LIST_LIMIT + 5 and t.bytes == 3 * (LIST_LIMIT + 5)
    assert t.skipped == {"symlink": LIST_LIMIT + 5} and len(t.skipped_paths) == LIST_LIMIT
    assert Tally.from_json(t.to_json()) == t
