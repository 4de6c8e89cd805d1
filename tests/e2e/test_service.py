"""A service that keeps running (issue 15): the health page for load balancers, graceful
stop with a bounded drain, SIGHUP reload, the transfer log and systemd notification.

Real servers (``se serve`` subprocesses) driven with aiohttp and raw sockets; a reload is
waited for through the health page's generation, never by sleeping.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.conftest import BASE_CONFIG
from tests.support import SEProcess, poll

HEALTH = "/.well-known/se/health"


def health(url: str, method: str = "GET") -> tuple[int, dict[str, object]]:
    """(status, JSON body) of the health page; body {} for HEAD."""
    req = urllib.request.Request(url + HEALTH, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    return status, (json.loads(raw) if raw else {})


# --------------------------------------------------------------------------- health


def test_health_answers_without_credentials(se_factory: Callable[..., SEProcess]) -> None:
    se = se_factory(BASE_CONFIG + '[auth]\nanonymous = "none"\n')
    status, body = health(se.url)
    assert status == 200, body
    assert body["status"] == "ok" and body["draining"] is False
    assert body["generation"] == 0
    assert isinstance(body["pid"], int) and isinstance(body["uptime"], float | int)
    assert isinstance(body["version"], str)
    assert set(body) == {"status", "version", "pid", "uptime", "generation", "draining"}
    status, body = health(se.url, "HEAD")
    assert status == 200 and body == {}
    # Everything else still needs credentials.
    req = urllib.request.Request(se.url + "/")
    try:
        urllib.request.urlopen(req, timeout=5)
        raise AssertionError("anonymous GET / was served")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401


def test_health_is_503_when_the_storage_root_goes(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    se = se_factory(BASE_CONFIG, root=root)
    assert health(se.url)[0] == 200
    moved = tmp_path / "moved"
    root.rename(moved)
    try:
        assert poll(lambda: health(se.url)[0] == 503, timeout=5)
        status, body = health(se.url)
        assert status == 503, body
        assert body["status"] == "unhealthy" and body["reason"] == "storage root is not accessible"
    finally:
        moved.rename(root)
    assert poll(lambda: health(se.url)[0] == 200, timeout=5)
