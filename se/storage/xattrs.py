"""Extended attributes: cached checksums and WebDAV dead properties.  Blocking I/O.

Checksums are kept as ``user.se.checksum.<alg>`` = ``<hex>;<size>;<mtime_ns>``; a value
whose size or mtime differs from the file's is stale and never returned.  XRootD's
``user.XrdCks.<alg>`` (a 96-byte big-endian struct: name[16], fmTime int64, csTime int32,
reserved int16+int8, length int8, value[64]) is read when present, fresh when its fmTime
equals the file's mtime in seconds, and written alongside ours when configured, so a tree
can move between XRootD and ``se`` keeping its checksums.

Dead properties (PROPPATCH) live in ``user.se.prop.<hash>`` as the serialised XML element;
:func:`patch_dead_props` applies a PROPPATCH's updates all or nothing.

A file whose xattrs cannot take its checksums (the filesystem's xattr space is full, e.g.
one 4 KiB block on ext4) keeps them in memory instead: a per-process LRU of
:data:`FALLBACK_ENTRIES` entries keyed on (device, inode, size, mtime_ns, ctime_ns), so
that ``Want-Digest`` on such a file neither re-reads it nor logs again each time.

Filesystems without user xattrs are tolerated: reads find nothing, writes are skipped (the
caller then recomputes checksums on demand).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import struct
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence

__all__ = [
    "FALLBACK_ENTRIES",
    "PatchRefused",
    "copy_dead_props",
    "get_dead_props",
    "pack_xrdcks",
    "parse_own",
    "parse_xrdcks",
    "patch_dead_props",
    "read_checksums",
    "write_checksums",
]

log = logging.getLogger("se.storage")

CKS_PREFIX = "user.se.checksum."
XRD_PREFIX = "user.XrdCks."
PROP_PREFIX = "user.se.prop."
_XRD_STRUCT = struct.Struct(">16sqihbb64s")
_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)
_NO_ROOM = (errno.ENOSPC, errno.E2BIG, errno.EDQUOT, errno.ERANGE)
_warned = False


def _warn_unsupported(exc: OSError) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("xattrs unavailable (%s): checksums will be recomputed on demand", exc.strerror)


def _list(target: int | str) -> list[str]:
    try:
        return os.listxattr(target)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            _warn_unsupported(exc)
            return []
        if exc.errno == errno.ENOENT:
            return []
        raise


def _get(target: int | str, name: str) -> bytes | None:
    try:
        return os.getxattr(target, name)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOENT, *_UNSUPPORTED):
            return None
        raise


def _set(target: int | str, name: str, value: bytes) -> bool:
    try:
        os.setxattr(target, name, value)
        return True
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            _warn_unsupported(exc)
            return False
        if exc.errno in (errno.ENOSPC, errno.E2BIG, errno.EDQUOT, errno.EPERM, errno.EACCES):
            log.warning("cannot store xattr %s: %s", name, exc.strerror)
            return False
        raise


# Checksums that the xattrs of their file could not take: (dev, ino, size, mtime_ns,
# ctime_ns) -> digests, least recently used first.  A write to the file changes mtime and
# ctime, so a stale entry is never found again (it ages out).
FALLBACK_ENTRIES = 4096
_fallback: OrderedDict[tuple[int, int, int, int, int], dict[str, bytes]] = OrderedDict()
_fallback_lock = threading.Lock()
# (size, mtime_ns) of the entries, counted: most files are ruled out without a stat.
_fallback_versions: Counter[tuple[int, int]] = Counter()


def _fallback_key(target: int | str, size: int, mtime_ns: int) -> tuple[int, int, int, int, int]:
    st = os.stat(target)
    return (st.st_dev, st.st_ino, size, mtime_ns, st.st_ctime_ns)


def _remember(target: int | str, digests: dict[str, bytes], size: int, mtime_ns: int) -> int | None:
    """Keep checksums the xattrs refused; the inode when it was not remembered before."""
    try:
        key = _fallback_key(target, size, mtime_ns)
    except OSError:
        return None
    with _fallback_lock:
        known = _fallback.pop(key, None)
        _fallback[key] = {**(known or {}), **digests}
        if known is None:
            _fallback_versions[(size, mtime_ns)] += 1
        while len(_fallback) > FALLBACK_ENTRIES:
            old, _ = _fallback.popitem(last=False)
            _fallback_versions[(old[2], old[3])] -= 1
            if _fallback_versions[(old[2], old[3])] <= 0:
                del _fallback_versions[(old[2], old[3])]
    return key[1] if known is None else None


def _recall(target: int | str, size: int, mtime_ns: int) -> dict[str, bytes]:
    if (size, mtime_ns) not in _fallback_versions:
        return {}
    try:
        key = _fallback_key(target, size, mtime_ns)
    except OSError:
        return {}
    with _fallback_lock:
        found = _fallback.get(key)
        if found is None:
            return {}
        _fallback.move_to_end(key)
        return dict(found)


def parse_own(raw: bytes) -> tuple[bytes, int, int] | None:
    """``user.se.checksum.<alg>`` -> (digest, size, mtime_ns) it was computed for; None if
    malformed."""
    try:
        hexval, s_size, s_mtime = raw.decode("ascii").split(";")
        return bytes.fromhex(hexval), int(s_size), int(s_mtime)
    except (ValueError, UnicodeDecodeError):
        return None


def parse_xrdcks(raw: bytes) -> tuple[str, int, bytes] | None:
    """``user.XrdCks.<alg>`` -> (algorithm name inside, fmTime in seconds, digest); None if
    it is not the 96-byte struct or its length byte is out of range."""
    if len(raw) != _XRD_STRUCT.size:
        return None
    name, fm_time, _cs, _r1, _r2, length, value = _XRD_STRUCT.unpack(raw)
    if not 0 < length <= 64:
        return None
    return name.split(b"\0", 1)[0].decode("ascii", "replace"), fm_time, value[:length]


def pack_xrdcks(alg: str, raw: bytes, mtime_ns: int) -> bytes:
    """The ``user.XrdCks.<alg>`` value for a digest of the file version with ``mtime_ns``."""
    mtime_s = mtime_ns // 1_000_000_000
    cs_delta = max(0, int(time.time()) - mtime_s)
    return _XRD_STRUCT.pack(alg.encode()[:15], mtime_s, cs_delta, 0, 0, len(raw), raw)


def read_checksums(
    target: int | str, size: int, mtime_ns: int, names: Sequence[str] | None = None
) -> dict[str, bytes]:
    """Fresh cached checksums of a file (raw digest bytes), ours first, then XRootD's."""
    found: dict[str, bytes] = {}
    # Algorithms with an entry of ours: when that one is stale, the XRootD entry written with
    # it is too, though its whole-second mtime may still match (then recompute instead).
    own: set[str] = set()
    if names is None:
        names = _list(target)
    for name in names:
        if name.startswith(CKS_PREFIX):
            raw = _get(target, name)
            if raw is None:
                continue
            own.add(name[len(CKS_PREFIX) :])
            parsed = parse_own(raw)
            if parsed is not None and parsed[1:] == (size, mtime_ns):
                found[name[len(CKS_PREFIX) :]] = parsed[0]
    for name in names:
        if name.startswith(XRD_PREFIX):
            alg = name[len(XRD_PREFIX) :]
            if alg in found or alg in own:
                continue
            raw = _get(target, name)
            xrd = None if raw is None else parse_xrdcks(raw)
            if xrd is not None and xrd[1] == mtime_ns // 1_000_000_000:
                found[alg] = xrd[2]
    if _fallback:
        for alg, raw in _recall(target, size, mtime_ns).items():
            found.setdefault(alg, raw)
    return found


