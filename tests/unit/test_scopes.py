"""Unit tests for se.auth.scopes: WLCG ``scope`` / ``wlcg.groups`` claim parsing, strict
scope-path normalisation and whole-segment matching (spec digest §3)."""

from __future__ import annotations

import dataclasses
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from se.auth.scopes import (
    AUTHZ,
    Capability,
    InvalidScope,
    covers,
    normalise_scope_path,
    parse_groups,
    parse_scope,
)

# --------------------------------------------------------------------------------------------
# parse_scope


def test_authz_names_are_the_profile_1_3_set() -> None:
    assert AUTHZ == ("read", "create", "modify", "stage", "poll")


@pytest.mark.parametrize("authz", ["read", "create", "modify", "stage", "poll"])
def test_every_authz_name(authz: str) -> None:
    caps, any_cap = parse_scope(f"storage.{authz}:/data/run1")
    assert caps == [Capability(authz, ("data", "run1"), False)]
    assert any_cap is True
    caps, _ = parse_scope(f"storage.{authz}:/")
    assert caps == [Capability(authz, (), False)]


@pytest.mark.parametrize(
    "scope",
    [
        "storage.foo:/x",
        "storage.write:/x",
        "storage.READ:/x",  # case-sensitive
        "storage.readx:/x",
        "storage.:/x",
        "storage.foo:/..",  # an ignored item's path is not examined
        "storage.foo",
        "storage.",
    ],
)
def test_unknown_storage_items_are_ignored_but_count_as_capability(scope: str) -> None:
    assert parse_scope(scope) == ([], True)


@pytest.mark.parametrize("authz", ["read", "create", "modify", "stage", "poll"])
def test_bare_storage_item_is_ignored_never_widened(authz: str) -> None:
    for scope in (f"storage.{authz}", f"storage.{authz}:"):
        caps, any_cap = parse_scope(scope)
        assert caps == []
        assert any_cap is True
    # Alongside a real capability, the bare item adds nothing (in particular not "/").
    caps, _ = parse_scope(f"storage.{authz} storage.read:/a storage.{authz}:")
    assert caps == [Capability("read", ("a",), False)]


@pytest.mark.parametrize(
    "scope",
    [
        "compute.read",
        "compute.create",
        "compute.modify",
        "compute.cancel",
        "compute.create:/x",
        "compute.foo",
        "openid compute.read",
    ],
)
def test_compute_scopes_mark_any_capability(scope: str) -> None:
    assert parse_scope(scope) == ([], True)


@pytest.mark.parametrize(
    "scope",
    [
        "",
        "   ",
        "openid",
        "offline_access",
        "profile email",
        "wlcg",
        "wlcg.groups",
        "wlcg.groups:/x",
        "wlcg.groups:/wlcg/test",
        "wlcg.capabilityset:/duneana",
        "host.auth",
        "storage",
        "compute",
        "storageread:/x",
        "Storage.read:/x",
        "xstorage.read:/x",
        "openid offline_access wlcg.groups:/x eduperson_entitlement",
    ],
)
def test_non_capability_items_do_not_mark_any_capability(scope: str) -> None:
    assert parse_scope(scope) == ([], False)


def test_mixed_scope() -> None:
    caps, any_cap = parse_scope(
        "openid  storage.read:/  wlcg.groups:/wlcg storage.create:/stageout/ compute.read "
    )
    assert any_cap is True
    assert caps == [
        Capability("read", (), False),
        Capability("create", ("stageout",), True),
    ]


def test_repeated_items_are_a_union() -> None:
    caps, _ = parse_scope(
        "storage.create:/a storage.create:/b storage.read:/a storage.create:/a/c storage.modify:/b"
    )
    assert set(caps) == {
        Capability("create", ("a",)),
        Capability("create", ("b",)),
        Capability("create", ("a", "c")),
        Capability("read", ("a",)),
        Capability("modify", ("b",)),
    }
    # A repeated identical item is harmless.
    caps, _ = parse_scope("storage.read:/a storage.read:/a")
    assert set(caps) == {Capability("read", ("a",))}


def test_item_is_split_at_the_first_colon() -> None:
    caps, _ = parse_scope("storage.read:/a:b/c:")
    assert caps == [Capability("read", ("a:b", "c:"), False)]


