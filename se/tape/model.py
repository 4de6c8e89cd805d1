"""The shared vocabulary of the tape layer: file states, localities, stage requests, the
errors files fail with and the run-time switches.  Pure.

These types are what the wire format (:mod:`se.tape.wire`), the service, the simulator and
the store pass between them.  Timestamps are integer seconds since the Unix epoch, as on the
wire.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BAD_FILE_PROBABILITY",
    "DRIVE_FAILURE_PROBABILITY",
    "ERR_DENIED",
    "ERR_DIRECTORY",
    "ERR_EMPTY",
    "ERR_GONE",
    "ERR_INVALID_PATH",
    "ERR_LOST",
    "ERR_MISSING",
    "ERR_NOT_TAPE",
    "ERR_NO_SPACE",
    "ERR_UNAVAILABLE",
    "ERR_UNKNOWN",
    "ERR_UNREACHABLE",
    "PROBABILITY_SWITCHES",
    "SETTINGS",
    "UNREACHABLE",
    "CartridgeState",
    "FileState",
    "Locality",
    "StageFile",
    "StageRequest",
]

# Errors a file of a stage request fails with, as polls and ARCHIVEINFO show them.
# Settled when the request is submitted (the namespace, the caller's rights):
ERR_INVALID_PATH = "USER ERROR: invalid path"
ERR_MISSING = "USER ERROR: file does not exist or is not accessible to you"
ERR_DIRECTORY = "USER ERROR: path is a directory"
ERR_NOT_TAPE = "USER ERROR: file is not on a tape-backed path"
ERR_DENIED = "Permission denied"
# Settled by the catalogue or the library:
ERR_UNKNOWN = "file is not in the tape tier (missing or not tape-backed)"
ERR_EMPTY = "zero-length file: never written to tape"
ERR_LOST = "file is lost on tape"
ERR_UNAVAILABLE = "tape unavailable"
ERR_UNREACHABLE = "Tape backend is unreachable"
ERR_NO_SPACE = "no space in disk buffer"
ERR_GONE = "file was deleted or renamed while it was recalled"

# Run-time switches (failure injection), kept in the store's settings: the library re-reads
# them at each sync; ``se tape set`` and ``POST /.well-known/se/tape`` write them.  The
# probabilities are also ``[tape]`` keys (and LibraryConfig fields) of the same name: a
# switch left unset falls back to the configured value.
UNREACHABLE = "unreachable"
BAD_FILE_PROBABILITY = "bad_file_probability"
DRIVE_FAILURE_PROBABILITY = "drive_failure_probability"
PROBABILITY_SWITCHES = (BAD_FILE_PROBABILITY, DRIVE_FAILURE_PROBABILITY)
SETTINGS = (UNREACHABLE, *PROBABILITY_SWITCHES)


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
