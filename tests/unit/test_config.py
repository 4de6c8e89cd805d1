"""Unit tests for se.config (TOML -> frozen dataclasses) and se.cli.build_config precedence."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from se.cli import build_config, build_parser
from se.config import (
    AuthConfig,
    Config,
    ConfigError,
    checksum_algorithms,
    is_loopback,
    load_file,
    load_mapping,
    validate,
)

FULL = """
[server]
host = "::1"
port = 8443
workers = 4
local_hosts = ["se.example.org", "alias.example.org:8443"]
insecure_anonymous = true
keepalive_timeout = 30
io_threads = 8

[storage]
root = "/srv/data"
create_parents = false
inline_read_max = 1024
stale_upload_age = 60.5
sweep_on_start = false
chunk_size = 65536
fsync = false

[checksums]
algorithms = ["md5", "sha256", "crc32c"]
write_xrootd = false

[webdav]
allow_depth_infinity = true
depth_infinity_limit = 10
max_ranges = 16
max_xml_body = 4096

[tls]
cert = "/etc/grid-security/hostcert.pem"
key = "/etc/grid-security/hostkey.pem"
ca_dir = "/etc/grid-security/certificates"

[auth]
anonymous = "read"

[logging]
level = "debug"
access_log = false
"""


def test_load_mapping_every_section() -> None:
    cfg = load_mapping(tomllib.loads(FULL))
    assert cfg.server.host == "::1"
    assert cfg.server.port == 8443
    assert cfg.server.workers == 4
    assert cfg.server.local_hosts == ("se.example.org", "alias.example.org:8443")
    assert cfg.server.insecure_anonymous is True
    assert cfg.server.keepalive_timeout == 30.0
    assert isinstance(cfg.server.keepalive_timeout, float)
    assert cfg.server.io_threads == 8
    assert cfg.storage.root == "/srv/data"
    assert cfg.storage.create_parents is False
    assert cfg.storage.inline_read_max == 1024
    assert cfg.storage.stale_upload_age == 60.5
    assert cfg.storage.sweep_on_start is False
    assert cfg.storage.chunk_size == 65536
    assert cfg.storage.fsync is False
    assert cfg.checksums.algorithms == ("md5", "sha256", "crc32c")
    assert cfg.checksums.write_xrootd is False
    assert cfg.webdav.allow_depth_infinity is True
    assert cfg.webdav.depth_infinity_limit == 10
    assert cfg.webdav.max_ranges == 16
    assert cfg.webdav.max_xml_body == 4096
    assert cfg.tls.cert == "/etc/grid-security/hostcert.pem"
    assert cfg.tls.key == "/etc/grid-security/hostkey.pem"
    assert cfg.tls.ca_dir == "/etc/grid-security/certificates"
    assert cfg.tls.enabled
    assert cfg.auth == AuthConfig("read")
    assert cfg.anonymous_access() == "read"
    assert cfg.logging.level == "debug"
    assert cfg.logging.access_log is False
    # adler32 always first, configured ones follow.
    assert checksum_algorithms(cfg) == ("adler32", "md5", "sha256", "crc32c")


def test_empty_mapping_gives_defaults() -> None:
    cfg = load_mapping({})
    assert cfg == Config()
    assert cfg.auth is None
    assert cfg.anonymous_access() == "read-write"
    assert cfg.server.host == "127.0.0.1"
    assert cfg.server.port == 8080
    assert cfg.storage.root == "./data"
    assert not cfg.tls.enabled
    assert checksum_algorithms(cfg) == ("adler32",)


def test_partial_section_keeps_other_defaults() -> None:
    cfg = load_mapping({"storage": {"create_parents": False}})
    assert cfg.storage.create_parents is False
    assert cfg.storage.chunk_size == Config().storage.chunk_size
    assert cfg.server == Config().server


def test_config_is_frozen() -> None:
    cfg = load_mapping({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"serverr": {}}, "serverr"),
        ({"tpc": {"marker_periods": 1}}, "tpc.marker_periods"),
        ({"server": {"hots": "x"}}, "server.hots"),
        ({"storage": {"create_parent": True}}, "storage.create_parent"),
        ({"webdav": {"allow_depth_infinite": True}}, "webdav.allow_depth_infinite"),
        ({"auth": {"anonymus": "read"}}, "auth.anonymus"),
        ({"logging": {"format": "json"}}, "logging.format"),
    ],
)
def test_unknown_section_or_key_is_named(data: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_mapping(data)
    assert needle in str(info.value)
    assert "unknown" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"server": {"port": "8080"}}, "server.port"),
        ({"server": {"port": 80.5}}, "server.port"),
        ({"server": {"port": True}}, "server.port"),
        ({"server": {"workers": False}}, "server.workers"),
        ({"server": {"insecure_anonymous": "yes"}}, "server.insecure_anonymous"),
        ({"server": {"insecure_anonymous": 1}}, "server.insecure_anonymous"),
        ({"server": {"keepalive_timeout": "75"}}, "server.keepalive_timeout"),
        ({"server": {"keepalive_timeout": True}}, "server.keepalive_timeout"),
        ({"server": {"local_hosts": "se.example.org"}}, "server.local_hosts"),
        ({"server": {"local_hosts": ["a", 1]}}, "server.local_hosts"),
        ({"storage": {"root": 5}}, "storage.root"),
        ({"storage": {"fsync": 0}}, "storage.fsync"),
        ({"checksums": {"algorithms": "adler32"}}, "checksums.algorithms"),
        ({"auth": {"anonymous": True}}, "auth.anonymous"),
        ({"server": "127.0.0.1"}, "[server]"),
        ({"auth": "read"}, "[auth]"),
    ],
)
def test_wrong_types_are_named(data: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_mapping(data)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"server": {"port": 65536}}, "server.port"),
        ({"server": {"port": -1}}, "server.port"),
        ({"server": {"workers": 0}}, "server.workers"),
        ({"server": {"workers": 65}}, "server.workers"),
        ({"server": {"io_threads": 0}}, "server.io_threads"),
        ({"checksums": {"algorithms": ["adler32", "md4"]}}, "md4"),
        ({"storage": {"chunk_size": 4095}}, "storage.chunk_size"),
        ({"tls": {"cert": "/c.pem"}}, "tls"),
        ({"tls": {"key": "/k.pem"}}, "tls"),
        ({"auth": {"anonymous": "write"}}, "auth.anonymous"),
        ({"logging": {"level": "verbose"}}, "logging.level"),
    ],
)
def test_validate_cross_checks(data: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_mapping(data)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        {"server": {"port": 0, "workers": 64, "io_threads": 1}},
        {"server": {"port": 65535, "workers": 1}},
        {"storage": {"chunk_size": 4096}},
        {"checksums": {"algorithms": list(("adler32", "crc32c", "md5", "sha1", "sha256"))}},
        {"tls": {"cert": "/c.pem", "key": "/k.pem"}},
        {"auth": {"anonymous": "none"}},
        {"auth": {"anonymous": "read-write"}},
        {"logging": {"level": "WARNING"}},
    ],
)
def test_validate_accepts_edges(data: dict[str, Any]) -> None:
    load_mapping(data)


def test_validate_on_replaced_config() -> None:
    cfg = Config()
    validate(cfg)
    bad = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, workers=0))
    with pytest.raises(ConfigError, match=r"server\.workers"):
        validate(bad)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.1", False),
        ("se.example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_load_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_file(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[storage]\nrooot = '/x'\n")
    with pytest.raises(ConfigError, match=r"storage\.rooot"):
        load_file(typo)


# -- se.cli.build_config: defaults < file < flags -----------------------------------------
def _build(*argv: str) -> Config:
    return build_config(build_parser().parse_args(["serve", *argv]))


def test_build_config_defaults_without_file_or_flags() -> None:
    assert _build() == Config()


def test_build_config_file_overrides_defaults(tmp_path: Path) -> None:
    f = tmp_path / "se.toml"
    f.write_text(
        '[server]\nhost = "::1"\nport = 9000\nworkers = 3\ninsecure_anonymous = true\n'
        '[storage]\nroot = "/from/file"\nfsync = false\n'
    )
    cfg = _build("--config", str(f))
    assert cfg.server.host == "::1"
    assert cfg.server.port == 9000
    assert cfg.server.workers == 3
    assert cfg.server.insecure_anonymous is True
    assert cfg.storage.root == "/from/file"
    assert cfg.storage.fsync is False


def test_build_config_flags_override_file(tmp_path: Path) -> None:
    f = tmp_path / "se.toml"
    f.write_text(
        '[server]\nhost = "::1"\nport = 9000\nworkers = 3\n'
        '[storage]\nroot = "/from/file"\nfsync = false\n'
    )
    cfg = _build(
        "--config",
        str(f),
        "--host",
        "127.0.0.2",
        "--port",
        "0",
        "--workers",
        "2",
        "--root",
        "/from/flag",
        "--insecure-anonymous",
    )
    assert cfg.server.host == "127.0.0.2"
    assert cfg.server.port == 0  # a falsy flag value still overrides
    assert cfg.server.workers == 2
    assert cfg.server.insecure_anonymous is True
    assert cfg.storage.root == "/from/flag"
    assert cfg.storage.fsync is False  # no flag: the file's value stays


def test_build_config_absent_flags_keep_file(tmp_path: Path) -> None:
    f = tmp_path / "se.toml"
    f.write_text("[server]\nport = 9000\ninsecure_anonymous = true\n")
    cfg = _build("--config", str(f), "--host", "::1")
    assert cfg.server.host == "::1"
    assert cfg.server.port == 9000
    assert cfg.server.workers == 1
    # --insecure-anonymous absent must not reset the file's true to false.
    assert cfg.server.insecure_anonymous is True


def test_build_config_flag_values_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"server\.port"):
        _build("--port", "70000")
    with pytest.raises(ConfigError, match=r"server\.workers"):
        _build("--workers", "0")
