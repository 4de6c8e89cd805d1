"""``se scan`` run as a subprocess on trees made here: XRootD's checksum xattrs (made by a real
``xrdadler32`` when installed) kept, stale and missing ones computed and then served by a real
``se``, ``--verify`` and ``--fix``, the entries it must not open, resuming after SIGTERM and
SIGKILL, the progress lines and the JSON summary.  File mtimes never change."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pty
import random
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from se.config import load_file
from se.space.accounting import Accounting
from se.storage import xattrs
from tests.support import SEProcess

SE = [sys.executable, "-m", "se"]
# Fields that depend on the run, not on the tree.
RUN_FIELDS = ("root", "elapsed", "mb_per_s", "files_per_s", "resumed", "journal")


def scan(
    root: Path, *args: str, timeout: float = 120, drop_read: bool = False
) -> tuple[dict[str, Any] | None, int, str]:
    """Run ``se scan --root root args``; (summary or None, exit status, stderr)."""
    cmd = [*SE, "scan", "--root", str(root), *args]
    if drop_read and os.geteuid() == 0:  # root reads anything: without these, it does not
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert "Traceback" not in p.stderr, p.stderr
    return (json.loads(p.stdout) if p.stdout.strip() else None), p.returncode, p.stderr


def own_attrs(path: Path) -> dict[str, bytes]:
    return {n: os.getxattr(path, n) for n in os.listxattr(path) if n.startswith("user.")}


def mtimes(root: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".se-")]
        for name in filenames:
            p = Path(dirpath, name)
            if not p.is_symlink() and p.is_file():
                out[str(p.relative_to(root))] = p.stat().st_mtime_ns
    return out


def adler(path: Path) -> str:
    return f"{zlib.adler32(path.read_bytes()) & 0xFFFFFFFF:08x}"


def write_random(path: Path, size: int, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rng.randbytes(size))


def want_digest(srv: SEProcess, path: str) -> str:
    u = urlsplit(srv.url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Want-Digest": "adler32"})
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200, r.status
        assert len(body) == int(r.getheader("Content-Length") or -1)
        return r.getheader("Digest") or ""
    finally:
        conn.close()


def xrootd_mark(path: Path) -> None:
    """Give ``path`` a user.XrdCks.adler32 as XRootD would: by its own xrdadler32 when
    installed, else the documented 96-byte layout."""
    if shutil.which("xrdadler32"):
        out = subprocess.run(
            ["xrdadler32", str(path)], capture_output=True, text=True, timeout=60, check=True
        )
        assert out.stdout.split()[0] == adler(path)
    else:
        raw = bytes.fromhex(adler(path))
        os.setxattr(
            path,
            "user.XrdCks.adler32",
            xattrs.pack_xrdcks("adler32", raw, path.stat().st_mtime_ns),
        )
    assert "user.XrdCks.adler32" in os.listxattr(path)


def test_adopt_keeps_xrootd_computes_missing_and_stale(
    tmp_path: Path, se_factory: Callable[..., SEProcess]
) -> None:
    root = tmp_path / "tree"
    rng = random.Random(15)
    kept = [f"xrd/k{i}" for i in range(4)]
    stale = ["xrd/stale"]
    missing = ["plain/m0", "plain/sub/m1", "m2", "empty"]
    for i, rel in enumerate(kept + stale + missing):
        write_random(root / rel, 0 if rel == "empty" else 1000 + 70_000 * i, rng)
    for rel in kept + stale:
        xrootd_mark(root / rel)
    before_xrd = {rel: os.getxattr(root / rel, "user.XrdCks.adler32") for rel in kept}
    st = (root / "xrd/stale").stat()  # rewritten later by another system: mtime moved on
    os.utime(root / "xrd/stale", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    before = mtimes(root)

    dry, status, err = scan(root, "--dry-run")
    assert status == 0, err
    assert dry is not None and dry["dry_run"] and dry["computed"] == 5 and dry["kept"] == 4
    assert {w["path"] for w in dry["would_store"]} == {"/" + r for r in stale + missing}
    assert not any(n.startswith("user.se.") for n in own_attrs(root / "m2"))
    assert not (root / ".se-state").exists()  # a dry run writes nothing, not even a journal

    summary, status, err = scan(root, "--jobs", "3")
    assert status == 0, err
    assert summary is not None
    assert summary["files"] == 9 and summary["kept"] == 4 and summary["computed"] == 5
    assert summary["stale"] == 1 and summary["mismatched"] == 0 and summary["errors"] == 0
    assert summary["bytes"] == sum((root / r).stat().st_size for r in kept + stale + missing)
    assert summary["shares"] == {"default": {"files": 9, "bytes": summary["bytes"]}}
    assert summary["read_files"] == 5 and summary["mode"] == "backfill"
    assert summary["journal"] and not Path(summary["journal"]).exists()  # cleared when done
    assert mtimes(root) == before
    for rel in kept:  # XRootD's own entries kept as they were, nothing added
        attrs = own_attrs(root / rel)
        assert attrs["user.XrdCks.adler32"] == before_xrd[rel]
        assert "user.se.checksum.adler32" not in attrs
    for rel in stale + missing:
        attrs = own_attrs(root / rel)
        value = attrs["user.se.checksum.adler32"].decode()
        assert value.split(";")[0] == adler(root / rel)
        assert "user.XrdCks.adler32" in attrs  # checksums.write_xrootd (default true)
        if shutil.which("xrdadler32"):  # XRootD reads what se wrote
            out = subprocess.run(
                ["xrdadler32", str(root / rel)], capture_output=True, text=True, timeout=60
            )
            assert out.stdout.split()[0] == adler(root / rel)

    again, status, _ = scan(root)
    assert status == 0 and again is not None
    assert again["kept"] == 9 and again["computed"] == 0 and again["read_files"] == 0

    srv = se_factory(root=root)
    for rel in kept + stale + missing:
        assert want_digest(srv, "/" + rel) == f"adler32={adler(root / rel)}"
    assert mtimes(root) == before


def test_verify_reports_corruption_and_fix_replaces(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    rng = random.Random(7)
    for i in range(5):
        write_random(root / f"d/f{i}", 50_000 + i, rng)
    xrootd_mark(root / "d/f4")
    assert scan(root)[1] == 0
    bad = root / "d/f2"
    recorded = os.getxattr(bad, "user.se.checksum.adler32")
    st = bad.stat()
    with bad.open("r+b") as fh:  # silent corruption: same size, mtime put back
        fh.seek(1000)
        fh.write(b"\xff\x00\xff")
    os.utime(bad, ns=(st.st_atime_ns, st.st_mtime_ns))
    rotten = root / "d/f4"  # XRootD's entry too
    st4 = rotten.stat()
    with rotten.open("r+b") as fh:
        fh.write(b"rot")
    os.utime(rotten, ns=(st4.st_atime_ns, st4.st_mtime_ns))
    before = mtimes(root)

    backfill, status, _ = scan(root)
    assert status == 0 and backfill is not None and backfill["kept"] == 5  # not read

    summary, status, err = scan(root, "--verify")
    assert status == 1, err
    assert summary is not None and summary["mismatched"] == 2 and summary["read_files"] == 5
    found = {(m["path"], m["source"]) for m in summary["mismatches"]}
    assert ("/d/f2", "se") in found and ("/d/f4", "xrootd") in found
    m = next(m for m in summary["mismatches"] if m["path"] == "/d/f2")
    assert m["recorded"] == recorded.decode().split(";")[0] and m["computed"] == adler(bad)
    assert os.getxattr(bad, "user.se.checksum.adler32") == recorded  # never overwritten

    fixed, status, err = scan(root, "--verify", "--fix")
    assert status == 1, err  # the mismatches are still reported ...
    assert fixed is not None and fixed["fixed"] == 2
    clean, status, _ = scan(root, "--verify")  # ... and gone afterwards
    assert status == 0 and clean is not None and clean["mismatched"] == 0
    assert os.getxattr(bad, "user.se.checksum.adler32").decode().startswith(adler(bad))
    assert mtimes(root) == before

    _, status, err = scan(root, "--fix")
    assert status == 2 and "--fix" in err


def test_entries_it_must_not_open(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    rng = random.Random(3)
    write_random(root / "ok", 10_000, rng)
    outside = tmp_path / "outside"
    write_random(outside, 10_000, rng)
    (root / "link").symlink_to(outside)
    (root / "dirlink").symlink_to(tmp_path)
    os.mkfifo(root / "fifo")
    secret = root / "sub" / "secret"
    write_random(secret, 10_000, rng)
    secret.chmod(0)
    locked = root / "locked"
    locked.mkdir()
    write_random(locked / "hidden", 10, rng)
    locked.chmod(0)
    write_random(root / ".se-upload-x-0123", 10, rng)  # an upload in flight
    write_random(root / ".se-state" / "tape.sqlite", 10, rng)
    try:
        summary, status, err = scan(root, timeout=60, drop_read=True)
    finally:
        locked.chmod(0o755)
    assert status == 4, err
    assert summary is not None
    assert summary["files"] == 2 and summary["computed"] == 1 and summary["errors"] == 2
    assert summary["bytes"] == 20_000  # the unreadable file takes space too
    assert {e["path"] for e in summary["error_paths"]} == {"/sub/secret", "/locked"}
    assert all(e["error"] == "Permission denied" for e in summary["error_paths"])
    assert summary["skipped"] == {"reserved": 1, "special": 1, "symlink": 2, "temp": 1}
    kinds = {s["path"]: s["kind"] for s in summary["skipped_paths"]}
    assert kinds["/fifo"] == "special" and kinds["/link"] == "symlink"
    assert not any(n.startswith("user.se.") for n in own_attrs(outside))


def comparable(summary: dict[str, Any] | None) -> dict[str, Any]:
    assert summary is not None
    return {k: v for k, v in summary.items() if k not in RUN_FIELDS}


def make_mixed_tree(root: Path) -> None:
    rng = random.Random(42)
    for i in range(40):
        write_random(root / f"d{i % 4}" / f"f{i:02d}", 200_000 + i, rng)
    for i in range(0, 40, 5):
        xrootd_mark(root / f"d{i % 4}" / f"f{i:02d}")
    (root / "d1" / "link").symlink_to("/etc/hostname")


def start_scan(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*SE, "scan", "--root", str(root), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def lines_until_progress(proc: subprocess.Popen[str], timeout: float = 60) -> list[str]:
    """stderr lines up to the first progress line that shows files done."""
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("se scan: ") and not line.startswith("se scan: 0/"):
            return lines
    raise AssertionError(f"no progress: {lines}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_interrupted_scan_resumes_to_the_same_summary(tmp_path: Path, sig: int) -> None:
    whole = tmp_path / "whole"
    make_mixed_tree(whole)
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut, symlinks=True)  # copies the xattrs and the mtimes
    before = mtimes(cut)
    reference, status, err = scan(whole)
    assert status == 0 and reference is not None, err

    # 8 MB at 2 MB/s: a few seconds, interrupted after its first progress line with files.
    proc = start_scan(cut, "--jobs", "1", "--max-rate", "2", "--progress-every", "0.2")
    try:
        lines = lines_until_progress(proc)
        proc.send_signal(sig)
        out, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == (128 + sig if sig == signal.SIGTERM else -sig), rest
    assert out == ""  # no summary for an unfinished scan
    if sig == signal.SIGTERM:
        assert "interrupted after" in rest and "the same command continues" in rest
    journals = list((cut / ".se-state" / "scan").iterdir())
    assert journals, "no journal"
    progress = [ln for ln in lines if ln.startswith("se scan: ")]
    assert "files/s" in progress[-1] and "MB/s" in progress[-1] and "ETA" in progress[-1]

    resumed, status, err = scan(cut, "--progress-every", "0.2")
    assert status == 0, err
    assert resumed is not None and resumed["resumed"] and "resuming after" in err
    if sig == signal.SIGTERM:
        assert comparable(resumed) == comparable(reference)
    else:  # a file finished in the instant of the kill may count as kept, not computed
        for key in ("files", "bytes", "shares", "mismatched", "errors", "skipped"):
            assert resumed[key] == reference[key], key
        assert resumed["kept"] + resumed["computed"] == reference["kept"] + reference["computed"]
    assert list((cut / ".se-state" / "scan").iterdir()) == []  # cleared when complete
    assert mtimes(cut) == before
    # Every file has its checksum now, as in the tree scanned in one go.
    for rel in before:
        st = (cut / rel).stat()
        found = xattrs.read_checksums(str(cut / rel), st.st_size, st.st_mtime_ns)
        assert found["adler32"].hex() == adler(cut / rel), rel
    last, status, _ = scan(cut)
    assert status == 0 and last is not None and last["kept"] == 40


def test_shares_accounting_and_lines(tmp_path: Path, se_factory: Callable[..., SEProcess]) -> None:
    root = tmp_path / "tree"
    rng = random.Random(5)
    for rel in ("atlas/a1", "atlas/a2", "atlas/tape/t1", "cms/c1", "other"):
        write_random(root / rel, 3000, rng)
    cfg = tmp_path / "se.toml"
    cfg.write_text(
        f'[storage]\nroot = "{root}"\n'
        '[[shares]]\nname = "atlas"\npaths = ["/atlas"]\n'
        '[[shares]]\nname = "atlas-tape"\npaths = ["/atlas/tape"]\n'
        '[[shares]]\nname = "cms"\npaths = ["/cms"]\n'
    )
    p = subprocess.run(
        [*SE, "scan", "--config", str(cfg), "--share", "atlas", "--progress-every", "0.05"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["files"] == 2 and summary["shares"] == {"atlas": {"files": 2, "bytes": 6000}}
    assert "user.se.checksum.adler32" not in own_attrs(root / "atlas/tape/t1")
    assert p.stderr.splitlines()[-1].startswith("se scan: 2/2 files")

    everything, status, _ = scan(root, "--config", str(cfg))
    assert status == 0 and everything is not None
    assert everything["files"] == 5 and everything["kept"] == 2
    assert everything["shares"] == {
        "atlas": {"files": 2, "bytes": 6000},
        "atlas-tape": {"files": 1, "bytes": 3000},
        "cms": {"files": 1, "bytes": 3000},
    }
    assert everything["accounting"] == {"updated": True, "shares": ["atlas", "atlas-tape", "cms"]}
    _, status, err = scan(root, "--config", str(cfg), "--share", "lhcb")
    assert status == 2 and "no share named 'lhcb'" in err

    # The totals are in the space accounting (as a reconciliation sets them), before any
    # server ran on the tree; a server started on it then reports them in SRR.
    acc = Accounting.open(load_file(str(cfg)))
    try:
        usage = acc.all_usage()
    finally:
        acc.close()
    assert {n: (u.bytes, u.files) for n, u in usage.items()} == {
        "atlas": (6000, 2),
        "atlas-tape": (3000, 1),
        "cms": (3000, 1),
    }
    assert all(u.reconciled > 0 for u in usage.values())
    srv = se_factory(config=cfg.read_text(), root=root)
    u = urlsplit(srv.url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=30)
    try:
        conn.request("GET", "/.well-known/se/srr")
        r = conn.getresponse()
        srr = json.loads(r.read())
    finally:
        conn.close()
    shares = {sh["name"]: sh for sh in srr["storageservice"]["storageshares"]}
    assert shares["atlas"]["usedsize"] == 6000 and shares["atlas"]["numberoffiles"] == 2


def holds_open(pid: int, path: Path, timeout: float = 30) -> bool:
    """Wait until process ``pid`` has ``path`` open (its /proc/<pid>/fd)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                        return True
        time.sleep(0.02)
    return False


