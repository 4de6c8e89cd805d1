"""Unit tests for se.tape.wire and se.tape.model (WLCG Tape REST API v1 bodies)."""

from __future__ import annotations

import json
from urllib.parse import unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from se.errors import BadRequest, SEError
from se.tape.model import FileState, Locality, StageFile, StageRequest
from se.tape.wire import (
    MAX_DISK_LIFETIME,
    PROBLEM_TYPE,
    TapeProblem,
    discovery,
    format_archiveinfo,
    format_request,
    parse_duration,
    parse_paths,
    parse_stage,
    problem,
    sanitise_path,
    user_status,
)

SITE = "se-test-tape"

# Request bodies exactly as gfal2 2.21.3 sent them (captures/gfal-tape-rest.txt).
GFAL_STAGE = b'{"files": [{"path": "/tape/file1"}]}'
GFAL_STAGE_METADATA = b'{"files": [{"path": "/tape/file2", "targetedMetadata": {"a":1}}]}'
GFAL_ARCHIVEINFO = b'{"paths": ["/tape/file1"]}'
GFAL_RELEASE = b'{"paths": ["/tape/file1"]}'


def _problem(body: bytes, status: int = 400, max_files: int = 100) -> TapeProblem:
    with pytest.raises(TapeProblem) as info:
        parse_stage(body, SITE, max_files)
    exc = info.value
    assert exc.status == status
    assert "\n" not in exc.reason
    assert exc.body["status"] == status and exc.body["title"] == exc.title
    return exc


def _paths_problem(body: bytes, max_paths: int | None = None) -> TapeProblem:
    with pytest.raises(TapeProblem) as info:
        parse_paths(body, max_paths)
    assert info.value.status == 400
    return info.value


def _bad_path(raw: str) -> str:
    with pytest.raises(BadRequest) as info:
        sanitise_path(raw)
    assert info.value.status == 400
    assert "\n" not in info.value.reason
    return info.value.reason


# --------------------------------------------------------------------------- model


def test_file_state_terminal() -> None:
    assert {s for s in FileState if s.terminal} == {
        FileState.CANCELLED,
        FileState.FAILED,
        FileState.COMPLETED,
    }
    assert not FileState.SUBMITTED.terminal
    assert not FileState.STARTED.terminal


def test_enum_values_are_the_wire_spellings() -> None:
    assert [s.value for s in FileState] == [
        "SUBMITTED",
        "STARTED",
        "CANCELLED",
        "FAILED",
        "COMPLETED",
    ]
    assert [loc.value for loc in Locality] == [
        "DISK",
        "TAPE",
        "DISK_AND_TAPE",
        "LOST",
        "NONE",
        "UNAVAILABLE",
    ]
    assert FileState("CANCELLED") is FileState.CANCELLED
    assert json.dumps({"s": FileState.STARTED}) == '{"s": "STARTED"}'


def test_dataclasses_are_frozen() -> None:
    f = StageFile("/a", FileState.SUBMITTED, None, None, None, None, None)
    with pytest.raises(AttributeError):
        f.state = FileState.STARTED  # type: ignore[misc]
    r = StageRequest("id", "owner", 1, None, None, (f,))
    with pytest.raises(AttributeError):
        r.completed_at = 2  # type: ignore[misc]


