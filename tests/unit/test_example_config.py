"""config.example.toml documents every key, with the real default."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from se.config import (
    AuthConfig,
    Config,
    GroupRule,
    IssuerConfig,
    Listener,
    PublicRule,
    ShareConfig,
    load_file,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def test_example_is_valid() -> None:
    load_file(EXAMPLE)


def test_example_lists_every_key_with_its_default() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    defaults = Config()
    for section in dataclasses.fields(Config):
        if section.name == "auth":
            # Optional section: shown commented out, every key documented in the text.
            text = EXAMPLE.read_text()
            for cls in (AuthConfig, IssuerConfig, GroupRule, PublicRule):
                for f in dataclasses.fields(cls):
                    tables = (f"# [[auth.{f.name}]]", f"# [[auth.issuers.{f.name}]]")
                    documented = f"# {f.name} = " in text or any(t in text for t in tables)
                    assert documented, f"auth: {f.name} not documented"
            continue
        if section.name == "listeners":
            # [[listeners]] is shown commented out (an example would serve more ports).
            text = EXAMPLE.read_text()
            assert "# [[listeners]]" in text
            for f in dataclasses.fields(Listener):
                documented = f"# {f.name} = " in text or f"# {f.name}." in text
                assert documented, f"listeners: {f.name} not documented"
            continue
        if section.name == "shares":
            # [[shares]] is shown commented out (without any, one implicit share).
            text = EXAMPLE.read_text()
            assert "# [[shares]]" in text
            for f in dataclasses.fields(ShareConfig):
                assert f"# {f.name} = " in text, f"shares: {f.name} not documented"
            continue
        assert section.name in data, f"[{section.name}] missing from the example"
        obj = getattr(defaults, section.name)
        for f in dataclasses.fields(obj):
            assert f.name in data[section.name], f"{section.name}.{f.name} not documented"
            value = data[section.name][f.name]
            expected = getattr(obj, f.name)
            if isinstance(expected, tuple):
                value = tuple(value)
            assert value == expected, f"{section.name}.{f.name}: example differs from default"
