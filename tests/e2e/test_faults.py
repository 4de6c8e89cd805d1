"""Fault injection and events, end to end: rules added at run time to a real ``se`` with
two worker processes, the failure seen by real clients (curl, gfal2, davix) exactly as the
rule says, and the firing seen in ``/.well-known/se/events``."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import need
from tests.e2e.clients import need_gfal, run
from tests.support import SEProcess, poll, start_se

pytestmark = pytest.mark.timeout(300)

CONFIG = """
[server]
workers = 2
[logging]
access_log = true
level = "info"
[faults]
enabled = true
[[faults.rules]]
method = "PUT"
path = "/full/**"
status = 507
body = "no space left on device (injected)"
[events]
enabled = true
[tpc]
stall_timeout = 2.0
marker_period = 0.5
"""
DATA = bytes(range(256)) * 1024  # 256 KiB, every byte value


def api(srv: SEProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{srv.url}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def add(srv: SEProcess, **rule: Any) -> str:
    status, answer = api(srv, "POST", "/.well-known/se/faults", rule)
    assert status == 201, answer
    return str(answer["id"])


def events(srv: SEProcess, **query: str) -> list[dict[str, Any]]:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    status, answer = api(srv, "GET", f"/.well-known/se/events?{qs}")
    assert status == 200, answer
    return list(answer["events"])


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SEProcess]:
    work = tmp_path_factory.mktemp("faults")
    server = start_se(work, config=CONFIG)
    (server.root / "f.bin").write_bytes(DATA)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def clean(srv: SEProcess) -> Iterator[None]:
    yield
    assert api(srv, "DELETE", "/.well-known/se/faults")[0] == 204


def curl(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-s", "-S", *map(str, args)], capture_output=True, timeout=timeout, check=False
    )


# --------------------------------------------------------------------------- the API


def test_config_rule_507_on_put_seen_by_curl_gfal_and_events(
    srv: SEProcess, tmp_path: Path
) -> None:
    need_gfal()
    since = events(srv)[-1]["id"] if events(srv) else ""
    local = tmp_path / "up.bin"
    local.write_bytes(b"x" * 1000)
    res = curl("-o", "/dev/stderr", "-w", "%{http_code}", "-T", local, f"{srv.url}/full/a.bin")
    assert res.stdout == b"507" and b"no space left on device (injected)" in res.stderr
    assert not (srv.root / "full" / "a.bin").exists()
    got = run(["gfal-copy", f"file://{local}", f"{srv.url}/full/b.bin"])
    assert got.returncode != 0
    assert "507" in got.stderr + got.stdout, got.stderr
    fired = events(srv, since=since, kind="fault")
    assert fired and all(e["rule"] == "cfg-0" and e["method"] == "PUT" for e in fired)
    requests = [e for e in events(srv, since=since, kind="request") if e["path"] == "/full/a.bin"]
    assert requests[0]["status"] == 507 and requests[0]["fault"] == "cfg-0"
    listed = api(srv, "GET", "/.well-known/se/faults")[1]["rules"]
    assert listed[0]["id"] == "cfg-0" and listed[0]["hits"] >= 1


def test_rules_are_shared_by_the_workers_and_counted_globally(srv: SEProcess) -> None:
    """Every 3rd GET of /f.bin answers 503 with Retry-After, whichever worker serves it."""
    rule = add(srv, method="GET", path="/f.bin", every=3, status=503, headers={"Retry-After": "7"})
    codes = []
    for _ in range(9):
        res = curl("-o", "/dev/null", "-D", "-", "-w", "%{http_code}", f"{srv.url}/f.bin")
        codes.append(res.stdout[-3:].decode())
        if codes[-1] == "503":
            assert b"Retry-After: 7" in res.stdout
    assert codes == ["200", "200", "503"] * 3
    (listed,) = [
        r for r in api(srv, "GET", "/.well-known/se/faults")[1]["rules"] if r["id"] == rule
    ]
    assert listed["matches"] == 9 and listed["hits"] == 3
    page = curl(f"{srv.url}/.well-known/se/metrics").stdout.decode()
    hits = [
        sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
        if sample.name == "se_fault_hits_total" and sample.labels == {"rule": rule}
    ]
    assert hits == [3], page  # one count for both workers, shown once
    workers = {e["worker"] for e in events(srv, kind="request", path="/f.bin")}
    assert len(workers) == 2  # both processes served (and recorded) requests


def test_seeded_probability_is_deterministic(srv: SEProcess) -> None:
    def pattern() -> list[str]:
        add(srv, method="HEAD", path="/f.bin", probability=0.5, seed=42, status=500)
        got = [
            curl("-I", "-o", "/dev/null", "-w", "%{http_code}", f"{srv.url}/f.bin").stdout.decode()
            for _ in range(12)
        ]
        assert api(srv, "DELETE", "/.well-known/se/faults")[0] == 204
        return got

    first = pattern()
    assert "500" in first and "200" in first
    assert pattern() == first


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ({"method": "GET"}, "needs an action"),
        ({"status": 99}, "status: 99 out of range"),
        ({"path": "f", "status": 500}, "absolute path glob"),
        ({"tpc": "sideways", "status": 500}, "tpc: one of pull, push, passive"),
        ({"stall_after": 10, "status": 500}, "stall_after and stall"),
        ({"nonsense": 1, "status": 500}, "unknown rule key 'nonsense'"),
        ({"status": 500, "headers": {"X": "a\nb"}}, "headers"),
        ({"delay": -1}, "delay: -1 out of range"),
    ],
)
def test_bad_rules_are_refused(srv: SEProcess, rule: dict[str, Any], reason: str) -> None:
    status, body = api(srv, "POST", "/.well-known/se/faults", rule)
    assert status == 400 and reason in body, body


def test_a_catch_all_rule_leaves_the_endpoints_usable(srv: SEProcess) -> None:
    add(srv, status=503)
    assert curl("-o", "/dev/null", "-w", "%{http_code}", f"{srv.url}/f.bin").stdout == b"503"
    assert api(srv, "GET", "/.well-known/se/faults")[0] == 200
    assert api(srv, "GET", "/.well-known/se/events?limit=1")[0] == 200
    assert api(srv, "DELETE", "/.well-known/se/faults")[0] == 204


def test_api_refusals(srv: SEProcess) -> None:
    assert api(srv, "DELETE", "/.well-known/se/faults/nosuchrule")[0] == 404
    status, body = api(srv, "DELETE", "/.well-known/se/faults/cfg-0")
    assert status == 403 and "configuration" in body
    assert api(srv, "PUT", "/.well-known/se/faults", {})[0] == 405
    status, body = api(srv, "GET", "/.well-known/se/events?kind=gossip")
    assert status == 400 and "unknown event kind 'gossip'" in body


# --------------------------------------------------------------------------- body actions


def test_reset_after_n_bytes_is_curl_56(srv: SEProcess) -> None:
    add(srv, method="GET", path="/f.bin", reset_after=100000)
    res = curl("-o", "-", f"{srv.url}/f.bin")
    assert res.returncode == 56, res.stderr
    assert 0 < len(res.stdout) <= 100000 and DATA.startswith(res.stdout)
    assert any(e["rule"] for e in events(srv, kind="fault", path="/f.bin"))


def test_truncate_is_a_short_body(srv: SEProcess) -> None:
    add(srv, method="GET", path="/f.bin", truncate_after=5000)
    res = curl("-o", "-", f"{srv.url}/f.bin")
    assert res.returncode == 18, res.stderr  # partial file
    assert res.stdout == DATA[:5000]


def test_corrupt_flips_one_byte_and_davix_sees_the_rest_intact(srv: SEProcess) -> None:
    add(srv, method="GET", path="/f.bin", corrupt_at=70000)
    res = curl("-o", "-", f"{srv.url}/f.bin")
    assert res.returncode == 0
    got = res.stdout
    assert len(got) == len(DATA) and got[70000] == DATA[70000] ^ 0xFF
    assert got[:70000] == DATA[:70000] and got[70001:] == DATA[70001:]
    # A range that does not cover the offset is not matched by an offset rule.
    assert api(srv, "DELETE", "/.well-known/se/faults")[0] == 204
    add(srv, method="GET", path="/f.bin", offset=200000, status=500)
    ok = curl("-o", "/dev/null", "-w", "%{http_code}", "-r", "0-99", f"{srv.url}/f.bin")
    assert ok.stdout == b"206"
    bad = curl("-o", "/dev/null", "-w", "%{http_code}", "-r", "199990-200010", f"{srv.url}/f.bin")
    assert bad.stdout == b"500"


def test_stall_and_throttle_and_delay(srv: SEProcess) -> None:
    add(srv, method="GET", path="/f.bin", stall_after=1000, stall=30)
    began = time.monotonic()
    res = curl("-o", "-", "--max-time", "2", f"{srv.url}/f.bin")
    assert res.returncode == 28 and len(res.stdout) == 1000  # timed out, stalled after 1000
    assert time.monotonic() - began < 10
    assert api(srv, "DELETE", "/.well-known/se/faults")[0] == 204
    add(srv, method="GET", path="/f.bin", throttle=200000)
    began = time.monotonic()
    res = curl("-o", "-", f"{srv.url}/f.bin")
    assert res.returncode == 0 and res.stdout == DATA
    assert time.monotonic() - began >= 1.0  # 256 KiB at 200 kB/s: at least 1.3 s
    assert api(srv, "DELETE", "/.well-known/se/faults")[0] == 204
    add(srv, method="HEAD", path="/f.bin", delay=1.5)
    began = time.monotonic()
    assert curl("-I", "-o", "/dev/null", f"{srv.url}/f.bin").returncode == 0
    assert time.monotonic() - began >= 1.5


def test_wrong_digest_fails_gfal_checksum_check(srv: SEProcess, tmp_path: Path) -> None:
    need_gfal()
    real = f"{zlib.adler32(DATA):08x}"
    add(srv, path="/f.bin", wrong_digest=True)
    head = curl("-I", "-H", "Want-Digest: adler32", f"{srv.url}/f.bin").stdout.decode()
    assert "Digest: adler32=" in head and real not in head
    got = run(["gfal-copy", "-K", "ADLER32", f"{srv.url}/f.bin", f"file://{tmp_path}/c.bin"])
    assert got.returncode != 0
    assert "checksum" in (got.stderr + got.stdout).lower(), got.stderr


def test_identity_rule_matches_only_that_caller(srv: SEProcess) -> None:
    add(srv, method="GET", path="/f.bin", identity="alice*", status=403)
    assert curl("-o", "/dev/null", "-w", "%{http_code}", f"{srv.url}/f.bin").stdout == b"200"


# --------------------------------------------------------------------------- TPC


@pytest.fixture(scope="module")
def active(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SEProcess]:
    server = start_se(tmp_path_factory.mktemp("faults-active"), config=CONFIG)
    yield server
    server.stop()


def copy(active: SEProcess, target: str, source: str) -> str:
    res = curl("-X", "COPY", "-H", f"Source: {source}", f"{active.url}{target}", timeout=60)
    return res.stdout.decode()


def test_passive_side_stall_ends_the_pull_with_the_stall_line(
    srv: SEProcess, active: SEProcess
) -> None:
    add(srv, path="/f.bin", tpc="passive", stall_after=10000, stall=20)
    out = copy(active, "/in/stalled.bin", f"{srv.url}/f.bin")
    last = out.strip().splitlines()[-1]
    assert last.startswith("failure:") and ("stall" in last or "no data" in last), out
    assert not (active.root / "in" / "stalled.bin").exists()
    (fired,) = events(srv, kind="fault", path="/f.bin")[-1:]
    assert fired["tpc"] == "passive"
    (tpc,) = events(active, kind="tpc", path="/in/stalled.bin")
    assert tpc["mode"] == "pull" and tpc["result"] == last and tpc["bytes"] <= len(DATA)


def test_passive_side_reset_and_corruption(srv: SEProcess, active: SEProcess) -> None:
    add(srv, path="/f.bin", tpc="passive", reset_after=50000)
    out = copy(active, "/in/reset.bin", f"{srv.url}/f.bin")
    assert out.strip().splitlines()[-1].startswith("failure:"), out
    assert not (active.root / "in" / "reset.bin").exists()
    assert api(srv, "DELETE", "/.well-known/se/faults")[0] == 204
    add(srv, path="/f.bin", tpc="passive", corrupt_at=1234)
    out = copy(active, "/in/corrupt.bin", f"{srv.url}/f.bin")
    last = out.strip().splitlines()[-1]
    assert last.startswith("failure:") and "mismatch" in last, out
    assert not (active.root / "in" / "corrupt.bin").exists()


def test_active_side_injected_failure_and_withheld_markers(
    srv: SEProcess, active: SEProcess
) -> None:
    add(active, tpc="pull", path="/in/**", tpc_failure="Destination disk is full (injected)")
    out = copy(active, "/in/never.bin", f"{srv.url}/f.bin")
    assert out.strip().splitlines()[-1] == "failure: Destination disk is full (injected)", out
    assert not (active.root / "in" / "never.bin").exists()
    assert api(active, "DELETE", "/.well-known/se/faults")[0] == 204
    add(active, tpc="pull", path="/in/**", markers=False)
    out = copy(active, "/in/quiet.bin", f"{srv.url}/f.bin")
    assert "Perf Marker" not in out and out.strip() == "success: Created", out
    assert (active.root / "in" / "quiet.bin").read_bytes() == DATA
    (tpc,) = events(active, kind="tpc", path="/in/quiet.bin")
    assert tpc["result"] == "success: Created" and tpc["bytes"] == len(DATA)


# --------------------------------------------------------------------------- events


def test_request_events_name_the_decision_and_the_rule(
    se_factory: Callable[..., SEProcess],
) -> None:
    config = """
