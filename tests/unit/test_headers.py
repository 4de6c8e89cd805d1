"""Unit tests for se.web.headers (RFC 4918 §10 Depth, Overwrite, Destination)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from se.errors import BadRequest
from se.web.headers import (
    Depth,
    Destination,
    parse_bool_header,
    parse_depth,
    parse_destination,
    parse_overwrite,
)

LOCAL = ("se.example.org", "alias.example.org:8443")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, Depth.ONE),
        ("0", Depth.ZERO),
        (" 1 ", Depth.ONE),
        ("infinity", Depth.INFINITY),
        ("Infinity", Depth.INFINITY),
        ("INFINITY", Depth.INFINITY),
    ],
)
def test_parse_depth(value: str | None, expected: Depth) -> None:
    assert parse_depth(value, Depth.ONE) == expected


@pytest.mark.parametrize("value", ["", "2", "-1", "inf", "0,1", "1.0"])
def test_parse_depth_invalid(value: str) -> None:
    with pytest.raises(BadRequest, match="invalid Depth header"):
        parse_depth(value, Depth.INFINITY)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, True), ("T", True), ("F", False), ("t", True), (" f ", False)],
)
def test_parse_overwrite(value: str | None, expected: bool) -> None:
    assert parse_overwrite(value) is expected


@pytest.mark.parametrize("value", ["", "true", "yes", "TF", "0"])
def test_parse_overwrite_invalid(value: str) -> None:
    with pytest.raises(BadRequest, match="Overwrite"):
        parse_overwrite(value)


def test_parse_bool_header() -> None:
    name = "RequireChecksumVerification"
    assert parse_bool_header(None, name, True) is True
    assert parse_bool_header(None, name, False) is False
    assert parse_bool_header("TRUE", name, False) is True
    assert parse_bool_header(" false ", name, True) is False
    for bad in ("", "yes", "1", "T"):
        with pytest.raises(BadRequest, match=name):
            parse_bool_header(bad, name, True)


def _dest(value: str, host: str = "se.example.org:443") -> Destination:
    return parse_destination(value, host, LOCAL)


def test_destination_remote_push() -> None:
    d = _dest("https://other.example.org:1094/store/file%20a?authz=xyz")
    assert d == Destination(
        url="https://other.example.org:1094/store/file%20a?authz=xyz",
        scheme="https",
        netloc="other.example.org:1094",
        raw_path="/store/file%20a",
        is_local=False,
    )


def test_destination_dav_schemes() -> None:
    d = _dest("davs://Other.Example.org/a")
    assert (d.scheme, d.url, d.netloc, d.is_local) == (
        "https",
        "https://other.example.org/a",
        "other.example.org",
        False,
    )
    assert _dest("dav://x.org:8080/a").url == "http://x.org:8080/a"
    assert _dest("HTTPS://x.org").raw_path == "/"


def test_destination_absolute_path() -> None:
    d = parse_destination("/data/x%2Fy?q=1", "se.example.org:8443", ())
    assert d == Destination(
        url="/data/x%2Fy?q=1",
        scheme="",
        netloc="se.example.org:8443",
        raw_path="/data/x%2Fy",
        is_local=True,
    )


@pytest.mark.parametrize(
    ("url", "request_host", "local"),
    [
        ("https://se.example.org/x", "se.example.org", True),
        ("https://SE.example.org:443/x", "se.example.org", True),
        ("https://se.example.org/x", "se.example.org:443", True),
        ("http://se.example.org/x", "se.example.org:80", True),
        ("https://se.example.org:8443/x", "se.example.org:8443", True),
        ("https://se.example.org:8443/x", "other:1", True),  # "se.example.org" = any port
        ("https://alias.example.org:8443/x", "other:1", True),
        ("https://alias.example.org/x", "other:1", False),
        ("https://alias.example.org:9000/x", "other:1", False),
        ("https://host.example.org/x", "host.example.org:8443", False),
        ("http://host.example.org/x", "host.example.org:443", False),
        ("https://host.example.org:8443/x", "HOST.example.org:8443", True),
        ("https://[::1]:8443/x", "[::1]:8443", True),
        ("https://[::1]/x", "[::1]:8443", False),
        ("https://host.example.org./x", "host.example.org", True),
    ],
)
def test_destination_locality(url: str, request_host: str, local: bool) -> None:
    assert parse_destination(url, request_host, LOCAL).is_local is local


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "ftp://x.org/a",
        "root://x.org//a",
        "file:///etc/passwd",
        "https:///a",
        "https://user:pw@x.org/a",
        "https://x.org/a#frag",
        "/a#frag",
        "https://x.org/a\x00b",
        "https://x.org:99999/a",
        "https://x.org:port/a",
        "relative/path",
        "//x.org/a",
        "https://x.org/a%zz",
        "https:x.org/a",
        "https://x y/a",
    ],
)
def test_destination_invalid(value: str | None) -> None:
    with pytest.raises(BadRequest):
        parse_destination(value, "se.example.org", LOCAL)


def test_destination_header_name_in_reason() -> None:
    with pytest.raises(BadRequest, match="missing Source header"):
        parse_destination(None, "h", (), header="Source")


@given(st.text(), st.text(max_size=30), st.lists(st.text(max_size=30), max_size=3))
def test_parsers_raise_only_bad_request(value: str, host: str, local: list[str]) -> None:
    try:
        d = parse_destination(value, host, local)
    except BadRequest:
        pass
    else:
        assert d.scheme in ("", "http", "https")
        assert d.raw_path.startswith("/")
    for parser in (parse_overwrite, lambda v: parse_depth(v, Depth.ZERO)):
        with contextlib.suppress(BadRequest):
            parser(value)
    with contextlib.suppress(BadRequest):
        parse_bool_header(value, "X", False)


@given(
    st.sampled_from(["http", "https", "dav", "davs"]),
    st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){0,3}", fullmatch=True),
    st.one_of(st.none(), st.integers(0, 65535)),
    st.from_regex(r"(/[A-Za-z0-9._~%-]{0,8}){0,4}", fullmatch=True).filter(lambda p: "%" not in p),
)
def test_destination_url_round_trip(scheme: str, host: str, port: int | None, path: str) -> None:
    netloc = host if port is None else f"{host}:{port}"
    d = parse_destination(f"{scheme}://{netloc}{path}", "elsewhere", ())
    assert d.netloc == netloc
    assert d.raw_path == (path or "/")
    assert parse_destination(d.url, "elsewhere", ()) == d
