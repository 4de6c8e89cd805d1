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
    TLSConfig,
    checksum_algorithms,
    is_loopback,
    listener_configs,
    load_file,
    load_mapping,
    state_dir,
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


# --------------------------------------------------------------------------- [[listeners]]

LISTENERS = """
[server]
port = 2880
local_hosts = ["se.example.org"]

[storage]
root = "/srv/grid"

[tls]
cert = "/etc/grid-security/hostcert.pem"
key = "/etc/grid-security/hostkey.pem"
ca_dir = "/etc/grid-security/certificates"

[auth]
anonymous = "read"
audiences = ["https://se.example.org"]

[[auth.issuers]]
issuer = "https://iam-a.example.org/"
jwks_file = "/etc/se/a.jwks"

[[auth.issuers]]
issuer = "https://iam-b.example.org/"
jwks_file = "/etc/se/b.jwks"

[[listeners]]
name = "xrd1"
port = 1094
base = "/xrd1"
anonymous = "none"
issuers = ["https://iam-b.example.org/"]
audiences = ["xrd1"]
accept_any_audience = false
local_hosts = ["xrd1"]
tls.client_certs = "optional"

[[listeners]]
name = "web1"
host = "::1"
port = 0
base = "/web1/"
issuers = []
tls = false
"""


def test_listeners_parse_and_derive() -> None:
    cfg = load_mapping(tomllib.loads(LISTENERS))
    top, xrd1, web1 = listener_configs(cfg)
    assert top is cfg
    assert [lst.name for lst in cfg.listeners] == ["xrd1", "web1"]
    # xrd1: its own port, base, anonymous level, issuer, audiences, names; [tls] + client certs
    assert (xrd1.server.host, xrd1.server.port) == ("127.0.0.1", 1094)
    assert xrd1.storage.root == "/srv/grid/xrd1"
    assert xrd1.server.local_hosts == ("xrd1",)
    assert xrd1.tls == dataclasses.replace(cfg.tls, client_certs="optional")
    assert xrd1.auth is not None and cfg.auth is not None
    assert xrd1.auth.anonymous == "none"
    assert [i.issuer for i in xrd1.auth.issuers] == ["https://iam-b.example.org/"]
    assert xrd1.auth.audiences == ("xrd1",)
    assert xrd1.auth.accept_any_audience is False
    assert xrd1.listeners == ()
    # web1: plain HTTP (the CA directory stays, for TPC), no tokens, the rest inherited
    assert (web1.server.host, web1.server.port) == ("::1", 0)
    assert web1.storage.root == "/srv/grid/web1"
    assert web1.tls == TLSConfig(ca_dir="/etc/grid-security/certificates")
    assert web1.auth is not None
    assert web1.auth.issuers == ()
    assert web1.auth.anonymous == "read"
    assert web1.auth.audiences == cfg.auth.audiences
    assert web1.server.local_hosts == ("se.example.org",)
    # Each listener has its own macaroon secret, in its state directory.
    assert xrd1.tpc.macaroon_secret_file == "/srv/grid/xrd1/.se-state/macaroon-xrd1.secret"
    assert web1.tpc.macaroon_secret_file == "/srv/grid/web1/.se-state/macaroon-web1.secret"
    # Everything else is the top-level configuration's.
    for derived in (xrd1, web1):
        assert dataclasses.replace(derived.tpc, macaroon_secret_file="") == cfg.tpc
        assert derived.webdav == cfg.webdav
        assert derived.server.workers == cfg.server.workers
        assert state_dir(derived) == Path(derived.storage.root) / ".se-state"