# --------------------------------------------------------------------------- sanitise_path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/tape/file1", "/tape/file1"),
        ("/", "/"),
        ("//tape///file1", "/tape/file1"),
        ("/tape/./file1", "/tape/file1"),
        ("/tape/x/../file1", "/tape/file1"),
        ("/a/b/c/../../d", "/a/d"),
        ("/tape/dir/", "/tape/dir/"),  # trailing slash kept: gfal2 compares strings
        ("/tape/dir//", "/tape/dir/"),
        ("/tape/dir/.", "/tape/dir/"),
        ("/tape/dir/x/..", "/tape/dir/"),
        ("/tape/..", "/"),
        ("/.", "/"),
        ("//", "/"),
        ("/tape/%2e/file1", "/tape/file1"),
        ("/tape/x/%2E%2e/file1", "/tape/file1"),
        ("/tape/x/.%2e/file1", "/tape/file1"),
        ("/tape/a%20b", "/tape/a%20b"),  # encoding kept, as echoed
        ("/tape/a b", "/tape/a b"),
        ("/tape/%252e%252e", "/tape/%252e%252e"),  # decodes once to "%2e%2e": a name
        ("/tape/a..b/...", "/tape/a..b/..."),
        ("/tape/ünï", "/tape/ünï"),
        ("/tape/a?b#c", "/tape/a?b#c"),  # a namespace path has no query
        ("https://se.example.org:2880/tape/file1", "/tape/file1"),
        ("https://se.example.org/tape/file1?authz=x#frag", "/tape/file1"),
        ("http://[::1]:8080//tape//a%20b", "/tape/a%20b"),
        ("davs://se.example.org:443", "/"),
        ("root://eos.example.org//eos/tape/f", "/eos/tape/f"),
        ("HTTPS://h/x/./y", "/x/y"),
    ],
)
def test_sanitise_path(raw: str, expected: str) -> None:
    assert sanitise_path(raw) == expected
    assert sanitise_path(expected) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "/..",
        "/../etc/passwd",
        "/a/../../b",
        "/%2e%2e/x",
        "/a/%2E%2E/%2e%2e/x",
        "https://h/../x",
        "/a\x00b",
        "/a%00b",
        "https://h/a\x00",
        "",
        "tape/file1",
        "./tape",
        "se.example.org:2880/tape",
        "/\ud800",
        "/" + "x" * 20000,
    ],
)
def test_sanitise_path_refuses(raw: str) -> None:
    reason = _bad_path(raw)
    assert len(reason) < 300


def test_sanitise_path_reasons() -> None:
    assert "NUL" in _bad_path("/a%00")
    assert "'..'" in _bad_path("/../x")
    assert "absolute" in _bad_path("x")


_SEGMENTS = st.one_of(
    st.sampled_from(["", ".", "..", "%2e", "%2E%2e", ".%2E", "a", "a%20b", "a..b", "%", "?", "é"]),
    st.text(max_size=8),
)


@st.composite
def _raw_paths(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(["", "/", "//", "https://h:1", "https://h:1/", "x://", "./"]))
    return prefix + "/".join(draw(st.lists(_SEGMENTS, max_size=8)))


@given(st.one_of(_raw_paths(), st.text()))
@example("/a/b/../..")
@example("/a/%2e%2e/%2e")
@example("//x//..//")
def test_sanitise_path_properties(raw: str) -> None:
    try:
        out = sanitise_path(raw)
    except BadRequest as exc:
        assert "\n" not in exc.reason
        return
    assert out.startswith("/")
    assert "//" not in out
    assert "\x00" not in out and "%00" not in out
    for seg in out.split("/"):
        assert unquote(seg) not in (".", "..")
        assert seg not in (".", "..")
    assert sanitise_path(out) == out  # idempotent


# --------------------------------------------------------------------------- parse_stage


def test_parse_stage_gfal_capture() -> None:
    assert parse_stage(GFAL_STAGE, SITE, 100) == [("/tape/file1", None, None)]
    # gfal-bringonline --staging-metadata '{"a":1}': not keyed by our sitename, ignored.
    assert parse_stage(GFAL_STAGE_METADATA, SITE, 100) == [("/tape/file2", None, None)]
    assert parse_stage(GFAL_STAGE_METADATA, "a", 100) == [("/tape/file2", None, None)]


