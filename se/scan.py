"""``se scan``: adopt a tree that another system wrote (a DPM disk node, XRootD, a plain file
server) in place, with its checksums, without copying a byte.

What it does with each regular file below the root (or below one share's paths):

* reads the checksum xattrs already there, ``se``'s own ``user.se.checksum.<alg>`` and
  XRootD's ``user.XrdCks.<alg>`` (se.storage.xattrs has both formats).  One is *fresh* when it
  was computed for the file as it is now: ours record size and mtime (ns), XRootD's the mtime
  in seconds (and an XRootD entry whose algorithm also has a stale entry of ours is stale: it
  was written with it);
* ``--backfill`` (the default) keeps the fresh ones without reading the file and computes
  what is missing or stale (adler32 and ``checksums.algorithms``), storing it as the server
  does (ours, and XRootD's when ``checksums.write_xrootd``).  Two fresh entries that disagree
  (ours and XRootD's) make it read the file and report the wrong one as a mismatch;
* ``--verify`` reads every file, recomputes every wanted algorithm and every algorithm with a
  fresh entry, and reports each entry that disagrees.  It still stores what is missing; an
  entry that disagrees is never overwritten unless ``--fix`` is given too (then it is
  replaced, XRootD's included, and counted as fixed);
* ``--dry-run`` writes nothing at all (no xattr, no journal, no accounting): the summary says
  what would have been done.

Files are opened ``O_NOFOLLOW | O_NONBLOCK`` (and ``O_NOATIME`` where the kernel allows it),
read sequentially into one fixed buffer per job (``posix_fadvise`` SEQUENTIAL, then DONTNEED
so a scan does not flush the server's page cache) and never written: setting an xattr
changes the ctime, never the mtime.  A file whose size or mtime differs after the read from
before it is reported as *changed* and gets no checksum.  Symbolic links are never followed,
FIFOs, sockets and devices never opened (a FIFO would block), ``se``'s reserved names
(``.se-*``: upload temp files, ``.se-state``) and the configured state directory skipped.
Files go to the jobs in batches (64 files or 16 MiB), so that small files cost few thread
hand-overs; their results come back one by one.  Memory: a buffer per job, a bounded number
of batches in flight, and the sorted listings of the directories along the current path.

Resuming: the walk is depth-first in name order, so "every entry up to this path" is a
complete description of the work done.  A journal in ``<state_dir>/scan/`` (``scan-<key>.json``,
a checkpoint of the totals up to the last path finished in order, written every second
and on SIGINT/SIGTERM, plus ``scan-<key>.log``, one line per file finished since) lets the
same command, started again, continue where it stopped with the totals of the whole scan.
The key is a hash of the root, the share, the mode and the algorithms; the log is locked
(one scan per key at a time); a completed scan removes its journal.  After a SIGKILL, a file
finished in the instant of the kill may be counted as kept instead of computed.

Accounting: a complete scan (not a dry run) sets each scanned share's files and bytes (every
regular file found, readable or not) as its totals in the space accounting (se.space, as a
reconciliation does; skipped when ``space.enabled`` is false).

Progress goes to stderr: a live bar on a terminal (rich), else one line every
``--progress-every`` seconds.  The JSON summary goes to stdout at the end.  Exit status: 0 all
files have their checksums; 1 mismatches; 4 files that could not be checksummed (unreadable,
or changed while read); 5 both; 2 bad usage or configuration; 128+signal when interrupted
(the journal is kept).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import queue
import signal
import stat as stat_mod
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from se.config import Config, checksum_algorithms, state_dir
from se.space.shares import ShareMap
from se.storage import checksums, xattrs
from se.storage.paths import RESERVED_PREFIX, TEMP_PREFIX, DavPath

__all__ = [
    "EXIT_ERRORS",
    "EXIT_MISMATCH",
    "Plan",
    "Record",
    "Result",
    "ScanOptions",
    "Tally",
    "Verdict",
    "judge",
    "make_plan",
    "records_from",
    "run_scan",
    "walk",
]

EXIT_MISMATCH = 1
EXIT_ERRORS = 4
# Paths kept in each list of the summary (the counts are always complete).
LIST_LIMIT = 100
CHECKPOINT_EVERY = 1.0  # seconds
# Files handed to a job at once: up to this many, or this many bytes.
BATCH_FILES = 64
BATCH_BYTES = 16 * 1024 * 1024
_NOATIME = getattr(os, "O_NOATIME", 0)
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NO_XATTRS = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)
# Kinds of Result: the first five are regular files, counted in files/bytes and shares.
FILE_KINDS = ("kept", "computed", "mismatch", "changed", "error")
SKIP_KINDS = ("symlink", "special", "temp", "reserved", "state", "vanished")


# --------------------------------------------------------------------------- decisions (pure)


@dataclass(frozen=True, slots=True)
class Record:
    """One checksum xattr of a file."""

    source: str  # "se" (user.se.checksum.<alg>) or "xrootd" (user.XrdCks.<alg>)
    algorithm: str  # canonical name
    digest: bytes  # empty when the entry is malformed
    fresh: bool  # computed for the file as it is now


def records_from(attrs: Mapping[str, bytes], size: int, mtime_ns: int) -> list[Record]:
    """The checksum entries among a file's xattrs (name -> value), judged against the
    file's size and mtime.  Entries of algorithms se does not know are ignored."""
    out: list[Record] = []
    own_stale: set[str] = set()
    for name, raw in sorted(attrs.items()):
        if not name.startswith(xattrs.CKS_PREFIX):
            continue
        alg = checksums.canonical_algorithm(name[len(xattrs.CKS_PREFIX) :])
        if alg is None:
            continue
        own = xattrs.parse_own(raw)
        if own is None or len(own[0]) != checksums.DIGEST_SIZES[alg]:
            own_stale.add(alg)
            out.append(Record("se", alg, b"", False))
            continue
        fresh = own[1:] == (size, mtime_ns)
        if not fresh:
            own_stale.add(alg)
        out.append(Record("se", alg, own[0], fresh))
    for name, raw in sorted(attrs.items()):
        if not name.startswith(xattrs.XRD_PREFIX):
            continue
        alg = checksums.canonical_algorithm(name[len(xattrs.XRD_PREFIX) :])
        if alg is None:
            continue
        xrd = xattrs.parse_xrdcks(raw)
        if xrd is None or len(xrd[2]) != checksums.DIGEST_SIZES[alg]:
            out.append(Record("xrootd", alg, b"", False))
            continue
        fresh = xrd[1] == mtime_ns // 1_000_000_000 and alg not in own_stale
        out.append(Record("xrootd", alg, xrd[2], fresh))
    return out


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with one file, before reading it."""

    compute: tuple[str, ...]  # algorithms to compute (empty: the file is not read)
    missing: tuple[str, ...]  # wanted algorithms without a fresh entry: stored once computed
    check: tuple[Record, ...]  # fresh entries to compare with what is computed
    stale: bool  # a missing algorithm had an entry, stale or malformed


def make_plan(records: Sequence[Record], wanted: Sequence[str], verify: bool) -> Plan:
    fresh: dict[str, list[Record]] = {}
    for r in records:
        if r.fresh:
            fresh.setdefault(r.algorithm, []).append(r)
    missing = tuple(a for a in wanted if a not in fresh)
    stale = any(r.algorithm in missing for r in records)
    if verify:
        compute = (*wanted, *sorted(a for a in fresh if a not in wanted))
        check = tuple(r for r in records if r.fresh)
    else:
        conflicting = sorted(a for a, rs in fresh.items() if len({r.digest for r in rs}) > 1)
        compute = (*missing, *conflicting)
        check = tuple(r for r in records if r.fresh and r.algorithm in conflicting)
    return Plan(tuple(compute), missing, check, stale)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What was found once the file was read."""

    kind: str  # "kept", "computed" or "mismatch"
    write: dict[str, bytes]  # digests to store
    mismatches: tuple[tuple[Record, bytes], ...]  # (entry, computed digest)
    xrootd: bool  # also (re)write XRootD's entries (--fix of a wrong XRootD entry)