def test_listeners_without_auth_section() -> None:
    cfg = load_mapping(
        {"listeners": [{"port": 0, "anonymous": "read"}, {"port": 0}, {"port": 0, "base": "/b"}]}
    )
    top, read_only, same, other = listener_configs(cfg)
    assert top.auth is None and top.anonymous_access() == "read-write"
    assert read_only.auth == AuthConfig(anonymous="read")
    # Not narrowed: still no [auth], so the loopback-only guard of se serve applies.
    assert same.auth is None and same.storage.root == cfg.storage.root
    assert other.storage.root == str(Path(cfg.storage.root) / "b")
    # Unnamed listeners' secrets are numbered; listeners of one base never share one.
    secrets = [c.tpc.macaroon_secret_file for c in (read_only, same, other)]
    assert [Path(f).name for f in secrets] == [
        "macaroon-listener-1.secret",
        "macaroon-listener-2.secret",
        "macaroon-listener-3.secret",
    ]
    assert top.tpc.macaroon_secret_file == ""  # <state_dir>/macaroon.secret, as before
    explicit = load_mapping(
        {"tpc": {"macaroon_secret_file": "/etc/se/mac.key"}, "listeners": [{"port": 0}]}
    )
    assert listener_configs(explicit)[1].tpc.macaroon_secret_file == "/etc/se/mac-listener-1.key"


def test_listener_flags_follow_the_top_level() -> None:
    """--host and --root change [server] and [storage]; listeners inherit at derive time."""
    cfg = load_mapping({"listeners": [{"port": 0, "base": "/x"}]})
    cfg = dataclasses.replace(
        cfg,
        server=dataclasses.replace(cfg.server, host="::1"),
        storage=dataclasses.replace(cfg.storage, root="/flag"),
    )
    validate(cfg)
    derived = listener_configs(cfg)[1]
    assert (derived.server.host, derived.storage.root) == ("::1", "/flag/x")


