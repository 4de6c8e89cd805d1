"""``/.well-known/se/metrics``: prometheus-client's text format, summed over all workers."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http.client
import io
import json
import os
import re
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BASE_CONFIG
from tests.e2e.test_tape import Tape, data_root, tape_config
from tests.support import SEProcess, poll

URL = "/.well-known/se/metrics"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a page (which must parse as the Prometheus text format)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out, f"{key} twice"  # one line per series: summed, not per worker
            out[key] = sample.value
    return out


def value(samples: Samples | str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0: none)."""
    if isinstance(samples, str):
        samples = parse(samples)
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def test_counters_move(se_factory: Callable[..., SEProcess], tmp_path: Path) -> None:
    src = se_factory(root=tmp_path / "src")
    dst = se_factory(root=tmp_path / "dst")
    (src.root / "f").write_bytes(b"x" * 1000)
    async with aiohttp.ClientSession() as s:
        async with s.get(dst.url + URL) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            before = await r.text()
        assert re.search(r"^# TYPE se_tpc_transfers_total counter$", before, re.M)
        hdrs = {"Source": f"{src.url}/f", "SciTag": "147"}
        async with s.request("COPY", f"{dst.url}/g", headers=hdrs) as r:
            assert (await r.text()).rstrip().endswith("success: Created")
        async with s.request("COPY", f"{dst.url}/h", headers={"Source": f"{src.url}/nope"}) as r:
            assert r.status == 404  # refused before it started: not a finished transfer
        async with s.get(dst.url + URL) as r:
            after = await r.text()
    ok = value(after, "se_tpc_transfers_total", result="success")
    assert ok == value(before, "se_tpc_transfers_total", result="success") + 1
    assert value(after, "se_tpc_transfers_total", result="failure") == 0
    assert value(after, "se_tpc_bytes_total", direction="in") == 1000
    assert value(after, "se_tpc_active") == 0
    # Loopback flows are not reported by default: filtered, not sent.
    filtered = value(after, "se_scitags_fireflies_total", outcome="filtered")
    assert filtered >= 2
    assert value(after, "se_scitags_fireflies_total", outcome="sent") == 0


async def test_metrics_need_read_access(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    srv = se_factory(config=BASE_CONFIG + '\n[auth]\nanonymous = "none"\n')
    async with aiohttp.ClientSession() as s, s.get(srv.url + URL) as r:
        assert r.status == 401


def requests_by_status(samples: Samples) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["method"], dict(labels)["status"]): v
        for (name, labels), v in samples.items()
        if name == "se_http_requests_total" and v
    }


TWO_WORKERS = """
[server]
workers = 2
[storage]
direct_put_min = 1048576
[logging]
access_log = false
level = "warning"
[events]
enabled = true
"""


