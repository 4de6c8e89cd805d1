"""Unit tests for se.dav.ranges (RFC 9110 §14 Range, multipart/byteranges framing)."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage

import pytest
from hypothesis import given
from hypothesis import strategies as st

from se.dav.ranges import (
    closing,
    content_range,
    merge_ranges,
    multipart_length,
    new_boundary,
    parse_range,
    part_header,
)
from se.errors import BadRequest, RangeNotSatisfiable


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        ("bytes=0-0", 10, [(0, 1)]),
        ("bytes=0-9", 10, [(0, 10)]),
        ("bytes=0-99", 10, [(0, 10)]),
        ("bytes=5-", 10, [(5, 10)]),
        ("bytes=-3", 10, [(7, 10)]),
        ("bytes=-30", 10, [(0, 10)]),
        ("BYTES = 1-2, 4-5 ,-1", 10, [(1, 3), (4, 6), (9, 10)]),
        ("bytes=4-5,1-2", 10, [(4, 6), (1, 3)]),
        ("bytes=0-1,0-1", 10, [(0, 2), (0, 2)]),
        ("bytes=1-2,20-30", 10, [(1, 3)]),
        ("bytes=-0,1-1", 10, [(1, 2)]),
        ("bytes=0-1,,2-3,", 10, [(0, 2), (2, 4)]),
        ("bytes=0000-0001", 10, [(0, 2)]),
        ("bytes=0-" + "9" * 5000, 10, [(0, 10)]),
    ],
)
def test_parse_range(value: str, size: int, expected: list[tuple[int, int]]) -> None:
    assert parse_range(value, size) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "bytes",
        "bytes=",
        "bytes=,",
        "items=0-1",
        "bytes=a-b",
        "bytes=5-3",
        "bytes=1",
        "bytes=--1",
        "bytes=1-2-3",
        "bytes=0-1,x",
        "bytes=-",
        "bytes=\u0661-\u0662",  # non-ASCII digits
        "bytes=+1-2",
    ],
)
def test_parse_range_ignored(value: str) -> None:
    assert parse_range(value, 10) is None


def test_parse_range_too_many() -> None:
    value = "bytes=" + ",".join(f"{i}-{i}" for i in range(5))
    assert parse_range(value, 10, max_ranges=4) is None
    assert parse_range(value, 10, max_ranges=5) == [(i, i + 1) for i in range(5)]


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("bytes=10-", 10),
        ("bytes=10-20", 10),
        ("bytes=-0", 10),
        ("bytes=0-0", 0),
        ("bytes=-5", 0),
        ("bytes=0-", 0),
        ("bytes=20-30,40-", 10),
        ("bytes=" + "9" * 5000 + "-", 10),
    ],
)
def test_parse_range_unsatisfiable(value: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range(value, size)
    assert info.value.status == 416
    assert info.value.headers == {"Content-Range": f"bytes */{size}"}
    assert info.value.reason.startswith("range not satisfiable: ")
    assert len(info.value.reason) <= len("range not satisfiable: ") + 100


def test_parse_range_negative_size() -> None:
    with pytest.raises(BadRequest):
        parse_range("bytes=0-1", -1)


@given(st.text(), st.integers(0, 2**40))
def test_parse_range_arbitrary_text(value: str, size: int) -> None:
    try:
        result = parse_range(value, size)
    except RangeNotSatisfiable:
        return
    if result is not None:
        assert result
        assert all(0 <= start < end <= size for start, end in result)


@st.composite
def range_member(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return f"-{draw(st.integers(0, 300))}"
    first = draw(st.integers(0, 300))
    last = draw(st.one_of(st.none(), st.integers(first, 400)))
    return f"{first}-" if last is None else f"{first}-{last}"


def _satisfiable(member: str, size: int) -> bool:
    if member.startswith("-"):
        return size > 0 and int(member[1:]) > 0
    return int(member.split("-")[0]) < size


@given(st.lists(range_member(), min_size=1, max_size=20), st.integers(0, 200))
def test_parse_range_valid_syntax(members: list[str], size: int) -> None:
    value = "bytes=" + ", ".join(members)
    expected = sum(_satisfiable(m, size) for m in members)
    if expected == 0:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(value, size)
        return
    result = parse_range(value, size)
    assert result is not None
    assert len(result) == expected
    assert all(0 <= start < end <= size for start, end in result)


def test_content_range() -> None:
    assert content_range(0, 1, 10) == "bytes 0-0/10"
    assert content_range(5, 10, 10) == "bytes 5-9/10"
    for bad in ((0, 0, 10), (5, 11, 10), (-1, 2, 10), (3, 2, 10)):
        with pytest.raises(BadRequest):
            content_range(*bad)


def test_merge_ranges() -> None:
    assert merge_ranges([(5, 7), (0, 2), (1, 3), (7, 8)]) == [(0, 3), (5, 8)]
    assert merge_ranges([(0, 2), (4, 6)], gap=2) == [(0, 6)]
    assert merge_ranges([]) == []
    with pytest.raises(BadRequest):
        merge_ranges([(0, 1)], gap=-1)


def test_boundary() -> None:
    boundaries = {new_boundary() for _ in range(20)}
    assert len(boundaries) == 20
    for boundary in boundaries:
        assert re.fullmatch(r"[0-9a-f]{1,70}", boundary)


def test_part_header_and_closing_exact() -> None:
    assert part_header("b", 2, 5, 10, "application/octet-stream") == (
        b"\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 2-4/10\r\n\r\n"
    )
    assert closing("b") == b"\r\n--b--\r\n"
    with pytest.raises(BadRequest):
        part_header("bad boundary\r\n", 0, 1, 1, "x/y")
    with pytest.raises(BadRequest):
        part_header("b", 0, 1, 1, "x/y\r\nX-Evil: 1")
    with pytest.raises(BadRequest):
        closing("")


def _assemble(
    data: bytes, boundary: str, ranges: list[tuple[int, int]], content_type: str
) -> bytes:
    body = bytearray()
    for start, end in ranges:
        body += part_header(boundary, start, end, len(data), content_type)
        body += data[start:end]
    body += closing(boundary)
    return bytes(body)


@given(
    st.binary(min_size=1, max_size=2000),
    st.lists(st.tuples(st.integers(0, 1999), st.integers(1, 500)), min_size=1, max_size=10),
)
def test_multipart_body_round_trip(data: bytes, raw_ranges: list[tuple[int, int]]) -> None:
    size = len(data)
    ranges = [(s % size, min(size, s % size + n)) for s, n in raw_ranges]
    boundary = new_boundary()
    content_type = "application/octet-stream"
    body = _assemble(data, boundary, ranges, content_type)
    assert len(body) == multipart_length(boundary, ranges, size, content_type)

    head = f"Content-Type: multipart/byteranges; boundary={boundary}\r\n\r\n".encode()
    message = email.message_from_bytes(head + body, policy=email.policy.HTTP)
    assert isinstance(message, EmailMessage)
    assert message.is_multipart()
    parts = list(message.iter_parts())
    assert len(parts) == len(ranges)
    for part, (start, end) in zip(parts, ranges, strict=True):
        assert part["Content-Range"] == f"bytes {start}-{end - 1}/{size}"
        assert part["Content-Type"] == content_type
        payload = part.get_payload(decode=True)
        assert payload == data[start:end]

    # Manual parse: split on the delimiter, which always starts with CRLF.
    chunks = body.split(f"\r\n--{boundary}".encode())
    assert chunks[0] == b""
    assert chunks[-1] == b"--\r\n"
    for chunk, (start, end) in zip(chunks[1:-1], ranges, strict=True):
        headers, _, payload = chunk.partition(b"\r\n\r\n")
        assert headers.startswith(b"\r\n")
        assert f"Content-Range: bytes {start}-{end - 1}/{size}".encode() in headers
        assert payload == data[start:end]
