"""The recipes of README's "Testing your client against se", as a client project would run
them with the se.testing fixtures only: an FTS-like third-party-copy matrix checked through
the events API, a tape stage/archive test without gfal2's ``mock://`` plugin, and the mix
of failures one experiment's FTS record shows (507 on the pull, refusals, failure lines)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

import pytest

from se.testing import SEServer, SEServerFactory

TPC = {"tpc": {"marker_period": 0.2}}


def call(
    method: str, url: str, token: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    sent = {"Authorization": f"Bearer {token}", **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


def tpc(active: SEServer, passive: SEServer, mode: str, path: str, *headers: str) -> str:
    """An FTS-style COPY (curl): the last line of the marker stream, or the HTTP error."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    remote = "Source" if mode == "pull" else "Destination"
    args = [curl, "-s", "-S", "-X", "COPY", "-w", "\n%{http_code}"]
    args += ["-H", f"Authorization: Bearer {active.token()}"]
    args += ["-H", f"{remote}: {passive.url}{path}"]
    args += ["-H", f"TransferHeaderAuthorization: Bearer {passive.token()}"]
    for header in headers:
        args += ["-H", header]
    res = subprocess.run(
        [*args, active.url + path], capture_output=True, text=True, timeout=60, check=False
    )
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    status = lines[-1]
    return lines[-2] if status == "202" and len(lines) > 1 else f"HTTP {status}"


# --------------------------------------------------------------------------- 1. TPC matrix


@pytest.mark.parametrize("mode", ["pull", "push"])
@pytest.mark.parametrize("streams", [1, 4])
def test_tpc_matrix_checked_through_events(
    se_server_factory: SEServerFactory, mode: str, streams: int
) -> None:
    source, destination = se_server_factory(TPC), se_server_factory(TPC)
    payload = bytes(range(256)) * 8192
    path = f"/matrix/{mode}-{streams}.bin"
    assert call("PUT", source.url + path, source.token(), payload)[0] == 201
    active, passive = (destination, source) if mode == "pull" else (source, destination)
    mark = active.events.cursor()
    last = tpc(active, passive, mode, path, f"X-Number-Of-Streams: {streams}")
    assert last == "success: Created", last
    assert call("GET", destination.url + path, destination.token()) == (200, payload)
    # "The destination pulled, with 4 streams, and compared adler32" -- asked, not grepped.
    event = active.events.wait_for(lambda e: e["local"] == path, kind="tpc", since=mark)
    assert event["mode"] == mode and event["streams"] == streams
    assert event["bytes"] == len(payload) and event["result"] == "success: Created"
    assert "adler32" in event["checksum"]["compared"]
    assert event["headers"]["TransferHeaderAuthorization"] == "<redacted>"


# --------------------------------------------------------------------------- 2. tape

TAPE = {
    "tape": {
        "enabled": True,
        "time_scale": 1000.0,
        "sync_interval": 0.1,
        "archive_min_age": 1e9,
        "pools": [{"path": "/tape"}],
    }
}


def stage_and_wait(srv: SEServer, path: str, timeout: float = 30) -> dict[str, Any]:
    token = srv.token(["storage.stage:/tape", "storage.read:/tape"])
    status, body = call("POST", srv.url + "/api/v1/stage", token, {"files": [{"path": path}]})
    assert status == 201, body
    rid = json.loads(body)["requestId"]
    deadline = time.monotonic() + timeout
    while True:
        status, body = call("GET", f"{srv.url}/api/v1/stage/{rid}", token)
        doc = json.loads(body)
        if "completedAt" in doc or time.monotonic() > deadline:
            return dict(doc["files"][0])
        time.sleep(0.1)


def test_tape_stage_and_archive_without_mock(se_server_factory: SEServerFactory) -> None:
    srv = se_server_factory(TAPE)
    admin = srv.token()
    for name in ("good", "bad"):
        assert call("PUT", f"{srv.url}/tape/{name}", admin, name.encode() * 1000)[0] == 201
    # Archive and evict now (the simulated tier's admin switches), so both are on tape only.
    assert call("POST", srv.url + "/.well-known/se/tape", admin, {"flush": True})[0] == 200
    assert call("POST", srv.url + "/.well-known/se/tape", admin, {"evict": True})[0] == 200
    assert call("GET", srv.url + "/tape/good", admin)[0] == 503  # nearline
    srv.faults.add(path="/tape/bad", stage_error="cartridge damaged")
    assert stage_and_wait(srv, "/tape/good")["state"] == "COMPLETED"
    failed = stage_and_wait(srv, "/tape/bad")
    assert failed["state"] == "FAILED" and failed["error"] == "cartridge damaged"
    assert call("GET", srv.url + "/tape/good", admin)[0] == 200
    # An archive that never completes, as FTS's archive monitoring sees it (the fault set
    # first: the library may archive a new file as soon as it is written).
    srv.faults.add(path="/tape/unlucky", archive_error="tape write error")
    assert call("PUT", srv.url + "/tape/unlucky", admin, b"x")[0] == 201
    assert call("POST", srv.url + "/.well-known/se/tape", admin, {"flush": True})[0] == 200
    body = call("POST", srv.url + "/api/v1/archiveinfo", admin, {"paths": ["/tape/unlucky"]})[1]
    (info,) = json.loads(body)
    assert info["locality"] == "DISK" and info["error"] == "tape write error"


# --------------------------------------------------------------------------- 3. the 507 mix


def test_the_failure_mix_of_an_fts_record(se_server_factory: SEServerFactory) -> None:
    """Deterministic (seeded) failures on the destination's pulls: mostly 507, some 403,
    some failure lines; the same seeds give the same sequence on every run."""
    source, destination = se_server_factory(TPC), se_server_factory(TPC)
    assert call("PUT", source.url + "/mix/f", source.token(), b"x" * 100000)[0] == 201

    def run() -> list[str]:
        destination.faults.clear()
        destination.faults.add(tpc="pull", probability=0.4, seed=1, status=507)
        destination.faults.add(tpc="pull", probability=0.15, seed=2, status=403)
        destination.faults.add(tpc="pull", probability=0.2, seed=3, tpc_failure="copy HTTP 500")
        return [tpc(destination, source, "pull", "/mix/f") for _ in range(12)]

    first = run()
    kinds = Counter(line.split(":")[0] for line in first)
    assert kinds["HTTP 507"] >= 1 and kinds["success"] >= 1, first
    assert run() == first
    fired = destination.events.get(kind="fault")
    assert {e["tpc"] for e in fired} == {"pull"}