def test_parse_stage_spec_example() -> None:
    body = json.dumps(
        {
            "files": [
                {
                    "path": "/experiment/test/test.txt",
                    "targetedMetadata": {"sitename-from-well-known": {"activity": "exper_t0_daq"}},
                },
                {"path": "/eos/experiment/test/test2.txt", "diskLifetime": "PT1H"},
            ]
        }
    ).encode()
    assert parse_stage(body, "sitename-from-well-known", 10) == [
        ("/experiment/test/test.txt", None, {"activity": "exper_t0_daq"}),
        ("/eos/experiment/test/test2.txt", 3600, None),
    ]
    assert parse_stage(body, "elsewhere", 10)[0] == ("/experiment/test/test.txt", None, None)


def test_parse_stage_targeted_metadata_never_rejects() -> None:
    for tm in ([1, 2], "x", 7, None, {SITE: "not an object"}, {SITE: [1]}, {"other": {"a": 1}}):
        body = json.dumps({"files": [{"path": "/f", "targetedMetadata": tm}]}).encode()
        assert parse_stage(body, SITE, 10) == [("/f", None, None)]
    body = json.dumps(
        {"files": [{"path": "/f", "targetedMetadata": {SITE: {"k": [1]}, "x": {}}}]}
    ).encode()
    assert parse_stage(body, SITE, 10) == [("/f", None, {"k": [1]})]


def test_parse_stage_default_metadata_as_rucio_sends_it() -> None:
    def stage(targeted: object) -> dict[str, object] | None:
        body = json.dumps({"files": [{"path": "/f", "targetedMetadata": targeted}]}).encode()
        return parse_stage(body, SITE, 10)[0][2]

    assert stage({"default": {"activity": "T0"}}) == {"activity": "T0"}
    assert stage({"default": {"a": 1}, SITE: {"b": 2}}) == {"b": 2}  # ours wins
    assert stage({"default": "x", SITE: {"b": 2}}) == {"b": 2}
    assert stage({"default": "not an object"}) is None
    assert stage({"other-site": {"a": 1}}) is None


def test_parse_stage_unknown_fields_ignored() -> None:
    body = (
        b'{"files": [{"path": "/f", "onDisk": true, "priority": 3, "x": {"y": null}}],'
        b' "activity": "T0", "extra": [1]}'
    )
    assert parse_stage(body, SITE, 10) == [("/f", None, None)]


def test_parse_stage_sanitises_and_drops_duplicates() -> None:
    body = json.dumps(
        {
            "files": [
                {"path": "//tape//a", "diskLifetime": "P1D"},
                {"path": "/tape/b"},
                {"path": "/tape/./a", "diskLifetime": "PT1S"},  # duplicate: first kept
                {"path": "https://se:2880/tape/b"},
                {"path": "/tape/a/"},  # a different string: kept
            ]
        }
    ).encode()
    assert parse_stage(body, SITE, 10) == [
        ("/tape/a", 86400, None),
        ("/tape/b", None, None),
        ("/tape/a/", None, None),
    ]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"{",
        b"\xff\xfe\x00",
        b"[1]",
        b'"files"',
        b"null",
        b"{}",
        b'{"paths": ["/a"]}',
        b'{"files": null}',
        b'{"files": {}}',
        b'{"files": "/a"}',
        b'{"files": []}',
        b'{"files": [1]}',
        b'{"files": ["/a"]}',
        b'{"files": [{}]}',
        b'{"files": [{"path": null}]}',
        b'{"files": [{"path": 1}]}',
        b'{"files": [{"path": ["/a"]}]}',
        b'{"files": [{"path": "/a"}, {"name": "/b"}]}',
        b'{"files": [{"path": "/../a"}]}',
        b'{"files": [{"path": "a"}]}',
        b'{"files": [{"path": "/a\\u0000"}]}',
        b"[" * 100_000,
        b'{"files": [{"path": "/a", "diskLifetime": 1' + b"0" * 5000 + b"}]}",
    ],
)
def test_parse_stage_bad_bodies(body: bytes) -> None:
    _problem(body)


