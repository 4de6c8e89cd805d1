"""Unit tests for se.scitags.tags: SciTag values, their sources, the IPv6 flow-label layout
and the experiment/activity registry (digest §2, §3, §4)."""

from __future__ import annotations

import contextlib
import json
import random
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from se.scitags.tags import (
    INVALID,
    Registry,
    Tag,
    decode_label,
    flow_label,
    parse_tag,
    rev9,
    select_tag,
)

ENTROPY_BITS = 0xC0000 | 0x00100 | 0x00003
PAYLOAD_BITS = 0xFFFFF & ~ENTROPY_BITS


# -- parse_tag ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("65", Tag(1, 1)),
        ("147", Tag(2, 19)),  # ATLAS Staging
        ("204", Tag(3, 12)),  # CMS Production Input
        ("313", Tag(4, 57)),
        ("65535", Tag(1023, 63)),
        (" 147 ", Tag(2, 19)),
        ("\t147\t", Tag(2, 19)),
    ],
)
def test_parse_tag_valid(text: str, expected: Tag) -> None:
    tag = parse_tag(text)
    assert tag == expected
    assert tag is not None and tag.valid
    assert tag.value == int(text)


@pytest.mark.parametrize(
    "text",
    [
        "64",  # below the minimum (dCache accepts it; gfal2/XRootD/StoRM do not)
        "0",
        "1",
        "65536",
        "99999",
        "-1",
        "-147",
        "+147",
        "147.0",
        "1e3",
        "0x93",
        "abc",
        "14 7",
        "147,148",
        "147;",
        "١٤٧",  # Arabic-Indic digits: not ASCII digits
        "9" * 6,
        "9" * 5000,  # would exceed int()'s digit limit if converted blindly
        "128",  # exp 2, act 0: act must be 1..63
        "192",  # exp 3, act 0
        "65472",  # exp 1023, act 0
    ],
)
def test_parse_tag_invalid(text: str) -> None:
    assert parse_tag(text) is INVALID


@pytest.mark.parametrize("text", [None, "", " ", "\t", "  \t  "])
def test_parse_tag_absent(text: str | None) -> None:
    assert parse_tag(text) is None


def test_invalid_marker() -> None:
    assert Tag(0, 0) == INVALID
    assert not INVALID.valid
    assert INVALID.value == 0


@given(st.text())
def test_parse_tag_never_raises(text: str) -> None:
    tag = parse_tag(text)
    if tag is None:
        assert not text.strip()
    elif tag is not INVALID:
        assert tag.valid
        assert 65 <= tag.value <= 65535
        assert tag.value == int(text.strip())


@given(st.integers(min_value=-(10**8), max_value=10**8))
def test_parse_tag_integers(number: int) -> None:
    tag = parse_tag(str(number))
    if 65 <= number <= 65535 and number & 0x3F:
        assert tag == Tag(number >> 6, number & 0x3F)
    else:
        assert tag is INVALID


# -- select_tag --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "query", "expected", "source"),
    [
        ({}, {}, None, ""),
        ({"SciTag": "147"}, {}, Tag(2, 19), "SciTag"),
        ({"TransferHeaderSciTag": "204"}, {}, Tag(3, 12), "TransferHeaderSciTag"),
        ({}, {"scitag.flow": "65"}, Tag(1, 1), "scitag.flow"),
        (
            {"SciTag": "147", "TransferHeaderSciTag": "204"},
            {"scitag.flow": "65"},
            Tag(2, 19),
            "SciTag",
        ),
        (
            {"TransferHeaderSciTag": "204"},
            {"scitag.flow": "65"},
            Tag(3, 12),
            "TransferHeaderSciTag",
        ),
        # blank values do not count: the next source is used
        ({"SciTag": ""}, {"scitag.flow": "65"}, Tag(1, 1), "scitag.flow"),
        ({"SciTag": "  ", "TransferHeaderSciTag": "204"}, {}, Tag(3, 12), "TransferHeaderSciTag"),
        ({"SciTag": "", "TransferHeaderSciTag": " "}, {"scitag.flow": ""}, None, ""),
        # an invalid value in a higher-precedence source wins, as INVALID
        ({"SciTag": "64", "TransferHeaderSciTag": "204"}, {}, INVALID, "SciTag"),
        ({"SciTag": "junk"}, {"scitag.flow": "65"}, INVALID, "SciTag"),
        ({"TransferHeaderSciTag": "128"}, {"scitag.flow": "65"}, INVALID, "TransferHeaderSciTag"),
        ({}, {"scitag.flow": "70000"}, INVALID, "scitag.flow"),
        # unrelated keys are ignored
        ({"X-SciTag": "147"}, {"scitag": "147", "flow": "147"}, None, ""),
    ],
)
def test_select_tag(
    headers: dict[str, str], query: dict[str, str], expected: Tag | None, source: str
) -> None:
    assert select_tag(headers, query) == (expected, source)


