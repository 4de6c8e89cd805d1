"""Unit tests for se.tpc.remote's pure parts: the TPC network policy and URL redaction."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from se.config import TPCConfig
from se.tpc.remote import NetworkPolicy, RemoteRefused, TransferFailed, redact

DEFAULT = NetworkPolicy.of(TPCConfig().allow_networks, TPCConfig().deny_networks)


# --------------------------------------------------------------------------- allows


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",  # cloud metadata
        "169.254.0.1",
        "fe80::1",
        "FE80::1",
        "fe80::1%eth0",
        "fd00:ec2::254",
        "100.100.100.200",
        "::ffff:169.254.169.254",  # IPv4-mapped IPv6
        "::ffff:a9fe:a9fe",
        "::FFFF:100.100.100.200",
    ],
)
def test_default_denies(address: str) -> None:
    assert not DEFAULT.allows(address)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "::1", "10.0.0.1", "192.0.2.1", "2001:db8::1", "::ffff:10.0.0.1", "fd00::1"],
)
def test_default_allows(address: str) -> None:
    assert DEFAULT.allows(address)


@pytest.mark.parametrize(
    "address",
    [
        "",
        "localhost",
        "example.org",
        "1.2.3",
        "256.0.0.1",
        "10.0.0.1/8",
        "::g",
        "[::1]",
        " 127.0.0.1 ",
        "127.0.0.1:80",
        "2852039166",  # 169.254.169.254 as one number
        "0xa9.0xfe.0xa9.0xfe",
        "%eth0",
    ],
)
def test_garbage_address_refused(address: str) -> None:
    assert not DEFAULT.allows(address)


def test_allow_list_restricts() -> None:
    policy = NetworkPolicy.of(["10.0.0.0/8", "2001:db8::/32"], [])
    assert policy.allows("10.1.2.3")
    assert policy.allows("2001:db8::5")
    assert policy.allows("::ffff:10.9.9.9")
    assert not policy.allows("127.0.0.1")
    assert not policy.allows("::1")
    assert not policy.allows("192.0.2.1")
    assert not policy.allows("2001:db9::1")


def test_deny_wins_over_allow() -> None:
    policy = NetworkPolicy.of(["10.0.0.0/8"], ["10.1.0.0/16"])
    assert policy.allows("10.2.0.1")
    assert not policy.allows("10.1.0.1")
    assert not policy.allows("::ffff:10.1.0.1")


def test_empty_policy_allows_every_address() -> None:
    policy = NetworkPolicy.of([], [])
    assert policy.allows("169.254.169.254")
    assert policy.allows("fe80::1")
    assert not policy.allows("not-an-address")


def test_networks_with_host_bits_accepted() -> None:
    policy = NetworkPolicy.of(["192.0.2.7/24"], [])
    assert policy.allows("192.0.2.200")
    assert not policy.allows("192.0.3.1")


def test_of_refuses_garbage_networks() -> None:
    with pytest.raises(ValueError):
        NetworkPolicy.of(["not-a-network"], [])


@given(st.ip_addresses())
def test_default_policy_matches_deny_list(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    effective = ip
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        effective = ip.ipv4_mapped
    denied = any(effective in ipaddress.ip_network(n) for n in TPCConfig().deny_networks)
    assert DEFAULT.allows(str(ip)) is not denied


@given(st.text())
def test_allows_never_raises(text: str) -> None:
    assert DEFAULT.allows(text) in (True, False)


# --------------------------------------------------------------------------- check_url


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "https://169.254.169.254:443/x",
        "https://[fe80::1]:2880/store/f",
        "https://[FE80::1]/store/f",
        "https://[fe80::1%25eth0]/store/f",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00:ec2::254]/latest",
        "http://100.100.100.200/",
    ],
)
def test_check_url_refuses_denied_literals(url: str) -> None:
    with pytest.raises(RemoteRefused) as info:
        DEFAULT.check_url(url)
    assert isinstance(info.value, TransferFailed)
    assert "not allowed" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:2880/store/f",
        "https://[::1]:2880/store/f",
        "http://10.0.0.1/store/f",
        "https://storage.example.org/store/f",
        "https://localhost/store/f",
        "http://metadata.google.internal/computeMetadata/v1/",  # names: checked on resolution
        "http://169.254.169.254.nip.io/",
        "https://storage.example.org:2880/f?authz=169.254.169.254",
    ],
)
def test_check_url_passes(url: str) -> None:
    DEFAULT.check_url(url)


@pytest.mark.parametrize("url", ["http://0.0.0.0:8080/f", "http://[::]:8080/f"])
def test_unspecified_address_counts_as_loopback(url: str) -> None:
    policy = NetworkPolicy.of([], ["127.0.0.0/8", "::1/128"])
    with pytest.raises(RemoteRefused):
        policy.check_url(url)


def test_check_url_names_the_address() -> None:
    with pytest.raises(RemoteRefused, match=r"fe80::1"):
        DEFAULT.check_url("https://[fe80::1]:2880/f")


def test_check_url_with_allow_list() -> None:
    policy = NetworkPolicy.of(["10.0.0.0/8"], [])
    policy.check_url("https://10.1.1.1/f")
    policy.check_url("https://storage.example.org/f")  # names pass, checked when resolved
    with pytest.raises(RemoteRefused):
        policy.check_url("https://127.0.0.1/f")
    with pytest.raises(RemoteRefused):
        policy.check_url("https://[::1]:8443/f")


# --------------------------------------------------------------------------- redact


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://h.example.org:2880/p/a?X-Amz-Signature=secret",
            "https://h.example.org:2880/p/a?...",
        ),
        ("https://h.example.org/p?authz=secret&x=1#frag", "https://h.example.org/p?..."),
        ("https://h.example.org/p", "https://h.example.org/p"),
        ("https://h.example.org/p#frag", "https://h.example.org/p"),
        ("https://[2001:db8::1]:2880/p?s=secret", "https://[2001:db8::1]:2880/p?..."),
        ("http://h/", "http://h/"),
    ],
)
def test_redact(url: str, expected: str) -> None:
    assert redact(url) == expected
    assert "secret" not in redact(url)


@given(st.text(alphabet="abcdefghij0123456789=&%/-_.~", min_size=1, max_size=40))
def test_redact_hides_any_query(query: str) -> None:
    marker = "ZZSECRETZZ"
    url = f"https://h.example.org/p?{query}{marker}"
    assert marker not in redact(url)
    assert redact(url) == "https://h.example.org/p?..."