def write_checksums(
    target: int | str, digests: dict[str, bytes], size: int, mtime_ns: int, xrootd: bool
) -> bool:
    """Store ``digests`` of the file version (size, mtime_ns); False when the xattrs refused
    them (they are then remembered in this process only)."""
    for alg, raw in digests.items():
        value = f"{raw.hex()};{size};{mtime_ns}".encode("ascii")
        try:
            os.setxattr(target, CKS_PREFIX + alg, value)
        except OSError as exc:
            if exc.errno not in (*_UNSUPPORTED, *_NO_ROOM, errno.EPERM, errno.EACCES):
                raise
            if exc.errno in _UNSUPPORTED:
                _warn_unsupported(exc)
            remembered = _remember(target, digests, size, mtime_ns)
            if remembered is not None and exc.errno not in _UNSUPPORTED:  # once per version
                log.warning(
                    "cannot store checksums in the xattrs of inode %d (%s): kept in memory",
                    remembered,
                    exc.strerror,
                )
            return False
        if xrootd:
            _set(target, XRD_PREFIX + alg, pack_xrdcks(alg, raw, mtime_ns))
    return True


def _prop_attr(key: str) -> str:
    return PROP_PREFIX + hashlib.sha1(key.encode("utf-8")).hexdigest()[:24]


def get_dead_props(target: int | str, names: Iterable[str] | None = None) -> list[bytes]:
    """Serialised XML elements of every dead property of the resource."""
    if names is None:
        names = _list(target)
    out: list[bytes] = []
    for name in names:
        if name.startswith(PROP_PREFIX):
            raw = _get(target, name)
            if raw is not None:
                out.append(raw)
    return out


# One PROPPATCH at a time per process: a rollback must not undo another request's update.
_patch_lock = threading.Lock()


class PatchRefused(Exception):
    """One update of a PROPPATCH failed; every update before it was rolled back."""

    def __init__(self, index: int, error: OSError) -> None:
        super().__init__(error.strerror or str(error))
        self.index = index  # of the failed update
        self.error = error

    @property
    def no_room(self) -> bool:
        return self.error.errno in (*_NO_ROOM, *_UNSUPPORTED)


def patch_dead_props(target: int | str, updates: Sequence[tuple[str, bytes | None]]) -> None:
    """Apply ``(key, element)`` updates in order (``element`` None: remove), all or nothing
    (RFC 4918 section 9.2): on the first failure every earlier update is undone and
    :class:`PatchRefused` names it.  Removing a property that is not there succeeds."""
    undo: list[tuple[str, bytes | None]] = []  # (attribute, its value before) per change
    with _patch_lock:
        for index, (key, element) in enumerate(updates):
            attr = _prop_attr(key)
            try:
                before = _get(target, attr)
                if element is not None:
                    os.setxattr(target, attr, element)
                elif before is not None:
                    os.removexattr(target, attr)
                else:
                    continue
            except OSError as exc:
                _undo(target, undo)
                raise PatchRefused(index, exc) from None
            undo.append((attr, before))


def _undo(target: int | str, undo: list[tuple[str, bytes | None]]) -> None:
    for attr, before in reversed(undo):
        try:
            if before is None:
                os.removexattr(target, attr)
            else:
                os.setxattr(target, attr, before)
        except OSError as exc:  # pragma: no cover - space freed by the undo is reused
            if exc.errno != errno.ENODATA:
                log.error("cannot roll back property %s: %s", attr, exc.strerror)


def copy_dead_props(src: int | str, dst: int | str) -> None:
    for name in _list(src):
        if name.startswith(PROP_PREFIX):
            raw = _get(src, name)
            if raw is not None:
                _set(dst, name, raw)