def test_select_tag_headers_case_insensitive() -> None:
    """With aiohttp's header mapping the header names match in any case."""
    headers: CIMultiDict[str] = CIMultiDict({"scitag": "147", "TRANSFERHEADERSCITAG": "204"})
    assert select_tag(headers, {}) == (Tag(2, 19), "SciTag")
    headers = CIMultiDict({"transferheaderscitag": "204"})
    assert select_tag(headers, {}) == (Tag(3, 12), "TransferHeaderSciTag")


@given(
    st.one_of(st.none(), st.text(max_size=8)),
    st.one_of(st.none(), st.text(max_size=8)),
    st.one_of(st.none(), st.text(max_size=8)),
)
def test_select_tag_precedence_property(a: str | None, b: str | None, c: str | None) -> None:
    headers = {k: v for k, v in (("SciTag", a), ("TransferHeaderSciTag", b)) if v is not None}
    query = {"scitag.flow": c} if c is not None else {}
    tag, source = select_tag(headers, query)
    for name, value in (("SciTag", a), ("TransferHeaderSciTag", b), ("scitag.flow", c)):
        if parse_tag(value) is not None:
            assert (tag, source) == (parse_tag(value), name)
            return
    assert (tag, source) == (None, "")


# -- rev9 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "expected"),
    [(0, 0), (1, 0x100), (2, 0x80), (3, 0x180), (0x100, 1), (0x1FF, 0x1FF), (0b101, 0b101000000)],
)
def test_rev9_values(x: int, expected: int) -> None:
    assert rev9(x) == expected


def test_rev9_involution_exhaustive() -> None:
    for x in range(512):
        assert 0 <= rev9(x) <= 0x1FF
        assert rev9(rev9(x)) == x
        assert bin(rev9(x)).count("1") == bin(x).count("1")


@given(st.integers(min_value=0, max_value=2**40))
def test_rev9_uses_low_nine_bits(x: int) -> None:
    assert rev9(x) == rev9(x & 0x1FF)
    assert rev9(rev9(x)) == x & 0x1FF


# -- flow_label / decode_label -----------------------------------------------------------


@pytest.mark.parametrize(
    ("experiment", "activity", "label"),
    [(2, 19, 0x1004C), (3, 12, 0x30030), (1, 1, 0x20004)],
)
def test_flow_label_worked_examples(experiment: int, activity: int, label: int) -> None:
    tag = Tag(experiment, activity)
    assert flow_label(tag, 0) == label
    assert decode_label(label) == tag
    # entropy bits all set: only those bits change
    assert flow_label(tag, 0xFFFFF) == label | ENTROPY_BITS
    assert decode_label(label | ENTROPY_BITS) == tag


def test_worked_example_bit_pattern() -> None:
    # exp 2, act 19 -> 00 010000000 0 010011 00
    assert format(flow_label(Tag(2, 19), 0), "020b") == "00" + "010000000" + "0" + "010011" + "00"


def test_all_experiments_and_activities_round_trip() -> None:
    rng = random.Random(20250904)
    for experiment in range(1, 512):
        for activity in range(1, 64):
            tag = Tag(experiment, activity)
            entropy = rng.getrandbits(20)
            label = flow_label(tag, entropy)
            assert 0 <= label <= 0xFFFFF
            assert decode_label(label) == tag
            assert label & ENTROPY_BITS == entropy & ENTROPY_BITS
            assert label & PAYLOAD_BITS == flow_label(tag, 0)