@pytest.mark.parametrize(
    ("path", "segments", "dir_only"),
    [
        ("/", (), False),
        ("/foo", ("foo",), False),
        ("/foo/", ("foo",), True),
        ("/foo/bar", ("foo", "bar"), False),
        ("/foo/bar/", ("foo", "bar"), True),
        ("/foo//bar//", ("foo", "bar"), True),
    ],
)
def test_dir_only_in_parse_scope(path: str, segments: tuple[str, ...], dir_only: bool) -> None:
    caps, _ = parse_scope(f"storage.create:{path}")
    assert caps == [Capability("create", segments, dir_only)]


@pytest.mark.parametrize(
    "scope",
    [
        "storage.read:/a/../b",
        "storage.read:/%2e%2e",
        "storage.read:relative",
        "storage.read:a/b",
        "storage.read:%2fa",
        "storage.create:/a%2fb",
        "storage.modify:/a\\b",
        "storage.stage:/%C3",
        "storage.poll:/100%25",
    ],
)
def test_bad_scope_path_rejects_the_whole_token(scope: str) -> None:
    with pytest.raises(InvalidScope):
        parse_scope(scope)
    with pytest.raises(InvalidScope):
        parse_scope(f"openid storage.read:/ok {scope} storage.create:/fine")


# --------------------------------------------------------------------------------------------
# normalise_scope_path


@pytest.mark.parametrize(
    ("raw", "segments", "dir_only"),
    [
        ("/", (), False),
        ("//", (), True),
        ("/.", (), False),
        ("/a", ("a",), False),
        ("//a//b", ("a", "b"), False),
        ("/a//b/./", ("a", "b"), True),
        ("/./a/././b", ("a", "b"), False),
        ("/a/%2e/b", ("a", "b"), False),
        ("/a/%2E", ("a",), False),
        ("/%61%62c", ("abc",), False),
        ("/%4A%4b", ("JK",), False),
        ("/%7Euser", ("~user",), False),
        ("/a%20b", ("a b",), False),
        ("/%C3%A9t%C3%A9", ("\u00e9t\u00e9",), False),
        ("/caf\u00e9", ("caf\u00e9",), False),
        ("/%2561", ("a",), False),  # double-encoded letter
        ("/%2525252e", (), False),  # "." encoded four times -> dropped
        ("/a..b/..c/c../...", ("a..b", "..c", "c..", "..."), False),
        ("/a:b/c;d/e=f", ("a:b", "c;d", "e=f"), False),
    ],
)
def test_normalise_accepts(raw: str, segments: tuple[str, ...], dir_only: bool) -> None:
    assert normalise_scope_path(raw) == (segments, dir_only)


@pytest.mark.parametrize(
    "raw",
    [
        # ".."
        "/..",
        "/a/..",
        "/a/../b",
        "/a/%2e%2e/b",
        "/a/%2E%2E",
        "/a/.%2e",
        "/a/%2e.",
        "/%252e%252e",  # double-encoded
        "/%25252e%25252e",  # triple-encoded
        "/%2525252e%2525252e",  # four times
        # "/" inside a segment
        "/a%2fb",
        "/a%2Fb",
        "/%2f",
        "/a/%252fb",
        # backslash
        "/a\\b",
        "/a/%5cb",
        "/a/%5Cb",
        "/a/%255cb",
        # NUL
        "/a\x00b",
        "/a/%00",
        "/a/%2500",
        # "%" left over (literal percent, bad escapes, encoded more than four times)
        "/100%25",
        "/a%",
        "/a%zz",
        "/%2",
        "/%252525252e",
        # not absolute
        "",
        "a",
        "a/b",
        "./a",
        "../a",
        "%2fa",
        "%2F",
        " /a",
    ],
)
def test_normalise_rejects(raw: str) -> None:
    with pytest.raises(InvalidScope):
        normalise_scope_path(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "/%ff",
        "/%C3",
        "/%C3%28",
        "/a/%80b",
        "/%ED%A0%80",  # UTF-8-encoded surrogate
        "/%F8%88%80%80%80",
        "/%25ff",  # only invalid after the second round
        "/ok/%E2%82",
    ],
)
def test_invalid_utf8_escape_is_invalid_scope_not_unicode_error(raw: str) -> None:
    with pytest.raises(InvalidScope) as info:
        normalise_scope_path(raw)
    assert not isinstance(info.value, UnicodeError)
    with pytest.raises(InvalidScope) as info:
        parse_scope(f"storage.read:{raw}")
    assert not isinstance(info.value, UnicodeError)


def test_invalid_scope_is_a_value_error() -> None:
    assert issubclass(InvalidScope, ValueError)
    assert not issubclass(InvalidScope, UnicodeError)


