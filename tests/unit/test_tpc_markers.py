"""Unit tests for se.tpc.markers (perf-marker blocks and the result line of a TPC body)."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from se.storage.paths import confine
from se.tpc.markers import (
    LOCAL_PHASES,
    MAX_LINE,
    REMOTE_PHASES,
    SIDES,
    Failure,
    PerfMarker,
    Result,
    format_connection,
    format_failure,
    format_marker,
    format_result,
    os_error_text,
    parse_failure,
    parse_stream,
)
from se.tpc.request import Mode, TransferSpec
from se.tpc.state import Transfer

# The body XRootD 5.5.3 streamed for a pull (from the capture xrootd-perfmarkers.txt,
# receive timestamps removed): four markers, 5 s apart, then the result line.
XROOTD_BODY = """\
Perf Marker
Timestamp: 1795316190
Stripe Index: 0
Stripe Bytes Transferred: 0
Total Stripe Count: 1
RemoteConnections: tcp:127.0.0.1:18081
End
Perf Marker
Timestamp: 1795316195
Stripe Index: 0
Stripe Bytes Transferred: 320818520
Total Stripe Count: 1
RemoteConnections: tcp:127.0.0.1:18081
End
Perf Marker
Timestamp: 1795316200
Stripe Index: 0
Stripe Bytes Transferred: 650067044
Total Stripe Count: 1
RemoteConnections: tcp:127.0.0.1:18081
End
Perf Marker
Timestamp: 1795316205
Stripe Index: 0
Stripe Bytes Transferred: 979315568
Total Stripe Count: 1
RemoteConnections: tcp:127.0.0.1:18081
End
success: Created
"""

CAPTURE = Path("/work/shared/spec/captures/xrootd-perfmarkers.txt")

# dCache style: field lines indented by four spaces, vendor keys mixed in.
DCACHE_BODY = """\
Perf Marker
    Timestamp: 1700000005
    State: 6
    State description: Mover running
    Stripe Index: 0
    Stripe Start Time: 1700000000
    Stripe Last Transferred: 1700000004
    Stripe Transfer Time: 4
    Stripe Bytes Transferred: 12345678
    Stripe Status: RUNNING
    Total Stripe Count: 1
    RemoteConnections: tcp:[2001:db8::5]:2880
