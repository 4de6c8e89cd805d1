"""End-to-end SciTags: fireflies, IPv6 flow labels and the flowd hand-off of real ``se``
servers (digest: /work/shared/spec/scitags.md).

Fireflies go to the flow's peer on ``scitags.firefly_port``; the peers here are loopback
addresses, where a :class:`~tests.e2e.firefly_collector.FireflyCollector` listens (both
families, one port) and validates every datagram against the SciTags firefly schema.
Flow labels are captured on ``lo`` with an ``AF_PACKET`` socket (root only).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import http.client
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from se.scitags.tags import Tag, decode_label, flow_label
from tests.conftest import BASE_CONFIG
from tests.e2e.firefly_collector import Firefly, FireflyCollector
from tests.support import SEProcess

pytestmark = pytest.mark.timeout(60)

MIB = 1 << 20
ATLAS_STAGING = "147"  # experiment 2 (atlas), activity 19 (Staging)
CMS_PRODUCTION = "204"  # experiment 3 (cms), activity 12 (Production Input)
METRICS = "/.well-known/se/metrics"
ENTROPY_BITS = 0xC0000 | 0x00100 | 0x00003
PAYLOAD_BITS = 0xFFFFF & ~ENTROPY_BITS

Factory = Callable[..., SEProcess]
Addr = tuple[str, int]


def scitags_config(port: int, report_local: bool = True, extra: str = "") -> str:
    return (
        BASE_CONFIG
        + f"\n[scitags]\nfirefly_port = {port}\nreport_local = {str(report_local).lower()}\n"
        + extra
    )


@pytest.fixture
def collector() -> Iterator[FireflyCollector]:
    try:
        c = FireflyCollector()
    except OSError as exc:  # e.g. no IPv6 loopback on this machine
        pytest.skip(f"cannot bind the UDP collector on ::1 and 127.0.0.1: {exc}")
    with c:
        yield c
        assert not c.errors, c.errors


# -- HTTP helpers ------------------------------------------------------------------------


@dataclass
class Exchange:
    status: int
    body: bytes
    client: Addr  # our end of the connection
    server: Addr
    elapsed: float


def request(
    srv: SEProcess,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30.0,
) -> Exchange:
    """One request on a fresh connection, remembering both ends of it."""
    parts = urlsplit(srv.url)
    host, port = str(parts.hostname), int(parts.port or 80)
    start = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        assert conn.sock is not None
        local = conn.sock.getsockname()
        resp = conn.getresponse()
        data = resp.read()
        return Exchange(
            resp.status, data, (local[0], local[1]), (host, port), time.monotonic() - start
        )
    finally:
        conn.close()


def metric(srv: SEProcess, name: str, **labels: str) -> float:
    text = request(srv, "GET", METRICS).body.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    raise AssertionError(f"{name} {labels} not in {text}")


def write(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def near(value: int | None, size: int) -> bool:
    """Within 1% of ``size``."""
    return value is not None and abs(value - size) <= size * 0.01


def flow_pair(
    c: FireflyCollector, pred: Callable[[Firefly], bool], timeout: float = 5.0
) -> tuple[Firefly, Firefly]:
    """The start and end firefly of one flow (matched by ``pred``), checked for coherence."""
    got = c.wait_for(pred, timeout, count=2)
    starts = [f for f in got if f.state == "start"]
    ends = [f for f in got if f.state == "end"]
    assert len(starts) == 1 and len(ends) == 1, [f.body for f in got]
    start, end = starts[0], ends[0]
    assert start.flow == end.flow
    assert start.tag == end.tag
    assert start.application == end.application
    assert start.afi == end.afi
    assert start.start_time == end.start_time  # the same flow
    end_time = end.end_time
    assert end_time is not None and end_time >= start.start_time
    assert "usage" not in start.body  # nothing has moved yet
    assert start.received_at <= end.received_at
    return start, end


def same_flow(one: Firefly) -> Callable[[Firefly], bool]:
    return lambda f: f.flow == one.flow


def check_only(c: FireflyCollector, expected: int, quiet: float = 0.2) -> None:
    """Exactly ``expected`` fireflies arrived (nothing duplicated or stray)."""
    got = c.quiet(quiet)
    assert len(got) == expected, [f.body for f in got]


# -- client GET and PUT (flows se accepts) -------------------------------------------------


@pytest.mark.parametrize("size", [4096, 3 * MIB + 123], ids=["4KiB", "3MiB"])
def test_get_and_put(
    se_factory: Factory, collector: FireflyCollector, size: int, tmp_path: Path
) -> None:
    srv = se_factory(scitags_config(collector.port))
    data = write(srv.root / "f", size)

    got = request(srv, "GET", "/f", {"SciTag": ATLAS_STAGING})
    assert got.status == 200 and got.body == data
    start, end = flow_pair(collector, lambda f: f.dst == got.client)
    # GET: the server supplies the data, so it is the source.
    assert start.src == ("127.0.0.1", srv.port)
    assert start.dst == got.client
    assert start.afi == "ipv4"
    assert start.tag == (2, 19)
    assert "http-get" in start.application
    assert near(end.sent, size), end.body
    assert start.sender[0] == "127.0.0.1"  # came from the server, to the peer address

    put = request(srv, "PUT", "/g", {"SciTag": ATLAS_STAGING}, body=data)
    assert put.status == 201
    assert (srv.root / "g").read_bytes() == data
    start, end = flow_pair(collector, lambda f: f.src == put.client)
    # PUT: the client supplies the data.
    assert start.src == put.client
    assert start.dst == ("127.0.0.1", srv.port)
    assert start.tag == (2, 19)
    assert "http-put" in start.application
    assert near(end.sent, size), end.body
    check_only(collector, 4)


class KeepAlive:
    """One client connection carrying many requests, as davix, gfal2 and FTS keep them."""

    def __init__(self, srv: SEProcess) -> None:
        parts = urlsplit(srv.url)
        self.conn = http.client.HTTPConnection(str(parts.hostname), int(parts.port or 80), 30)
        self.conn.connect()
        assert self.conn.sock is not None
        local = self.conn.sock.getsockname()
        self.local: Addr = (local[0], local[1])

    def __call__(
        self, method: str, path: str, tag: str | None = None, body: bytes | None = None
    ) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body, headers={"SciTag": tag} if tag else {})
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def close(self) -> None:
        self.conn.close()


def linger_server(
    se_factory: Factory, collector: FireflyCollector, linger: float
) -> tuple[SEProcess, bytes, KeepAlive]:
    """A server with ``scitags.flow_linger = linger`` serving a 4 KiB ``/f``, and one
    connection to it."""
    srv = se_factory(scitags_config(collector.port, extra=f"flow_linger = {linger}\n"))
    return srv, write(srv.root / "f", 4096), KeepAlive(srv)


def on(conn: KeepAlive) -> Callable[[Firefly], bool]:
    """The fireflies of flows on this connection (either direction)."""
    return lambda f: conn.local in (f.src, f.dst)


def current_time(f: Firefly) -> dt.datetime:
    return dt.datetime.fromisoformat(f.body["flow-lifecycle"]["current-time"])


def test_transfers_on_one_connection_make_one_flow_per_tag_and_direction(
    se_factory: Factory, collector: FireflyCollector
) -> None:
    # flow_linger is long here: only a change of tag or direction, or the connection's
    # close, ends a flow.
    srv, small, conn = linger_server(se_factory, collector, 60)
    big = write(srv.root / "big", 3 * MIB + 1)  # not a lean-path answer: sendfile
    try:
        for _ in range(3):
            assert conn("GET", "/f", ATLAS_STAGING) == (200, small)
        assert conn("GET", "/big", ATLAS_STAGING) == (200, big)
        assert conn("GET", "/f") == (200, small)  # untagged: not part of any flow
        assert conn("HEAD", "/f", ATLAS_STAGING)[0] == 200  # no data: no flow
        assert conn("GET", "/f", ATLAS_STAGING) == (200, small)
        # One flow so far, still open.
        assert [f.state for f in collector.quiet(0.3) if on(conn)(f)] == ["start"]
        assert conn("PUT", "/g", ATLAS_STAGING, small)[0] == 201  # the other direction
        assert conn("PUT", "/h", ATLAS_STAGING, small)[0] == 201
        assert conn("GET", "/f", CMS_PRODUCTION) == (200, small)  # another tag
        got = collector.wait_for(on(conn), timeout=5, count=5)
        assert [(f.state, f.application.split()[-1]) for f in got] == [
            ("start", "http-get"),
            ("end", "http-get"),
            ("start", "http-put"),
            ("end", "http-put"),
            ("start", "http-get"),
        ], [f.body for f in got]
        closed = time.monotonic()
    finally:
        conn.close()
    # The connection's close ends its last flow at once (not flow_linger later).
    got = collector.wait_for(on(conn), timeout=5, count=6)
    assert len(got) == 6, [f.body for f in got]
    assert got[5].received_at - closed < 3.0
    flows = [(got[0], got[1]), (got[2], got[3]), (got[4], got[5])]
    for start, end in flows:
        assert (start.state, end.state) == ("start", "end")
        assert start.flow == end.flow and start.tag == end.tag
        assert start.start_time == end.start_time
        assert end.end_time is not None and start.start_time <= end.end_time
    (get_a, get_a_end), (put_a, put_a_end), (get_b, get_b_end) = flows
    server = ("127.0.0.1", srv.port)
    assert (get_a.src, get_a.dst, get_a.tag) == (server, conn.local, (2, 19))
    assert (put_a.src, put_a.dst, put_a.tag) == (conn.local, server, (2, 19))
    assert (get_b.src, get_b.dst, get_b.tag) == (server, conn.local, (3, 12))
    # Each end firefly carries the bytes of all the flow's transfers.
    assert get_a_end.sent == 4 * len(small) + len(big), get_a_end.body
    assert put_a_end.sent == 2 * len(small), put_a_end.body
    assert get_b_end.sent == len(small), get_b_end.body
    # A flow ends when its last transfer did, before the next flow starts.
    assert get_a_end.end_time is not None and get_a_end.end_time <= put_a.start_time
    assert put_a_end.end_time is not None and put_a_end.end_time <= get_b.start_time
    check_only(collector, 6)


def test_a_flow_ends_flow_linger_after_its_last_transfer(
    se_factory: Factory, collector: FireflyCollector
) -> None:
    _, small, conn = linger_server(se_factory, collector, 0.3)
    try:
        assert conn("GET", "/f", ATLAS_STAGING) == (200, small)
        assert conn("GET", "/f", ATLAS_STAGING) == (200, small)
        # Nothing more on the connection: the flow ends by itself, the connection open.
        first = collector.wait_for(on(conn), timeout=5, count=2)
        assert [f.state for f in first] == ["start", "end"], [f.body for f in first]
        end = first[1]
        assert end.sent == 2 * len(small)
        assert end.end_time is not None
        # end-time is when the last transfer ended; the firefly left flow_linger later.
        assert (current_time(end) - end.end_time).total_seconds() >= 0.29
        # The next transfer on the same connection is a new flow.
        assert conn("GET", "/f", ATLAS_STAGING) == (200, small)
        got = collector.wait_for(on(conn), timeout=5, count=4)
        assert [f.state for f in got] == ["start", "end", "start", "end"]
        assert got[2].start_time > end.end_time and got[3].sent == len(small)
    finally:
        conn.close()
    check_only(collector, 4)


def test_a_server_that_stops_ends_the_flows_left_open(
    se_factory: Factory, collector: FireflyCollector
) -> None:
    srv, small, conn = linger_server(se_factory, collector, 60)
    with contextlib.closing(conn):  # the client stays connected until the end
        assert conn("GET", "/f", ATLAS_STAGING) == (200, small)
        assert [f.state for f in collector.quiet(0.3) if on(conn)(f)] == ["start"]
        srv.stop()  # SIGTERM
        got = collector.wait_for(on(conn), timeout=10, count=2)
    assert [f.state for f in got] == ["start", "end"], [f.body for f in got]
    assert got[1].sent == len(small)


def test_flow_linger_zero_makes_every_transfer_a_flow(
    se_factory: Factory, collector: FireflyCollector
) -> None:
    _, small, conn = linger_server(se_factory, collector, 0)
    try:
        for _ in range(3):
            assert conn("GET", "/f", ATLAS_STAGING) == (200, small)
        got = collector.wait_for(on(conn), timeout=5, count=6)
    finally:
        conn.close()
    assert [f.state for f in got] == ["start", "end"] * 3, [f.body for f in got]
    assert [f.sent for f in got if f.state == "end"] == [len(small)] * 3
    check_only(collector, 6)


def test_query_parameter_and_precedence(se_factory: Factory, collector: FireflyCollector) -> None:
    srv = se_factory(scitags_config(collector.port))
    write(srv.root / "f", 4096)
    got = request(srv, "GET", f"/f?scitag.flow={ATLAS_STAGING}")
    assert got.status == 200
    start, end = flow_pair(collector, lambda f: f.dst == got.client)
    assert start.tag == (2, 19) and near(end.sent, 4096)
    # The SciTag header wins over the query parameter.
    both = request(srv, "GET", f"/f?scitag.flow={ATLAS_STAGING}", {"SciTag": CMS_PRODUCTION})
    assert both.status == 200
    start, _ = flow_pair(collector, lambda f: f.dst == both.client)
    assert start.tag == (3, 12)
    check_only(collector, 4)


def test_no_tag_no_firefly(se_factory: Factory, collector: FireflyCollector) -> None:
    srv = se_factory(scitags_config(collector.port))
    data = write(srv.root / "f", 4096)
    assert request(srv, "GET", "/f").status == 200
    assert request(srv, "PUT", "/g", body=data).status == 201
    assert request(srv, "GET", "/f", {"SciTag": "  "}).status == 200  # blank: no tag
    # A tagged request last: its fireflies leave the same socket after any earlier ones.
    barrier = request(srv, "GET", "/f", {"SciTag": ATLAS_STAGING})
    flow_pair(collector, lambda f: f.dst == barrier.client)
    assert all(f.dst == barrier.client for f in collector.fireflies)
    check_only(collector, 2)


@pytest.mark.parametrize("value", ["64", "abc", "65536", "-147", "0x93"])
def test_invalid_tag_marks_zero(
    se_factory: Factory, collector: FireflyCollector, value: str
) -> None:
    srv = se_factory(scitags_config(collector.port))
    data = write(srv.root / "f", 4096)
    got = request(srv, "GET", "/f", {"SciTag": value})
    assert got.status == 200 and got.body == data  # never fails the request
    start, end = flow_pair(collector, lambda f: f.dst == got.client)
    assert start.tag == (0, 0) and end.tag == (0, 0)
    assert near(end.sent, 4096)
    put = request(srv, "PUT", "/g", {"SciTag": value}, body=data)
    assert put.status == 201
    start, _ = flow_pair(collector, lambda f: f.src == put.client)
    assert start.tag == (0, 0)


@pytest.mark.parametrize(
    ("report_local", "extra"),
    [
        pytest.param(False, "", id="report_local=false"),
        pytest.param(True, 'exclude = ["10.0.0.0/8", "127.0.0.0/8"]\n', id="exclude"),
    ],
)
def test_filtered_flows_are_not_reported(
    se_factory: Factory, collector: FireflyCollector, report_local: bool, extra: str
) -> None:
    srv = se_factory(scitags_config(collector.port, report_local, extra))
    data = write(srv.root / "f", 4096)
    assert request(srv, "GET", "/f", {"SciTag": ATLAS_STAGING}).status == 200
    assert request(srv, "PUT", "/g", {"SciTag": ATLAS_STAGING}, body=data).status == 201
    assert collector.quiet(0.3) == []
    # The server did see the flows: it filtered them.
    assert metric(srv, "se_scitags_fireflies_total", outcome="filtered") == 4
    assert metric(srv, "se_scitags_fireflies_total", outcome="sent") == 0


# -- HTTP-TPC between two se over ::1 (flows se opens) ---------------------------------------


@dataclass
class Pair:
    active: SEProcess
    passive: SEProcess


def tpc_pair(se_factory: Factory, tmp_path: Path, port: int, extra: str = "") -> Pair:
    cfg = scitags_config(port, extra=extra)
    args = ["--host", "::1"]
    return Pair(
        se_factory(cfg, root=tmp_path / "active", extra_args=args),
        se_factory(cfg, root=tmp_path / "passive", extra_args=args),
    )


def copy(pair: Pair, mode: str, size: int, *headers: tuple[str, str]) -> Exchange:
    """A TPC of a ``size``-byte file from/to the passive se, sent to the active se; the
    file is written first (on the source) and compared afterwards (on the destination)."""
    if mode == "pull":
        data = write(pair.passive.root / "src", size)
        hdrs = {"Source": f"{pair.passive.url}/src"}
        path, target = "/dst", pair.active.root / "dst"
    else:
        data = write(pair.active.root / "src", size)
        hdrs = {"Destination": f"{pair.passive.url}/dst"}
        path, target = "/src", pair.passive.root / "dst"
    hdrs.update(headers)
    ex = request(pair.active, "COPY", path, hdrs)
    assert ex.status == 202, ex.body[-500:]
    assert ex.body.decode().rstrip("\n").endswith("success: Created"), ex.body[-500:]
    assert target.read_bytes() == data
    return ex


def is_tpc(f: Firefly) -> bool:
    return "http-tpc" in f.application


def check_tpc_flow(start: Firefly, end: Firefly, pair: Pair, mode: str, size: int) -> None:
    remote = ("::1", pair.passive.port)
    assert start.afi == "ipv6"
    assert start.tag == (3, 12)
    if mode == "pull":  # the remote (passive) supplies the data
        assert start.src == remote
        local = start.dst
    else:  # push: the active party supplies it
        assert start.dst == remote
        local = start.src
    assert local[0] == "::1" and local[1] not in (pair.active.port, pair.passive.port)
    assert near(end.sent, size), end.body


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_tpc_fireflies(
    se_factory: Factory, collector: FireflyCollector, tmp_path: Path, mode: str
) -> None:
    pair = tpc_pair(se_factory, tmp_path, collector.port)
    size = 3 * MIB + 7
    copy(pair, mode, size, ("SciTag", CMS_PRODUCTION))
    start, end = flow_pair(collector, is_tpc)
    check_tpc_flow(start, end, pair, mode, size)
    assert start.sender[0] == "::1"
    # The passive party was given no tag: its side of the flow is not reported.
    check_only(collector, 2)


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_transfer_header_scitag_reaches_passive(
    se_factory: Factory, collector: FireflyCollector, tmp_path: Path, mode: str
) -> None:
    pair = tpc_pair(se_factory, tmp_path, collector.port)
    size = 2 * MIB + 1
    copy(pair, mode, size, ("SciTag", CMS_PRODUCTION), ("TransferHeaderSciTag", ATLAS_STAGING))
    active = flow_pair(collector, is_tpc)
    check_tpc_flow(*active, pair, mode, size)
    # The passive se got SciTag: 147 on the GET (pull) or PUT (push) the active one sent.
    app = "http-get" if mode == "pull" else "http-put"
    start, end = flow_pair(collector, lambda f: app in f.application)
    assert start.tag == (2, 19)
    assert start.flow == active[0].flow  # both ends describe the same TCP connection
    assert near(end.sent, size), end.body
    check_only(collector, 4)


def test_tpc_multistream_fireflies(
    se_factory: Factory, collector: FireflyCollector, tmp_path: Path
) -> None:
    """Every connection of a multi-stream pull is a flow of its own (one per range GET)."""
    pair = tpc_pair(se_factory, tmp_path, collector.port, "[tpc]\nstream_block_size = 1048576\n")
    size = 4 * MIB + 5  # five ranges
    copy(pair, "pull", size, ("SciTag", CMS_PRODUCTION), ("X-Number-Of-Streams", "2"))
    got = collector.wait_for(lambda f: f.state == "end", timeout=5, count=5)
    assert len(got) == 5, [f.body for f in collector.fireflies]
    locals_ = {f.dst for f in got}
    assert len(locals_) == 5  # one connection per range
    for end in got:
        start, _ = flow_pair(collector, same_flow(end))
        assert start.tag == (3, 12) and start.src == ("::1", pair.passive.port)
    assert sum(f.sent or 0 for f in got) == size
    check_only(collector, 10)


# -- IPv6 flow labels on the connections se opens --------------------------------------------

ETH_P_IPV6 = 0x86DD
CAPTURE_SECONDS = 30.0
CAPTURE_MAX_PACKETS = 200_000


@dataclass(frozen=True)
class Packet:
    label: int
    sport: int
    dport: int
    flags: int
    payload: int  # TCP payload bytes


@dataclass
class Capture:
    """IPv6/TCP packets on ``lo`` to or from ``port``, read on a thread bounded in time."""

    port: int
    packets: list[Packet] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IPV6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * MIB)
        sock.bind(("lo", 0))
        sock.settimeout(0.05)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="lo-capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._sock is not None
        deadline = time.monotonic() + CAPTURE_SECONDS
        seen = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                # Headers only (the rest is cut).  Bound to ETH_P_IPV6 (not ETH_P_ALL), the
                # socket sees each loopback packet once, as received.
                frame = self._sock.recv(160)
            except TimeoutError:
                continue
            seen += 1
            if seen > CAPTURE_MAX_PACKETS:
                break
            packet = self._parse(frame)
            if packet is not None and self.port in (packet.sport, packet.dport):
                self.packets.append(packet)

    @staticmethod
    def _parse(frame: bytes) -> Packet | None:
        if len(frame) < 14 + 40 + 20 or frame[12:14] != b"\x86\xdd":
            return None
        ip6 = frame[14:]
        (word,) = struct.unpack_from("!I", ip6, 0)
        payload_len, next_header = struct.unpack_from("!HB", ip6, 4)
        if word >> 28 != 6 or next_header != socket.IPPROTO_TCP:
            return None
        if ip6[24:40] != socket.inet_pton(socket.AF_INET6, "::1"):
            return None
        sport, dport = struct.unpack_from("!HH", ip6, 40)
        offset_flags = struct.unpack_from("!H", ip6, 52)[0]
        header_len = (offset_flags >> 12) * 4
        return Packet(word & 0xFFFFF, sport, dport, offset_flags & 0x3F, payload_len - header_len)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(CAPTURE_SECONDS + 5)
        if self._sock is not None:
            self._sock.close()


def _capture_or_skip(port: int) -> Capture:
    cap = Capture(port)
    try:
        cap.start()
    except PermissionError as exc:
        pytest.skip(f"capturing on lo needs root (CAP_NET_RAW): {exc}")
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES, errno.EAFNOSUPPORT, errno.ENODEV):
            pytest.skip(f"no AF_PACKET capture on lo here: {exc}")
        raise
    return cap


@pytest.mark.parametrize("streams", [1, 2])
def test_flow_labels_on_tpc_connections(
    se_factory: Factory, collector: FireflyCollector, tmp_path: Path, streams: int
) -> None:
    pair = tpc_pair(se_factory, tmp_path, collector.port, "[tpc]\nstream_block_size = 1048576\n")
    cap = _capture_or_skip(pair.passive.port)
    try:
        copy(
            pair,
            "pull",
            3 * MIB,
            ("SciTag", CMS_PRODUCTION),
            ("X-Number-Of-Streams", str(streams)),
        )
        time.sleep(0.1)  # the last FIN/ACKs
    finally:
        cap.stop()
    outbound = [p for p in cap.packets if p.dport == pair.passive.port]
    inbound = [p for p in cap.packets if p.sport == pair.passive.port]
    assert inbound, "the capture saw nothing from the passive se"
    assert outbound, "the capture saw nothing from the active se"
    expected = flow_label(Tag(3, 12), 0)
    wrong = [p for p in outbound if p.label & PAYLOAD_BITS != expected]
    assert not wrong, [(hex(p.label), p.sport) for p in wrong[:10]]
    assert {decode_label(p.label) for p in outbound} == {Tag(3, 12)}
    by_conn: dict[int, set[int]] = {}
    for p in outbound:
        by_conn.setdefault(p.sport, set()).add(p.label)
    # One label per connection for its whole life (the entropy may differ between them).
    assert all(len(labels) == 1 for labels in by_conn.values()), by_conn
    syns = [p for p in outbound if p.flags & 0x12 == 0x02]
    assert {p.sport for p in syns} == set(by_conn)  # every connection, from its SYN on
    assert any(p.payload > 0 for p in outbound)  # the requests themselves
    data_conns = {p.dport for p in inbound if p.payload > 0}
    assert len(data_conns) >= (3 if streams > 1 else 1)  # one per range GET
    assert metric(pair.active, "se_scitags_flow_labels_total", outcome="labelled") >= len(by_conn)
    assert metric(pair.active, "se_scitags_flow_labels_total", outcome="refused") == 0


# -- flowd named pipe --------------------------------------------------------------------------


class PipeReader:
    """Reads lines from a FIFO (opened O_RDONLY|O_NONBLOCK) on a thread bounded in time."""

    def __init__(self, path: Path, seconds: float = 30.0) -> None:
        self.path = path
        self.lines: list[str] = []
        self.opened = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._seconds = seconds
        self._thread = threading.Thread(target=self._run, name="flowd-pipe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self.opened.set()
        buf = b""
        deadline = time.monotonic() + self._seconds
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                ready, _, _ = select.select([fd], [], [], 0.02)
                try:
                    chunk = os.read(fd, 65536) if ready else b""
                except BlockingIOError:
                    chunk = b""
                if not chunk:  # no writer (EOF) or nothing yet
                    self._stop.wait(0.01)
                    continue
                buf += chunk
                *done, buf = buf.split(b"\n")
                with self._lock:
                    self.lines += [line.decode() for line in done]
        finally:
            os.close(fd)

    def wait(self, count: int, timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.lines) >= count:
                    break
            time.sleep(0.02)
        with self._lock:
            return list(self.lines)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_flowd_pipe(se_factory: Factory, collector: FireflyCollector, tmp_path: Path) -> None:
    fifo = tmp_path / "flowd"
    os.mkfifo(fifo)
    srv = se_factory(scitags_config(collector.port, extra=f'flowd_pipe = "{fifo}"\n'))
    data = write(srv.root / "f", 64 * 1024)
    reader = PipeReader(fifo)
    try:
        assert reader.opened.wait(5)
        got = request(srv, "GET", "/f", {"SciTag": ATLAS_STAGING})
        assert got.status == 200
        put = request(srv, "PUT", "/g", {"SciTag": ATLAS_STAGING}, body=data)
        assert put.status == 201
        untagged = request(srv, "GET", "/f")
        assert untagged.status == 200
        lines = reader.wait(5, timeout=1.0)  # a fifth line (from the untagged GET) is wrong
    finally:
        reader.close()
    here = f"127.0.0.1 {srv.port}"
    get_tuple = f"{here} 127.0.0.1 {got.client[1]}"
    put_tuple = f"127.0.0.1 {put.client[1]} {here}"
    expected = [
        f"start tcp {get_tuple} 2 19",
        f"end tcp {get_tuple} 2 19",
        f"start tcp {put_tuple} 2 19",
        f"end tcp {put_tuple} 2 19",
    ]
    assert sorted(lines) == sorted(expected)
    assert lines.index(expected[0]) < lines.index(expected[1])
    assert lines.index(expected[2]) < lines.index(expected[3])
    # The fireflies describe the same flows.
    start, _ = flow_pair(collector, lambda f: f.dst == got.client)
    assert start.src == ("127.0.0.1", srv.port)
    assert metric(srv, "se_scitags_flowd_lines_total", outcome="written") == 4


def test_flowd_pipe_without_reader(se_factory: Factory, tmp_path: Path) -> None:
    """flowd absent (nobody has the FIFO open, or no FIFO at all): requests do not wait."""
    fifo = tmp_path / "flowd"
    os.mkfifo(fifo)
    for name, pipe in (("fifo", fifo), ("missing", tmp_path / "missing")):
        config = BASE_CONFIG + f'\n[scitags]\nflowd_pipe = "{pipe}"\n'
        srv = se_factory(config, root=tmp_path / name)
        data = write(srv.root / "f", 4096)
        got = request(srv, "GET", "/f", {"SciTag": ATLAS_STAGING}, timeout=5)
        assert got.status == 200 and got.body == data
        assert got.elapsed < 2.0
        put = request(srv, "PUT", "/g", {"SciTag": ATLAS_STAGING}, body=data, timeout=5)
        assert put.status == 201 and put.elapsed < 2.0
        assert metric(srv, "se_scitags_flowd_lines_total", outcome="dropped") == 4
        assert metric(srv, "se_scitags_flowd_lines_total", outcome="written") == 0