class Client:
    """Sends each request on a new connection and keeps what it saw: (method, status)
    counts and the body bytes either way."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self.answers: collections.Counter[tuple[str, str]] = collections.Counter()
        self.sent = 0  # request body bytes
        self.received = 0  # response body bytes

    async def __call__(
        self, method: str, path: str, body: bytes = b"", **kwargs: object
    ) -> tuple[int, bytes]:
        data = io.BytesIO(body) if body or method == "PUT" else None
        async with self.session.request(
            method,
            self.base + path,
            data=data,
            **kwargs,  # type: ignore[arg-type]
        ) as r:
            content = await r.read()
            status = r.status
        self.answers[(method, str(status))] += 1
        if not (kwargs.get("expect100") and status >= 400):  # refused: no body was sent
            self.sent += len(body)
        self.received += len(content)
        return status, content


async def test_two_workers_add_up(se_factory: Callable[..., SEProcess], tmp_path: Path) -> None:
    """Traffic spread over two workers, one scrape: the page's sums are what was sent."""
    peer = se_factory(root=tmp_path / "peer")
    srv = se_factory(TWO_WORKERS, root=tmp_path / "data")
    small = os.urandom(5000)
    big = os.urandom(3 * 1024 * 1024)  # sendfile on the way out, the direct path on the way in
    (srv.root / "small").write_bytes(small)
    (srv.root / "big").write_bytes(big)
    (peer.root / "remote").write_bytes(small)
    (srv.root / "adir").mkdir()  # a PUT onto it is refused
    connector = aiohttp.TCPConnector(force_close=True)  # a new connection per request
    async with aiohttp.ClientSession(connector=connector) as session:
        call = Client(session, srv.url)
        for i in range(40):
            status, content = await call("GET", "/small")
            assert status == 200 and content == small
            assert (await call("HEAD", "/small"))[0] == 200
            if i % 4 == 0:
                assert (await call("GET", f"/missing-{i}"))[0] == 404
                assert (await call("PUT", f"/up-{i}", os.urandom(1000 + i)))[0] == 201
        assert (await call("GET", "/big"))[1] == big
        assert (await call("PUT", "/big-up", big))[0] == 201
        assert (await call("PROPFIND", "/", headers={"Depth": "1"}))[0] == 207
        assert (await call("DELETE", "/up-0"))[0] == 204
        # Refused before the body is sent (100-continue): counted, and no body byte came.
        refused, _ = await call("PUT", "/adir", b"z" * 2000, expect100=True)
        assert refused >= 400
        # One third-party copy from the peer into the two-worker server.
        status, content = await call("COPY", "/copied", headers={"Source": f"{peer.url}/remote"})
        assert status == 202 and content.rstrip().endswith(b"success: Created"), content
        # Each worker writes its request counts into the shared values a few times a
        # second: scrape until the other worker's latest are in (bounded).
        for _ in range(50):
            expected, sent, received = dict(call.answers), call.sent, call.received
            status, body = await call("GET", URL)
            assert status == 200
            samples = parse(body.decode())
            if requests_by_status(samples) == expected:
                break
            await asyncio.sleep(0.1)
        # Both workers served (each request event names the worker's pid).
        async with session.get(srv.url + "/.well-known/se/events?kind=request") as r:
            workers = {e["worker"] for e in (await r.json())["events"]}
        assert len(workers) == 2, workers
        async with session.get(peer.url + URL) as r:
            peer_page = await r.text()

    # Requests by method and status: exactly what the client saw before the scrape (which
    # is counted once answered); the body bytes either way.
    assert requests_by_status(samples) == expected
    assert value(samples, "se_http_received_bytes_total") == sent
    assert value(samples, "se_http_sent_bytes_total") == received
    assert value(samples, "se_http_connections_total") >= sum(expected.values())
    # The latency histogram: one observation per request, cumulative buckets.
    by_method = collections.Counter[str]()
    for (method, _status), n in expected.items():
        by_method[method] += n
    for method, n in by_method.items():
        assert value(samples, "se_http_request_duration_seconds_count", method=method) == n
        buckets = sorted(
            (float(dict(labels)["le"]), v)
            for (name, labels), v in samples.items()
            if name == "se_http_request_duration_seconds_bucket"
            and dict(labels)["method"] == method
        )
        counts = [v for _le, v in buckets]
        assert counts == sorted(counts) and counts[-1] == n and buckets[-1][0] == float("inf")
    # The copy: counted once, by the worker that ran it, with its bytes.
    assert value(samples, "se_tpc_transfers_total", result="success") == 1
    assert value(samples, "se_tpc_transfers_total", result="failure") == 0
    assert value(samples, "se_tpc_bytes_total", direction="in") == len(small)
    assert value(samples, "se_tpc_bytes_total", direction="out") == 0
    assert value(samples, "se_tpc_active") == 0 and value(samples, "se_tpc_admitted") == 0
    # The peer served the copy's source as a plain GET (it ran no transfer).
    peer_samples = parse(peer_page)
    assert value(peer_samples, "se_http_requests_total", method="GET", status="200") == 1
    assert value(peer_samples, "se_http_sent_bytes_total") == len(small)
    assert value(peer_samples, "se_tpc_transfers_total") == 0


def _children(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(p) for p in f.read().split()}
    except FileNotFoundError:
        return set()


def _peer_ports(pid: int) -> set[int]:
    """The remote ports of the TCP connections process ``pid`` holds (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.read().splitlines()[1:]:
                fields = row.split()
                if fields[9] in inodes:
                    ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


def _scrape(srv: SEProcess) -> Samples:
    with urllib.request.urlopen(srv.url + URL, timeout=10) as r:
        return parse(r.read().decode())


def test_dead_worker_leaves_the_gauges(se_factory: Callable[..., SEProcess]) -> None:
    """A killed worker's open connections leave the sum; its counts stay in it."""
    srv = se_factory(TWO_WORKERS)
    (srv.root / "f").write_bytes(b"x" * 100)
    assert poll(lambda: len(_children(srv.proc.pid)) == 2, timeout=10)
    conns = []
    for _ in range(12):
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("GET", "/f")
        assert conn.getresponse().read() == b"x" * 100
        conns.append(conn)
    try:
        ports = {conn.sock.getsockname()[1]: conn for conn in conns}
        held = {pid: _peer_ports(pid) & ports.keys() for pid in _children(srv.proc.pid)}
        victim = max(held, key=lambda pid: len(held[pid]))
        assert held[victim]
        assert poll(lambda: value(_scrape(srv), "se_http_connections_open") >= 12, timeout=10)
        assert poll(
            lambda: value(_scrape(srv), "se_http_requests_total", method="GET", status="200") >= 12,
            timeout=10,
        )
        os.kill(victim, signal.SIGKILL)
        assert poll(
            lambda: len(_children(srv.proc.pid)) == 2 and victim not in _children(srv.proc.pid),
            timeout=15,
        )
        alive = 12 - len(held[victim])
        # Its connections are gone from the gauge (the scrape's own may count once) ...
        assert poll(
            lambda: value(_scrape(srv), "se_http_connections_open") <= alive + 1, timeout=10
        ), _scrape(srv)
        # ... its requests are still in the sum.
        samples = _scrape(srv)
        assert value(samples, "se_http_requests_total", method="GET", status="200") >= 12
    finally:
        for conn in conns:
            conn.close()