def judge(plan: Plan, computed: Mapping[str, bytes], fix: bool) -> Verdict:
    mismatches = tuple(
        (r, computed[r.algorithm]) for r in plan.check if r.digest != computed[r.algorithm]
    )
    write = {a: computed[a] for a in plan.missing}
    if fix:
        for r, good in mismatches:
            write[r.algorithm] = good
    xrootd = fix and any(r.source == "xrootd" for r, _ in mismatches)
    kind = "mismatch" if mismatches else "computed" if plan.missing else "kept"
    return Verdict(kind, write, mismatches, xrootd)


# --------------------------------------------------------------------------- walk


@dataclass(frozen=True, slots=True)
class Item:
    segs: tuple[str, ...]
    fs: str
    kind: str  # "file", "error" (a directory that cannot be listed) or a SKIP_KINDS name
    detail: str = ""


def _passed(segs: tuple[str, ...], is_dir: bool, after: tuple[str, ...] | None) -> bool:
    """Whether the whole of ``segs`` (its subtree for a directory) comes at or before the
    resume point in the walk's order (name order, depth first: tuple order)."""
    if after is None:
        return False
    if is_dir and after[: len(segs)] == segs:
        return False  # the resume point is inside: descend
    return segs <= after


def walk(
    root: str,
    tops: Sequence[tuple[str, ...]] = ((),),
    after: tuple[str, ...] | None = None,
    skip_dirs: frozenset[tuple[int, int]] = frozenset(),
) -> Iterator[Item]:
    """Every entry below ``root``/``top`` (never following a symlink), depth first in name
    order, starting after ``after``; directories themselves are not yielded."""
    for top in tops:
        fs = os.path.join(root, *top)
        try:
            st = os.lstat(fs)
        except FileNotFoundError:
            continue
        except OSError as exc:
            yield Item(top, fs, "error", exc.strerror or str(exc))
            continue
        is_dir = stat_mod.S_ISDIR(st.st_mode)
        if _passed(top, is_dir, after):
            continue
        if not is_dir:
            if top:
                yield Item(top, fs, _kind_of_mode(st.st_mode))
            continue
        # (segments, fs path, kind), the next to visit last.
        stack: list[tuple[tuple[str, ...], str, str]] = [(top, fs, "dir")]
        while stack:
            segs, path, kind = stack.pop()
            if kind != "dir":
                yield _item(segs, path, kind)
                continue
            try:
                with os.scandir(path) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                yield Item(segs, path, "error", exc.strerror or str(exc))
                continue
            children: list[tuple[tuple[str, ...], str, str]] = []
            for e in entries:
                csegs = (*segs, e.name)
                try:
                    kind = _kind_of_entry(e, skip_dirs)
                except OSError as exc:
                    kind = "error:" + (exc.strerror or str(exc))
                if not _passed(csegs, kind == "dir", after):
                    children.append((csegs, e.path, kind))
            stack.extend(reversed(children))