# --------------------------------------------------------------------------------------------
# covers


@pytest.mark.parametrize(
    ("scope", "path", "expected"),
    [
        ((), (), True),
        ((), ("a",), True),
        ((), ("a", "b", "c"), True),
        (("foo",), ("foo",), True),
        (("foo",), ("foo", "x"), True),
        (("foo",), ("foo", "x", "y"), True),
        (("foo",), ("foobar",), False),
        (("foo",), ("fo",), False),
        (("foo",), ("foobar", "x"), False),
        (("foo",), (), False),
        (("foo",), ("bar", "foo"), False),
        (("foo", "bar"), ("foo",), False),
        (("foo", "bar"), ("foo", "bar"), True),
        (("foo", "bar"), ("foo", "bargain"), False),
        (("foo", "bar"), ("foo", "bar", "baz"), True),
        (("foo", "bar"), ("foo", "baz", "bar"), False),
    ],
)
def test_covers(scope: tuple[str, ...], path: tuple[str, ...], expected: bool) -> None:
    assert covers(scope, path) is expected


# --------------------------------------------------------------------------------------------
# parse_groups


def test_parse_groups_valid() -> None:
    groups = ["/wlcg", "/wlcg/test", "/cms/Higgs_2.x-y", "/a0/B1/c", "/9", "/wlcg/a..b"]
    assert parse_groups(groups) == tuple(groups)


def test_parse_groups_keeps_order_and_does_not_add_parents() -> None:
    assert parse_groups(["/wlcg/xfers", "/atlas", "/wlcg"]) == ("/wlcg/xfers", "/atlas", "/wlcg")
    assert parse_groups(["/wlcg/test"]) == ("/wlcg/test",)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "/",
        "wlcg",
        "wlcg/test",
        "/wlcg/",
        "//wlcg",
        "/wlcg//test",
        "/_wlcg",
        "/.wlcg",
        "/-wlcg",
        "/wlcg/.",
        "/wlcg/..",
        "/wlcg/ test",
        "/wlcg test",
        "/wlcg\n",
        "\n/wlcg",
        "/wlcg:x",
        "/caf\u00e9",
        "/\uff57lcg",  # fullwidth letter
        "/wlcg\\x",
        "/wlcg\x00",
        "/wlcg/*",
    ],
)
def test_parse_groups_drops_invalid_string_entries(bad: str) -> None:
    assert parse_groups(["/wlcg", bad, "/cms"]) == ("/wlcg", "/cms")
    assert parse_groups([bad]) == ()


@pytest.mark.parametrize("bad", [None, 1, 1.5, True, b"/wlcg", ["/wlcg"], ("/wlcg",), {"g": "/x"}])
def test_parse_groups_drops_non_string_entries(bad: object) -> None:
    assert parse_groups([bad, "/wlcg"]) == ("/wlcg",)


@pytest.mark.parametrize(
    "value",
    [None, "/wlcg", "/wlcg /cms", b"/wlcg", ("/wlcg",), {"/wlcg"}, {"/wlcg": True}, 5, [], ()],
)
def test_parse_groups_non_list_is_empty(value: object) -> None:
    assert parse_groups(value) == ()


# --------------------------------------------------------------------------------------------
# Capability


def test_capability_is_a_frozen_hashable_value() -> None:
    cap = Capability("read", ("a",))
    assert cap.dir_only is False
    assert cap == Capability("read", ("a",), False)
    assert cap != Capability("read", ("a",), True)
    assert len({cap, Capability("read", ("a",), False)}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        cap.authz = "modify"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Properties

ANY_CHAR = st.characters(exclude_categories=())  # surrogates included
# Pieces that make interesting scopes/paths far more likely than uniform text.
PIECES = st.sampled_from(
    [
        "storage.read:",
        "storage.create:",
        "storage.modify:",
        "storage.stage:",
        "storage.poll:",
        "storage.foo:",
        "storage.read",
        "compute.read",
        "openid",
        "wlcg.groups:",
        " ",
        "  ",
        "\t",
        "/",
        "//",
        ".",
        "..",
        ":",
        "%",
        "%2e",
        "%2E",
        "%25",
        "%2f",
        "%5c",
        "%00",
        "%C3",
        "%A9",
        "%ff",
        "%ED%A0%80",
        "%zz",
        "\\",
        "\x00",
        "a",
        "b",
        "\u00e9",
        "\ud800",
    ]
)
SCOPE_TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=80),
    st.lists(st.one_of(PIECES, st.text(ANY_CHAR, max_size=3)), max_size=24).map("".join),
)
SEGMENT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..") and not any(c in s for c in "/\\\x00%")
)
SAFE_SEGMENT = st.text("abcXYZ019_-.~:@", min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..")
)