async def test_tape_counts_add_up(se_factory: Callable[..., SEProcess], tmp_path: Path) -> None:
    """The tape families with two workers: the library runs in one, requests land on both."""
    srv = se_factory("[server]\nworkers = 2\n" + tape_config(), root=data_root(tmp_path))
    files = {f"/tape/m{i}": os.urandom(1000 * (i + 1)) for i in range(3)}
    connector = aiohttp.TCPConnector(force_close=True)  # requests spread over the workers
    async with aiohttp.ClientSession(connector=connector) as session:
        tape = Tape(session, srv.url)
        for path, data in files.items():
            await tape.put(path, data)
        for switch in ("flush", "evict"):  # done by the worker that runs the library
            for _ in range(50):
                if (await tape.admin({switch: True}))["library"]:
                    break
            else:
                raise AssertionError(f"no {switch} reached the library")
        for path in files:
            await tape.wait_locality(path, "TAPE")
            assert (await tape.get(path)).status == 503
        await tape.wait_done(await tape.stage(*files))
        samples: Samples = {}
        for _ in range(50):  # the library's counts are taken once a sync interval
            async with session.get(srv.url + URL) as r:
                samples = parse(await r.text())
            if value(samples, "se_tape_recalled_files_total", outcome="ok") == len(files):
                break
            await asyncio.sleep(0.1)
    assert value(samples, "se_tape_recalled_files_total", outcome="ok") == len(files)
    assert value(samples, "se_tape_recalled_files_total", outcome="failed") == 0
    assert value(samples, "se_tape_recalled_bytes_total") == sum(map(len, files.values()))
    assert value(samples, "se_tape_requests_total") == 1
    assert value(samples, "se_tape_files_requested_total") == len(files)
    assert value(samples, "se_tape_reads_refused_total") == len(files)
    assert value(samples, "se_tape_archived_files_total") == len(files)
    assert value(samples, "se_tape_evicted_files_total") == len(files)
    assert value(samples, "se_tape_mounts_total") >= 1
    assert ("se_tape_drives_in_use", frozenset()) in samples


async def test_authentication_outcomes(se_factory: Callable[..., SEProcess]) -> None:
    srv = se_factory()
    (srv.root / "f").write_bytes(b"data")
    request = {"caveats": ["activity:DOWNLOAD"], "validity": "PT10M"}
    async with aiohttp.ClientSession() as s:
        async with s.post(
            srv.url + "/f",
            data=json.dumps(request),
            headers={"Content-Type": "application/macaroon-request"},
        ) as r:
            assert r.status == 200, await r.text()
            token = (await r.json())["macaroon"]
        head, sig = token.rsplit(".", 1)
        forged = f"{head}.{sig[:5]}{'A' if sig[5] != 'A' else 'B'}{sig[6:]}"
        for bearer, status in ((token, 200), (token, 200), (forged, 401), ("not-a-jwt", 401)):
            auth = {"Authorization": f"Bearer {bearer}"}
            async with s.get(srv.url + "/f", headers=auth) as r:
                assert r.status == status
        async with s.get(srv.url + URL) as r:
            samples = parse(await r.text())
    assert value(samples, "se_auth_total", method="macaroon", outcome="ok") == 1
    assert value(samples, "se_auth_total", method="macaroon", outcome="cached") == 1
    assert value(samples, "se_auth_total", method="macaroon", outcome="refused") == 1
    assert value(samples, "se_auth_total", method="token", outcome="refused") == 1
    assert value(samples, "se_http_requests_total", method="GET", status="401") == 2


async def test_share_usage(se_factory: Callable[..., SEProcess]) -> None:
    """Read from the accounting at scrape time, once (not once per worker)."""
    config = TWO_WORKERS + '\n[[shares]]\nname = "S1"\npaths = ["/s1"]\nsize = 100000\n'
    srv = se_factory(config)
    async with aiohttp.ClientSession() as s:
        for name, size in (("a", 1234), ("b", 766)):
            async with s.put(f"{srv.url}/s1/{name}", data=b"x" * size) as r:
                assert r.status == 201
        async with s.get(srv.url + URL) as r:
            samples = parse(await r.text())
    assert value(samples, "se_share_used_bytes", share="S1") == 2000
    assert value(samples, "se_share_files", share="S1") == 2
    assert value(samples, "se_share_limit_bytes", share="S1") == 100000