def _item(segs: tuple[str, ...], path: str, kind: str) -> Item:
    if kind.startswith("error:"):
        return Item(segs, path, "error", kind[6:])
    return Item(segs, path, kind)


def _kind_of_entry(e: os.DirEntry[str], skip_dirs: frozenset[tuple[int, int]]) -> str:
    if e.name.startswith(TEMP_PREFIX):
        return "temp"
    if e.name.startswith(RESERVED_PREFIX):
        return "reserved"
    if e.is_symlink():
        return "symlink"
    if e.is_dir(follow_symlinks=False):
        if skip_dirs:
            st = e.stat(follow_symlinks=False)
            if (st.st_dev, st.st_ino) in skip_dirs:
                return "state"
        return "dir"
    if e.is_file(follow_symlinks=False):
        return "file"
    return "special"


def _kind_of_mode(mode: int) -> str:
    if stat_mod.S_ISREG(mode):
        return "file"
    if stat_mod.S_ISLNK(mode):
        return "symlink"
    return "special"


# --------------------------------------------------------------------------- one file


@dataclass(slots=True)
class Result:
    """What became of one entry; a line of the journal."""

    path: str  # "/a/b", below the root
    kind: str  # one of FILE_KINDS or SKIP_KINDS, or "direrror" (a directory not listed)
    size: int = 0
    share: str | None = None
    hashed: bool = False  # the file was read
    read: int = 0  # bytes hashed
    stale: bool = False  # stale or malformed entries were replaced
    fixed: bool = False  # --fix replaced entries that disagreed
    algorithms: list[str] = field(default_factory=list)  # stored (or, dry run, to store)
    detail: str = ""  # the error
    mismatches: list[dict[str, str]] = field(default_factory=list)

    @property
    def is_file(self) -> bool:
        return self.kind in FILE_KINDS

    @property
    def segs(self) -> tuple[str, ...]:
        return tuple(self.path[1:].split("/"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "kind": self.kind}
        for name in _RESULT_FIELDS:
            value = getattr(self, name)
            if value:
                out[name] = value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Result:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


_RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(Result) if f.name not in ("path", "kind"))


class Stopped(Exception):
    """The scan was told to stop while this file was being read."""


class Limiter:
    """Bytes per second shared by every job (``--max-rate``); waits end early on stop."""

    def __init__(self, rate: float, stop: threading.Event) -> None:
        self.rate = rate
        self._stop = stop
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._next = max(self._next, now) + n / self.rate
            wait = self._next - now - 0.05  # a little burst
        if wait > 0:
            self._stop.wait(wait)


@dataclass(frozen=True, slots=True)
class FileJob:
    """What every job needs to check a file."""

    wanted: tuple[str, ...]
    verify: bool
    fix: bool
    dry_run: bool
    write_xrootd: bool
    chunk: int
    stop: threading.Event
    limiter: Limiter | None


_local = threading.local()


def _buffer(size: int) -> memoryview:
    buf: memoryview | None = getattr(_local, "buf", None)
    if buf is None or len(buf) != size:
        buf = memoryview(bytearray(size))
        _local.buf = buf
    return buf


def _read_attrs(fd: int) -> dict[str, bytes]:
    try:
        names = os.listxattr(fd)
    except OSError as exc:
        if exc.errno in _NO_XATTRS:
            return {}
        raise
    out: dict[str, bytes] = {}
    for name in names:
        if name.startswith((xattrs.CKS_PREFIX, xattrs.XRD_PREFIX)):
            try:
                out[name] = os.getxattr(fd, name)
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    raise
    return out


def _hash(fd: int, algs: Sequence[str], job: FileJob) -> tuple[dict[str, bytes], int]:
    hasher = checksums.MultiHasher(algs)
    buf = _buffer(job.chunk)
    total = 0
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    while True:
        if job.stop.is_set():
            raise Stopped
        n = os.readv(fd, [buf])
        if n == 0:
            break
        hasher.update(buf[:n])
        total += n
        if job.limiter is not None:
            job.limiter.take(n)
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return hasher.digests(), total


def _open(fs: str) -> int:
    if _NOATIME:
        try:
            return os.open(fs, _OPEN_FLAGS | _NOATIME)
        except PermissionError:  # O_NOATIME needs the owner (or CAP_FOWNER)
            pass
    return os.open(fs, _OPEN_FLAGS)