@pytest.mark.parametrize(
    ("listeners", "needle"),
    [
        ({"port": 0}, "listeners: expected a list of tables"),
        ([1], "[listeners[0]] must be a table"),
        ([{"base": "/x"}], "listeners[0]: missing key port"),
        ([{"port": 0, "prot": 1}], "unknown config key: listeners[0].prot"),
        ([{"port": 0, "tls": {"certs": "x"}}], "unknown config key: listeners[0].tls.certs"),
        ([{"port": 0, "tls": True}], "listeners[0].tls: expected false (plain HTTP) or a table"),
        ([{"port": "1094"}], "listeners[0].port: expected an integer"),
        ([{"port": 0, "issuers": "x"}], "listeners[0].issuers: expected a list of strings"),
        ([{"port": 70000}], "listeners[0].port: 70000 is not a TCP port"),
        ([{"port": 0, "host": " "}], "listeners[0].host: must not be empty"),
        ([{"port": 0, "base": "xrd1"}], "listeners[0].base: an absolute path"),
        ([{"port": 0, "base": "/a//b"}], "listeners[0].base: an absolute path"),
        ([{"port": 0, "base": "/a/../b"}], "listeners[0].base: '..' cannot be"),
        ([{"port": 0, "base": "/.se-state"}], "listeners[0].base: '.se-state' cannot be"),
        ([{"port": 0, "base": "/a\nb"}], "cannot be a directory of the base"),
        ([{"port": 0, "anonymous": "write"}], "listeners[0].anonymous: must be one of"),
        ([{"port": 0, "issuers": ["https://x/"]}], "https://x/ is not one of the"),
        ([{"port": 0, "tls": {"cert": "/c"}}], "listeners[0].tls: cert and key must be set"),
        (
            [{"port": 0, "tls": {"cert": "/c", "key": "/k", "client_certs": "always"}}],
            "listeners[0].tls.client_certs: must be one of",
        ),
        (
            [{"port": 0, "tls": {"cert": "/c", "key": "/k", "client_certs": "required"}}],
            "listeners[0].tls.client_certs: needs tls.cert, tls.key and tls.ca_dir",
        ),
        ([{"port": 8080}], "listeners[0]: 127.0.0.1:8080 is also server's address"),
        (
            [{"port": 1094, "name": "a"}, {"port": 1094, "host": "0.0.0.0", "name": "b"}],
            "listeners[1] (b): 0.0.0.0:1094 is also listeners[0] (a)'s address",
        ),
        ([{"port": 0, "name": "a"}, {"port": 0, "name": "a"}], "listeners[1] (a).name: 'a'"),
        ([{"port": 0, "name": "../x"}], "listeners[0] (../x).name: ASCII letters, digits"),
        ([{"port": 0, "name": "xrd1é"}], "listeners[0] (xrd1é).name: ASCII letters"),
    ],
)
def test_listener_errors_are_one_line_and_named(listeners: Any, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_mapping({"listeners": listeners})
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_listener_on_a_public_address_is_checked_for_faults() -> None:
    public = {"port": 0, "host": "0.0.0.0"}
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.host: refusing fault injection"):
        load_mapping({"faults": {"enabled": True}, "listeners": [public]})
    load_mapping({"faults": {"enabled": True, "allow_non_loopback": True}, "listeners": [public]})
    load_mapping({"faults": {"enabled": True}, "listeners": [{"port": 0}]})


def test_listeners_may_share_a_port_number_on_other_addresses() -> None:
    cfg = load_mapping(
        {"listeners": [{"port": 8080, "host": "127.0.0.2"}, {"port": 0}, {"port": 0}]}
    )
    assert len(listener_configs(cfg)) == 4


def test_listeners_and_the_tape_database() -> None:
    # Listeners on one root share its tape database (the library runs once, se.server.plan).
    load_mapping({"tape": {"enabled": True}, "listeners": [{"port": 0}, {"port": 0}]})
    # Each base has its own .se-state, so its own database.
    load_mapping({"tape": {"enabled": True}, "listeners": [{"port": 0, "base": "/t"}]})
    # One database for two roots would let one library act on files of the other.
    for shared in ({"database": "/var/lib/se/tape.sqlite"}, {}):
        data: dict[str, Any] = {
            "tape": {"enabled": True, **shared},
            "listeners": [{"port": 0, "base": "/t"}],
        }
        if not shared:
            data["storage"] = {"state_dir": "/var/lib/se"}
        with pytest.raises(ConfigError, match=r"listeners\[0\]: shares the tape database"):
            load_mapping(data)
    # Without tape, a shared state_dir is fine.
    load_mapping({"storage": {"state_dir": "/s"}, "listeners": [{"port": 0, "base": "/t"}]})


def test_listener_plan_runs_sweep_and_library_once(tmp_path: Path) -> None:
    from se.server import plan

    cfg = load_mapping(
        {
            "storage": {"root": str(tmp_path)},
            "tape": {"enabled": True},
            "listeners": [
                {"port": 0, "base": "/a"},
                {"port": 0},
                {"port": 0, "base": "/a"},
                {"port": 0, "base": "/b"},
            ],
        }
    )
    for each in listener_configs(cfg):
        Path(each.storage.root).mkdir(exist_ok=True)
    endpoints = plan(listener_configs(cfg))
    # / sweeps everything below it; /a and /b are in it.  One library per root.
    assert [e.sweep for e in endpoints] == [True, False, False, False, False]
    assert [e.library for e in endpoints] == [True, True, False, False, True]
    alone = plan(listener_configs(dataclasses.replace(cfg, listeners=cfg.listeners[2:])))
    assert [e.sweep for e in alone] == [True, False, False]


@pytest.mark.parametrize(
    ("mode", "host", "refused"),
    [
        ("auto", "127.0.0.1", False),
        ("auto", "0.0.0.0", True),
        ("refuse", "127.0.0.1", True),
        ("allow", "0.0.0.0", False),
    ],
)
def test_listener_local_remotes_follow_its_own_address(mode: str, host: str, refused: bool) -> None:
    """tpc.local_remotes = "auto" is decided per listener: a loopback listener in a process
    that also listens on a public address still takes loopback remotes, the public one
    does not."""
    from se.tpc.service import refuses_local_remotes

    cfg = load_mapping(
        {
            "auth": {"anonymous": "read"},
            "tpc": {"local_remotes": mode},
            "listeners": [{"port": 0, "host": host}],
        }
    )
    top, derived = listener_configs(cfg)
    assert refuses_local_remotes(top) is (mode == "refuse")
    assert refuses_local_remotes(derived) is refused


def test_check_config_names_listener_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from se.cli import main

    f = tmp_path / "se.toml"
    f.write_text('[[listeners]]\nport = 0\nbase = "../up"\n')
    assert main(["check-config", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("se: listeners[0].base: an absolute path") and err.count("\n") == 1
    f.write_text('[[listeners]]\nport = 0\nbase = "/xrd1"\n')
    assert main(["check-config", str(f)]) == 0