End
success: Created
"""


# --------------------------------------------------------------------------- connections


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("127.0.0.1", 1094, "tcp:127.0.0.1:1094"),
        ("::1", 2880, "tcp:[::1]:2880"),
        ("2001:db8::5", 443, "tcp:[2001:db8::5]:443"),
        ("fe80::1%eth0", 80, "tcp:[fe80::1]:80"),  # zone id dropped
        ("::ffff:192.0.2.1", 80, "tcp:[::ffff:192.0.2.1]:80"),
        ("storage.example.org", 8443, "tcp:storage.example.org:8443"),
    ],
)
def test_format_connection(host: str, port: int, expected: str) -> None:
    assert format_connection(host, port) == expected


def test_format_connection_proto() -> None:
    assert format_connection("192.0.2.7", 53, "udp") == "udp:192.0.2.7:53"


# --------------------------------------------------------------------------- markers


def test_format_marker_exact_text() -> None:
    m = PerfMarker(
        timestamp=1700000000,
        stripe_index=2,
        stripe_bytes=1024,
        total_stripes=4,
        remote_connections=("tcp:192.0.2.1:80", "tcp:[2001:db8::1]:443"),
    )
    assert format_marker(m) == (
        b"Perf Marker\n"
        b"Timestamp: 1700000000\n"
        b"Stripe Index: 2\n"
        b"Stripe Bytes Transferred: 1024\n"
        b"Total Stripe Count: 4\n"
        b"RemoteConnections: tcp:192.0.2.1:80,tcp:[2001:db8::1]:443\n"
        b"End\n"
    )


def test_format_marker_without_connections_has_no_remote_line() -> None:
    text = format_marker(PerfMarker(timestamp=5)).decode()
    assert "RemoteConnections" not in text
    assert text.endswith("Total Stripe Count: 1\nEnd\n")


def test_format_marker_keeps_remote_connections_line_short() -> None:
    conns = tuple(format_connection(f"2001:db8::{i:x}", 65535) for i in range(100))
    text = format_marker(PerfMarker(timestamp=1, remote_connections=conns)).decode()
    for line in text.splitlines():
        assert len(line.encode()) <= MAX_LINE
    markers, _ = parse_stream(text)
    kept = markers[0].remote_connections
    assert 0 < len(kept) < len(conns)
    assert kept == conns[: len(kept)]  # whole entries, in order


_ADDRESSES = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
_CONNECTIONS = st.builds(
    format_connection,
    _ADDRESSES,
    st.integers(min_value=0, max_value=65535),
    st.sampled_from(["tcp", "udp"]),
)
_COUNTS = st.integers(min_value=0, max_value=2**63)


@st.composite
def perf_markers(draw: st.DrawFn) -> PerfMarker:
    return PerfMarker(
        timestamp=draw(_COUNTS),
        stripe_index=draw(_COUNTS),
        stripe_bytes=draw(_COUNTS),
        total_stripes=draw(st.integers(min_value=1, max_value=8192)),
        remote_connections=tuple(draw(st.lists(_CONNECTIONS, max_size=3))),
        stripe_source=draw(st.one_of(st.just(""), _CONNECTIONS)),
        stripe_destination=draw(st.one_of(st.just(""), _CONNECTIONS)),
    )


@given(perf_markers())
def test_marker_round_trip(m: PerfMarker) -> None:
    markers, result = parse_stream(format_marker(m).decode())
    assert markers == [m]
    assert markers[0].extra == {}
    assert result is None


@given(st.lists(perf_markers(), max_size=5), st.sampled_from(["success", "failure", "aborted"]))
def test_stream_round_trip(ms: list[PerfMarker], kind: str) -> None:
    body = b"".join(format_marker(m) for m in ms) + format_result(kind, "why")
    markers, result = parse_stream(body.decode())
    assert markers == ms
    assert result == Result(kind, "why")


def test_round_trip_ipv6_connection_in_brackets() -> None:
    m = PerfMarker(timestamp=1, remote_connections=(format_connection("2001:db8::7", 1094),))
    text = format_marker(m).decode()
    assert "RemoteConnections: tcp:[2001:db8::7]:1094\n" in text
    markers, _ = parse_stream(text)
    conn = markers[0].remote_connections[0]
    proto, _, rest = conn.partition(":")
    host, _, port = rest.rpartition(":")
    assert (proto, port) == ("tcp", "1094")
    assert host.startswith("[") and host.endswith("]")
    assert ipaddress.ip_address(host[1:-1]) == ipaddress.ip_address("2001:db8::7")


# --------------------------------------------------------------------------- parsing


def test_parse_xrootd_capture() -> None:
    markers, result = parse_stream(XROOTD_BODY)
    assert [m.timestamp for m in markers] == [1795316190, 1795316195, 1795316200, 1795316205]
    assert [m.stripe_bytes for m in markers] == [0, 320818520, 650067044, 979315568]
    assert {(m.stripe_index, m.total_stripes) for m in markers} == {(0, 1)}
    assert {m.remote_connections for m in markers} == {("tcp:127.0.0.1:18081",)}
    assert all(m.extra == {} for m in markers)
    assert result == Result("success", "Created")


def test_parse_xrootd_capture_with_crlf() -> None:
    markers, result = parse_stream(XROOTD_BODY.replace("\n", "\r\n"))
    assert len(markers) == 4
    assert markers[-1].stripe_bytes == 979315568
    assert result == Result("success", "Created")


@pytest.mark.skipif(not CAPTURE.exists(), reason="shared spec captures not available")
def test_embedded_body_matches_capture_file() -> None:
    lines = CAPTURE.read_text().splitlines()
    body: list[str] = []
    in_body = False
    for line in lines:
        if line.startswith("#"):
            continue
        _, _, text = line.partition("\t")
        if in_body:
            body.append(text)
        elif text == "":
            in_body = True
    text = "\n".join(body).rstrip("\n") + "\n"
    assert text == XROOTD_BODY
    assert parse_stream(text) == parse_stream(XROOTD_BODY)


def test_parse_dcache_style_block_keeps_extras() -> None:
    markers, result = parse_stream(DCACHE_BODY)
    assert result == Result("success", "Created")
    assert markers == [
        PerfMarker(
            timestamp=1700000005,
            stripe_index=0,
            stripe_bytes=12345678,
            total_stripes=1,
            remote_connections=("tcp:[2001:db8::5]:2880",),
        )
    ]
    assert markers[0].extra == {
        "state": "6",
        "state description": "Mover running",
        "stripe start time": "1700000000",
        "stripe last transferred": "1700000004",
        "stripe transfer time": "4",
        "stripe status": "RUNNING",
    }


def test_parse_fully_indented_and_case_insensitive() -> None:
    text = (
        "  perf marker\n"
        "\tTIMESTAMP: 7\n"
        "    stripe bytes transferred:   42  \n"
        "    Endpoint: not-an-end-line\n"
        "  END\n"
        "   Success: Created\n"
    )
    markers, result = parse_stream(text)
    assert markers == [PerfMarker(timestamp=7, stripe_bytes=42)]
    assert markers[0].extra == {"endpoint": "not-an-end-line"}
    assert result == Result("success", "Created")


def test_parse_several_stripes() -> None:
    body = b"".join(
        format_marker(PerfMarker(timestamp=9, stripe_index=i, stripe_bytes=i * 10, total_stripes=3))
        for i in range(3)
    )
    markers, _ = parse_stream(body.decode())
    assert [(m.stripe_index, m.stripe_bytes, m.total_stripes) for m in markers] == [
        (0, 0, 3),
        (1, 10, 3),
        (2, 20, 3),
    ]


@pytest.mark.parametrize(
    "block",
    [
        "Perf Marker\nTimestamp: soon\nEnd\n",  # malformed number
        "Perf Marker\nTimestamp: 1\nStripe Bytes Transferred: 1.5\nEnd\n",
        "Perf Marker\nStripe Bytes Transferred: 10\nEnd\n",  # no timestamp
    ],
)
def test_malformed_block_dropped(block: str) -> None:
    good = "Perf Marker\nTimestamp: 3\nEnd\n"
    markers, result = parse_stream(block + good + "success: Created\n")
    assert markers == [PerfMarker(timestamp=3)]
    assert result == Result("success", "Created")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("success: Created", Result("success", "Created")),
        ("Success", Result("success", "")),
        (
            "failure: Remote side failed with status code 404",
            Result("failure", "Remote side failed with status code 404"),
        ),
        ("FAILURE: boom", Result("failure", "boom")),
        ("failed: source went away", Result("failure", "source went away")),
        ("Failed: x", Result("failure", "x")),
        ("aborted: server shutting down", Result("aborted", "server shutting down")),
        ("   failure: indented", Result("failure", "indented")),
    ],
)
def test_parse_result_line(line: str, expected: Result) -> None:
    markers, result = parse_stream(f"Perf Marker\nTimestamp: 1\nEnd\n{line}\n")
    assert len(markers) == 1
    assert result == expected


def test_nothing_after_result_is_read() -> None:
    text = "failure: first\nPerf Marker\nTimestamp: 1\nEnd\nsuccess: Created\n"
    assert parse_stream(text) == ([], Result("failure", "first"))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        "Perf Marker\nTimestamp: 1\nEnd\n",
        XROOTD_BODY.replace("success: Created\n", ""),
        "Perf Marker\nTimestamp: 1\n",  # cut in the middle of a block
        "some unrelated text\n",
    ],
)
def test_stream_without_result(text: str) -> None:
    _, result = parse_stream(text)
    assert result is None


_LINES = st.sampled_from(
    [
        "Perf Marker",
        "End",
        "Timestamp: 1",
        "Timestamp: -1",
        "Timestamp: x",
        "Stripe Index: 99999999999999999999999",
        "Stripe Bytes Transferred: " + "9" * 5000,
        "Total Stripe Count: 0",
        "RemoteConnections: tcp:[::1]:1,,",
        "RemoteConnections:",
        ":",
        "success",
        "failure:",
        "failed",
        "aborted: x",
        "    State: 3",
    ]
)


@given(
    st.lists(st.one_of(_LINES, st.text(max_size=40)), max_size=30), st.sampled_from(["\n", "\r\n"])
)
def test_parse_stream_never_raises_on_line_soup(lines: list[str], sep: str) -> None:
    markers, result = parse_stream(sep.join(lines))
    assert all(isinstance(m, PerfMarker) for m in markers)
    assert result is None or result.kind in ("success", "failure", "aborted")


@given(st.text(st.characters(codec=None, exclude_categories=())))
@example("Perf Marker\nTimestamp: " + "1" * 5000 + "\nEnd\n")
@example("Perf Marker\nTimestamp: ²\nEnd\n")
def test_parse_stream_never_raises(text: str) -> None:
    markers, result = parse_stream(text)
    assert isinstance(markers, list)
    assert result is None or isinstance(result, Result)


# --------------------------------------------------------------------------- result line


def test_format_result_defaults() -> None:
    assert format_result("success") == b"success: Created\n"
    assert format_result("success", "  \n ") == b"success: Created\n"
    assert format_result("failure", "boom") == b"failure: boom\n"
    assert format_result("aborted", "server shutting down") == b"aborted: server shutting down\n"


def test_format_result_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown result kind"):
        format_result("failed", "x")


def test_format_result_folds_lines_and_controls() -> None:
    line = format_result("failure", "first\r\nsecond\tthird\x00\x1b[31mred\u2028next\x85end")
    assert line == b"failure: first second third [31mred next end\n"


def test_format_result_truncates_long_message() -> None:
    line = format_result("failure", "x" * 5000)
    assert line.endswith(b"...\n")
    assert len(line) <= MAX_LINE + 1
    assert line.startswith(b"failure: xxx")


def test_format_result_truncates_on_a_character_boundary() -> None:
    line = format_result("failure", "\u20ac" * 2000)  # 3 bytes each
    text = line.decode()  # would fail on a cut character
    assert text.endswith("...\n")
    assert len(line) <= MAX_LINE + 1


_ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()))


@given(st.sampled_from(["success", "failure", "aborted"]), _ANY_TEXT)
@example("failure", "a\nb\rc\x00d" * 500)
@example("failure", "\U0001f600" * 1000)
@example("aborted", "\ud800\udfff lone surrogates")
def test_format_result_is_one_short_line(kind: str, message: str) -> None:
    line = format_result(kind, message)
    assert line.endswith(b"\n")
    body = line[:-1]
    assert b"\n" not in body and b"\r" not in body
    assert len(body) <= MAX_LINE
    text = body.decode()  # valid UTF-8
    assert text.isprintable()
    assert text.startswith(f"{kind}: ")
    # A client reads it back as the same kind.
    markers, result = parse_stream(line.decode())
    assert markers == []
    assert result is not None and result.kind == kind


@given(st.sampled_from(["success", "failure", "aborted"]), st.text(max_size=3000))
@example("failure", "x" * 990)
def test_format_result_round_trips_message(kind: str, message: str) -> None:
    line = format_result(kind, message)
    _, result = parse_stream(line.decode())
    assert result == Result(kind, line.decode()[len(kind) + 1 : -1].strip())


def test_format_result_under_max_line() -> None:
    message = "x" * (MAX_LINE - len("failure: "))
    line = format_result("failure", message)
    assert len(line) - 1 < MAX_LINE


# --------------------------------------------------------------------------- stripe ends


def test_format_marker_with_stripe_ends_exact_text() -> None:
    m = PerfMarker(
        timestamp=1700000000,
        stripe_bytes=7,
        remote_connections=("tcp:192.0.2.1:1094",),
        stripe_source="tcp:192.0.2.1:1094",
        stripe_destination="tcp:[2001:db8::2]:40112",
    )
    assert format_marker(m) == (
        b"Perf Marker\n"
        b"Timestamp: 1700000000\n"
        b"Stripe Index: 0\n"
        b"Stripe Bytes Transferred: 7\n"
        b"Total Stripe Count: 1\n"
        b"RemoteConnections: tcp:192.0.2.1:1094\n"
        b"Stripe Source: tcp:192.0.2.1:1094\n"
        b"Stripe Destination: tcp:[2001:db8::2]:40112\n"
        b"End\n"
    )
    markers, _ = parse_stream(format_marker(m).decode())
    assert markers == [m] and markers[0].extra == {}


# The prefixes davix (src/modules/copy/copy.cpp, monitorPerformanceMarkers) compares, in its
# order, case-insensitively, after leading whitespace; anything else is logged and ignored.
DAVIX_PREFIXES = (
    "Perf Marker",
    "Timestamp:",
    "Stripe Index:",
    "Stripe Bytes Transferred:",
    "Total Stripe Count:",
    "RemoteConnections:",
    "End",
    "success",
    "aborted",
    "failed",
    "failure",
)


def _davix_reads(line: str) -> str | None:
    text = line.lstrip().lower()
    return next((p for p in DAVIX_PREFIXES if text.startswith(p.lower())), None)


@given(perf_markers())
def test_davix_ignores_the_stripe_end_lines(m: PerfMarker) -> None:
    for line in format_marker(m).decode().splitlines():
        if line.startswith(("Stripe Source:", "Stripe Destination:")):
            assert _davix_reads(line) is None, line
        else:
            assert _davix_reads(line) is not None, line
        assert len(line.encode()) < MAX_LINE


# --------------------------------------------------------------------------- failure lines


def test_failure_tags() -> None:
    assert Failure("source", "first byte", "x").tag == "source first byte"
    assert Failure("destination", "TLS", "x").tag == "destination TLS"
    assert Failure("local", "write", "x").tag == "local write"
    assert Failure("", "checksum", "x").tag == "checksum"
    assert str(Failure("source", "body", "the data ended early")) == (
        "source body: the data ended early"
    )


@pytest.mark.parametrize(
    ("side", "phase"),
    [("source", "write"), ("local", "body"), ("", "body"), ("remote", "connect"), ("", "")],
)
def test_failure_refuses_unknown_tags(side: str, phase: str) -> None:
    with pytest.raises(ValueError, match="no failure tag"):
        Failure(side, phase, "x")


def test_format_failure_exact_lines() -> None:
    line = format_failure(
        "failure",
        Failure(
            "destination",
            "connect",
            "cannot connect to 127.0.0.1:9: Connection refused (errno 111)",
        ),
        "/data/f",
        "http://127.0.0.1:9/x",
    )
    assert line == (
        b"failure: destination connect: cannot connect to 127.0.0.1:9: Connection refused "
        b"(errno 111); local=/data/f remote=http://127.0.0.1:9/x\n"
    )
    line = format_failure("aborted", "server shutting down", "/f", "https://h/f?...")
    assert line == b"aborted: server shutting down; local=/f remote=https://h/f?...\n"


def test_parse_failure_reads_back_status_and_errno() -> None:
    line = format_failure(
        "failure",
        Failure("source", "first byte", "GET answered HTTP 404 Not Found: Unable to open /nope"),
        "/local/x",
        "https://src.example.org:1094/nope",
    )
    parsed = parse_failure(line.decode())
    assert parsed is not None
    assert (parsed.side, parsed.phase, parsed.tag) == ("source", "first byte", "source first byte")
    assert parsed.status == 404 and parsed.errno is None
    assert parsed.detail == "GET answered HTTP 404 Not Found: Unable to open /nope"
    assert (parsed.local, parsed.remote) == ("/local/x", "https://src.example.org:1094/nope")

    disk = Failure("local", "write", "/full/x: No space left on device (errno 28)")
    parsed = parse_failure(format_failure("failure", disk, "/full/x", "http://h/f").decode())
    assert parsed is not None
    assert (parsed.tag, parsed.status, parsed.errno) == ("local write", None, 28)

    # What davix hands gfal2 (and FTS shows): the line after "Transfer ".
    _markers, result = parse_stream(format_failure("failure", disk, "/a b", "http://h/f").decode())
    assert result is not None
    parsed = parse_failure(result.message)
    assert parsed is not None and parsed.local == "/a b" and parsed.tag == "local write"


@pytest.mark.parametrize(
    "line",
    [
        "failure: Couldn't connect to server",  # XRootD
        "failure: stall timeout: no data; local=/x remote=http://h/x",  # before the tags
        "success: Created",
        "failure: source first byte: no suffix",
    ],
)
def test_parse_failure_of_other_lines(line: str) -> None:
    assert parse_failure(line) is None


_TAGGED = st.one_of(
    st.builds(
        Failure, st.sampled_from(SIDES), st.sampled_from(REMOTE_PHASES), st.text(max_size=2000)
    ),
    st.builds(Failure, st.just("local"), st.sampled_from(LOCAL_PHASES), st.text(max_size=2000)),
    st.builds(Failure, st.just(""), st.just("checksum"), st.text(max_size=2000)),
)
_PATHS = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=300)
_URLS = st.from_regex(r"https?://[a-z0-9.:\[\]]{1,60}/[!-~]{0,400}", fullmatch=True)


def _folded(text: str) -> str:
    """What one line keeps of a text: printable characters, single spaces."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