def check_file(item: Item, path: str, share: str | None, job: FileJob) -> Result | None:
    """Check (and complete) the checksums of one regular file; None when stopped midway."""
    try:
        fd = _open(item.fs)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return Result(path, "vanished")
        if exc.errno == errno.ELOOP:  # replaced by a symlink since it was listed
            return Result(path, "symlink")
        try:  # it still takes space
            size = os.lstat(item.fs).st_size
        except OSError:
            size = 0
        return Result(path, "error", size=size, share=share, detail=_reason(exc))
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            return Result(path, "special")
        size, mtime_ns = st.st_size, st.st_mtime_ns
        res = Result(path, "kept", size=size, share=share)
        try:
            records = records_from(_read_attrs(fd), size, mtime_ns)
            plan = make_plan(records, job.wanted, job.verify)
            if not plan.compute:
                return res
            digests, nread = _hash(fd, plan.compute, job)
            res.hashed, res.read = True, nread
            after = os.fstat(fd)
        except OSError as exc:
            res.kind, res.detail = "error", _reason(exc)
            return res
        if (after.st_size, after.st_mtime_ns) != (size, mtime_ns) or nread != size:
            res.kind, res.detail = "changed", "size or mtime changed while it was read"
            return res
        verdict = judge(plan, digests, job.fix)
        res.kind = verdict.kind
        res.stale = plan.stale
        res.fixed = job.fix and bool(verdict.mismatches)
        res.algorithms = sorted(verdict.write)
        res.mismatches = [
            {
                "path": path,
                "algorithm": r.algorithm,
                "source": r.source,
                "recorded": r.digest.hex(),
                "computed": good.hex(),
            }
            for r, good in verdict.mismatches
        ]
        if verdict.write and not job.dry_run:
            try:
                stored = xattrs.write_checksums(
                    fd, verdict.write, size, mtime_ns, job.write_xrootd or verdict.xrootd
                )
            except OSError as exc:
                stored, res.detail = False, _reason(exc)
            if not stored:
                res.kind = "error"
                res.detail = "cannot store checksums in xattrs" + (
                    f": {res.detail}" if res.detail else " (no room, or not supported)"
                )
        return res
    except Stopped:
        return None
    finally:
        os.close(fd)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


# --------------------------------------------------------------------------- totals


@dataclass(slots=True)
class Tally:
    """The totals of a scan, over every run of it."""

    files: int = 0
    bytes: int = 0
    shares: dict[str, list[int]] = field(default_factory=dict)  # name -> [files, bytes]
    kept: int = 0
    computed: int = 0
    mismatched: int = 0
    changed: int = 0
    errors: int = 0
    stale: int = 0
    fixed: int = 0
    read_files: int = 0
    read_bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    mismatches: list[dict[str, str]] = field(default_factory=list)
    error_paths: list[dict[str, str]] = field(default_factory=list)
    changed_paths: list[str] = field(default_factory=list)
    skipped_paths: list[dict[str, str]] = field(default_factory=list)
    would_store: list[dict[str, Any]] = field(default_factory=list)  # dry run
    elapsed: float = 0.0  # seconds, earlier runs of this scan

    def add(self, r: Result) -> None:
        if r.is_file:
            self.files += 1
            self.bytes += r.size
            if r.share is not None:
                cur = self.shares.setdefault(r.share, [0, 0])
                cur[0] += 1
                cur[1] += r.size
        if r.hashed:
            self.read_files += 1
            self.read_bytes += r.read
        self.stale += r.stale
        self.fixed += r.fixed
        if r.kind == "kept":
            self.kept += 1
        elif r.kind == "computed":
            self.computed += 1
        elif r.kind == "mismatch":
            self.mismatched += 1
            room = LIST_LIMIT - len(self.mismatches)
            self.mismatches.extend(r.mismatches[: max(0, room)])
        elif r.kind == "changed":
            self.changed += 1
            if len(self.changed_paths) < LIST_LIMIT:
                self.changed_paths.append(r.path)
        elif r.kind in ("error", "direrror"):
            self.errors += 1
            if len(self.error_paths) < LIST_LIMIT:
                self.error_paths.append({"path": r.path, "error": r.detail})
        else:
            self.skipped[r.kind] = self.skipped.get(r.kind, 0) + 1
            if len(self.skipped_paths) < LIST_LIMIT:
                self.skipped_paths.append({"path": r.path, "kind": r.kind})
        if r.algorithms and len(self.would_store) < LIST_LIMIT:
            self.would_store.append({"path": r.path, "algorithms": r.algorithms})

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tally:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# --------------------------------------------------------------------------- journal


