"""What a SIGHUP reload may change (se.server.frozen_change) and the transfer log's URL
cleaning and whole-line writes (se.web.transferlog)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from se.config import AuthConfig, Config, IssuerConfig, load_mapping
from se.server import frozen_change
from se.web.transferlog import TransferLog, iso_time, strip_url


def test_live_keys_may_change() -> None:
    old = load_mapping({"auth": {"anonymous": "none"}})
    new = load_mapping(
        {
            "auth": {
                "anonymous": "read",
                "issuers": [{"issuer": "https://i.example", "jwks_file": "/k"}],
                "public": [{"path": "/pub"}],
            },
            "logging": {"level": "debug", "access_log": False, "transfer_log": "/t"},
            "server": {"drain_timeout": 5.0},
            "faults": {"rules": [{"status": 500}], "admins": ["x"]},
        }
    )
    assert frozen_change(old, new) is None


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"server": {"port": 1}}, "server.port"),
        ({"server": {"workers": 2}}, "server.workers"),
        ({"server": {"host": "::1"}}, "server.host"),
        ({"tls": {"cert": "/c", "key": "/k"}}, "tls.cert"),
        ({"storage": {"root": "/elsewhere"}}, "storage.root"),
        ({"storage": {"state_dir": "/s"}}, "storage.state_dir"),
        ({"listeners": [{"port": 0}]}, "listeners"),
        ({"faults": {"enabled": True}}, "faults.enabled"),
        ({"tpc": {"max_active": 3}}, "tpc.max_active"),
    ],
)
def test_other_keys_need_a_restart(change: dict[str, object], key: str) -> None:
    assert frozen_change(Config(), load_mapping(change)) == key


def test_adding_auth_needs_a_restart() -> None:
    with_auth = dataclasses.replace(
        Config(), auth=AuthConfig(issuers=(IssuerConfig("https://i.example", jwks_file="/k"),))
    )
    assert frozen_change(Config(), with_auth) == "[auth] (added or removed)"


def test_strip_url() -> None:
    assert strip_url("https://u:p@h.example:8443/a/b?authz=x#f") == "https://h.example:8443/a/b"
    assert strip_url("http://[::1]:80/f?x=1") == "http://[::1]:80/f"
    assert strip_url("http://[bad") == ""


def test_iso_time() -> None:
    assert iso_time(0.5) == "1970-01-01T00:00:00.500Z"


async def test_lines_are_whole_and_reopened(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    log = TransferLog(str(path))
    log.write({"n": 1})
    log.write({"n": 2, "text": "é\n"})
    assert not path.read_text()  # buffered until a flush
    log.flush()
    os.rename(path, tmp_path / "t.jsonl.1")
    log.reopen()
    log.write({"n": 3})
    await log.close()
    assert [json.loads(x)["n"] for x in (tmp_path / "t.jsonl.1").read_text().splitlines()] == [1, 2]
    assert [json.loads(x)["n"] for x in path.read_text().splitlines()] == [3]
