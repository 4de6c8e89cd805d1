"""What the storage layer hands to the fronts: file metadata, open files, listing entries.

Neutral types, so that a front (or another backend) can name them without importing the
POSIX backend.
"""

from __future__ import annotations

import os
import stat as stat_mod
from dataclasses import dataclass, field

from se.storage.paths import DavPath

__all__ = ["CachedFile", "DirEntry", "Identity", "OpenFile", "Stat", "identity_of"]

# A Stat as a plain tuple, in field order: what a listing compares for each member, built
# straight from a stat result without making objects (see PosixBackend.member_identities).
Identity = tuple[bool, int, int, int, int, int]


def identity_of(st: os.stat_result) -> Identity:
    """The identity of a stat result (that of ``Stat.of(st)``), without making a Stat."""
    return (
        stat_mod.S_ISDIR(st.st_mode),
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        st.st_dev,
    )


@dataclass(frozen=True, slots=True)
class Stat:
    is_dir: bool
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stat:
        return cls(
            stat_mod.S_ISDIR(st.st_mode),
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
            st.st_dev,
        )

    @property
    def identity(self) -> Identity:
        return (self.is_dir, self.size, self.mtime_ns, self.ctime_ns, self.ino, self.dev)

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9

    @property
    def etag(self) -> str:
        return f'"{self.ino:x}-{self.mtime_ns:x}-{self.size:x}"'


@dataclass(slots=True)
class OpenFile:
    """An open regular file; the caller must call :meth:`close`."""

    fd: int
    stat: Stat
    path: DavPath

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True, slots=True)
class CachedFile:
    """A small file's bytes as read earlier, valid while its path still stats as ``stat``."""

    stat: Stat
    path: DavPath
    data: bytes

    def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class DirEntry:
    path: DavPath
    stat: Stat
    checksums: dict[str, bytes] = field(default_factory=dict)
    dead_props: list[bytes] = field(default_factory=list)