class Journal:
    """A scan's progress on disk: ``<key>.json`` (checkpoint: totals up to a path of the
    walk, the entries finished beyond it) and ``<key>.log`` (one JSON line per entry
    finished since the checkpoint)."""

    def __init__(self, directory: Path, key: str) -> None:
        self.checkpoint_path = directory / f"scan-{key}.json"
        self.log_path = directory / f"scan-{key}.log"
        self._log_fd: int | None = None
        self._lines: list[str] = []

    def load(self) -> tuple[tuple[str, ...] | None, Tally, dict[tuple[str, ...], Result]] | None:
        """(resume point, totals up to it, entries already finished beyond it), or None."""
        try:
            data = json.loads(self.checkpoint_path.read_text())
        except FileNotFoundError:
            data = None
        except (OSError, ValueError):
            return None
        watermark: tuple[str, ...] | None = None
        tally = Tally()
        done: dict[tuple[str, ...], Result] = {}
        if data is not None:
            if data.get("watermark") is not None:
                watermark = tuple(data["watermark"])
            tally = Tally.from_json(data["tally"])
            for raw in data.get("pending", []):
                r = Result.from_json(raw)
                done[r.segs] = r
        try:
            with self.log_path.open("rb") as fh:
                for line in fh:
                    try:
                        r = Result.from_json(json.loads(line))
                    except (ValueError, TypeError):
                        continue  # a line cut by a kill
                    done[r.segs] = r
        except FileNotFoundError:
            pass
        if data is None and not done:
            return None
        if watermark is not None:
            done = {s: r for s, r in done.items() if s > watermark}
        return watermark, tally, done

    def open_log(self) -> None:
        """Open (and lock) the log; BlockingIOError when another scan holds it."""
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        self._log_fd = fd

    def reset(self) -> None:
        """Forget an earlier run (``--restart``)."""
        self.checkpoint_path.unlink(missing_ok=True)
        if self._log_fd is not None:
            os.ftruncate(self._log_fd, 0)

    def append(self, r: Result) -> None:
        """Note a finished entry (written by :meth:`flush`)."""
        self._lines.append(json.dumps(r.to_json()))

    def flush(self) -> None:
        if self._log_fd is not None and self._lines:
            os.write(self._log_fd, ("\n".join(self._lines) + "\n").encode())
        self._lines.clear()

    def checkpoint(
        self, watermark: tuple[str, ...] | None, tally: Tally, pending: Sequence[Result]
    ) -> None:
        data = {
            "watermark": None if watermark is None else list(watermark),
            "tally": tally.to_json(),
            "pending": [r.to_json() for r in pending],
        }
        tmp = self.checkpoint_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.checkpoint_path)
        self._lines.clear()  # (what they say is in the checkpoint)
        if self._log_fd is not None:
            os.ftruncate(self._log_fd, 0)

    def clear(self) -> None:
        self.close()
        for p in (self.checkpoint_path, self.log_path):
            p.unlink(missing_ok=True)

    def close(self) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None


# --------------------------------------------------------------------------- progress