@given(
    st.integers(min_value=0, max_value=1023),
    st.integers(min_value=0, max_value=63),
    st.integers(min_value=-(2**64), max_value=2**64),
)
def test_entropy_never_touches_payload(experiment: int, activity: int, entropy: int) -> None:
    tag = Tag(experiment, activity)
    label = flow_label(tag, entropy)
    assert 0 <= label <= 0xFFFFF
    assert label & PAYLOAD_BITS == flow_label(tag, 0) & PAYLOAD_BITS
    assert label & ENTROPY_BITS == entropy & ENTROPY_BITS
    assert flow_label(tag, 0) & ENTROPY_BITS == 0


@given(st.integers(min_value=0, max_value=2**20 - 1))
def test_label_always_fits(entropy: int) -> None:
    for tag in (Tag(1023, 63), Tag(65535, 65535), Tag(511, 63), INVALID):
        assert 0 <= flow_label(tag, entropy) <= 0xFFFFF
        assert 0 <= flow_label(tag, entropy, bit19_allowed=False) <= 0x7FFFF


def test_experiments_above_511_keep_their_low_nine_bits() -> None:
    assert decode_label(flow_label(Tag(512 + 2, 19), 0)) == Tag(2, 19)
    assert decode_label(flow_label(Tag(1023, 63), 0)) == Tag(511, 63)


@given(
    st.integers(min_value=1, max_value=511),
    st.integers(min_value=1, max_value=63),
    st.integers(min_value=0, max_value=2**20 - 1),
)
def test_bit19_cleared_when_not_allowed(experiment: int, activity: int, entropy: int) -> None:
    tag = Tag(experiment, activity)
    allowed = flow_label(tag, entropy)
    cleared = flow_label(tag, entropy, bit19_allowed=False)
    assert cleared & 0x80000 == 0
    assert cleared == allowed & ~0x80000
    assert decode_label(cleared) == tag
    assert cleared & PAYLOAD_BITS == allowed & PAYLOAD_BITS


def test_bit19_is_entropy_only() -> None:
    assert flow_label(Tag(511, 63), 0x80000) & 0x80000
    assert not flow_label(Tag(511, 63), 0x80000, bit19_allowed=False) & 0x80000
    assert not flow_label(Tag(511, 63), 0) & 0x80000


@given(st.integers(min_value=0, max_value=0xFFFFF))
def test_decode_ignores_entropy(label: int) -> None:
    tag = decode_label(label)
    assert decode_label(label & ~ENTROPY_BITS) == tag
    assert flow_label(tag, label) == label


# -- Registry ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> Registry:
    text = resources.files("se.scitags").joinpath("api.json").read_text(encoding="utf-8")
    return Registry.parse(text)


def test_shipped_registry_experiments(shipped: Registry) -> None:
    expected = {
        1: "default",
        2: "atlas",
        3: "cms",
        4: "lhcb",
        5: "alice",
        6: "belleii",
        7: "ska",
        8: "dune",
        9: "lsst",
        10: "ilc",
        11: "auger",
        12: "juno",
        13: "nova",
        14: "xenon",
    }
    for exp_id, name in expected.items():
        assert shipped.experiments[exp_id] == name
        assert shipped.experiment_id(name) == exp_id


def test_shipped_registry_activities(shipped: Registry) -> None:
    assert shipped.activities[(2, 19)] == "Staging"
    assert shipped.activities[(3, 16)] == "Staging"
    assert shipped.activities[(3, 12)] == "Production Input"
    assert shipped.activities[(1, 1)] == "default"
    assert shipped.activities[(2, 2)] == "perfSONAR"
    assert shipped.activity_id(2, "Staging") == 19
    assert shipped.activity_id(3, "Staging") == 16
    assert shipped.activity_id(3, "Production Input") == 12
    assert shipped.activity_id(2, "Upload/Download (User)") == 23
    # activities are per experiment
    assert shipped.activity_id(2, "User AutoApprove") is None
    assert shipped.activity_id(3, "User AutoApprove") == 22
    assert shipped.activity_id(999, "default") is None


def test_shipped_registry_matches_file(shipped: Registry) -> None:
    text = resources.files("se.scitags").joinpath("api.json").read_text(encoding="utf-8")
    data = json.loads(text)
    assert len(shipped.experiments) == len(data["experiments"])
    total = sum(len(e["activities"]) for e in data["experiments"])
    assert len(shipped.activities) == total


