"""Unit tests for se.storage.paths.confine: raw URL path -> DavPath below the root, or refusal."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from se.errors import BadRequest, Forbidden, SEError, URITooLong
from se.storage.paths import TEMP_PREFIX, DavPath, confine

ROOT = "/srv/se-data"


@pytest.mark.parametrize(
    ("raw", "segments"),
    [
        ("/", ()),
        ("", None),
        ("/a", ("a",)),
        ("/./a//b/", ("a", "b")),
        ("//a/./././b", ("a", "b")),
        ("/a/%2e/b", ("a", "b")),
        ("/a%20b/c%25d", ("a b", "c%d")),
        ("/%C3%A9t%C3%A9", ("\u00e9t\u00e9",)),
        ("/caf\u00e9", ("caf\u00e9",)),
        ("/a?x=/../etc", ("a",)),
        ("/a..b/..c/c..", ("a..b", "..c", "c..")),
        ("/...", ("...",)),
        ("/se-upload-x/.seupload/.se_x", ("se-upload-x", ".seupload", ".se_x")),
        ("/" + "x" * 255, ("x" * 255,)),
    ],
)
def test_confine_accepts(raw: str, segments: tuple[str, ...] | None) -> None:
    if segments is None:
        with pytest.raises(BadRequest):
            confine(raw)
        return
    p = confine(raw)
    assert p == DavPath(segments)
    assert p.rel == "/".join(segments)
    assert str(p) == "/" + "/".join(segments)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("/a/../b", Forbidden),
        ("/..", Forbidden),
        ("/../etc/passwd", Forbidden),
        ("/%2e%2e/x", Forbidden),
        ("/%2E%2e/", Forbidden),
        ("/a/.%2E/b", Forbidden),
        ("/a/%2e%2e", Forbidden),
        ("/a/%00b", BadRequest),
        ("/a\x00b", BadRequest),
        ("/a%2fb", BadRequest),
        ("/a#/../etc", BadRequest),
        ("/dir/#frag", BadRequest),
        ("/a%2Fb", BadRequest),
        ("/a/..%2f..%2fetc", BadRequest),
        ("/%ff", BadRequest),
        ("/a/%c3", BadRequest),
        ("/%ed%a0%80", BadRequest),
        ("/\udcff", BadRequest),  # aiohttp's surrogateescape form of a raw 0xff byte
        ("/a/b\ud800", BadRequest),  # encoded UTF-16 surrogate: not valid UTF-8
        ("a/b", BadRequest),
        ("../etc", BadRequest),
        (f"/{TEMP_PREFIX}x", Forbidden),
        (f"/dir/{TEMP_PREFIX}0123abcd", Forbidden),
        ("/dir/%2ese-upload-x", Forbidden),
        ("/.se-state/macaroon.secret", Forbidden),
        ("/a/.se-anything", Forbidden),
        ("/" + "x" * 256, BadRequest),
        ("/" + "%41" * 256, BadRequest),
        ("/" + "/".join(["d" * 200] * 21), URITooLong),  # 21 * 201 > 4096 bytes
        ("/a" * 257, URITooLong),  # deeper than 256 segments
        ("/a%41" * 257, URITooLong),
    ],
)
def test_confine_refuses(raw: str, error: type[SEError]) -> None:
    with pytest.raises(error) as info:
        confine(raw)
    assert type(info.value) is error
    assert "\n" not in info.value.reason


def test_confine_long_path_at_the_limit_is_accepted() -> None:
    # 20 segments of 200 bytes plus separators: 4020 bytes, under 4096.
    p = confine("/" + "/".join(["d" * 200] * 20))
    assert len(p.segments) == 20


def test_davpath_helpers() -> None:
    p = confine("/a/b%20c")
    assert p.name == "b c"
    assert p.parent == DavPath(("a",))
    assert p.parent.child("x") == DavPath(("a", "x"))
    assert p.url() == "/a/b%20c"
    assert p.parent.url(collection=True) == "/a/"
    assert p.is_within(DavPath(("a",)))
    assert not DavPath(("a",)).is_within(p)
    assert confine("/").is_root
    assert confine("/").url(collection=True) == "/"


def _check_confined(p: DavPath) -> None:
    for seg in p.segments:
        assert seg not in ("", ".", "..")
        assert "/" not in seg
        assert "\x00" not in seg
        assert not seg.startswith(TEMP_PREFIX)
    joined = os.path.normpath(os.path.join(ROOT, p.rel))
    assert joined == ROOT or joined.startswith(ROOT + "/")
    # The URL form is a fixed point: confining it again gives the same path.
    assert confine(p.url()) == p


# Path-ish text with the characters that matter over-represented, plus arbitrary text
# (surrogates included: aiohttp decodes undecodable request-line bytes with surrogateescape).
_PIECES = st.sampled_from(
    ["/", "..", ".", "%2e", "%2E", "%2f", "%2F", "%00", "%ff", "%", "%c3%a9", "a", "\\", "?"]
)
_PATHISH = st.lists(st.one_of(_PIECES, st.text(max_size=4)), max_size=12).map("".join)
_ANY_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=64)
_SURROGATES = st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=3)


@given(
    st.one_of(
        _PATHISH,
        _PATHISH.map(lambda s: "/" + s),
        _ANY_TEXT,
        _ANY_TEXT.map(lambda s: "/" + s),
        st.tuples(_PATHISH, _SURROGATES, _PATHISH).map(lambda t: "/" + "".join(t)),
    )
)
def test_confine_never_escapes(raw: str) -> None:
    try:
        p = confine(raw)
    except (BadRequest, Forbidden) as exc:
        assert "\n" not in exc.reason
        return
    _check_confined(p)


@given(st.lists(st.text(min_size=1, max_size=20), max_size=8))
def test_confine_roundtrips_url(segments: list[str]) -> None:
    # st.text() draws no surrogates, so every segment is encodable.
    clean = tuple(
        s
        for s in segments
        if s not in (".", "..") and "/" not in s and "\x00" not in s
        if not s.startswith(TEMP_PREFIX)
    )
    p = DavPath(clean)
    assert confine(p.url()) == p
    assert confine(p.url(collection=True)) == p