def test_file_changed_while_read_gets_no_checksum(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    growing = root / "growing"
    write_random(growing, 1_000_000, random.Random(1))
    # Read at 0.25 MB/s: the scan holds the file for about 4 s, and it grows meanwhile.
    proc = start_scan(root, "--jobs", "1", "--max-rate", "0.25", "--progress-every", "0.1")
    try:
        assert holds_open(proc.pid, growing), "the scan never opened the file"
        time.sleep(0.3)  # (its size and mtime are taken right after the open)
        with growing.open("ab") as fh:
            fh.write(b"appended by another writer")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 4, err
    summary = json.loads(out)
    assert summary["changed"] == 1 and summary["changed_paths"] == ["/growing"]
    assert summary["computed"] == 0 and summary["files"] == 1
    assert not any(n.startswith("user.se.") for n in own_attrs(growing))
    again, status, _ = scan(root)
    assert status == 0 and again is not None and again["computed"] == 1


def test_live_bar_on_a_terminal(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    rng = random.Random(9)
    for i in range(20):
        write_random(root / f"f{i}", 100_000, rng)
    leader, follower = pty.openpty()
    try:
        p = subprocess.Popen(
            [*SE, "scan", "--root", str(root), "--max-rate", "2"],
            stdout=subprocess.PIPE,
            stderr=follower,
            env={**os.environ, "COLUMNS": "160", "TERM": "xterm"},
        )
        os.close(follower)
        out, _ = p.communicate(timeout=60)
        screen = b""
        with contextlib.suppress(OSError):  # EIO once the child is gone and all was read
            while chunk := os.read(leader, 65536):
                screen += chunk
    finally:
        os.close(leader)
    assert p.returncode == 0
    assert json.loads(out)["computed"] == 20  # stdout stays the JSON summary
    text = screen.decode(errors="replace")
    assert "se scan" in text and "files/s" in text and "MB/s" in text and "ETA" in text
    assert "20/20 files" in text and "computed 20" in text
