"""``se tape``: switch parsing and the tables it prints (pure parts)."""

from __future__ import annotations

import pytest

from se.tape.cli import format_requests, format_status, parse_switch
from se.tape.model import CartridgeState, FileState


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unreachable=true", ("unreachable", True)),
        ("unreachable=false", ("unreachable", None)),
        ("unreachable=", ("unreachable", None)),
        ("bad_file_probability=0.25", ("bad_file_probability", 0.25)),
        ("drive_failure_probability=1", ("drive_failure_probability", 1.0)),
        ("drive_failure_probability=", ("drive_failure_probability", None)),
        ("cartridge.V00001=disabled", ("cartridge.V00001", CartridgeState.DISABLED)),
        ("cartridge.V00001=", ("cartridge.V00001", CartridgeState.ACTIVE)),
    ],
)
def test_parse_switch(text: str, expected: tuple[str, object]) -> None:
    assert parse_switch(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "unreachable",
        "unreachable=yes",
        "bad_file_probability=1.5",
        "bad_file_probability=x",
        "cartridge.V1=GONE",
        "seed=3",
    ],
)
def test_parse_switch_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_switch(text)


def test_format_requests_counts_states() -> None:
    rows = [
        ("r2", "alice@iss", 90, None, {FileState.STARTED: 2, FileState.COMPLETED: 1}),
        ("r1", "anonymous", 50, 80, {FileState.FAILED: 1}),
    ]
    text = format_requests(rows, now=100)
    lines = text.splitlines()
    assert lines[0].split() == [
        "REQUEST", "OWNER", "AGE", "FILES", "SUBMITTED", "STARTED", "CANCELLED", "FAILED",
        "COMPLETED",
    ]  # fmt: skip
    assert lines[1].split() == ["r2", "alice@iss", "10s", "3", "0", "2", "0", "0", "1", "active"]
    assert lines[2].split() == ["r1", "anonymous", "50s", "1", "0", "0", "0", "1", "0", "done"]


def test_format_status_library_and_frontend() -> None:
    data = {
        "library": True,
        "drives": {"total": 2, "mounted": ["V00001"]},
        "utilisation": 0.5,
        "queues": {"V00001": 3, "V00002": 1},
        "mounts": {"V00001": 2},
        "buffer": {"capacity": 1000, "used": 250, "evicted_files": 4},
        "localities": {"TAPE": {"files": 5, "bytes": 50}},
        "cartridges": {"V00001": "ACTIVE", "V00003": "BROKEN"},
        "settings": {"unreachable": True},
    }
    text = format_status(data)
    assert "drives: 2 (1 in use: V00001); utilisation 50.0%" in text
    assert any(line.split() == ["V00001", "3", "2", "yes"] for line in text.splitlines())
    assert any(line.split() == ["V00002", "1", "0"] for line in text.splitlines())
    assert "250 of 1000 bytes (25.0%)" in text
    assert "cartridges not ACTIVE: V00003=BROKEN" in text
    assert "switches: unreachable=true" in text
    frontend = format_status({"library": False, "localities": {}})
    assert "runs in another se" in frontend