def test_parse_stage_problem_details() -> None:
    exc = _problem(b'{"files": []}')
    assert exc.title == "JSON validation error"
    assert exc.detail is not None and "files" in exc.detail
    exc = _problem(b'{"files": [{"path": "/a"}, {"x": 1}]}')
    assert exc.detail is not None and "files[1]" in exc.detail
    exc = _problem(b'{"files": [{"path": "/x/../../y"}]}')
    assert exc.title == "Invalid path" and exc.detail is not None and "'..'" in exc.detail
    assert isinstance(exc, SEError)
    assert exc.reason.startswith("Invalid path: files[0]")


def test_parse_stage_too_many_files() -> None:
    files = [{"path": f"/f{i}"} for i in range(11)]
    exc = _problem(json.dumps({"files": files}).encode(), 413, max_files=10)
    assert exc.title == "Too many files" and "10" in (exc.detail or "")
    assert len(parse_stage(json.dumps({"files": files[:10]}).encode(), SITE, 10)) == 10
    # Duplicates do not count.
    dup = [{"path": "/f"}] * 50 + [{"path": "/g"}]
    assert len(parse_stage(json.dumps({"files": dup}).encode(), SITE, 2)) == 2


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT1H", 3600),
        ("P1D", 86400),
        ("PT30M", 1800),
        ("PT45S", 45),
        ("PT1.5S", 2),
        ("PT0,2S", 1),
        ("P1DT2H3M4S", 93784),
        ("P2W", 1209600),
        ("pt1h", 3600),
        (" PT1H ", 3600),
        ("PT0S", 0),
        ("P0D", 0),
        ("P999999999W", MAX_DISK_LIFETIME),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    body = json.dumps({"files": [{"path": "/f", "diskLifetime": text}]}).encode()
    assert parse_stage(body, SITE, 1) == [("/f", seconds, None)]


@pytest.mark.parametrize(
    "text",
    ["", "P", "PT", "P1DT", "1H", "PT1", "P1Y", "P1M", "-PT1H", "PT-1H", "PT1H1H", "P1H", "PT1D",
     "PT1.5H", "PT1234567890S", "P1D2H", "one hour"],
)  # fmt: skip
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
    body = json.dumps({"files": [{"path": "/f", "diskLifetime": text}]}).encode()
    exc = _problem(body)
    assert "diskLifetime" in (exc.detail or "")


@pytest.mark.parametrize("value", [3600, 1.5, True, ["PT1H"], {"s": 1}])
def test_parse_stage_disk_lifetime_must_be_a_string(value: object) -> None:
    _problem(json.dumps({"files": [{"path": "/f", "diskLifetime": value}]}).encode())


def test_parse_stage_disk_lifetime_null_is_absent() -> None:
    body = b'{"files": [{"path": "/f", "diskLifetime": null}]}'
    assert parse_stage(body, SITE, 1) == [("/f", None, None)]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=15,
)


_ABS_PATHS = _raw_paths().map(lambda p: p if p.startswith("/") else "/" + p)
_GOOD_PATHS = st.lists(
    st.sampled_from(["a", "b", "a%20b", "é", "a..b", ".", "", "x y"]), min_size=1, max_size=4
).map(lambda segs: "/" + "/".join(segs))


@st.composite
def _stage_like(draw: st.DrawFn) -> bytes:
    """Mostly well-formed STAGE / path-list bodies, with the odd bad member."""
    entry = st.fixed_dictionaries(
        {"path": st.one_of(_GOOD_PATHS, _GOOD_PATHS, _ABS_PATHS, _JSON)},
        optional={
            "diskLifetime": st.sampled_from(["PT1H", "P1D", "PT0S", None, "PTX", 5]),
            "targetedMetadata": st.dictionaries(st.sampled_from([SITE, "x"]), _JSON),
            "other": _JSON,
        },
    )
    files = draw(st.one_of(st.lists(entry, max_size=5), st.lists(entry, max_size=2), _JSON))
    path = st.one_of(_GOOD_PATHS, _GOOD_PATHS, _ABS_PATHS, _JSON)
    paths = draw(st.lists(path, max_size=5) | _JSON)
    return json.dumps({"files": files, "paths": paths}).encode()