[auth]
anonymous = "read"
[[auth.public]]
path = "/open"
allow = ["read", "create"]
[events]
enabled = true
"""
    srv = se_factory(config)
    (srv.root / "f").write_bytes(b"x")
    assert curl("-o", "/dev/null", f"{srv.url}/f").returncode == 0
    res = curl("-o", "/dev/null", "-w", "%{http_code}", "-T", "/etc/hostname", f"{srv.url}/f")
    assert res.stdout == b"401"
    assert curl("-T", "/etc/hostname", f"{srv.url}/open/g").returncode == 0
    # The events endpoint itself needs modify on / (or an admin identity): anonymous is 401.
    status, _ = api(srv, "GET", "/.well-known/se/events")
    assert status == 401
    # Read them from the files, as a test with the state directory at hand may.
    from se.events import read_events

    found, cursor = read_events(srv.root / ".se-state" / "events", kinds=("request",))
    by = {(e["method"], e["path"]): e for e in found}
    assert by[("GET", "/f")]["decision"] == "allow"
    assert by[("GET", "/f")]["rule"] == "anonymous level read"
    refused = by[("PUT", "/f")]
    assert refused["status"] == 401 and refused["decision"] == "deny"
    assert by[("PUT", "/open/g")]["rule"].startswith("public: allow")
    assert read_events(srv.root / ".se-state" / "events", since=cursor)[0] == []


def test_faults_are_off_unless_enabled(se: SEProcess) -> None:
    assert api(se, "GET", "/.well-known/se/faults")[0] == 404
    assert api(se, "GET", "/.well-known/se/events")[0] == 404


def test_faults_refused_on_a_network_listener(tmp_path: Path) -> None:
    need("curl")
    cfg = tmp_path / "se.toml"
    cfg.write_text(
        '[server]\nhost = "0.0.0.0"\n[auth]\nanonymous = "read"\n[faults]\nenabled = true\n'
    )
    res = run(["se", "check-config", str(cfg)])
    assert res.returncode != 0 and "refusing fault injection" in res.stderr, res.stderr
    cfg.write_text(cfg.read_text() + "allow_non_loopback = true\n")
    assert run(["se", "check-config", str(cfg)]).returncode == 0
    cfg.write_text("[faults]\nenabled = true\n[[faults.rules]]\nstatus = 700\n")
    res = run(["se", "check-config", str(cfg)])
    assert res.returncode != 0 and "faults.rules[0]: status: 700 out of range" in res.stderr


def test_no_leftover_rules_after_restart(tmp_path: Path) -> None:
    server = start_se(tmp_path, config=CONFIG)
    try:
        add(server, method="GET", status=500)
    finally:
        server.stop()
    again = start_se(tmp_path, root=server.root, config=CONFIG)
    try:
        rules = api(again, "GET", "/.well-known/se/faults")[1]["rules"]
        assert [r["id"] for r in rules] == ["cfg-0"] and rules[0]["hits"] == 0
        assert poll(lambda: True)
    finally:
        again.stop()


# --------------------------------------------------------------------------- tape


def tape_server(se_factory: Callable[..., SEProcess], tmp_path: Path) -> Any:
    from tests.e2e.test_tape_gfal import Server, tape_config

    root = tmp_path / "data"
    (root / "tape").mkdir(parents=True)
    config = tape_config() + "\n[faults]\nenabled = true\n[events]\nenabled = true\n"
    return Server(se_factory(config, root=root))


def test_tape_stage_failure_and_delay_seen_by_gfal_bringonline(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    from tests.e2e.test_tape_gfal import gfal_ok, results

    need_gfal("gfal-bringonline")
    server = tape_server(se_factory, tmp_path)
    server.on_tape({"/tape/bad": b"x" * 1000, "/tape/slow": b"y" * 1000})
    add(server.srv, path="/tape/bad", stage_error="cartridge damaged (injected)")
    add(server.srv, path="/tape/slow", stage_delay=2)
    bad = server.url + "/tape/bad"
    res = gfal_ok("bringonline", "--polling-timeout", "30", bad)
    assert results(res.stdout)[bad][-1] == "FAILED", res.stdout
    assert "cartridge damaged (injected)" in res.stdout
    slow = server.url + "/tape/slow"
    began = time.monotonic()
    res = gfal_ok("bringonline", "--polling-timeout", "30", slow)
    words = results(res.stdout)[slow]
    assert words[0] == "QUEUED" and words[-1] == "READY", res.stdout
    assert time.monotonic() - began >= 2
    assert server.locality("/tape/bad") == "TAPE"  # the file itself is not lost
    tape = events(server.srv, kind="tape")
    recalls = {e["path"]: e for e in tape if e["operation"] == "recall"}
    assert recalls["/tape/bad"]["state"] == "FAILED"
    assert recalls["/tape/bad"]["error"] == "cartridge damaged (injected)"
    assert recalls["/tape/slow"]["state"] == "COMPLETED"
    assert [e["paths"] for e in tape if e["operation"] == "stage"] == [
        ["/tape/bad"],
        ["/tape/slow"],
    ], tape
    fired = {e["path"] for e in events(server.srv, kind="fault")}
    assert fired == {"/tape/bad", "/tape/slow"}


def test_tape_archive_failure_seen_by_gfal_archivepoll(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    from tests.e2e.test_tape_gfal import gfal_ok, results

    need_gfal("gfal-archivepoll")
    server = tape_server(se_factory, tmp_path)
    server.put("/tape/never", b"stays on disk")
    server.put("/tape/fine", b"goes to tape")
    add(server.srv, path="/tape/never", archive_error="tape write error (injected)")
    server.flush()
    assert server.locality("/tape/fine") == "DISK_AND_TAPE"
    assert server.locality("/tape/never") == "DISK"
    url = server.url + "/tape/never"
    res = gfal_ok("archivepoll", url)
    assert results(res.stdout)[url][-1] == "FAILED", res.stdout
    assert "tape write error (injected)" in res.stdout
    # Removing the rule lets the next flush archive it.
    assert api(server.srv, "DELETE", "/.well-known/se/faults")[0] == 204
    server.flush()
    assert server.locality("/tape/never") == "DISK_AND_TAPE"