def _check_segments(segments: tuple[str, ...]) -> None:
    for seg in segments:
        assert seg not in ("", ".", "..")
        for bad in ("/", "\\", "\x00", "%"):
            assert bad not in seg


@given(SCOPE_TEXT)
def test_parse_scope_raises_only_invalid_scope(scope: str) -> None:
    try:
        caps, any_cap = parse_scope(scope)
    except InvalidScope as exc:
        assert not isinstance(exc, UnicodeError)
        return
    items = scope.split()
    assert any_cap == any(i.startswith(("storage.", "compute.")) for i in items)
    assert len(caps) <= len(items)
    for cap in caps:
        assert cap.authz in AUTHZ
        _check_segments(cap.path)


@given(st.one_of(SCOPE_TEXT, SCOPE_TEXT.map(lambda s: "/" + s)))
def test_normalise_output_is_clean_and_idempotent(raw: str) -> None:
    try:
        segments, dir_only = normalise_scope_path(raw)
    except InvalidScope as exc:
        assert not isinstance(exc, UnicodeError)
        return
    _check_segments(segments)
    assert dir_only == (raw.endswith("/") and raw != "/")
    assert normalise_scope_path("/" + "/".join(segments)) == (segments, False)


@given(st.lists(SEGMENT, max_size=6), st.booleans())
def test_normalise_decodes_percent_encoding(segments: list[str], double: bool) -> None:
    encoded = [quote(s, safe="") for s in segments]
    if double:
        encoded = [quote(s, safe="") for s in encoded]
    raw = "/" + "/".join(encoded)
    assert normalise_scope_path(raw) == (tuple(segments), False)
    assert normalise_scope_path(raw + "/") == (tuple(segments), True)


@given(st.binary(min_size=1, max_size=8))
def test_normalise_percent_encoded_bytes(data: bytes) -> None:
    raw = "/" + "".join(f"%{b:02X}" for b in data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        with pytest.raises(InvalidScope):
            normalise_scope_path(raw)
        return
    if "%" in text:
        return  # decoded again in the next round: covered by the explicit cases
    if text in (".", "..") or any(c in text for c in "/\\\x00"):
        if text == ".":
            assert normalise_scope_path(raw) == ((), False)
        else:
            with pytest.raises(InvalidScope):
                normalise_scope_path(raw)
        return
    assert normalise_scope_path(raw) == ((text,), False)


@given(
    st.lists(
        st.tuples(st.sampled_from(AUTHZ), st.lists(SAFE_SEGMENT, max_size=4), st.booleans()),
        max_size=6,
    ),
    st.lists(st.sampled_from(["openid", "wlcg.groups:/x", "offline_access"]), max_size=3),
)
def test_parse_scope_roundtrip(items: list[tuple[str, list[str], bool]], others: list[str]) -> None:
    words = [
        f"storage.{a}:/" + "/".join(segs) + ("/" if slash and segs else "")
        for a, segs, slash in items
    ]
    caps, any_cap = parse_scope(" ".join(others + words))
    assert any_cap == bool(items)
    assert caps == [Capability(a, tuple(segs), slash and bool(segs)) for a, segs, slash in items]


@given(st.lists(SAFE_SEGMENT, max_size=4), st.lists(SAFE_SEGMENT, max_size=4))
def test_covers_matches_string_rule(scope: list[str], path: list[str]) -> None:
    s = "/" + "/".join(scope)
    r = "/" + "/".join(path)
    expected = s == "/" or r == s or r.startswith(s + "/")
    assert covers(tuple(scope), tuple(path)) is expected
    assert covers(tuple(scope), tuple(scope) + tuple(path))


def _group_ok(g: str) -> bool:
    alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    if not g.startswith("/"):
        return False
    names = g[1:].split("/")
    return all(n and n[0] in alnum and all(c in alnum + "_.-" for c in n) for n in names)


@given(
    st.lists(
        st.one_of(
            st.text("/aZ9_.-\n \u00e9", max_size=10),
            st.none(),
            st.integers(),
        ),
        max_size=8,
    )
)
def test_parse_groups_matches_grammar(value: list[object]) -> None:
    expected = tuple(g for g in value if isinstance(g, str) and _group_ok(g))
    assert parse_groups(value) == expected