_BODIES = st.one_of(
    st.binary(max_size=200),
    _stage_like(),
    _stage_like(),
    _JSON.map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=300)
@given(_BODIES)
@example(b'{"files": [{"path": "/a", "targetedMetadata": {"' + SITE.encode() + b'": 1}}]}')
def test_parse_stage_raises_only_problems(body: bytes) -> None:
    try:
        out = parse_stage(body, SITE, 2)
    except (TapeProblem, BadRequest) as exc:
        assert exc.status in (400, 413)
        return
    assert 1 <= len(out) <= 2
    assert len({p for p, _, _ in out}) == len(out)
    for path, lifetime, meta in out:
        assert sanitise_path(path) == path
        assert lifetime is None or 0 <= lifetime <= MAX_DISK_LIFETIME
        assert meta is None or isinstance(meta, dict)


# --------------------------------------------------------------------------- parse_paths


def test_parse_paths_gfal_capture() -> None:
    assert parse_paths(GFAL_ARCHIVEINFO, 1000) == ["/tape/file1"]
    assert parse_paths(GFAL_RELEASE, None) == ["/tape/file1"]


def test_parse_paths_spec_example() -> None:
    body = b'{"paths": ["/path/example.txt", "/path/example2.txt"]}'
    assert parse_paths(body, None) == ["/path/example.txt", "/path/example2.txt"]


def test_parse_paths_sanitises_and_drops_duplicates() -> None:
    body = json.dumps(
        {"paths": ["//a", "/b", "/./a", "https://h:1/b", "/c/../a", "/d/"], "extra": 1}
    ).encode()
    assert parse_paths(body, None) == ["/a", "/b", "/d/"]


def test_parse_paths_truncates() -> None:
    body = json.dumps({"paths": ["/a", "/a", "/b", "/c", "/../invalid", 7]}).encode()
    assert parse_paths(body, 2) == ["/a", "/b"]
    assert parse_paths(body, 3) == ["/a", "/b", "/c"]
    _paths_problem(body, 4)
    _paths_problem(body, None)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[]",
        b'["/a"]',
        b"{}",
        b'{"files": [{"path": "/a"}]}',
        b'{"paths": null}',
        b'{"paths": "/a"}',
        b'{"paths": []}',
        b'{"paths": {"/a": 1}}',
        b'{"paths": [null]}',
        b'{"paths": ["/a", 1]}',
        b'{"paths": [{"path": "/a"}]}',
        b'{"paths": ["/../a"]}',
        b'{"paths": ["a"]}',
        b'{"paths": ["/a%00"]}',
    ],
)
def test_parse_paths_bad_bodies(body: bytes) -> None:
    _paths_problem(body)
    _paths_problem(body, 10)


def test_parse_paths_problem_detail() -> None:
    exc = _paths_problem(b'{"paths": []}')
    assert exc.title == "JSON validation error" and "paths" in (exc.detail or "")
    exc = _paths_problem(b'{"paths": ["/a", 3]}')
    assert "paths[1]" in (exc.detail or "")


@settings(max_examples=300)
@given(
    _BODIES,
    st.none() | st.integers(1, 4),
)
def test_parse_paths_raises_only_problems(body: bytes, max_paths: int | None) -> None:
    try:
        out = parse_paths(body, max_paths)
    except (TapeProblem, BadRequest) as exc:
        assert exc.status == 400
        return
    assert out and len(set(out)) == len(out)
    assert max_paths is None or len(out) <= max_paths
    assert all(sanitise_path(p) == p for p in out)


# --------------------------------------------------------------------------- format_request


