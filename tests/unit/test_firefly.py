"""Unit tests for se.scitags.firefly: the firefly datagram (RFC 5424 header + SciTags JSON,
digest §6), address normalisation, the sender's scope filter and counters, and TCP_INFO.

The only sockets are local ones bound to 127.0.0.1 / ::1 with ephemeral ports."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from hypothesis import given
from hypothesis import strategies as st

from se.scitags.firefly import MAX_DATAGRAM, FireflySender, Flow, datagram, plain_ip, tcp_info
from se.scitags.tags import INVALID, Tag

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "data" / "firefly.schema.json"
HEADER = re.compile(
    r"<134>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) - firefly-json - (?P<body>\{.*\})", re.S
)
STARTED = dt.datetime(2026, 7, 1, 10, 0, 0, 123456, tzinfo=dt.UTC)
NOW = dt.datetime(2026, 7, 1, 10, 0, 5, 654321, tzinfo=dt.UTC)
ATLAS_STAGING = Tag(2, 19)


def _load_schema() -> dict[str, Any]:
    # The upstream schema has trailing commas (not JSON): drop them before `}` / `]`.
    text = re.sub(r",(\s*[}\]])", r"\1", SCHEMA_FILE.read_text(encoding="utf-8"))
    schema: dict[str, Any] = json.loads(text)
    return schema


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = _load_schema()
    cls = jsonschema.Draft202012Validator
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _flow(
    src: tuple[str, int] = ("2001:db8::1", 8443),
    dst: tuple[str, int] = ("2001:db8::2", 51544),
    tag: Tag = ATLAS_STAGING,
    application: str = "http-get",
    peer: str | None = None,
) -> Flow:
    flow = Flow(src, dst, tag, application, peer if peer is not None else dst[0], STARTED)
    flow.sent = 1073741824
    flow.received = 1234
    return flow


def _split(data: bytes) -> tuple[re.Match[str], dict[str, Any]]:
    text = data.decode()
    match = HEADER.fullmatch(text)
    assert match is not None, text
    body: dict[str, Any] = json.loads(match["body"])
    return match, body


def _utc(text: str) -> dt.datetime:
    # digest §6.2: YYYY-MM-DDTHH:MM:SS.ffffff+00:00
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", text), text
    return dt.datetime.fromisoformat(text)


# -- schema sanity: the validator really checks what the tests rely on -------------------


def test_schema_validator_is_strict(validator: Any) -> None:
    _, good = _split(datagram(_flow(), "end", "se.example.org", now=NOW))
    validator.validate(good)
    bad_afi = json.loads(json.dumps(good))
    bad_afi["flow-id"]["afi"] = "ipv4"  # addresses are IPv6
    bad_extra = json.loads(json.dumps(good))
    bad_extra["flow-id"]["vlan"] = 1
    no_end = json.loads(json.dumps(good))
    del no_end["flow-lifecycle"]["end-time"]
    bad_port = json.loads(json.dumps(good))
    bad_port["flow-id"]["src-port"] = 0
    for doc in (bad_afi, bad_extra, no_end, bad_port):
        assert not validator.is_valid(doc)
    if "date-time" in jsonschema.Draft202012Validator.FORMAT_CHECKER.checkers:
        # needs rfc3339-validator; the tests also check every timestamp themselves (_utc)
        bad_time = json.loads(json.dumps(good))
        bad_time["flow-lifecycle"]["start-time"] = "yesterday"
        assert not validator.is_valid(bad_time)


# -- datagram ----------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["start", "ongoing", "end"])
def test_datagram_ipv6(validator: Any, state: str) -> None:
    data = datagram(_flow(), state, "se.example.org", now=NOW)
    assert data.startswith(b"<134>1 ")
    match, body = _split(data)
    assert _utc(match["ts"]) == NOW
    assert match["host"] == "se.example.org"
    assert match["app"] == "se"
    validator.validate(body)
    assert body["version"] == 1
    lifecycle = body["flow-lifecycle"]
    assert lifecycle["state"] == state
    assert _utc(lifecycle["start-time"]) == STARTED
    assert _utc(lifecycle["current-time"]) == NOW
    assert body["flow-id"] == {
        "afi": "ipv6",
        "src-ip": "2001:db8::1",
        "dst-ip": "2001:db8::2",
        "protocol": "tcp",
        "src-port": 8443,
        "dst-port": 51544,
    }
    assert body["context"] == {"experiment-id": 2, "activity-id": 19, "application": "http-get"}
    assert "netlink" not in body
    if state == "end":
        assert _utc(lifecycle["end-time"]) == NOW
    else:
        assert "end-time" not in lifecycle
    if state == "start":
        assert "usage" not in body
    else:
        assert body["usage"] == {"received": 1234, "sent": 1073741824}


@pytest.mark.parametrize("state", ["start", "end"])
def test_datagram_ipv4(validator: Any, state: str) -> None:
    flow = _flow(src=("192.0.2.10", 5000), dst=("198.51.100.7", 443), application="http-put")
    _, body = _split(datagram(flow, state, "se.example.org", now=NOW))
    validator.validate(body)
    assert body["flow-id"]["afi"] == "ipv4"
    assert body["flow-id"]["src-ip"] == "192.0.2.10"
    assert body["flow-id"]["dst-ip"] == "198.51.100.7"
    assert (body["flow-id"]["src-port"], body["flow-id"]["dst-port"]) == (5000, 443)
    assert ("usage" in body) == (state == "end")
    assert ("end-time" in body["flow-lifecycle"]) == (state == "end")


@pytest.mark.parametrize("state", ["start", "end"])
def test_datagram_v4_mapped_is_plain_ipv4(validator: Any, state: str) -> None:
    flow = _flow(src=("::ffff:192.0.2.10", 8443), dst=("::ffff:198.51.100.7", 40000))
    assert flow.afi == "ipv4"
    _, body = _split(datagram(flow, state, "se.example.org", now=NOW))
    validator.validate(body)
    assert body["flow-id"]["afi"] == "ipv4"
    assert body["flow-id"]["src-ip"] == "192.0.2.10"
    assert body["flow-id"]["dst-ip"] == "198.51.100.7"


def test_datagram_zone_ids_dropped(validator: Any) -> None:
    flow = _flow(src=("fe80::1%eth0", 8443), dst=("fe80::2%2", 40000))
    _, body = _split(datagram(flow, "end", "se.example.org", now=NOW))
    validator.validate(body)
    assert body["flow-id"]["afi"] == "ipv6"
    assert body["flow-id"]["src-ip"] == "fe80::1"
    assert body["flow-id"]["dst-ip"] == "fe80::2"
    assert "%" not in json.dumps(body)


def test_datagram_rtt_in_netlink(validator: Any) -> None:
    _, body = _split(datagram(_flow(), "end", "h", rtt_ms=12.3456, now=NOW))
    validator.validate(body)
    assert body["netlink"] == {"rtt": 12.346}
    _, body = _split(datagram(_flow(), "ongoing", "h", rtt_ms=0.0, now=NOW))
    assert body["netlink"] == {"rtt": 0.0}


def test_datagram_invalid_tag_is_zero_zero(validator: Any) -> None:
    _, body = _split(datagram(_flow(tag=INVALID), "start", "h", now=NOW))
    validator.validate(body)
    assert (body["context"]["experiment-id"], body["context"]["activity-id"]) == (0, 0)


def test_datagram_blank_hostname_and_app_name() -> None:
    match, _ = _split(datagram(_flow(), "start", "", app_name="pyse", now=NOW))
    assert match["host"] == "-"
    assert match["app"] == "pyse"


def test_datagram_default_time_is_now_utc(validator: Any) -> None:
    flow = Flow(("192.0.2.1", 1), ("192.0.2.2", 2), ATLAS_STAGING, "se", "192.0.2.2")
    before = dt.datetime.now(dt.UTC)
    match, body = _split(datagram(flow, "end", "h"))
    after = dt.datetime.now(dt.UTC)
    validator.validate(body)
    assert before <= _utc(match["ts"]) <= after
    assert before <= _utc(body["flow-lifecycle"]["end-time"]) <= after
    assert _utc(body["flow-lifecycle"]["start-time"]) <= _utc(body["flow-lifecycle"]["end-time"])


def test_datagram_example_fits() -> None:
    data = datagram(_flow(), "end", "se.example.org", rtt_ms=12.345, now=NOW)
    assert len(data) < 600


@pytest.mark.parametrize(
    "application", ["x" * 5000, "é" * 3000, "😀" * 1000], ids=["ascii", "latin", "emoji"]
)
def test_datagram_size_limit(application: str) -> None:
    data = datagram(_flow(application=application), "end", "se.example.org", now=NOW)
    assert len(data) <= MAX_DATAGRAM == 1400
    assert data.startswith(b"<134>1 ")


@pytest.mark.parametrize("application", ["x" * 5000, "é" * 3000], ids=["ascii", "latin"])
def test_datagram_size_limit_keeps_valid_json(validator: Any, application: str) -> None:
    data = datagram(_flow(application=application), "end", "se.example.org", now=NOW)
    assert len(data) <= MAX_DATAGRAM
    _, body = _split(data)
    validator.validate(body)
    assert body["usage"] == {"received": 1234, "sent": 1073741824}


# -- plain_ip ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("::FFFF:192.0.2.1", "192.0.2.1"),
        ("::ffff:c000:201", "192.0.2.1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("2001:db8:0:0:0:0:0:1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("fe80::1%25", "fe80::1"),
        ("::1", "::1"),
        ("::", "::"),
        ("::192.0.2.1", "::c000:201"),  # IPv4-compatible (deprecated) is not v4-mapped
        ("se.example.org", "se.example.org"),  # not an address: unchanged
        ("", ""),
    ],
)
def test_plain_ip(address: str, expected: str) -> None:
    assert plain_ip(address) == expected


@given(st.text(max_size=60))
def test_plain_ip_never_raises(address: str) -> None:
    assert "%" not in plain_ip(address)


# -- FireflySender.reports ---------------------------------------------------------------


def _sender(
    *,
    peer_port: int = 10514,
    send_to_peer: bool = True,
    collectors: tuple[tuple[str, int], ...] = (),
    exclude: tuple[str, ...] = (),
    report_local: bool = False,
) -> FireflySender:
    return FireflySender("se.test", peer_port, send_to_peer, collectors, exclude, report_local)


@pytest.mark.parametrize(
    ("peer", "default", "local"),
    [
        ("127.0.0.1", False, True),
        ("127.1.2.3", False, True),
        ("::1", False, True),
        ("::ffff:127.0.0.1", False, True),
        ("169.254.10.1", False, True),
        ("fe80::1", False, True),
        ("fe80::1%eth0", False, True),
        ("192.0.2.1", True, True),
        ("::ffff:192.0.2.1", True, True),
        ("2001:db8::1", True, True),
        ("10.1.2.3", True, True),  # private but not local: reported
        ("not-an-address", False, False),
        ("", False, False),
    ],
)
def test_reports_local_filter(peer: str, default: bool, local: bool) -> None:
    assert _sender().reports(peer) is default
    assert _sender(report_local=True).reports(peer) is local


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("192.0.2.1", False),
        ("192.0.2.255", False),
        ("::ffff:192.0.2.77", False),
        ("192.0.3.1", True),
        ("2001:db8::1", False),
        ("2001:db8:ffff::1", False),
        ("2001:db9::1", True),
        ("198.51.100.7", True),
        ("127.0.0.1", False),  # excluded as loopback (report_local off)
    ],
)
def test_reports_exclude(peer: str, expected: bool) -> None:
    sender = _sender(exclude=("192.0.2.0/24", "2001:db8::/32"))
    assert sender.reports(peer) is expected


def test_reports_exclude_loopback_even_when_local_reported() -> None:
    sender = _sender(exclude=("127.0.0.0/8",), report_local=True)
    assert not sender.reports("127.0.0.1")
    assert not sender.reports("::ffff:127.0.0.1")
    assert sender.reports("::1")


def test_reports_exclude_non_strict_network() -> None:
    sender = _sender(exclude=("192.0.2.77/24",))
    assert not sender.reports("192.0.2.1")


# -- FireflySender: real sends on loopback -----------------------------------------------


@contextlib.contextmanager
def _udp_listener(host: str = "127.0.0.1") -> Iterator[socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, 0))
        sock.settimeout(5.0)
        yield sock
    finally:
        sock.close()


def _recv_one(sock: socket.socket) -> bytes:
    data, _ = sock.recvfrom(65535)
    return data


def _assert_empty(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        with pytest.raises(BlockingIOError):
            sock.recvfrom(65535)
    finally:
        sock.settimeout(5.0)


def _have_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_emit_sends_one_datagram_per_target(validator: Any) -> None:
    with _udp_listener() as peer_rx, _udp_listener() as coll_rx:
        sender = _sender(
            peer_port=peer_rx.getsockname()[1],
            collectors=(("127.0.0.1", coll_rx.getsockname()[1]),),
            report_local=True,
        )
        try:
            flow = _flow(src=("127.0.0.1", 8443), dst=("127.0.0.1", 40000), peer="127.0.0.1")
            sender.emit(flow, "start")
            sender.emit(flow, "end", rtt_ms=0.25)
            for rx in (peer_rx, coll_rx):
                first, second = _recv_one(rx), _recv_one(rx)
                _assert_empty(rx)
                header, start = _split(first)
                _, end = _split(second)
                assert header["host"] == "se.test"
                validator.validate(start)
                validator.validate(end)
                assert start["flow-lifecycle"]["state"] == "start"
                assert end["flow-lifecycle"]["state"] == "end"
                assert end["netlink"] == {"rtt": 0.25}
                assert end["flow-id"]["src-ip"] == "127.0.0.1"
            assert (sender.sent, sender.dropped, sender.skipped) == (4, 0, 0)
        finally:
            sender.close()


def test_emit_v4_mapped_peer_goes_to_ipv4() -> None:
    with _udp_listener() as peer_rx:
        sender = _sender(peer_port=peer_rx.getsockname()[1], report_local=True)
        try:
            flow = _flow(
                src=("::ffff:127.0.0.1", 8443),
                dst=("::ffff:127.0.0.1", 40000),
                peer="::ffff:127.0.0.1",
            )
            sender.emit(flow, "start")
            _, body = _split(_recv_one(peer_rx))
            assert body["flow-id"]["afi"] == "ipv4"
            assert (sender.sent, sender.dropped) == (1, 0)
        finally:
            sender.close()


@pytest.mark.skipif(not _have_ipv6_loopback(), reason="no IPv6 loopback")
def test_emit_ipv6_targets(validator: Any) -> None:
    with _udp_listener("::1") as peer_rx, _udp_listener() as coll_rx:
        sender = _sender(
            peer_port=peer_rx.getsockname()[1],
            collectors=(("127.0.0.1", coll_rx.getsockname()[1]),),
            report_local=True,
        )
        try:
            flow = _flow(src=("::1", 8443), dst=("::1", 40000), peer="::1")
            sender.emit(flow, "end")
            for rx in (peer_rx, coll_rx):
                _, body = _split(_recv_one(rx))
                validator.validate(body)
                assert body["flow-id"]["afi"] == "ipv6"
                _assert_empty(rx)
            assert (sender.sent, sender.dropped, sender.skipped) == (2, 0, 0)
        finally:
            sender.close()


def test_emit_collectors_only() -> None:
    with _udp_listener() as coll_rx:
        sender = _sender(send_to_peer=False, collectors=(("127.0.0.1", coll_rx.getsockname()[1]),))
        try:
            # the peer is public; with send_to_peer off only the collector gets a copy
            sender.emit(_flow(src=("192.0.2.1", 8443), dst=("198.51.100.7", 1)), "start")
            _recv_one(coll_rx)
            _assert_empty(coll_rx)
            assert (sender.sent, sender.dropped, sender.skipped) == (1, 0, 0)
        finally:
            sender.close()


def test_emit_filtered_flows_are_skipped() -> None:
    with _udp_listener() as rx:
        port = rx.getsockname()[1]
        sender = _sender(peer_port=port, collectors=(("127.0.0.1", port),))
        try:
            sender.emit(_flow(peer="127.0.0.1"), "start")  # loopback, report_local off
            sender.emit(_flow(peer="fe80::1%lo"), "start")
            sender.emit(_flow(peer="nonsense"), "end")
            _assert_empty(rx)
            assert (sender.sent, sender.dropped, sender.skipped) == (0, 0, 3)
        finally:
            sender.close()


def test_emit_failures_are_dropped_not_raised() -> None:
    """Port 0 (EINVAL) and the broadcast address without SO_BROADCAST (EACCES) make
    sendto() fail deterministically; the good collector after them still gets its copy."""
    with _udp_listener() as rx:
        sender = _sender(
            peer_port=rx.getsockname()[1],
            collectors=(
                ("127.0.0.1", 0),
                ("255.255.255.255", 10514),
                ("::1", 0),
                ("127.0.0.1", rx.getsockname()[1]),
            ),
            report_local=True,
        )
        try:
            sender.emit(_flow(peer="127.0.0.1"), "start")
            _recv_one(rx)  # the peer copy
            _recv_one(rx)  # the good collector
            _assert_empty(rx)
            assert (sender.sent, sender.dropped, sender.skipped) == (2, 3, 0)
            sender.emit(_flow(peer="127.0.0.1"), "end")
            assert (sender.sent, sender.dropped, sender.skipped) == (4, 6, 0)
        finally:
            sender.close()


def test_peer_port_zero_is_dropped() -> None:
    sender = _sender(peer_port=0, report_local=True)
    try:
        sender.emit(_flow(peer="127.0.0.1"), "start")
        assert (sender.sent, sender.dropped, sender.skipped) == (0, 1, 0)
    finally:
        sender.close()


def test_emit_out_of_range_port_is_dropped() -> None:
    sender = _sender(peer_port=0, collectors=(("127.0.0.1", 70000),), report_local=True)
    try:
        sender.emit(_flow(peer="127.0.0.1"), "start")
        assert (sender.sent, sender.dropped) == (0, 2)
    finally:
        sender.close()


@given(st.text(max_size=40), st.sampled_from(["start", "ongoing", "end"]))
def test_emit_never_raises_on_odd_peers(peer: str, state: str) -> None:
    sender = _sender(peer_port=0, report_local=True)  # port 0: nothing leaves the host
    try:
        sender.emit(_flow(peer=peer), state)
        assert sender.sent == 0
        assert sender.dropped + sender.skipped == 1
    finally:
        sender.close()


def test_close_is_idempotent_and_sender_reusable() -> None:
    with _udp_listener() as rx:
        sender = _sender(peer_port=rx.getsockname()[1], report_local=True)
        sender.emit(_flow(peer="127.0.0.1"), "start")
        sender.close()
        sender.close()
        sender.emit(_flow(peer="127.0.0.1"), "end")  # a fresh socket is opened
        sender.close()
        _recv_one(rx)
        _recv_one(rx)
        assert sender.sent == 2


# -- tcp_info ----------------------------------------------------------------------------


@contextlib.contextmanager
def _tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname(), timeout=5.0)
        try:
            server, _ = listener.accept()
            with server:
                server.settimeout(5.0)
                yield client, server
        finally:
            client.close()


def test_tcp_info_connected_pair() -> None:
    payload = b"x" * 100_000
    with _tcp_pair() as (client, server):
        client.sendall(payload)
        got = 0
        while got < len(payload):
            chunk = server.recv(65536)
            assert chunk
            got += len(chunk)
        deadline = time.monotonic() + 5.0
        while True:
            rtt, acked, _ = tcp_info(client)
            if (acked is not None and acked >= len(payload)) or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert isinstance(rtt, float)
        assert 0.0 <= rtt < 5000.0
        assert isinstance(acked, int)
        assert acked >= len(payload)
        srtt, sacked, received = tcp_info(server)
        assert isinstance(srtt, float)
        assert isinstance(sacked, int)
        assert isinstance(received, int)
        assert received >= len(payload)


def test_tcp_info_unavailable() -> None:
    assert tcp_info(None) == (None, None, None)
    with _tcp_pair() as (client, _):
        client.close()
        assert tcp_info(client) == (None, None, None)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert tcp_info(udp) == (None, None, None)