@given(_TAGGED, _PATHS, _URLS)
@example(Failure("source", "body", "x" * 5000), "/p" * 200, "http://h/" + "q" * 400)
@example(Failure("", "checksum", "\u20ac" * 2000), "/f", "http://h/f")
@example(Failure("source", "HEAD", "a; local=/evil remote=http://x/y"), "/f", "http://h/f")
def test_failure_line_round_trip(failure: Failure, local: str, remote: str) -> None:
    line = format_failure("failure", failure, local, remote)
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    assert len(line) - 1 <= MAX_LINE
    parsed = parse_failure(line.decode())
    assert parsed is not None, line
    assert (parsed.side, parsed.phase) == (failure.side, failure.phase)
    assert parsed.remote == remote
    assert parsed.local == _folded(local)
    want = _folded(failure.detail)
    if parsed.detail.endswith("...") and parsed.detail != want:
        assert want.startswith(parsed.detail[:-3]), (want, parsed.detail)
    else:
        assert parsed.detail == want


def test_a_long_detail_keeps_the_tag_and_the_suffix() -> None:
    line = format_failure(
        "failure", Failure("source", "body", "x" * 5000), "/local/path", "http://remote/p?..."
    )
    assert len(line) <= MAX_LINE
    assert line.startswith(b"failure: source body: xxx")
    assert line.endswith(b"...; local=/local/path remote=http://remote/p?...\n"), line