def test_format_request_spec_example() -> None:
    req = StageRequest(
        id="93be38df-435c-4322-801d-b95e77ac5bbc",
        owner="https://iss.example.org sub",
        created_at=1646305430,
        started_at=1646305456,
        completed_at=1646309000,
        files=(
            StageFile("/test/file.txt", FileState.COMPLETED, 1646305470, 1646306000, None, 3600),
            StageFile(
                "/test/file2.txt",
                FileState.FAILED,
                1646305456,
                1646305456,
                "Tape backend is unreachable",
                None,
                {"activity": "x"},
            ),
        ),
    )
    expected = json.loads(
        """
        {"id": "93be38df-435c-4322-801d-b95e77ac5bbc",
         "createdAt": 1646305430, "startedAt": 1646305456, "completedAt": 1646309000,
         "files": [
           {"path": "/test/file.txt",  "state": "COMPLETED", "startedAt": 1646305470,
            "finishedAt": 1646306000},
           {"path": "/test/file2.txt", "state": "FAILED", "error": "Tape backend is unreachable",
            "startedAt": 1646305456, "finishedAt": 1646305456}
         ]}
        """
    )
    out = format_request(req)
    assert out == expected
    assert json.loads(json.dumps(out)) == expected  # plain JSON types only


def test_format_request_optional_members() -> None:
    req = StageRequest(
        "b5b262f6-18eb-4e36-b2e1-595f007a9253",
        "/DC=org/CN=someone",
        100,
        None,
        None,
        (
            StageFile("/tape/file1", FileState.SUBMITTED),
            StageFile("/tape/file2", FileState.STARTED, started_at=101),
            StageFile("/tape/file3", FileState.COMPLETED, 100, 100, error="stale error"),
            StageFile("/tape/file4", FileState.CANCELLED, 101, 102, error="Cancelled by user"),
            StageFile("/tape/file5", FileState.CANCELLED, None, 102),
            StageFile("/tape/file6", FileState.FAILED, 100, 100, error=""),
        ),
    )
    out = format_request(req)
    assert out == {
        "id": "b5b262f6-18eb-4e36-b2e1-595f007a9253",
        "createdAt": 100,
        "startedAt": 100,  # no start yet: createdAt
        "files": [
            {"path": "/tape/file1", "state": "SUBMITTED"},
            {"path": "/tape/file2", "state": "STARTED", "startedAt": 101},
            {"path": "/tape/file3", "state": "COMPLETED", "startedAt": 100, "finishedAt": 100},
            {
                "path": "/tape/file4",
                "state": "CANCELLED",
                "startedAt": 101,
                "finishedAt": 102,
                "error": "Cancelled by user",
            },
            {"path": "/tape/file5", "state": "CANCELLED", "finishedAt": 102},
            {"path": "/tape/file6", "state": "FAILED", "startedAt": 100, "finishedAt": 100},
        ],
    }
    assert "completedAt" not in out
    assert all("onDisk" not in f for f in out["files"])
    assert all(type(f["state"]) is str for f in out["files"])


def test_format_request_what_gfal2_checks() -> None:
    # gfal2 polling: id equal to the token, a files array, items matched by path string.
    req = StageRequest("tok", "o", 1, 1, 2, (StageFile("/tape/file1", FileState.COMPLETED, 1, 2),))
    out = json.loads(json.dumps(format_request(req)))
    assert out["id"] == "tok" and out["completedAt"] == 2
    assert out["files"] == [
        {"path": "/tape/file1", "state": "COMPLETED", "startedAt": 1, "finishedAt": 2}
    ]


# --------------------------------------------------------------------------- archiveinfo


def test_format_archiveinfo_spec_example() -> None:
    out = format_archiveinfo(
        [
            ("/eos/ccaffy/tape/test.txt", Locality.DISK_AND_TAPE, None),
            (
                "/file/does/not/exist",
                None,
                "USER ERROR: file does not exist or is not accessible to you",
            ),
        ]
    )
    assert out == json.loads(
        """
        [
          {"path": "/eos/ccaffy/tape/test.txt", "locality": "DISK_AND_TAPE"},
          {"path": "/file/does/not/exist",
           "error": "USER ERROR: file does not exist or is not accessible to you"}
        ]
        """
    )
    assert json.dumps(format_archiveinfo([("/tape/file1", Locality.DISK_AND_TAPE, None)])) == (
        '[{"path": "/tape/file1", "locality": "DISK_AND_TAPE"}]'  # the capture's reply
    )