@dataclass(slots=True)
class Progress:
    """What the progress display shows."""

    live: Tally  # every entry finished so far (all runs), in any order
    started: float  # monotonic, this run
    start_files: int
    start_bytes: int
    start_read: int
    total_files: int | None = None  # None while the counting walk runs
    total_bytes: int | None = None

    def rates(self) -> tuple[float, float, float | None]:
        """(files/s, MB/s read, seconds left or None) over this run."""
        dt = max(time.monotonic() - self.started, 1e-6)
        fps = (self.live.files - self.start_files) / dt
        mbps = (self.live.read_bytes - self.start_read) / dt / 1e6
        eta: float | None = None
        covered = (self.live.bytes - self.start_bytes) / dt
        if self.total_bytes is not None and covered > 0:
            eta = max(0.0, (self.total_bytes - self.live.bytes) / covered)
        return fps, mbps, eta

    def counts(self) -> str:
        t = self.live
        return (
            f"kept {t.kept}, computed {t.computed}, mismatched {t.mismatched}, "
            f"changed {t.changed}, errors {t.errors}"
        )

    def line(self) -> str:
        fps, mbps, eta = self.rates()
        t = self.live
        total = "?" if self.total_files is None else str(self.total_files)
        pct = ""
        if self.total_bytes:
            pct = f" {min(100.0, 100.0 * t.bytes / self.total_bytes):.0f}%"
        gb_total = "?" if self.total_bytes is None else f"{self.total_bytes / 1e9:.2f}"
        return (
            f"se scan: {t.files}/{total} files{pct}, {t.bytes / 1e9:.2f}/{gb_total} GB, "
            f"{fps:.0f} files/s, {mbps:.1f} MB/s, ETA {_hms(eta)}; {self.counts()}"
        )


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class PlainReporter:
    """One line on stderr every ``every`` seconds (not a terminal)."""

    def __init__(self, stream: TextIO, every: float) -> None:
        self.stream = stream
        self.every = every
        self._last = time.monotonic()

    def update(self, p: Progress, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.every:
            self._last = now
            print(p.line(), file=self.stream, flush=True)

    def close(self, p: Progress) -> None:
        self.update(p, force=True)


class BarReporter:
    """rich's live bar on the terminal: bytes covered, files, files/s, MB/s, ETA; the counts
    on a line below."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console, RenderableType
        from rich.progress import BarColumn, TaskProgressColumn, TextColumn
        from rich.progress import Progress as RichProgress
        from rich.text import Text

        class Bar(RichProgress):
            counts = ""

            def get_renderables(self) -> Iterator[RenderableType]:
                yield self.make_tasks_table(self.tasks)
                yield Text(self.counts)

        self._bar = Bar(
            TextColumn("se scan"),
            BarColumn(bar_width=24),
            TaskProgressColumn(),
            TextColumn("{task.description}"),
            console=Console(file=stream),
            refresh_per_second=4,
        )
        self._task = self._bar.add_task("counting...", total=None)
        self._bar.start()
        self._last = 0.0

    def update(self, p: Progress, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.25:
            return
        self._last = now
        fps, mbps, eta = p.rates()
        total = "?" if p.total_files is None else str(p.total_files)
        self._bar.counts = "  " + p.counts()
        self._bar.update(
            self._task,
            total=p.total_bytes,
            completed=p.live.bytes,
            description=(
                f"{p.live.files}/{total} files  {fps:.0f} files/s  {mbps:.1f} MB/s  ETA {_hms(eta)}"
            ),
        )

    def close(self, p: Progress) -> None:
        self.update(p, force=True)
        self._bar.stop()


class Reporter:
    """Nothing shown (``--progress-every 0`` off a terminal)."""

    def update(self, p: Progress, force: bool = False) -> None:
        pass

    def close(self, p: Progress) -> None:
        pass


# --------------------------------------------------------------------------- the scan


@dataclass(frozen=True, slots=True)
class ScanOptions:
    root: str
    shares: ShareMap
    wanted: tuple[str, ...]
    share: str | None = None  # only this share's files
    verify: bool = False
    fix: bool = False
    dry_run: bool = False
    jobs: int = 2
    chunk: int = 4 * 1024 * 1024
    write_xrootd: bool = True
    max_rate: float = 0.0  # bytes/s; 0: no limit
    journal_dir: Path | None = None  # None: not resumable
    restart: bool = False  # drop the journal of an earlier run
    progress_every: float = 5.0  # seconds between two plain lines
    skip_dirs: frozenset[tuple[int, int]] = frozenset()  # (dev, ino): the state directory

    def key(self) -> str:
        what = [
            os.path.realpath(self.root),
            self.share,
            self.verify,
            self.fix,
            list(self.wanted),
            self.write_xrootd,
        ]
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]


def _count(opts: ScanOptions, prog: Progress, stop: threading.Event) -> None:
    """The counting walk behind the ETA (lstat of every file in scope)."""
    files = size = 0
    for item in walk(opts.root, opts.shares.walk_roots(opts.share), None, opts.skip_dirs):
        if stop.is_set():
            return
        if item.kind != "file":
            continue
        if opts.share is not None and opts.shares.name_of(DavPath(item.segs)) != opts.share:
            continue
        try:
            size += os.lstat(item.fs).st_size
        except OSError:
            continue
        files += 1
    prog.total_files, prog.total_bytes = files, size


def run_scan(
    opts: ScanOptions,
    stderr: TextIO = sys.stderr,
    reporter: PlainReporter | BarReporter | Reporter | None = None,
    on_complete: Callable[[Tally], dict[str, Any]] | None = None,
) -> tuple[dict[str, Any] | None, int]:
    """Scan; returns (the summary, the exit status).  The summary is None when the scan was
    interrupted (SIGINT/SIGTERM: the journal keeps its progress)."""
    stop = threading.Event()
    signum = [0]

    def on_signal(sig: int, _frame: FrameType | None) -> None:
        signum[0] = sig
        stop.set()

    old: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, on_signal)
    try:
        return _scan(opts, stop, signum, stderr, reporter, on_complete)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _scan(
    opts: ScanOptions,
    stop: threading.Event,
    signum: list[int],
    stderr: TextIO,
    reporter: PlainReporter | BarReporter | Reporter | None,
    on_complete: Callable[[Tally], dict[str, Any]] | None,
) -> tuple[dict[str, Any] | None, int]:
    journal: Journal | None = None
    if not opts.dry_run and opts.journal_dir is not None:
        journal = Journal(opts.journal_dir, opts.key())
    watermark: tuple[str, ...] | None = None
    tally = Tally()
    prior: dict[tuple[str, ...], Result] = {}
    resumed = False
    if journal is not None:
        try:
            journal.open_log()
        except BlockingIOError:
            print(
                "se scan: another scan of this tree with the same options is running "
                f"(journal {journal.log_path})",
                file=stderr,
            )
            return None, 2
        except OSError as exc:
            print(
                f"se scan: no journal in {opts.journal_dir} ({_reason(exc)}): this scan "
                "cannot be resumed if interrupted",
                file=stderr,
            )
            journal = None
    if journal is not None:
        if opts.restart:
            journal.reset()
        loaded = journal.load()
        if loaded is not None:
            watermark, tally, prior = loaded
            resumed = True
            print(
                f"se scan: resuming after {'/' + '/'.join(watermark or ())} "
                f"({tally.files} files done; journal {journal.checkpoint_path})",
                file=stderr,
            )
    base_elapsed = tally.elapsed
    live = Tally.from_json(tally.to_json())
    started = time.monotonic()
    prog = Progress(live, started, live.files, live.bytes, live.read_bytes)
    rep = reporter if reporter is not None else Reporter()
    counter = threading.Thread(target=_count, args=(opts, prog, stop), daemon=True)
    counter.start()
    job = FileJob(
        wanted=opts.wanted,
        verify=opts.verify,
        fix=opts.fix,
        dry_run=opts.dry_run,
        write_xrootd=opts.write_xrootd,
        chunk=opts.chunk,
        stop=stop,
        limiter=Limiter(opts.max_rate, stop) if opts.max_rate > 0 else None,
    )
    done: dict[int, Result] = {}  # finished, not yet folded into tally (out of order)
    segs_of: dict[int, tuple[str, ...]] = {}
    inflight: set[cf.Future[None]] = set()  # batches
    results: queue.SimpleQueue[tuple[int, Result | None]] = queue.SimpleQueue()
    batch: list[tuple[int, Item, str, str | None]] = []
    batch_bytes = 0
    next_commit = 0
    last_checkpoint = started

    def run_batch(b: list[tuple[int, Item, str, str | None]]) -> None:
        for seq, item, path, share in b:
            results.put((seq, None if stop.is_set() else check_file(item, path, share, job)))

    def dispatch() -> None:
        nonlocal batch, batch_bytes
        if batch:
            inflight.add(pool.submit(run_batch, batch))
            batch, batch_bytes = [], 0

    def finished(seq: int, r: Result, logged: bool = False) -> None:
        done[seq] = r
        live.add(r)
        if journal is not None and not logged:
            journal.append(r)

    def reap(timeout: float) -> None:
        """Take the results in (waiting up to ``timeout`` for the first one)."""
        got: list[tuple[int, Result | None]] = []
        with contextlib.suppress(queue.Empty):
            got.append(results.get(timeout=timeout) if timeout > 0 else results.get_nowait())
            while True:
                got.append(results.get_nowait())
        for seq, r in got:
            if r is not None:  # None: stopped before or while reading it
                finished(seq, r)
        for fut in [f for f in inflight if f.done()]:
            inflight.discard(fut)
            fut.result()  # a job's unexpected exception ends the scan here
        if journal is not None:
            journal.flush()

    def commit() -> None:
        nonlocal next_commit, watermark
        while next_commit in done:
            tally.add(done.pop(next_commit))
            watermark = segs_of.pop(next_commit)
            next_commit += 1

    def checkpoint() -> None:
        nonlocal last_checkpoint
        last_checkpoint = time.monotonic()
        if journal is not None:
            tally.elapsed = base_elapsed + (last_checkpoint - started)
            journal.checkpoint(watermark, tally, [*done.values(), *prior.values()])

    def tick() -> None:
        commit()
        if time.monotonic() - last_checkpoint >= CHECKPOINT_EVERY:
            checkpoint()
        rep.update(prog)

    seq = 0
    try:
        with cf.ThreadPoolExecutor(max_workers=opts.jobs, thread_name_prefix="scan") as pool:
            tops = opts.shares.walk_roots(opts.share)
            for item in walk(opts.root, tops, watermark, opts.skip_dirs):
                if stop.is_set():
                    break
                share = opts.shares.name_of(DavPath(item.segs))
                if opts.share is not None and share != opts.share:
                    continue  # inside a share nested in this one's paths
                path = "/" + "/".join(item.segs)
                segs_of[seq] = item.segs
                known = prior.pop(item.segs, None)
                if known is not None:
                    finished(seq, known, logged=True)
                elif item.kind == "file":
                    # Files go to the jobs in batches (few thread hand-overs for small files).
                    batch.append((seq, item, path, share))
                    with contextlib.suppress(OSError):
                        batch_bytes += os.lstat(item.fs).st_size
                    if len(batch) >= BATCH_FILES or batch_bytes >= BATCH_BYTES:
                        dispatch()
                elif item.kind == "error":
                    finished(seq, Result(path, "direrror", detail=item.detail))
                else:
                    finished(seq, Result(path, item.kind))
                seq += 1
                while len(inflight) >= 2 * opts.jobs and not stop.is_set():
                    reap(0.2)
                    tick()
                tick()
            dispatch()
            while inflight:
                reap(0.2)
                tick()
        reap(0)
        commit()
        if stop.is_set():
            checkpoint()
            rep.close(prog)
            where = "" if journal is None else f" (journal {journal.checkpoint_path})"
            print(
                f"se scan: interrupted after {tally.files} files in order; the same command "
                f"continues from there{where}",
                file=stderr,
            )
            return None, 128 + (signum[0] or int(signal.SIGINT))
    except BaseException:
        commit()
        stop.set()
        if journal is not None:
            checkpoint()
            journal.close()
        raise
    tally.elapsed = base_elapsed + (time.monotonic() - started)
    counter.join(timeout=0.1)
    if prog.total_files is None:
        prog.total_files, prog.total_bytes = live.files, live.bytes
    rep.close(prog)
    if journal is not None:
        journal.clear()
    summary = _summary(opts, tally, resumed, journal)
    if on_complete is not None and not opts.dry_run:
        summary["accounting"] = on_complete(tally)
    status = (EXIT_MISMATCH if tally.mismatched else 0) | (
        EXIT_ERRORS if tally.errors or tally.changed else 0
    )
    return summary, status


def _summary(opts: ScanOptions, t: Tally, resumed: bool, journal: Journal | None) -> dict[str, Any]:
    names = opts.shares.names if opts.share is None else (opts.share,)
    shares = {
        n: {"files": t.shares.get(n, [0, 0])[0], "bytes": t.shares.get(n, [0, 0])[1]} for n in names
    }
    elapsed = max(t.elapsed, 1e-6)
    out: dict[str, Any] = {
        "root": os.path.realpath(opts.root),
        "share": opts.share,
        "mode": "verify" if opts.verify else "backfill",
        "fix": opts.fix,
        "dry_run": opts.dry_run,
        "algorithms": list(opts.wanted),
        "complete": True,
        "resumed": resumed,
        "files": t.files,
        "bytes": t.bytes,
        "shares": shares,
        "kept": t.kept,
        "computed": t.computed,
        "stale": t.stale,
        "mismatched": t.mismatched,
        "fixed": t.fixed,
        "changed": t.changed,
        "errors": t.errors,
        "read_files": t.read_files,
        "read_bytes": t.read_bytes,
        "skipped": dict(sorted(t.skipped.items())),
        "mismatches": t.mismatches,
        "error_paths": t.error_paths,
        "changed_paths": t.changed_paths,
        "skipped_paths": t.skipped_paths,
        "elapsed": round(t.elapsed, 3),
        "mb_per_s": round(t.read_bytes / elapsed / 1e6, 1),
        "files_per_s": round(t.files / elapsed, 1),
        "journal": None if journal is None else str(journal.checkpoint_path),
    }
    if opts.dry_run:
        out["would_store"] = t.would_store
    return out


# --------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``se scan`` (se.cli adds the subcommand)."""
    p.add_argument("--config", "-c", help="TOML configuration file of the server")
    p.add_argument("--root", help="the tree to adopt (default: storage.root)")
    p.add_argument("--share", help="only the files of this [[shares]] name")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--backfill",
        dest="verify",
        action="store_false",
        help="keep fresh checksums, compute the missing or stale ones (default)",
    )
    mode.add_argument(
        "--verify",
        dest="verify",
        action="store_true",
        help="read every file; report recorded checksums that disagree (still fills missing)",
    )
    p.set_defaults(verify=False)
    p.add_argument(
        "--fix",
        action="store_true",
        help="with --verify: replace recorded checksums that disagree",
    )
    p.add_argument("--jobs", "-j", type=int, help="files read at once (default: CPU count)")
    p.add_argument("--dry-run", action="store_true", help="write nothing, say what would be done")
    p.add_argument(
        "--max-rate", type=float, default=0.0, help="read at most this many MB/s (default: no cap)"
    )
    p.add_argument(
        "--progress-every",
        type=float,
        default=5.0,
        help="seconds between progress lines when stderr is not a terminal (0: none)",
    )
    p.add_argument(
        "--restart", action="store_true", help="forget an interrupted run of this scan, start over"
    )


