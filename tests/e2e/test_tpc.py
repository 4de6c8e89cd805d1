"""End-to-end HTTP third-party copy: two real ``se`` servers and a misbehaving passive party
(tests/e2e/tpc_remote.py), driven with curl and the aiohttp client.

Every case checks the status and headers of the COPY answer, the perf-marker stream (parsed
with :func:`se.tpc.markers.parse_stream`) and the files on disk, including that a failed
transfer leaves neither the target nor a ``.se-upload-*`` temp file behind.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import os
import signal
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from se.tpc.markers import FailureLine, PerfMarker, Result, parse_failure, parse_stream
from tests.conftest import BASE_CONFIG, need
from tests.e2e.clients import adler32_hex, random_bytes, run_bytes
from tests.e2e.tpc_remote import Remote, digest_of
from tests.support import SEProcess, ServerFarm, poll, start_se, temp_files

pytestmark = [pytest.mark.clients, pytest.mark.timeout(60)]

MIB = 1 << 20
MARKER_PERIOD = 0.3
DEBUG_LOGGING = """
[logging]
access_log = true
level = "debug"
"""


def _tpc(**settings: object) -> str:
    lines = ["", "[tpc]", f"marker_period = {MARKER_PERIOD}"]
    for key, value in settings.items():
        text = f"[{', '.join(repr(v) for v in value)}]" if isinstance(value, list) else value
        lines.append(f"{key} = {text}".replace("'", '"'))
    return "\n".join(lines) + "\n"


# Each server is started on first use and shared by the whole module (unique file names
# keep the tests apart).
CONFIGS: dict[str, str] = {
    # the passive party of se-to-se copies
    "passive": BASE_CONFIG,
    # the usual active party: verbose logs (to check that no token leaks), 1 MiB stream blocks
    "active": DEBUG_LOGGING + _tpc(stream_block_size=MIB, stall_timeout=20.0),
    # short timeouts
    "strict": BASE_CONFIG + _tpc(stall_timeout=1.0, first_byte_timeout=1.0, head_timeout=1.0),
    # large bodies read straight from the socket (tpc.direct_pull_min), short timeouts
    "direct": BASE_CONFIG
    + _tpc(direct_pull_min=4096, direct_push_min=4096, stall_timeout=1.0, first_byte_timeout=1.0),
    # pushes announce themselves with Expect: 100-continue
    "expect": BASE_CONFIG + _tpc(push_expect_continue="true"),
    # one transfer at a time, no queue
    "single": BASE_CONFIG + _tpc(max_active=1, max_queued=0),
    # one transfer at a time, a queue of five
    "queued": BASE_CONFIG + _tpc(max_active=1, max_queued=5),
    # loopback refused (both families, so "localhost" cannot slip through on ::1)
    "deny": BASE_CONFIG + _tpc(deny_networks=["127.0.0.0/8", "::1/128"]),
}


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFarm]:
    need("curl")
    f = ServerFarm(tmp_path_factory.mktemp("tpc"), CONFIGS)
    yield f
    f.stop()


@pytest.fixture
def passive(farm: ServerFarm) -> SEProcess:
    return farm["passive"]


@pytest.fixture
def active(farm: ServerFarm) -> SEProcess:
    return farm["active"]


# --------------------------------------------------------------------------- helpers


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: str
    markers: list[PerfMarker]
    result: Result | None
    elapsed: float


def copy(url: str, *headers: str, timeout: float = 30.0) -> Reply:
    """One COPY with curl, reading the whole answer (marker stream included)."""
    args: list[str] = ["curl", "-sS", "-N", "-D", "-", "-X", "COPY"]
    for h in headers:
        args += ["-H", h]
    start = time.monotonic()
    res = run_bytes([*args, url], timeout=timeout)
    elapsed = time.monotonic() - start
    assert res.returncode == 0, f"curl COPY {url} {headers} -> {res.returncode}: {res.stderr!r}"
    raw_head, _, raw_body = res.stdout.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    hdrs: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        hdrs[name.strip().lower()] = value.strip()
    body = raw_body.decode("utf-8", "replace")
    markers, result = parse_stream(body)
    return Reply(int(lines[0].split()[1]), hdrs, body, markers, result, elapsed)


def pull(dst: str, src: str, *headers: str, timeout: float = 30.0) -> Reply:
    return copy(dst, f"Source: {src}", *headers, timeout=timeout)


def push(src: str, dst: str, *headers: str, timeout: float = 30.0) -> Reply:
    return copy(src, f"Destination: {dst}", *headers, timeout=timeout)


def conn(port: int) -> str:
    return f"tcp:127.0.0.1:{port}"


def assert_stream(r: Reply) -> None:
    """A 202 marker stream: headers, at least one marker, the result as the last line."""
    assert r.status == 202, (r.status, r.body[-500:])
    assert r.headers.get("content-type") == "text/perf-marker-stream", r.headers
    assert "content-length" not in r.headers, r.headers
    assert r.headers.get("transfer-encoding") == "chunked", r.headers
    assert r.markers, r.body
    now = time.time()
    assert all(now - 60 < m.timestamp <= now + 1 for m in r.markers), r.markers  # seconds
    assert r.result is not None, f"no result line: {r.body[-500:]!r}"
    last = r.body.rstrip("\n").rsplit("\n", 1)[-1]
    assert last == f"{r.result.kind}: {r.result.message}", r.body[-500:]
    assert r.body.endswith("\n")


def assert_success(r: Reply, port: int | None, size: int) -> None:
    """Success, and (unless port is None) a marker naming the remote's address."""
    assert_stream(r)
    assert r.result == Result("success", "Created"), r.body[-500:]
    if port is not None:
        assert any(conn(port) in m.remote_connections for m in r.markers), r.body
    assert r.markers[-1].stripe_bytes == size, r.markers[-1]
    assert all(m.total_stripes == 1 and m.stripe_index == 0 for m in r.markers)


def assert_failure(r: Reply, *needles: str) -> str:
    assert_stream(r)
    assert r.result is not None and r.result.kind == "failure", r.body[-500:]
    for needle in needles:
        assert needle in r.result.message, (needle, r.result.message)
    # Every failure line says where it failed (se.tpc.markers: the failure-line grammar).
    assert parse_failure(r.result.message) is not None, r.result.message
    return r.result.message


def assert_failed_at(
    r: Reply, tags: str | tuple[str, ...], *needles: str, status: int | None = None
) -> FailureLine:
    """A failure line with one of these tags (``source first byte`` ...), these words in
    its detail, and (if given) this HTTP status."""
    msg = assert_failure(r, *needles)
    parsed = parse_failure(msg)
    assert parsed is not None
    assert parsed.tag in ((tags,) if isinstance(tags, str) else tags), msg
    if status is not None:
        assert parsed.status == status, msg
    return parsed


