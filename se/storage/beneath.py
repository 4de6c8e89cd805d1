"""Opening a path strictly below a directory, whatever symlinks the tree holds.  Blocking.

Linux >= 5.6 has ``openat2(2)``; with ``RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`` the kernel
itself refuses (``EXDEV``/``ELOOP``) any resolution that would leave the directory, through
``..``, an absolute symlink, a symlink pointing out, or a ``/proc`` magic link.  Python has no
binding, so it is called through ctypes (the system call number is 437 on every architecture
listed in :data:`_NR_OPENAT2`).  Where the kernel or a seccomp filter refuses it, callers use
:func:`open_components`, which walks an already-resolved path one component at a time with
``O_NOFOLLOW``, so that a component swapped for a symlink meanwhile fails instead of being
followed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import threading

__all__ = ["RESOLVE_BENEATH", "RESOLVE_NO_MAGICLINKS", "available", "open_components", "openat2"]

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
_NR_OPENAT2 = {"x86_64": 437, "aarch64": 437, "arm64": 437, "riscv64": 437, "ppc64le": 437}


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_lock = threading.Lock()
_syscall: ctypes._CFuncPtr | None = None  # type: ignore[name-defined]
_state: bool | None = None  # None: not probed yet


def _bind() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    nr = _NR_OPENAT2.get(platform.machine())
    if nr is None or not hasattr(os, "O_PATH"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syscall
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    fn.argtypes = [
        ctypes.c_long,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.POINTER(_OpenHow),
        ctypes.c_size_t,
    ]
    return fn


def _raw(dirfd: int, path: bytes, flags: int, resolve: int) -> int:
    assert _syscall is not None
    how = _OpenHow(flags, 0, resolve)
    nr = _NR_OPENAT2[platform.machine()]
    fd = int(_syscall(nr, dirfd, path, ctypes.byref(how), ctypes.sizeof(how)))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path.decode(errors="replace"))
    return fd


def available() -> bool:
    """Whether openat2 works here (probed once: kernel, architecture, seccomp)."""
    global _syscall, _state
    if _state is None:
        with _lock:
            if _state is None:
                _syscall = _bind()
                ok = False
                if _syscall is not None:
                    try:
                        os.close(_raw(-100, b"/", os.O_PATH | os.O_CLOEXEC, 0))  # AT_FDCWD
                        ok = True
                    except OSError:
                        ok = False
                _state = ok
    return bool(_state)


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    """``openat2(dirfd, path, {flags, 0, resolve})``; raises OSError like ``os.open``.

    ``EAGAIN`` (a concurrent rename while resolving beneath) is retried a few times.
    """
    raw = os.fsencode(path) or b"."
    for _ in range(3):
        try:
            return _raw(dirfd, raw, flags | os.O_CLOEXEC, resolve)
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                raise
    return _raw(dirfd, raw, flags | os.O_CLOEXEC, resolve)


def open_components(dirfd: int, segments: list[str], flags: int) -> int:
    """Open ``segments`` below ``dirfd`` (a path already resolved to contain no symlink),
    one directory at a time with ``O_NOFOLLOW``: a symlink met on the way (a component
    replaced since it was resolved) fails with ``ELOOP``/``ENOTDIR`` instead of being followed.
    """
    if not segments:
        return os.open(".", flags | os.O_CLOEXEC, dir_fd=dirfd)
    cur = dirfd
    try:
        for seg in segments[:-1]:
            nxt = os.open(
                seg, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur
            )
            if cur != dirfd:
                os.close(cur)
            cur = nxt
        return os.open(segments[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
    finally:
        if cur != dirfd:
            os.close(cur)
