"""Extended attributes: cached checksums and WebDAV dead properties.  Blocking I/O.

Checksums are kept as ``user.se.checksum.<alg>`` = ``<hex>;<size>;<mtime_ns>``; a value
whose size or mtime differs from the file's is stale and never returned.  XRootD's
``user.XrdCks.<alg>`` (a 96-byte big-endian struct: name[16], fmTime int64, csTime int32,
reserved int16+int8, length int8, value[64]) is read when present, fresh when its fmTime
equals the file's mtime in seconds, and written alongside ours when configured, so a tree
can move between XRootD and ``se`` keeping its checksums.

Dead properties (PROPPATCH) live in ``user.se.prop.<hash>`` as the serialised XML element.

Filesystems without user xattrs are tolerated: reads find nothing, writes are skipped (the
caller then recomputes checksums on demand).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import struct
import time
from collections.abc import Iterable, Sequence

__all__ = [
    "copy_dead_props",
    "get_dead_props",
    "read_checksums",
    "remove_dead_prop",
    "set_dead_prop",
    "write_checksums",
]

log = logging.getLogger("se.storage")

CKS_PREFIX = "user.se.checksum."
XRD_PREFIX = "user.XrdCks."
PROP_PREFIX = "user.se.prop."
_XRD_STRUCT = struct.Struct(">16sqihbb64s")
_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)
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
            try:
                hexval, s_size, s_mtime = raw.decode("ascii").split(";")
                if int(s_size) == size and int(s_mtime) == mtime_ns:
                    found[name[len(CKS_PREFIX) :]] = bytes.fromhex(hexval)
            except (ValueError, UnicodeDecodeError):
                continue
    for name in names:
        if name.startswith(XRD_PREFIX):
            alg = name[len(XRD_PREFIX) :]
            if alg in found or alg in own:
                continue
            raw = _get(target, name)
            if raw is None or len(raw) != _XRD_STRUCT.size:
                continue
            _n, fm_time, _cs, _r1, _r2, length, value = _XRD_STRUCT.unpack(raw)
            if fm_time == mtime_ns // 1_000_000_000 and 0 < length <= 64:
                found[alg] = value[:length]
    return found


def write_checksums(
    target: int | str, digests: dict[str, bytes], size: int, mtime_ns: int, xrootd: bool
) -> None:
    for alg, raw in digests.items():
        value = f"{raw.hex()};{size};{mtime_ns}".encode("ascii")
        if not _set(target, CKS_PREFIX + alg, value):
            return
        if xrootd:
            mtime_s = mtime_ns // 1_000_000_000
            packed = _XRD_STRUCT.pack(
                alg.encode()[:15],
                mtime_s,
                max(0, int(time.time()) - mtime_s),
                0,
                0,
                len(raw),
                raw,
            )
            _set(target, XRD_PREFIX + alg, packed)


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


def set_dead_prop(target: int | str, key: str, element: bytes) -> bool:
    """Store a property (``key`` is its ``{ns}name``); False when xattrs refuse it."""
    return _set(target, _prop_attr(key), element)


def remove_dead_prop(target: int | str, key: str) -> None:
    try:
        os.removexattr(target, _prop_attr(key))
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, *_UNSUPPORTED):
            raise


def copy_dead_props(src: int | str, dst: int | str) -> None:
    for name in _list(src):
        if name.startswith(PROP_PREFIX):
            raw = _get(src, name)
            if raw is not None:
                _set(dst, name, raw)