def assert_stripe(r: Reply, mode: str, port: int) -> None:
    """The last marker names both ends of the data connection: the remote at ``port`` and
    this server's end of that connection (another local port)."""
    last = r.markers[-1]
    remote = conn(port)
    here = last.stripe_destination if mode == "pull" else last.stripe_source
    there = last.stripe_source if mode == "pull" else last.stripe_destination
    assert there == remote, last
    assert here.startswith("tcp:127.0.0.1:") and here != remote, last
    assert 0 < int(here.rsplit(":", 1)[1]) < 65536, last


def assert_nothing_kept(root: Path, target: Path) -> None:
    assert not target.exists(), target
    assert temp_files(root) == [], temp_files(root)


def stored_adler32(path: Path) -> str:
    """The hex value of se's checksum xattr (``<hex>;<size>;<mtime_ns>``)."""
    raw = os.getxattr(path, "user.se.checksum.adler32").decode()
    value, size, _mtime = raw.split(";")
    assert int(size) == path.stat().st_size
    return value


def repr_adler(data: bytes) -> str:
    raw = (zlib.adler32(data) & 0xFFFFFFFF).to_bytes(4, "big")
    return f"adler=:{base64.b64encode(raw).decode()}:"


def write(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def range_headers(remote: Remote, path: str) -> list[str | None]:
    return [s.header("Range") for s in remote.seen("GET", path)]


async def open_copy(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> aiohttp.ClientResponse:
    return await session.request("COPY", url, headers=headers)


async def read_until(
    resp: aiohttp.ClientResponse, cond: Callable[[str], bool], timeout: float = 10.0
) -> str:
    """Read the marker stream line by line until cond(text so far) holds (bounded)."""
    text = ""
    async with asyncio.timeout(timeout):
        while not cond(text):
            line = await resp.content.readline()
            if not line:
                break
            text += line.decode()
    return text


def marker_count(text: str) -> int:
    return len(parse_stream(text)[0])


# --------------------------------------------------------------------------- se to se

SIZES = [0, 1, 5 * MIB]


@pytest.mark.parametrize("size", SIZES)
def test_pull_between_two_se(active: SEProcess, passive: SEProcess, size: int) -> None:
    data = random_bytes(size, seed=size)
    write(passive.root, f"src/pull-{size}", data)
    r = pull(f"{active.url}/dst/pull-{size}", f"{passive.url}/src/pull-{size}")
    assert_success(r, passive.port, size)
    assert_stripe(r, "pull", passive.port)
    got = active.root / f"dst/pull-{size}"
    assert got.read_bytes() == data
    assert stored_adler32(got) == adler32_hex(data)
    assert temp_files(active.root) == []


@pytest.mark.parametrize("size", SIZES)
def test_push_between_two_se(active: SEProcess, passive: SEProcess, size: int) -> None:
    data = random_bytes(size, seed=size + 1)
    write(active.root, f"out/push-{size}", data)
    r = push(f"{active.url}/out/push-{size}", f"{passive.url}/in/push-{size}")
    assert_success(r, passive.port, size)
    assert_stripe(r, "push", passive.port)
    got = passive.root / f"in/push-{size}"
    assert got.read_bytes() == data
    assert stored_adler32(got) == adler32_hex(data)
    assert (active.root / f"out/push-{size}").read_bytes() == data
    assert temp_files(passive.root) == []


def test_multi_stream_pull_uses_ranges(active: SEProcess, remote: Remote) -> None:
    size = 10 * MIB
    data = random_bytes(size, seed=10)
    remote.files["multi"] = data
    r = pull(f"{active.url}/multi", f"{remote.url}/ok/multi", "X-Number-Of-Streams: 4")
    assert_success(r, remote.port, size)
    assert (active.root / "multi").read_bytes() == data
    assert stored_adler32(active.root / "multi") == adler32_hex(data)
    want = sorted(f"bytes={i * MIB}-{(i + 1) * MIB - 1}" for i in range(10))
    seen = range_headers(remote, "/ok/multi")
    assert sorted(h or "" for h in seen) == want, seen
    # Every RemoteConnections entry names the remote (all streams go to the same address).
    assert all(c == conn(remote.port) for m in r.markers for c in m.remote_connections)


def test_multi_stream_pull_between_two_se(active: SEProcess, passive: SEProcess) -> None:
    data = random_bytes(10 * MIB, seed=11)
    write(passive.root, "src/multi", data)
    r = pull(f"{active.url}/dst/multi", f"{passive.url}/src/multi", "X-Number-Of-Streams: 4")
    assert_success(r, passive.port, len(data))
    assert (active.root / "dst/multi").read_bytes() == data


def test_single_stream_pull_sends_no_range(active: SEProcess, remote: Remote) -> None:
    data = random_bytes(3 * MIB, seed=12)
    remote.files["norange1"] = data
    r = pull(f"{active.url}/norange1", f"{remote.url}/norange/norange1")
    assert_success(r, remote.port, len(data))
    assert (active.root / "norange1").read_bytes() == data
    assert range_headers(remote, "/norange/norange1") == [None]


def test_multi_stream_pull_from_source_ignoring_range(active: SEProcess, remote: Remote) -> None:
    """(g) The source announces ranges but answers ranged GETs with the whole file: the
    pull falls back to one stream and succeeds, and nothing of the first try is kept."""
    for name, data in (
        ("norange4", random_bytes(3 * MIB, seed=13)),
        ("norange-text", b"FILE-CONTENT-" * (3 * MIB // 13)),
    ):
        remote.files[name] = data
        r = pull(f"{active.url}/{name}", f"{remote.url}/norange/{name}", "X-Number-Of-Streams: 4")
        seen = range_headers(remote, f"/norange/{name}")
        assert any(h is not None for h in seen), seen  # ranges were tried
        assert seen[-1] is None, seen  # then one plain GET
        assert_success(r, remote.port, len(data))
        assert (active.root / name).read_bytes() == data
        assert not temp_files(active.root)


# --------------------------------------------------------------------------- overwrite


def test_overwrite(active: SEProcess, passive: SEProcess) -> None:
    new = random_bytes(1000, seed=20)
    write(passive.root, "src/ow", new)
    target = write(active.root, "ow/f", b"old content")
    src = f"{passive.url}/src/ow"

    r = pull(f"{active.url}/ow/f", src, "Overwrite: F")
    assert r.status == 412, (r.status, r.body)
    assert r.markers == [] and r.result is None
    assert target.read_bytes() == b"old content"

    r = pull(f"{active.url}/ow/f", src, "Overwrite: T")
    assert_success(r, passive.port, len(new))
    assert target.read_bytes() == new

    target.write_bytes(b"old again")
    r = pull(f"{active.url}/ow/f", src)
    assert_success(r, passive.port, len(new))
    assert target.read_bytes() == new
    assert stored_adler32(target) == adler32_hex(new)
    assert temp_files(active.root) == []


def test_overwrite_f_on_a_new_target(active: SEProcess, passive: SEProcess) -> None:
    data = b"fresh"
    write(passive.root, "src/ow-new", data)
    r = pull(f"{active.url}/ow/new", f"{passive.url}/src/ow-new", "Overwrite: F")
    assert_success(r, passive.port, len(data))
    assert (active.root / "ow/new").read_bytes() == data


# --------------------------------------------------------------------------- checksums


def test_required_checksum_without_one_fails(active: SEProcess, remote: Remote) -> None:
    remote.files["nosum"] = random_bytes(50_000, seed=30)
    r = pull(
        f"{active.url}/cks/nosum",
        f"{remote.url}/nodigest/nosum",
        "RequireChecksumVerification: true",
    )
    assert_failed_at(
        r, "checksum", "checksum verification required", f"remote={remote.url}/nodigest/nosum"
    )
    assert_nothing_kept(active.root, active.root / "cks/nosum")


def test_unrequired_checksum_without_one_succeeds(active: SEProcess, remote: Remote) -> None:
    data = random_bytes(50_000, seed=31)
    remote.files["nosum2"] = data
    r = pull(
        f"{active.url}/cks/nosum2",
        f"{remote.url}/nodigest/nosum2",
        "RequireChecksumVerification: false",
    )
    assert_success(r, remote.port, len(data))
    assert (active.root / "cks/nosum2").read_bytes() == data


def test_required_checksum_with_one_succeeds(active: SEProcess, remote: Remote) -> None:
    data = random_bytes(50_000, seed=32)
    remote.files["sum"] = data
    r = pull(f"{active.url}/cks/sum", f"{remote.url}/ok/sum", "RequireChecksumVerification: true")
    assert_success(r, remote.port, len(data))
    assert (active.root / "cks/sum").read_bytes() == data
    # The remote was asked for adler32 first.
    for s in remote.seen(path="/ok/sum"):
        assert (s.header("Want-Digest") or "").lower().startswith("adler32"), s.headers


def test_wrong_bytes_fail_naming_both_checksums(active: SEProcess, remote: Remote) -> None:
    data = random_bytes(200_000, seed=33)
    remote.files["wrongbytes"] = data
    bad = bytes(b ^ 0x5A for b in data)
    r = pull(f"{active.url}/cks/wrongbytes", f"{remote.url}/wrongbytes/wrongbytes")
    assert_failed_at(r, "checksum", "adler32 mismatch", adler32_hex(data), adler32_hex(bad))
    assert_nothing_kept(active.root, active.root / "cks/wrongbytes")


def test_wrong_digest_fails(active: SEProcess, remote: Remote) -> None:
    data = random_bytes(200_000, seed=34)
    remote.files["wrongdigest"] = data
    r = pull(f"{active.url}/cks/wrongdigest", f"{remote.url}/wrongdigest/wrongdigest")
    declared = digest_of(data + b"not the file").split("=", 1)[1]
    assert_failed_at(r, "checksum", "adler32 mismatch", declared, adler32_hex(data))
    assert_nothing_kept(active.root, active.root / "cks/wrongdigest")


def test_client_repr_digest_contradicting_the_source_is_412(
    active: SEProcess, passive: SEProcess
) -> None:
    data = random_bytes(10_000, seed=35)
    write(passive.root, "src/rd", data)
    r = pull(
        f"{active.url}/cks/rd-bad",
        f"{passive.url}/src/rd",
        f"Repr-Digest: {repr_adler(data + b'x')}",
    )
    assert r.status == 412, (r.status, r.body)
    assert r.result is None
    assert_nothing_kept(active.root, active.root / "cks/rd-bad")

    r = pull(
        f"{active.url}/cks/rd-good", f"{passive.url}/src/rd", f"Repr-Digest: {repr_adler(data)}"
    )
    assert_success(r, passive.port, len(data))
    assert (active.root / "cks/rd-good").read_bytes() == data


def test_client_digest_contradicting_a_silent_source_fails(
    active: SEProcess, remote: Remote
) -> None:
    """The source declares nothing: the client's checksum is checked against the data."""
    data = random_bytes(10_000, seed=36)
    remote.files["rd-silent"] = data
    r = pull(
        f"{active.url}/cks/rd-silent",
        f"{remote.url}/nodigest/rd-silent",
        f"Repr-Digest: {repr_adler(data + b'x')}",
    )
    assert_failure(r, "adler32", adler32_hex(data), adler32_hex(data + b"x"))
    assert_nothing_kept(active.root, active.root / "cks/rd-silent")


# --------------------------------------------------------------------------- timeouts


def test_stall_timeout(farm: ServerFarm, remote: Remote) -> None:
    se = farm["strict"]
    remote.files["stall"] = random_bytes(100_000, seed=40)
    r = pull(f"{se.url}/stall", f"{remote.url}/stall/stall")
    assert_failed_at(
        r, "source body", "timed out", "stalled after 50000 of 100000 bytes", "tpc.stall_timeout"
    )
    assert r.elapsed < 6, r.elapsed
    assert r.markers[-1].stripe_bytes == 50_000
    assert_nothing_kept(se.root, se.root / "stall")


def test_first_byte_timeout(farm: ServerFarm, remote: Remote) -> None:
    se = farm["strict"]
    remote.files["nobody"] = random_bytes(100_000, seed=41)
    r = pull(f"{se.url}/nobody", f"{remote.url}/nobody/nobody")
    assert_failed_at(r, "source first byte", "timed out", "tpc.first_byte_timeout")
    assert r.elapsed < 6, r.elapsed
    assert all(m.stripe_bytes == 0 for m in r.markers)
    assert_nothing_kept(se.root, se.root / "nobody")


# --------------------------------------------------------------------------- direct receive
# Bodies of at least tpc.direct_pull_min bytes over plain HTTP are read from the socket on a
# worker thread; the same guarantees hold there.


def test_direct_pull_from_se(farm: ServerFarm, passive: SEProcess) -> None:
    se = farm["direct"]
    data = random_bytes(3 * MIB + 17, seed=70)
    (passive.root / "direct-src").write_bytes(data)
    r = pull(f"{se.url}/direct/copy", f"{passive.url}/direct-src")
    assert_success(r, passive.port, len(data))
    out = se.root / "direct/copy"
    assert out.read_bytes() == data
    stored = os.getxattr(out, "user.se.checksum.adler32").decode().split(";")[0]
    assert stored == adler32_hex(data)


def test_direct_pull_checks_the_checksum(farm: ServerFarm, remote: Remote) -> None:
    se = farm["direct"]
    data = random_bytes(200_000, seed=71)
    remote.files["d-wrong"] = data
    r = pull(f"{se.url}/direct/wrong", f"{remote.url}/wrongbytes/d-wrong")
    assert_failure(r, "adler32", adler32_hex(data))
    assert_nothing_kept(se.root, se.root / "direct/wrong")


def test_direct_pull_stall_timeout(farm: ServerFarm, remote: Remote) -> None:
    se = farm["direct"]
    remote.files["d-stall"] = random_bytes(100_000, seed=72)
    r = pull(f"{se.url}/direct/stall", f"{remote.url}/stall/d-stall")
    assert_failed_at(r, "source body", "timed out", "stalled after 50000 of 100000 bytes")
    assert r.elapsed < 6, r.elapsed
    assert_nothing_kept(se.root, se.root / "direct/stall")


def test_direct_pull_source_closes_early(farm: ServerFarm, remote: Remote) -> None:
    se = farm["direct"]
    remote.files["d-short"] = random_bytes(100_000, seed=73)
    r = pull(f"{se.url}/direct/short", f"{remote.url}/short/d-short")
    # Whether the close is seen by aiohttp's parser or by the direct reader, the same phase.
    assert_failed_at(r, "source body", "the data ended early", "50000 of 100000 bytes")
    assert_nothing_kept(se.root, se.root / "direct/short")


async def test_direct_pull_client_disconnect(farm: ServerFarm, remote: Remote) -> None:
    se = farm["direct"]
    remote.files["d-gone"] = random_bytes(100_000, seed=74)
    async with aiohttp.ClientSession() as session:
        resp = await open_copy(
            session, f"{se.url}/direct/gone", {"Source": f"{remote.url}/stall/d-gone"}
        )
        assert resp.status == 202
        text = await read_until(resp, lambda t: "Stripe Bytes Transferred: 50000" in t)
        assert "Stripe Bytes Transferred: 50000" in text, text
        resp.close()
    assert poll(lambda: not temp_files(se.root) and not (se.root / "direct/gone").exists(), 5.0), (
        temp_files(se.root)
    )


# --------------------------------------------------------------------------- disconnect


async def test_client_disconnect_removes_the_partial_file(
    active: SEProcess, remote: Remote
) -> None:
    remote.files["gone"] = random_bytes(100_000, seed=50)
    target = active.root / "gone/file"
    async with aiohttp.ClientSession() as session:
        resp = await open_copy(
            session, f"{active.url}/gone/file", {"Source": f"{remote.url}/stall/gone"}
        )
        assert resp.status == 202
        text = await read_until(resp, lambda t: "Stripe Bytes Transferred: 50000" in t)
        assert "Stripe Bytes Transferred: 50000" in text, text
        assert poll(lambda: len(temp_files(active.root / "gone")) == 1, 5.0)
        resp.close()  # drops the connection mid-transfer
    assert poll(lambda: not temp_files(active.root) and not target.exists(), 5.0), temp_files(
        active.root
    )


# --------------------------------------------------------------------------- redirects


def test_redirect_same_origin_keeps_authorization(active: SEProcess, remote: Remote) -> None:
    data = random_bytes(30_000, seed=60)
    remote.files["r-same"] = data
    remote.redirects["same"] = "/ok/r-same"  # relative Location
    r = pull(
        f"{active.url}/redir/same",
        f"{remote.url}/redirect/302/same",
        "TransferHeaderAuthorization: Bearer same-origin-token",
    )
    assert_success(r, remote.port, len(data))
    assert (active.root / "redir/same").read_bytes() == data
    final = remote.seen(path="/ok/r-same")
    assert {s.method for s in final} >= {"GET"}, final
    assert all(s.header("Authorization") == "Bearer same-origin-token" for s in final)


def _cross_redirect_pull(
    active: SEProcess, remote: Remote, remote2: Remote, name: str, *headers: str
) -> Reply:
    data = random_bytes(30_000, seed=61)
    remote2.files[name] = data
    remote.redirects[name] = f"{remote2.url}/ok/{name}"
    r = pull(
        f"{active.url}/redir/{name}",
        f"{remote.url}/redirect/307/{name}",
        "TransferHeaderAuthorization: Bearer cross-origin-token",
        "TransferHeaderX-Trace: t-1",
        *headers,
    )
    assert_success(r, None, len(data))  # the address: test_markers_name_the_redirect_target
    assert (active.root / f"redir/{name}").read_bytes() == data
    first = remote.seen(path=f"/redirect/307/{name}")
    assert [s.method for s in first] == ["HEAD"], first
    assert first[0].header("Authorization") == "Bearer cross-origin-token", first
    final = remote2.seen(path=f"/ok/{name}")
    assert [s.method for s in final][:2] == ["HEAD", "GET"], final
    assert first[0].header("X-Trace") == "t-1", first
    # Every forwarded header is bound to the origin it came with (tests/e2e/test_hostile_tpc.py).
    assert not any(s.has("X-Trace") for s in final), final
    return r


def test_redirect_cross_origin(active: SEProcess, remote: Remote, remote2: Remote) -> None:
    _cross_redirect_pull(active, remote, remote2, "r-cross")
    head = remote2.seen("HEAD", "/ok/r-cross")
    assert len(head) == 1 and not head[0].has("Authorization"), head


def test_redirect_cross_origin_drops_authorization_on_the_get(
    active: SEProcess, remote: Remote, remote2: Remote
) -> None:
    _cross_redirect_pull(active, remote, remote2, "r-cross-get")
    for s in remote2.seen(path="/ok/r-cross-get"):
        assert not s.has("Authorization"), (s.method, s.headers)


def test_redirect_cross_origin_drops_authorization_on_push(
    active: SEProcess, remote: Remote, remote2: Remote
) -> None:
    data = random_bytes(30_000, seed=66)
    write(active.root, "out/r-cross-push", data)
    remote.redirects["r-cross-push"] = f"{remote2.url}/ok/r-cross-push"
    r = push(
        f"{active.url}/out/r-cross-push",
        f"{remote.url}/redirect/307/r-cross-push",
        "TransferHeaderAuthorization: Bearer cross-origin-token",
    )
    assert_success(r, None, len(data))
    assert remote2.stored["r-cross-push"] == data
    final = remote2.seen(path="/ok/r-cross-push")
    assert [s.method for s in final] == ["PUT", "HEAD"], final
    for s in final:
        assert not s.has("Authorization"), (s.method, s.headers)


def test_markers_name_the_redirect_target(
    active: SEProcess, remote: Remote, remote2: Remote
) -> None:
    remote2.files["r-empty"] = b""
    remote.redirects["empty"] = f"{remote2.url}/ok/r-empty"
    r = pull(f"{active.url}/redir/empty", f"{remote.url}/redirect/302/empty")
    assert_success(r, None, 0)
    assert (active.root / "redir/empty").read_bytes() == b""
    assert r.markers[-1].remote_connections == (conn(remote2.port),), r.body


def test_pull_by_host_name_reports_the_connection(active: SEProcess, remote: Remote) -> None:
    remote.files["by-name"] = b""
    r = pull(f"{active.url}/by-name", f"http://localhost:{remote.port}/ok/by-name")
    assert_success(r, None, 0)
    assert (active.root / "by-name").read_bytes() == b""
    assert any(conn(remote.port) in m.remote_connections for m in r.markers), r.body


def test_push_by_host_name_reports_the_connection(active: SEProcess, remote: Remote) -> None:
    data = random_bytes(MIB, seed=65)
    write(active.root, "out/by-name", data)
    r = push(f"{active.url}/out/by-name", f"http://localhost:{remote.port}/ok/by-name-pushed")
    assert_success(r, None, len(data))
    assert remote.stored["by-name-pushed"] == data
    assert any(conn(remote.port) in m.remote_connections for m in r.markers), r.body


def test_redirect_to_the_real_se(active: SEProcess, passive: SEProcess, remote: Remote) -> None:
    data = random_bytes(2 * MIB, seed=62)
    write(passive.root, "src/via-redirect", data)
    remote.redirects["to-se"] = f"{passive.url}/src/via-redirect"
    r = pull(f"{active.url}/redir/to-se", f"{remote.url}/redirect/302/to-se")
    assert_success(r, None, len(data))  # the address: test_markers_name_the_redirect_target
    assert (active.root / "redir/to-se").read_bytes() == data
    assert stored_adler32(active.root / "redir/to-se") == adler32_hex(data)


def test_redirect_to_a_missing_file_is_404(active: SEProcess, remote: Remote) -> None:
    remote.redirects["missing"] = "/ok/does-not-exist"
    r = pull(f"{active.url}/redir/missing", f"{remote.url}/redirect/302/missing")
    assert r.status == 404, (r.status, r.body)
    assert_nothing_kept(active.root, active.root / "redir/missing")


def test_push_follows_a_redirect(active: SEProcess, remote: Remote) -> None:
    data = random_bytes(100_000, seed=63)
    write(active.root, "out/redir-push", data)
    remote.redirects["put"] = "/ok/redir-pushed"
    r = push(f"{active.url}/out/redir-push", f"{remote.url}/redirect/307/put")
    assert_success(r, remote.port, len(data))
    assert remote.stored["redir-pushed"] == data


# --------------------------------------------------------------------------- headers


def test_transfer_headers_forwarded_and_never_logged(active: SEProcess, remote: Remote) -> None:
    data = random_bytes(20_000, seed=70)
    remote.files["hdr"] = data
    write(active.root, "out/hdr", data)
    extra = (
        "TransferHeaderAuthorization: Bearer secret-xyz",
        "TransferHeaderX-Extra: value-1",
        "TransferHeaderSciTag: 322",
        "SciTag: 321",
        "TransferHeaderContent-Length: 5",  # unsafe: dropped
        "ClientInfo: job-id=1;file-id=2;retry=0",
    )
    r = pull(f"{active.url}/hdr/pulled", f"{remote.url}/ok/hdr", *extra)
    assert_success(r, remote.port, len(data))
    r = push(f"{active.url}/out/hdr", f"{remote.url}/ok/hdr-pushed", *extra)
    assert_success(r, remote.port, len(data))
    assert remote.stored["hdr-pushed"] == data

    pulled = remote.seen(path="/ok/hdr")
    pushed = remote.seen(path="/ok/hdr-pushed")
    assert [s.method for s in pulled] == ["HEAD", "GET"], pulled
    assert [s.method for s in pushed] == ["PUT", "HEAD"], pushed
    for s in pulled + pushed:
        assert s.header("Authorization") == "Bearer secret-xyz", s
        assert s.header("X-Extra") == "value-1", s
        # TransferHeaderSciTag is for the passive party; the COPY's own SciTag is not.
        assert s.header("SciTag") == "322", s.headers
        assert not s.has("ClientInfo"), s.headers
    put = pushed[0]
    assert put.header("Content-Length") == str(len(data)), put.headers
    assert digest_of(data) in (put.header("Digest") or ""), put.headers

    log = active.stderr()
    assert "COPY" in log, "debug/access logging is not on"
    assert "secret-xyz" not in log


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "headers",
    [
        ("Source: file:///etc/passwd",),
        ("Source: ftp://127.0.0.1/x",),
        ("Source: http:///x",),
        ("Source: http://",),
        ("Source: /relative/path",),
        ("Source: http://user:pw@127.0.0.1:1/x",),
        ("Source: http://127.0.0.1:1/x", "Credential: gridsite"),
        ("Source: http://127.0.0.1:1/x", "Destination: http://127.0.0.1:1/y"),
        ("Source: http://127.0.0.1:1/x", "X-Number-Of-Streams: 101"),
        ("Source: http://127.0.0.1:1/x", "Overwrite: maybe"),
        ("Source: http://127.0.0.1:1/x", "RequireChecksumVerification: yes"),
    ],
    ids=[
        "file",
        "ftp",
        "no-host",
        "empty-host",
        "relative",
        "userinfo",
        "gridsite",
        "both",
        "streams",
        "overwrite",
        "require",
    ],
)
def test_bad_requests_are_400(active: SEProcess, headers: tuple[str, ...]) -> None:
    r = copy(f"{active.url}/bad/target", *headers)
    assert r.status == 400, (r.status, r.body)
    assert r.result is None and r.markers == []
    assert_nothing_kept(active.root, active.root / "bad/target")


def test_credential_none_is_accepted(active: SEProcess, passive: SEProcess) -> None:
    write(passive.root, "src/cred", b"data")
    r = pull(f"{active.url}/cred", f"{passive.url}/src/cred", "Credential: none")
    assert_success(r, passive.port, 4)


def test_push_of_a_missing_file_is_404(active: SEProcess, remote: Remote) -> None:
    r = push(f"{active.url}/no/such/file", f"{remote.url}/ok/never")
    assert r.status == 404, (r.status, r.body)
    assert remote.seen(path="/ok/never") == []


def test_pull_of_a_missing_source_is_404(active: SEProcess, passive: SEProcess) -> None:
    r = pull(f"{active.url}/missing", f"{passive.url}/no/such/file")
    assert r.status == 404, (r.status, r.body)
    assert_nothing_kept(active.root, active.root / "missing")


async def test_busy_server_answers_503(farm: ServerFarm, remote: Remote) -> None:
    se = farm["single"]
    remote.files["busy"] = random_bytes(100_000, seed=80)
    async with aiohttp.ClientSession() as session:
        first = await open_copy(session, f"{se.url}/busy1", {"Source": f"{remote.url}/stall/busy"})
        try:
            assert first.status == 202
            await read_until(first, lambda t: "Stripe Bytes Transferred: 50000" in t)
            r = await asyncio.to_thread(
                pull, f"{se.url}/busy2", f"{remote.url}/ok/busy", timeout=10.0
            )
            assert r.status == 503, (r.status, r.body)
            assert r.headers.get("retry-after", "").isdigit(), r.headers
            assert r.result is None
        finally:
            first.close()
    assert poll(lambda: not temp_files(se.root), 5.0)
    assert not (se.root / "busy2").exists()
    assert remote.seen(path="/ok/busy") == []  # refused before contacting anything


async def test_queued_transfer_gets_markers_then_succeeds(farm: ServerFarm, remote: Remote) -> None:
    se = farm["queued"]
    first_data = random_bytes(200_000, seed=81)
    second_data = random_bytes(300_000, seed=82)
    remote.files["gated"] = first_data
    remote.files["after"] = second_data
    async with aiohttp.ClientSession() as session:
        first = await open_copy(session, f"{se.url}/q1", {"Source": f"{remote.url}/gate/gated"})
        second = await open_copy(session, f"{se.url}/q2", {"Source": f"{remote.url}/ok/after"})
        try:
            assert first.status == 202 and second.status == 202
            await read_until(first, lambda t: "Stripe Bytes Transferred: 100000" in t)
            # While the first one holds the only slot, the second keeps getting markers.
            waiting = await read_until(second, lambda t: marker_count(t) >= 3)
            assert marker_count(waiting) >= 3, waiting
            assert all(m.stripe_bytes == 0 for m in parse_stream(waiting)[0])
            assert parse_stream(waiting)[1] is None
            assert [s.method for s in remote.seen(path="/ok/after")] == ["HEAD"]
            remote.open_gate()
            rest1 = await first.text()
            rest2 = waiting + await second.text()
        finally:
            first.close()
            second.close()
    assert parse_stream(rest1)[1] == Result("success", "Created"), rest1
    markers2, result2 = parse_stream(rest2)
    assert result2 == Result("success", "Created"), rest2
    assert markers2[-1].stripe_bytes == len(second_data)
    assert (se.root / "q1").read_bytes() == first_data
    assert (se.root / "q2").read_bytes() == second_data


async def test_a_full_queue_of_copies_each_ends_with_a_marker_and_its_result(
    farm: ServerFarm, remote: Remote
) -> None:
    """One stalled transfer holds the only slot while five wait in the queue (the worker's
    one watchdog ticker wakes each marker loop): the waiting ones get periodic markers; the
    client of the stalled one leaves, which frees the slot; each of the five then ends with
    its last marker (all bytes, the connection) and the result line, and arrives whole."""
    se = farm["queued"]
    datas = [random_bytes(150_000 + i, seed=90 + i) for i in range(5)]
    for i, data in enumerate(datas):
        remote.files[f"fq{i}"] = data
    remote.files["fq-stalled"] = random_bytes(100_000, seed=89)
    async with aiohttp.ClientSession() as session:
        first = await open_copy(
            session, f"{se.url}/fq-stalled", {"Source": f"{remote.url}/stall/fq-stalled"}
        )
        rest = [
            await open_copy(session, f"{se.url}/fq{i}", {"Source": f"{remote.url}/ok/fq{i}"})
            for i in range(5)
        ]
        try:
            assert [r.status for r in (first, *rest)] == [202] * 6
            await read_until(first, lambda t: "Stripe Bytes Transferred: 50000" in t)
            waited = [await read_until(r, lambda t: marker_count(t) >= 2) for r in rest]
            assert all(parse_stream(w)[1] is None for w in waited), waited
            first.close()  # the client leaves: its transfer is aborted, the slot freed
            bodies = [w + await r.text() for w, r in zip(waited, rest, strict=True)]
        finally:
            for r in (first, *rest):
                r.close()
    for i, body in enumerate(bodies):
        found, result = parse_stream(body)
        assert result == Result("success", "Created"), body
        assert found and found[-1].stripe_bytes == len(datas[i]), body
        assert found[-1].remote_connections, body
        assert body.rstrip().endswith("success: Created"), body
        assert (se.root / f"fq{i}").read_bytes() == datas[i]
    assert poll(lambda: not temp_files(se.root), 5.0)
    assert not (se.root / "fq-stalled").exists()


# --------------------------------------------------------------------------- network policy


def test_denied_network_literal_is_403(farm: ServerFarm, remote: Remote) -> None:
    se = farm["deny"]
    remote.files["denied"] = b"secret data"
    write(se.root, "local", b"local data")
    r = pull(f"{se.url}/denied", f"{remote.url}/ok/denied")
    assert r.status == 403, (r.status, r.body)
    assert r.result is None
    r = push(f"{se.url}/local", f"{remote.url}/ok/denied-push")
    assert r.status == 403, (r.status, r.body)
    assert remote.seen(path="/ok/denied") == []
    assert remote.seen(path="/ok/denied-push") == []
    assert "denied-push" not in remote.stored
    assert_nothing_kept(se.root, se.root / "denied")


def test_denied_network_by_name(farm: ServerFarm, remote: Remote) -> None:
    se = farm["deny"]
    remote.files["denied-name"] = b"secret data"
    r = pull(f"{se.url}/denied-name", f"http://localhost:{remote.port}/ok/denied-name")
    # The name is only resolved once the transfer runs: refused there, as a failure line.
    if r.status == 403:
        assert r.result is None
    else:
        assert_failed_at(r, "source connect", "not allowed")
        assert all(m.stripe_bytes == 0 for m in r.markers)
    assert remote.seen(path="/ok/denied-name") == []
    assert_nothing_kept(se.root, se.root / "denied-name")


# --------------------------------------------------------------------------- push failures


def test_push_to_a_refusing_destination(active: SEProcess, remote: Remote) -> None:
    data = random_bytes(100_000, seed=90)
    write(active.root, "out/refused", data)
    r = push(f"{active.url}/out/refused", f"{remote.url}/put403/refused")
    assert_failed_at(
        r,
        ("destination first byte", "destination body", "destination close"),
        "PUT answered HTTP 403 Forbidden: no writing here",
        f"remote={remote.url}/put403/refused",
        status=403,
    )
    assert [s.method for s in remote.seen(path="/put403/refused")] == ["PUT"]
    assert "refused" not in remote.stored
    assert (active.root / "out/refused").read_bytes() == data  # the source is untouched


def test_push_verification_failure_deletes_the_copy(active: SEProcess, remote: Remote) -> None:
    data = random_bytes(100_000, seed=91)
    write(active.root, "out/badsum", data)
    r = push(f"{active.url}/out/badsum", f"{remote.url}/badsum/badsum")
    assert_failed_at(r, "checksum", "verification failed (the copy was deleted)", adler32_hex(data))
    methods = [s.method for s in remote.seen(path="/badsum/badsum")]
    assert methods == ["PUT", "HEAD", "DELETE"], methods
    assert "badsum" not in remote.stored
    assert (active.root / "out/badsum").read_bytes() == data


def test_push_to_a_correct_remote(active: SEProcess, remote: Remote) -> None:
    data = random_bytes(1 * MIB + 7, seed=92)
    write(active.root, "out/good", data)
    r = push(f"{active.url}/out/good", f"{remote.url}/ok/good", "RequireChecksumVerification: true")
    assert_success(r, remote.port, len(data))
    assert remote.stored["good"] == data
    put, head = remote.seen(path="/ok/good")
    assert put.method == "PUT" and head.method == "HEAD"
    assert put.header("Expect") is None, put.headers  # tpc.push_expect_continue is off
    assert (head.header("Want-Digest") or "").lower().startswith("adler32"), head.headers


# --------------------------------------------------------------------------- direct push


def test_direct_push_between_two_se(farm: ServerFarm, passive: SEProcess) -> None:
    se = farm["direct"]
    data = random_bytes(3 * MIB + 5, seed=93)
    write(se.root, "dpush/src", data)
    r = push(f"{se.url}/dpush/src", f"{passive.url}/dpush/dst", "RequireChecksumVerification: true")
    assert_success(r, passive.port, len(data))
    assert (passive.root / "dpush/dst").read_bytes() == data
    assert r.markers[-1].stripe_bytes == len(data)


def test_direct_push_to_a_refusing_destination(farm: ServerFarm, remote: Remote) -> None:
    se = farm["direct"]
    data = random_bytes(3 * MIB, seed=94)
    write(se.root, "dpush/refused", data)
    r = push(f"{se.url}/dpush/refused", f"{remote.url}/put403/drefused")
    assert r.result is not None and r.result.kind == "failure", r.body[-500:]
    assert "drefused" not in remote.stored


def test_direct_push_verification_failure_deletes_the_copy(
    farm: ServerFarm, remote: Remote
) -> None:
    se = farm["direct"]
    data = random_bytes(2 * MIB, seed=95)
    write(se.root, "dpush/badsum", data)
    r = push(f"{se.url}/dpush/badsum", f"{remote.url}/badsum/dbadsum")
    assert_failure(r, "verification failed", adler32_hex(data))
    assert [s.method for s in remote.seen(path="/badsum/dbadsum")] == ["PUT", "HEAD", "DELETE"]


def test_push_with_expect_continue(farm: ServerFarm, remote: Remote, passive: SEProcess) -> None:
    se = farm["expect"]
    data = random_bytes(200_000, seed=96)
    write(se.root, "exp/src", data)
    r = push(f"{se.url}/exp/src", f"{remote.url}/ok/exp-good")
    assert_success(r, remote.port, len(data))
    put = remote.seen(path="/ok/exp-good")[0]
    assert put.header("Expect") == "100-continue", put.headers
    # A refusal before the body: the 403 comes instead of 100 Continue.
    r = push(f"{se.url}/exp/src", f"{remote.url}/put403/exp-refused")
    assert_failed_at(r, "destination first byte", "PUT answered HTTP 403", status=403)
    # And se itself as the destination.
    r = push(f"{se.url}/exp/src", f"{passive.url}/exp/dst")
    assert_success(r, passive.port, len(data))
    assert (passive.root / "exp/dst").read_bytes() == data


# --------------------------------------------------------------------------- shutdown


async def test_server_shutdown_aborts_running_transfers(tmp_path: Path, remote: Remote) -> None:
    """SIGTERM: a running COPY ends with "aborted:" (ECANCELED for gfal2: no retry in
    another mode against a server that is going away) once the drain is over (1 s here),
    and leaves nothing behind."""
    config = BASE_CONFIG + _tpc() + "[server]\ndrain_timeout = 1.0\n"
    se = start_se(tmp_path, root=tmp_path / "stopping", config=config)
    remote.files["shutdown"] = random_bytes(100_000, seed=97)
    try:
        async with aiohttp.ClientSession() as session:
            resp = await open_copy(
                session, f"{se.url}/sd/file", {"Source": f"{remote.url}/stall/shutdown"}
            )
            assert resp.status == 202
            text = await read_until(resp, lambda t: "Stripe Bytes Transferred: 50000" in t)
            se.proc.send_signal(signal.SIGTERM)
            rest = await asyncio.wait_for(resp.text(), 20)
        _markers, result = parse_stream(text + rest)
        assert result is not None and result.kind == "aborted", (text + rest)[-300:]
        assert "shutting down" in result.message
        assert se.proc.wait(20) == 0
    finally:
        se.stop()
    assert not temp_files(se.root) and not (se.root / "sd/file").exists()


# --------------------------------------------------------------------------- IPv6


def test_remote_connections_over_ipv6(tmp_path: Path, active: SEProcess) -> None:
    """FTS tells IPv4 from IPv6 by RemoteConnections: over ::1 it must say tcp:[::1]:port."""
    try:
        v6 = start_se(
            tmp_path, root=tmp_path / "v6", config=BASE_CONFIG, extra_args=["--host", "::1"]
        )
    except RuntimeError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        assert v6.url.startswith("http://[::1]:")
        data = random_bytes(70_000, seed=98)
        write(v6.root, "six", data)
        r = pull(f"{active.url}/v6/pulled", f"{v6.url}/six")
        assert_success(r, None, len(data))
        assert r.markers[-1].remote_connections == (f"tcp:[::1]:{v6.port}",)
        assert (active.root / "v6/pulled").read_bytes() == data
        r = push(f"{active.url}/v6/pulled", f"{v6.url}/back")
        assert_success(r, None, len(data))
        assert r.markers[-1].remote_connections == (f"tcp:[::1]:{v6.port}",)
        assert (v6.root / "back").read_bytes() == data
    finally:
        v6.stop()


# --------------------------------------------------------------------------- failure phases
# Each phase of the failure-line grammar (se.tpc.markers), provoked with a real remote.


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Listener:
    """A TCP listener on loopback that never speaks HTTP: with ``tls``, it completes (or
    fails) TLS handshakes with a certificate of a CA nobody trusts; without, it accepts and
    holds each connection silently until :meth:`stop`.  The accept loop is bounded."""

    def __init__(self, tls: bool) -> None:
        self._ctx: ssl.SSLContext | None = None
        if tls:
            import trustme

            self._ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            trustme.CA().issue_cert("127.0.0.1").configure_cert(self._ctx)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, name="tpc-listener", daemon=True)

    def __enter__(self) -> Listener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for c in self._held:
            c.close()
        self._sock.close()

    def _run(self) -> None:
        for _ in range(3000):  # at most 5 minutes
            if self._stop.is_set():
                return
            try:
                c, _addr = self._sock.accept()
            except TimeoutError:
                continue
            if self._ctx is None:
                self._held.append(c)
                continue
            c.settimeout(5)
            try:
                self._ctx.wrap_socket(c, server_side=True).close()
            except (ssl.SSLError, OSError):
                pass
            finally:
                c.close()


def test_phase_connect(active: SEProcess) -> None:
    port = _closed_port()
    write(active.root, "phase/connect-src", b"data")
    r = pull(f"{active.url}/phase/connect", f"http://127.0.0.1:{port}/f")
    parsed = assert_failed_at(
        r, "source connect", f"cannot connect to 127.0.0.1:{port}: Connection refused"
    )
    assert parsed.errno == errno.ECONNREFUSED
    assert_nothing_kept(active.root, active.root / "phase/connect")
    r = push(f"{active.url}/phase/connect-src", f"http://127.0.0.1:{port}/f")
    parsed = assert_failed_at(r, "destination connect", "Connection refused")
    assert parsed.errno == errno.ECONNREFUSED
    assert parsed.local == "/phase/connect-src"


def test_phase_tls(active: SEProcess) -> None:
    write(active.root, "phase/tls-src", b"data")
    with Listener(tls=True) as tls:
        url = f"https://127.0.0.1:{tls.port}/f"
        r = pull(f"{active.url}/phase/tls", url)
        assert_failed_at(r, "source TLS", f"certificate of 127.0.0.1:{tls.port} not trusted")
        r = push(f"{active.url}/phase/tls-src", url)
        assert_failed_at(r, "destination TLS", "not trusted")
    assert_nothing_kept(active.root, active.root / "phase/tls")


def test_phase_head(farm: ServerFarm) -> None:
    se = farm["strict"]  # head_timeout = 1 s
    with Listener(tls=False) as silent:
        r = pull(f"{se.url}/phase/head", f"http://127.0.0.1:{silent.port}/f")
    assert_failed_at(r, "source HEAD", "timed out", "tpc.head_timeout")
    assert_nothing_kept(se.root, se.root / "phase/head")


@pytest.mark.parametrize("code", [403, 500])
def test_phase_first_byte_names_the_status(active: SEProcess, remote: Remote, code: int) -> None:
    r = pull(f"{active.url}/phase/status-{code}", f"{remote.url}/status/{code}/f")
    assert_failed_at(
        r, "source first byte", f"GET answered HTTP {code}", f"scripted {code}", status=code
    )
    assert_nothing_kept(active.root, active.root / f"phase/status-{code}")
    methods = [s.method for s in remote.seen(path=f"/status/{code}/f")]
    assert "GET" in methods, methods


def test_phase_first_byte_of_a_push(farm: ServerFarm, remote: Remote) -> None:
    se = farm["expect"]  # Expect: 100-continue: the answer comes before any byte
    write(se.root, "phase/push-507", random_bytes(10_000, seed=201))
    r = push(f"{se.url}/phase/push-507", f"{remote.url}/status/507/f")
    assert_failed_at(r, "destination first byte", "PUT answered HTTP 507", status=507)


def test_phase_body(active: SEProcess, remote: Remote) -> None:
    remote.files["phase-short"] = random_bytes(100_000, seed=202)
    r = pull(f"{active.url}/phase/body", f"{remote.url}/short/phase-short")
    assert_failed_at(r, "source body", "the data ended early")
    assert_nothing_kept(active.root, active.root / "phase/body")


def test_phase_checksum(active: SEProcess, remote: Remote) -> None:
    data = random_bytes(20_000, seed=203)
    remote.files["phase-sum"] = data
    r = pull(f"{active.url}/phase/checksum", f"{remote.url}/wrongdigest/phase-sum")
    parsed = assert_failed_at(r, "checksum", "adler32 mismatch: source declared")
    assert parsed.status is None and parsed.errno is None
    assert_nothing_kept(active.root, active.root / "phase/checksum")


@contextlib.contextmanager
def _tmpfs(path: Path, options: str, read_only: bool = False) -> Iterator[None]:
    """A small tmpfs mounted at ``path`` (skips where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    res = run_bytes(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], timeout=10)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode(errors='replace')}")
    try:
        if read_only:
            ro = run_bytes(["mount", "-o", "remount,ro", str(path)], timeout=10)
            assert ro.returncode == 0, ro.stderr
        yield
    finally:
        run_bytes(["umount", "-l", str(path)], timeout=10)


@pytest.mark.parametrize(
    ("name", "options", "read_only", "code"),
    [
        ("full", "size=1m,nr_inodes=1", False, errno.ENOSPC),  # no inode left: ENOSPC
        ("readonly", "size=1m", True, errno.EROFS),
    ],
)
def test_phase_local_write(
    active: SEProcess,
    remote: Remote,
    name: str,
    options: str,
    read_only: bool,
    code: int,
) -> None:
    remote.files[f"phase-{name}"] = random_bytes(10_000, seed=204)
    mount = active.root / "phase" / name
    with _tmpfs(mount, options, read_only):
        r = pull(f"{active.url}/phase/{name}/x", f"{remote.url}/ok/phase-{name}")
        parsed = assert_failed_at(r, "local write", f"(errno {code})")
        assert parsed.errno == code
        assert parsed.detail.startswith(f"/phase/{name}/x: {os.strerror(code)}"), parsed
        assert os.listdir(mount) == []