def test_format_archiveinfo_both_and_neither() -> None:
    assert format_archiveinfo(
        [("/a", Locality.DISK, "write failed 3 times"), ("/b", None, None), ("/c", None, "")]
    ) == [
        {"path": "/a", "locality": "DISK", "error": "write failed 3 times"},
        {"path": "/b"},
        {"path": "/c"},
    ]
    assert format_archiveinfo([]) == []
    for loc in Locality:
        (item,) = format_archiveinfo([("/x", loc, None)])
        assert item["locality"] == loc.value
        assert item["locality"] not in ("ONLINE", "NEARLINE", "ONLINE_AND_NEARLINE")


@pytest.mark.parametrize(
    ("locality", "status"),
    [
        (Locality.DISK, "ONLINE"),
        (Locality.TAPE, "NEARLINE"),
        (Locality.DISK_AND_TAPE, "ONLINE_AND_NEARLINE"),
        (Locality.LOST, "LOST"),
        (Locality.NONE, "NONE"),
        (Locality.UNAVAILABLE, "UNAVAILABLE"),
        (None, "UNAVAILABLE"),
    ],
)
def test_user_status(locality: Locality | None, status: str) -> None:
    assert user_status(locality) == status


# --------------------------------------------------------------------------- discovery, problems


def test_discovery_spec_shape() -> None:
    out = discovery(
        "cern-prod-tape-atlas",
        "https://tape-api.example.org:1234/api/v1",
        "This is the CERN tape REST API endpoint for CTA ATLAS",
    )
    assert out == json.loads(
        """
        {
          "sitename": "cern-prod-tape-atlas",
          "description": "This is the CERN tape REST API endpoint for CTA ATLAS",
          "endpoints": [
            {"uri": "https://tape-api.example.org:1234/api/v1", "version": "v1", "metadata": {}}
          ]
        }
        """
    )


def test_discovery_what_gfal2_needs() -> None:
    out = json.loads(json.dumps(discovery(SITE, "https://[::1]:2880/api/v1/", "")))
    assert out["sitename"] == SITE
    assert "description" not in out
    (endpoint,) = out["endpoints"]
    assert endpoint == {"uri": "https://[::1]:2880/api/v1", "version": "v1", "metadata": {}}
    assert endpoint["uri"] + "/stage" == "https://[::1]:2880/api/v1/stage"


def test_problem() -> None:
    assert PROBLEM_TYPE == "application/problem+json"
    assert problem(404, "Not found") == {"status": 404, "title": "Not found"}
    assert problem(
        400,
        "JSON Validation error",
        "paths \u2013 Field does not exist or is not a valid non-empty array",
    ) == json.loads(
        '{"title": "JSON Validation error", "status": 400,'
        ' "detail": "paths \u2013 Field does not exist or is not a valid non-empty array"}'
    )
    assert "type" not in problem(500, "x", "y")
    assert problem(503, "Busy", "") == {"status": 503, "title": "Busy"}


def test_tape_problem_is_an_se_error() -> None:
    exc = TapeProblem(429, "Too many requests", "at most 10 active\nrequests")
    assert isinstance(exc, SEError)
    assert exc.status == 429
    assert exc.reason == "Too many requests: at most 10 active requests"
    assert exc.body == {
        "status": 429,
        "title": "Too many requests",
        "detail": "at most 10 active\nrequests",
    }
    assert TapeProblem(404, "Not found").reason == "Not found"
    assert TapeProblem(404, "Not found").body == {"status": 404, "title": "Not found"}