def _skip_dirs(cfg: Config) -> frozenset[tuple[int, int]]:
    try:
        st = os.stat(state_dir(cfg))
    except OSError:
        return frozenset()
    return frozenset({(st.st_dev, st.st_ino)})


def _accounting(cfg: Config, opts: ScanOptions) -> Callable[[Tally], dict[str, Any]]:
    """Has each share scanned (all, or ``--share``'s) reconciled in the space accounting
    (se.space): a walk that is exact while a server writes to the tree, where the scan's own
    tally, hours old at its end, would overwrite what was counted meanwhile."""

    def account(t: Tally) -> dict[str, Any]:
        names = opts.shares.names if opts.share is None else (opts.share,)
        if not cfg.space.enabled:
            return {"updated": False, "reason": "space.enabled is false"}
        from se.space.accounting import Accounting

        try:
            acc = Accounting.open(cfg)
            try:
                for name in names:
                    acc.reconcile_sync(name)
            finally:
                acc.close()
        except Exception as exc:  # the database's own errors (sqlite3, psycopg)
            print(f"se scan: accounting not updated: {exc}", file=sys.stderr)
            return {"updated": False, "error": str(exc)}
        return {"updated": True, "shares": list(names)}

    return account


def main(args: argparse.Namespace, cfg: Config) -> int:
    """``se scan``: ``cfg`` is the configuration with ``--root`` applied."""
    if args.fix and not args.verify:
        print("se: scan: --fix goes with --verify", file=sys.stderr)
        return 2
    shares = ShareMap.of(cfg.shares)
    if args.share is not None and args.share not in shares.names:
        known = ", ".join(shares.names)
        print(f"se: scan: no share named {args.share!r} (shares: {known})", file=sys.stderr)
        return 2
    root = cfg.storage.root
    if not os.path.isdir(root):
        print(f"se: scan: {root}: not a directory", file=sys.stderr)
        return 2
    jobs = args.jobs if args.jobs is not None else len(os.sched_getaffinity(0))
    if jobs < 1 or args.max_rate < 0 or args.progress_every < 0:
        print(
            "se: scan: --jobs must be >= 1, --max-rate and --progress-every >= 0", file=sys.stderr
        )
        return 2
    opts = ScanOptions(
        root=root,
        shares=shares,
        wanted=checksum_algorithms(cfg),
        share=args.share,
        verify=args.verify,
        fix=args.fix,
        dry_run=args.dry_run,
        jobs=jobs,
        chunk=min(max(cfg.storage.chunk_size, 64 * 1024), 16 * 1024 * 1024),
        write_xrootd=cfg.checksums.write_xrootd,
        max_rate=args.max_rate * 1e6,
        journal_dir=state_dir(cfg) / "scan",
        restart=args.restart,
        progress_every=args.progress_every,
        skip_dirs=_skip_dirs(cfg),
    )
    reporter: PlainReporter | BarReporter | Reporter
    if sys.stderr.isatty():
        reporter = BarReporter(sys.stderr)
    elif args.progress_every > 0:
        reporter = PlainReporter(sys.stderr, args.progress_every)
    else:
        reporter = Reporter()
    summary, status = run_scan(opts, sys.stderr, reporter, _accounting(cfg, opts))
    if summary is not None:
        print(json.dumps(summary, indent=2))
    return status
