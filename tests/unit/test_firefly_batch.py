"""Unit tests for the cheap firefly path (se.scitags.firefly): the timestamp clock against
datetime, the exact bytes of a datagram, sends batched once per event-loop iteration,
collectors on connected sockets (a collector that is down, then up), the RTT read from the
event loop's stand-in socket, and SciTagService reporting through it.

Only local sockets on 127.0.0.1 with ephemeral ports; every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import time
from collections.abc import Iterator

import pytest
import uvloop

from se.config import SciTagsConfig
from se.scitags import firefly
from se.scitags.firefly import FireflySender, Flow, datagram, now_iso, rtt_ms
from se.scitags.service import SciTagService
from se.scitags.tags import Tag
from tests.unit.test_firefly import HEADER, NOW, STARTED, _split

ATLAS_STAGING = Tag(2, 19)


@contextlib.contextmanager
def _listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5.0)
        yield sock
    finally:
        sock.close()


def _pending(sock: socket.socket) -> list[bytes]:
    """The datagrams queued on ``sock`` now (without waiting)."""
    got = []
    sock.setblocking(False)
    try:
        for _ in range(1000):
            try:
                got.append(sock.recv(65535))
            except BlockingIOError:
                break
    finally:
        sock.settimeout(5.0)
    return got


def _flow(port: int = 40000) -> Flow:
    return Flow(("127.0.0.1", 8443), ("127.0.0.1", port), ATLAS_STAGING, "se http-get", "127.0.0.1")


# -- the clock ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ns",
    [
        0,
        999_999_999,
        1_780_000_000_000_000_000,
        1_780_000_000_999_999_999,
        1_780_000_001_000_000_000,
        1_780_000_001_000_000_999,
        1_780_000_001_000_001_000,
        1_798_761_599_999_999_000,  # the last microsecond of 2026
        1_798_761_600_000_000_000,
    ],
)
def test_clock_matches_datetime(monkeypatch: pytest.MonkeyPatch, ns: int) -> None:
    clock = firefly._Clock()
    monkeypatch.setattr(time, "time_ns", lambda: ns)
    second, rest = divmod(ns, 1_000_000_000)
    expected = dt.datetime.fromtimestamp(second, dt.UTC).replace(microsecond=rest // 1000)
    assert clock() == expected.isoformat(timespec="microseconds")
    assert clock() == expected.isoformat(timespec="microseconds")  # the cached second


def test_clock_steps_across_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = firefly._Clock()
    base = 1_780_000_000 * 1_000_000_000
    for step in range(0, 5_000_000_000, 250_000_000):
        monkeypatch.setattr(time, "time_ns", lambda ns=base + step: ns)
        when = dt.datetime.fromtimestamp((base + step) / 1e9, dt.UTC)
        assert clock() == when.isoformat(timespec="microseconds")


def test_now_iso_is_now() -> None:
    for _ in range(1000):
        before = dt.datetime.now(dt.UTC)
        text = now_iso()
        after = dt.datetime.now(dt.UTC)
        assert before <= dt.datetime.fromisoformat(text) <= after


# -- the exact bytes ---------------------------------------------------------------------


def test_datagram_exact_bytes() -> None:
    flow = Flow(("2001:db8::1", 8443), ("::ffff:192.0.2.7", 51544), ATLAS_STAGING, "se http-get",
                "::ffff:192.0.2.7", STARTED)  # fmt: skip
    flow.sent, flow.received = 4096, 120
    start = datagram(flow, "start", "se.example.org", now=NOW)
    end = datagram(flow, "end", "se.example.org", rtt_ms=0.0421, now=NOW)
    static = (
        '"context":{"experiment-id":2,"activity-id":19,"application":"se http-get"},'
        '"flow-id":{"afi":"ipv6","src-ip":"2001:db8::1","dst-ip":"192.0.2.7","protocol":"tcp",'
        '"src-port":8443,"dst-port":51544}'
    )
    head = "<134>1 2026-07-01T10:00:05.654321+00:00 se.example.org se - firefly-json - "
    assert start.decode() == (
        head + '{"version":1,"flow-lifecycle":{"state":"start",'
        '"current-time":"2026-07-01T10:00:05.654321+00:00",'
        '"start-time":"2026-07-01T10:00:00.123456+00:00"},' + static + "}"
    )
    assert end.decode() == (
        head + '{"version":1,"flow-lifecycle":{"state":"end",'
        '"current-time":"2026-07-01T10:00:05.654321+00:00",'
        '"start-time":"2026-07-01T10:00:00.123456+00:00",'
        '"end-time":"2026-07-01T10:00:05.654321+00:00"},' + static
        + ',"usage":{"received":120,"sent":4096},"netlink":{"rtt":0.042}}'
    )  # fmt: skip


def test_application_is_json_escaped() -> None:
    flow = Flow(("192.0.2.1", 1), ("192.0.2.2", 2), ATLAS_STAGING, 'se "x"\\é', "192.0.2.2")
    _, body = _split(datagram(flow, "start", "h", now=NOW))
    assert body["context"]["application"] == 'se "x"\\é'
    assert b'"application":"se \\"x\\"\\\\\\u00e9"' in datagram(flow, "start", "h", now=NOW)


def test_flow_start_time_is_its_first_firefly() -> None:
    flow = Flow(("192.0.2.1", 1), ("192.0.2.2", 2), ATLAS_STAGING, "se", "192.0.2.2")
    match, body = _split(datagram(flow, "start", "h"))
    lifecycle = body["flow-lifecycle"]
    assert lifecycle["start-time"] == lifecycle["current-time"] == match["ts"]
    time.sleep(0.002)
    _, body = _split(datagram(flow, "end", "h"))
    assert body["flow-lifecycle"]["start-time"] == lifecycle["start-time"]
    assert body["flow-lifecycle"]["end-time"] > lifecycle["start-time"]


# -- batched sends -----------------------------------------------------------------------


async def test_sends_wait_for_the_end_of_the_loop_iteration() -> None:
    with _listener() as peer_rx, _listener() as coll_rx:
        sender = FireflySender(
            "se.test",
            peer_rx.getsockname()[1],
            True,
            [("127.0.0.1", coll_rx.getsockname()[1])],
            (),
            True,
        )
        try:
            flow = _flow()
            sender.emit(flow, "start")
            flow.sent = 4096
            sender.emit(flow, "end", rtt_ms=0.5)
            assert sender.sent == 0  # queued: nothing sent in the middle of a callback
            assert _pending(peer_rx) == [] and _pending(coll_rx) == []
            await asyncio.sleep(0)  # the flush was scheduled before this task's wake-up
            assert (sender.sent, sender.dropped, sender.skipped) == (4, 0, 0)
            for rx in (peer_rx, coll_rx):
                got = _pending(rx)
                assert [_split(d)[1]["flow-lifecycle"]["state"] for d in got] == ["start", "end"]
                assert _split(got[1])[1]["usage"]["sent"] == 4096
        finally:
            sender.close()


async def test_close_sends_what_is_queued() -> None:
    with _listener() as rx:
        sender = FireflySender("se.test", 0, False, [("127.0.0.1", rx.getsockname()[1])], (), True)
        sender.emit(_flow(), "start")
        sender.close()
        assert sender.sent == 1
        assert HEADER.fullmatch(rx.recv(65535).decode())


async def test_filtered_are_counted_in_the_batch() -> None:
    with _listener() as rx:
        sender = FireflySender("se.test", rx.getsockname()[1], True, [], (), False)
        try:
            sender.emit(_flow(), "start")  # loopback, report_local off
            assert sender.skipped == 1
            await asyncio.sleep(0)
            assert (sender.sent, sender.dropped, sender.skipped) == (0, 0, 1)
            assert _pending(rx) == []
        finally:
            sender.close()


def test_many_in_one_iteration_under_uvloop() -> None:
    async def run() -> None:
        with _listener() as rx:
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            port = rx.getsockname()[1]
            sender = FireflySender("se.test", 0, False, [("127.0.0.1", port)], (), True)
            try:
                for i in range(200):
                    sender.emit(_flow(40000 + i), "start")
                await asyncio.sleep(0)
                assert (sender.sent, sender.dropped) == (200, 0)
                got = _pending(rx)
                ports = [_split(d)[1]["flow-id"]["dst-port"] for d in got]
                assert ports == list(range(40000, 40200))  # all of them, in order
            finally:
                sender.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())


# -- collectors on connected sockets -----------------------------------------------------


def test_collector_down_then_up() -> None:
    """A collector port with no listener answers with ICMP port unreachable, which a
    connected socket reports on the next send: that datagram is sent again, not lost."""
    with _listener() as probe:
        port = probe.getsockname()[1]
    sender = FireflySender("se.test", 0, False, [("127.0.0.1", port)], (), True)
    try:
        for _ in range(5):
            sender.emit(_flow(), "start")
        assert (sender.sent, sender.dropped) == (5, 0)
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            try:
                rx.bind(("127.0.0.1", port))
            except OSError:
                pytest.skip("the collector's port was taken in the meantime")
            rx.settimeout(5.0)
            sender.emit(_flow(), "end")
            assert _split(rx.recv(65535))[1]["flow-lifecycle"]["state"] == "end"
            assert (sender.sent, sender.dropped) == (6, 0)
        finally:
            rx.close()
    finally:
        sender.close()


def test_collector_failures_still_counted() -> None:
    sender = FireflySender("se.test", 0, False, [("255.255.255.255", 10514)], (), True)
    try:
        sender.emit(_flow(), "start")
        sender.emit(_flow(), "end")
        assert (sender.sent, sender.dropped) == (0, 2)  # EACCES at connect, each time
    finally:
        sender.close()


# -- RTT from the loop's socket ----------------------------------------------------------


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop])
def test_rtt_from_transport_socket(loop_factory: object) -> None:
    async def run() -> None:
        accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

        async def on_client(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            accepted.set_result(w)

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        async with server:
            _, client = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
            writer = await asyncio.wait_for(accepted, 5.0)
            sock = writer.transport.get_extra_info("socket")
            rtt = rtt_ms(sock)
            assert isinstance(rtt, float) and 0.0 <= rtt < 5000.0
            writer.close()
            await writer.wait_closed()
            client.close()
            assert rtt_ms(writer.transport.get_extra_info("socket")) is None

    assert callable(loop_factory)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run())


def test_rtt_of_nothing() -> None:
    assert rtt_ms(None) is None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert rtt_ms(udp) is None


# -- through SciTagService ---------------------------------------------------------------


async def test_service_start_end_with_rtt() -> None:
    with _listener() as rx:
        cfg = SciTagsConfig(
            report_local=True, send_to_peer=False, collectors=(f"127.0.0.1:{rx.getsockname()[1]}",)
        )
        svc = SciTagService(cfg)
        with socket.socket() as lsock:
            lsock.bind(("127.0.0.1", 0))
            lsock.listen(1)
            client = socket.create_connection(lsock.getsockname(), timeout=5.0)
            conn, _ = lsock.accept()
            try:
                tag = svc.tag_for({"SciTag": "147"}, {})
                assert tag == ATLAS_STAGING
                flow = Flow(conn.getsockname(), conn.getpeername(), tag, "se http-get", "127.0.0.1")
                svc.start(flow, accepted=True, sock=conn)
                flow.sent = 10
                svc.end(flow, conn, accepted=True)
                await asyncio.sleep(0)
            finally:
                conn.close()
                client.close()
        svc.close()
        start, end = (_split(d)[1] for d in _pending(rx))
        assert start["flow-lifecycle"]["state"] == "start" and "netlink" not in start
        assert end["flow-lifecycle"]["state"] == "end"
        assert end["usage"]["sent"] == 10
        assert end["netlink"]["rtt"] >= 0.0
        assert (svc.sender.sent, svc.sender.dropped) == (2, 0)


@pytest.mark.parametrize(
    ("fireflies", "pipe", "expected"),
    [(True, "", True), (False, "", False), (False, "/run/flowd", True), (True, "/x", True)],
)
def test_service_wants_flows(fireflies: bool, pipe: str, expected: bool) -> None:
    svc = SciTagService(SciTagsConfig(fireflies=fireflies, flowd_pipe=pipe))
    try:
        assert svc.wants_flows is expected
    finally:
        svc.close()