@pytest.mark.parametrize(
    ("name", "expected"), [("ATLAS", 2), ("Atlas", 2), (" cms ", 3), ("BelleII", 6), ("nope", None)]
)
def test_experiment_lookup_case_insensitive(
    shipped: Registry, name: str, expected: int | None
) -> None:
    assert shipped.experiment_id(name) == expected


@pytest.mark.parametrize(
    ("experiment", "name", "expected"),
    [
        (2, "staging", 19),
        (2, "STAGING", 19),
        (2, " Staging ", 19),
        (3, "production input", 12),
        (3, "DATA REBALANCING", 7),  # registry spells it "Data rebalancing" for CMS
        (2, "data rebalancing", 8),  # and "Data Rebalancing" for ATLAS
        (2, "PERFSONAR", 2),
        (2, "no such activity", None),
    ],
)
def test_activity_lookup_case_insensitive(
    shipped: Registry, experiment: int, name: str, expected: int | None
) -> None:
    assert shipped.activity_id(experiment, name) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "{",
        "[]",
        "null",
        "42",
        '"experiments"',
        "{}",
        '{"version": 1}',
        '{"experiments": {}}',
        '{"experiments": "atlas"}',
        '{"experiments": null}',
    ],
)
def test_registry_malformed_document(text: str) -> None:
    with pytest.raises(ValueError):
        Registry.parse(text)


def test_registry_skips_malformed_entries() -> None:
    doc = {
        "version": 1,
        "experiments": [
            "atlas",
            42,
            None,
            {"expName": "noid", "activities": []},
            {"expId": 5, "activities": []},
            {"expName": "strid", "expId": "6", "activities": []},
            {"expName": 7, "expId": 7},
            {
                "expName": "good",
                "expId": 2,
                "activities": [
                    {"activityName": "Staging", "activityId": 19},
                    {"activityName": "strid", "activityId": "20"},
                    {"activityName": "noid"},
                    "Staging",
                    None,
                    {"activityId": 21},
                ],
            },
            {"expName": "noacts", "expId": 3},
            {"expName": "nullacts", "expId": 4, "activities": None},
        ],
    }
    reg = Registry.parse(json.dumps(doc))
    assert reg.experiments == {2: "good", 3: "noacts", 4: "nullacts"}
    assert reg.activities[(2, 19)] == "Staging"
    assert (2, 20) not in reg.activities
    assert set(reg.activities) <= {(2, 19), (2, 21)}
    assert reg.experiment_id("GOOD") == 2
    assert reg.activity_id(2, "staging") == 19
    assert reg.activity_id(3, "staging") is None


@pytest.mark.parametrize("activities", [5, 1.5, True])
def test_registry_non_list_activities(activities: object) -> None:
    doc = {"experiments": [{"expName": "x", "expId": 9, "activities": activities}]}
    try:
        reg = Registry.parse(json.dumps(doc))
    except ValueError:
        return
    assert all(exp != 9 for exp, _ in reg.activities)


def test_registry_boolean_ids_skipped() -> None:
    doc = {
        "experiments": [
            {"expName": "default", "expId": 1, "activities": []},
            {
                "expName": "bogus",
                "expId": True,
                "activities": [{"activityName": "x", "activityId": True}],
            },
        ]
    }
    reg = Registry.parse(json.dumps(doc))
    assert reg.experiments == {1: "default"}
    assert reg.activities == {}


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.text())
def test_registry_parse_text_only_value_errors(text: str) -> None:
    with contextlib.suppress(ValueError):
        Registry.parse(text)


@given(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "expName": st.text(max_size=8) | JSON_SCALARS,
                "expId": st.integers(min_value=0, max_value=1023) | JSON_SCALARS,
                "activities": st.lists(JSON_VALUES, max_size=4) | st.none(),
            },
        )
        | JSON_VALUES,
        max_size=6,
    )
)
def test_registry_parse_entries_only_skipped(experiments: list[object]) -> None:
    """Any entry shape (with a list of activities) parses; bad entries are dropped."""
    reg = Registry.parse(json.dumps({"version": 1, "experiments": experiments}))
    for exp_id, name in reg.experiments.items():
        assert isinstance(exp_id, int)
        assert isinstance(name, str)
    for exp_id, act_id in reg.activities:
        assert exp_id in reg.experiments
        assert isinstance(act_id, int)