def test_os_error_text() -> None:
    assert os_error_text(OSError(28, "whatever the call said")) == (
        "No space left on device (errno 28)"
    )
    assert os_error_text(ConnectionRefusedError(111, "Connect call failed")) == (
        "Connection refused (errno 111)"
    )
    assert os_error_text(OSError("no errno here")) == "no errno here"
    assert os_error_text(OSError(-2, "Name or service not known")) == "Name or service not known"


# --------------------------------------------------------------------------- a transfer's


def _spec(mode: Mode) -> TransferSpec:
    return TransferSpec(mode, "http://127.0.0.1:1/f", True, None, 1, (), None, ())


@pytest.mark.parametrize("mode", [Mode.PULL, Mode.PUSH])
async def test_transfer_markers_name_both_ends_and_where_it_is(mode: Mode) -> None:
    """Over a real loopback connection: the stripe ends in the marker, and the phase a
    failure without a tag of its own is reported in."""

    done = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()
        await writer.wait_closed()
        done.set()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        here = writer.transport.get_extra_info("sockname")[1]
        t = Transfer(_spec(mode), confine("/f"))
        side = "source" if mode is Mode.PULL else "destination"
        assert t.where() == (side, "connect")
        assert b"Stripe Source" not in format_marker(t.marker())  # no connection yet
        t.peer("127.0.0.1", port, writer.transport)
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(done.wait(), 5)
    finally:
        server.close()
        await server.wait_closed()
    m = t.marker()
    ends = (f"tcp:127.0.0.1:{port}", f"tcp:127.0.0.1:{here}")
    got = (m.stripe_source, m.stripe_destination)
    assert got == (ends if mode is Mode.PULL else ends[::-1])
    assert t.where() == (side, "first byte")
    t.size = 10
    t.progress(4)
    assert t.where() == (side, "body")
    t.progress(6)
    assert t.where() == (("local", "write") if mode is Mode.PULL else (side, "close"))
    assert Failure(*t.where(), "timed out").tag in {"local write", "destination close"}
