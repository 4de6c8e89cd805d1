"""The access log's line and its direct sink (se.web.accesslog)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from se.web import accesslog

FMT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    accesslog._SINK = None
    os.close(r)
    os.close(w)


def _read_all(fd: int) -> str:
    os.set_blocking(fd, False)
    out = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return out.decode()
        if not chunk:
            return out.decode()
        out += chunk


def _line(logger: logging.Logger, path: str, agent: str = "curl/8") -> None:
    accesslog.write_line(
        logger, "::1", "GET", path, 1, 1, 200, 4338, "-", agent, "alice@https://iss", 0.0123
    )


def test_lines_are_written_whole_at_the_end_of_the_loop_turn(
    pipe: tuple[int, int], tmp_path: Path
) -> None:
    stream = open(tmp_path / "log", "w")  # noqa: SIM115 - closed below
    r = os.open(tmp_path / "log", os.O_RDONLY)
    accesslog.write_directly(stream, FMT)
    logger = logging.getLogger("se.access.test1")
    logger.setLevel(logging.INFO)
    seen: list[str] = []

    async def main() -> None:
        for i in range(3000):
            _line(logger, f"/f{i}?authz=secret{i}&x=1", agent='a "b" \\c')
        seen.append(_read_all(r))  # nothing yet unless the buffer filled up
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(main())
    accesslog.flush()
    text = seen[0] + _read_all(r)
    lines = text.splitlines()
    assert len(lines) == 3000
    pattern = re.compile(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO se\.access: ::1 \[[^]]+ \+0000\] "
        r'"GET /f(\d+)\?authz=REDACTED&x=1 HTTP/1\.1" 200 4338 "-" "a \\"b\\" \\\\c" '
        r'"alice@https://iss" 12$'
    )
    numbers = []
    for line in lines:
        m = pattern.match(line)
        assert m is not None, line
        numbers.append(int(m.group(1)))
    assert numbers == list(range(3000))  # in order, none lost
    assert "secret" not in text
    stream.close()
    os.close(r)


def test_chunks_hold_whole_lines_within_pipe_buf(pipe: tuple[int, int]) -> None:
    _r, w = pipe
    sink = accesslog._Sink(w, "se.access")
    writes: list[bytes] = []
    sink._write = writes.append  # type: ignore[method-assign,assignment]

    def entry(path: str) -> accesslog._Entry:
        return (1.5, "::1", "GET", path, 1, 1, 200, 4096, "-", "-", "-", 0.001)

    for i in range(700):  # more than MAX_HELD: written in two goes
        sink.add(entry(f"/line{i}" + "x" * (i % 97)))
    sink.add(entry("/" + "y" * 9000))  # longer than a chunk: alone
    sink.flush()
    assert all(len(c) <= accesslog._Sink.CHUNK for c in writes if b"y" * 9000 not in c)
    assert all(c.endswith(b"\n") for c in writes)
    assert sum(c.count(b"\n") for c in writes) == 701


def test_without_the_sink_lines_go_through_logging(caplog: pytest.LogCaptureFixture) -> None:
    accesslog._SINK = None
    logger = logging.getLogger("se.access.test3")
    with caplog.at_level(logging.INFO, logger="se.access.test3"):
        _line(logger, "/plain")
    assert len(caplog.records) == 1
    assert '"GET /plain HTTP/1.1" 200 4338 "-" "curl/8" "alice@https://iss" 12' in (
        caplog.records[0].getMessage()
    )


def test_a_disabled_logger_writes_nothing(pipe: tuple[int, int]) -> None:
    r, w = pipe
    accesslog._SINK = accesslog._Sink(w, "se.access")
    logger = logging.getLogger("se.access.test4")
    logger.disabled = True
    _line(logger, "/nothing")
    accesslog.flush()
    assert _read_all(r) == ""
