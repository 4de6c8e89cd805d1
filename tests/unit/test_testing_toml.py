"""se.testing.toml.dumps: what it writes, tomllib reads back as the same dict."""

from __future__ import annotations

import math
import tomllib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from se.config import load_file
from se.testing.toml import dumps


def roundtrip(value: dict[str, Any]) -> dict[str, Any]:
    return tomllib.loads(dumps(value))


def test_se_config_shapes() -> None:
    config = {
        "server": {"workers": 2, "local_hosts": ["a.example", "b.example:8443"]},
        "tpc": {"marker_period": 0.5, "enabled": True, "deny_networks": []},
        "auth": {
            "anonymous": "none",
            "issuers": [
                {
                    "issuer": "https://iam.example/",
                    "jwks_file": "/tmp/jwks.json",
                    "groups": [
                        {"group": "/atlas", "path": "/", "allow": ["read"]},
                        {"group": "/atlas/prod", "path": "/atlas", "allow": ["read", "modify"]},
                    ],
                },
                {"issuer": "https://other.example", "audiences": ["se"]},
            ],
            "public": [{"path": "/public", "allow": ["read"]}],
        },
    }
    assert roundtrip(config) == config


def test_layout() -> None:
    text = dumps({"a": {"x": 1, "b": {"y": "z"}}, "t": [{"k": True}, {"k": False}], "top": 1})
    assert text == (
        'top = 1\n\n[a]\nx = 1\n\n[a.b]\ny = "z"\n\n[[t]]\nk = true\n\n[[t]]\nk = false\n'
    )
    # A table of tables only gets no header of its own; an empty table keeps one.
    assert dumps({"a": {"b": {"c": 1}}}) == "[a.b]\nc = 1\n"
    assert dumps({"a": {}}) == "[a]\n"
    assert dumps({}) == ""


def test_strings_and_keys_are_quoted() -> None:
    nasty = 'quote " backslash \\ tab \t nl \n cr \r bell \x07 del \x7f unicode é ∂ 🜁'
    value = {"odd key": {"k.e.y": nasty, "": "empty key"}, "plain_key-1": "x"}
    assert roundtrip(value) == value


def test_floats() -> None:
    value = {"a": 0.1, "b": 1e300, "c": -2.5e-7, "d": float("inf"), "e": -math.inf, "f": 3.0}
    assert roundtrip(value) == value
    nan = roundtrip({"n": math.nan})["n"]
    assert math.isnan(nan)


def test_arrays() -> None:
    value = {
        "empty": [],
        "nested": [[1, 2], ["a"]],
        "mixed_inline": [{"a": 1}, 2],  # not all tables: inline tables inside an array
        "tuple": (1, 2),
    }
    assert roundtrip(value) == {**value, "tuple": [1, 2]}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": None}, "a: no TOML form for NoneType"),
        ({"a": {"b": b"x"}}, "a.b: no TOML form for bytes"),
        ({"a": {1, 2}}, "a: no TOML form for set"),
        ({1: "x"}, "TOML keys are strings"),
    ],
)
def test_refused(value: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        dumps(value)


def test_not_a_table() -> None:
    with pytest.raises(TypeError, match="a TOML document is a table"):
        dumps([1, 2])  # type: ignore[arg-type]


def test_se_reads_it(tmp_path: Any) -> None:
    """A config written by dumps is one se itself loads (keys, types and all)."""
    path = tmp_path / "se.toml"
    path.write_text(
        dumps({"server": {"workers": 3}, "tpc": {"marker_period": 0.25}, "auth": {"leeway": 7}})
    )
    cfg = load_file(path)
    assert cfg.auth is not None
    assert (cfg.server.workers, cfg.tpc.marker_period, cfg.auth.leeway) == (3, 0.25, 7.0)


scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text()
)
keys = st.text(max_size=12)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
tables = st.recursive(
    st.dictionaries(keys, values, max_size=4),
    lambda inner: st.dictionaries(keys, inner | st.lists(inner, min_size=1, max_size=3)),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(tables)
def test_roundtrip_property(value: dict[str, Any]) -> None:
    assert roundtrip(value) == value
