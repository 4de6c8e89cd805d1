"""The shared vocabulary of the tape layer: file states, localities, stage requests.  Pure.

These types are what the API layer (:mod:`se.tape.api`), the simulator and the store pass
between them.  Timestamps are integer seconds since the Unix epoch, as on the wire.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = ["CartridgeState", "FileState", "Locality", "StageFile", "StageRequest"]


class FileState(enum.StrEnum):
    """State of one file of a STAGE request (the wire spelling is the value)."""

    SUBMITTED = "SUBMITTED"
    STARTED = "STARTED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    COMPLETED = "COMPLETED"

    @property
    def terminal(self) -> bool:
        """True for CANCELLED, FAILED and COMPLETED: the file never changes state again."""
        return self in _TERMINAL


_TERMINAL = frozenset({FileState.CANCELLED, FileState.FAILED, FileState.COMPLETED})


class Locality(enum.StrEnum):
    """Where a file's data is, as ARCHIVEINFO reports it (the wire spelling is the value)."""

    DISK = "DISK"  # only on disk, not yet on tape
    TAPE = "TAPE"  # only on tape
    DISK_AND_TAPE = "DISK_AND_TAPE"
    LOST = "LOST"  # considered unrecoverable
    NONE = "NONE"  # zero-length file: never goes to tape
    UNAVAILABLE = "UNAVAILABLE"  # temporarily unreachable (cartridge disabled, ...)


class CartridgeState(enum.StrEnum):
    """Whether a cartridge can be mounted (spec section 7.1)."""

    ACTIVE = "ACTIVE"
    DISABLED = "DISABLED"
    BROKEN = "BROKEN"
    REPACKING = "REPACKING"


@dataclass(frozen=True, slots=True)
class StageFile:
    path: str  # the canonical namespace path (decoded), the key of pins and the catalogue
    state: FileState
    started_at: int | None = None
    finished_at: int | None = None
    error: str | None = None
    disk_lifetime: int | None = None  # seconds; None: the server's default
    metadata: dict[str, Any] | None = None  # only our sitename's targetedMetadata entry
    spelling: str | None = None  # the client's spelling of ``path`` when it differs

    @property
    def shown(self) -> str:
        """The path as responses echo it: exactly as the client sent it (sanitised)."""
        return self.path if self.spelling is None else self.spelling


@dataclass(frozen=True, slots=True)
class StageRequest:
    id: str
    owner: str
    created_at: int
    started_at: int | None
    completed_at: int | None
    files: tuple[StageFile, ...]
