"""A small TOML writer for server configurations given as Python dicts.

The standard library reads TOML (:mod:`tomllib`) but does not write it.  :func:`dumps`
covers the types an ``se`` configuration uses: tables (nested dicts), arrays of tables
(lists of dicts), strings, integers, floats, booleans and arrays of those (arrays of
dicts inside an array become inline tables).  Anything else is a :class:`TypeError`;
``None`` is refused rather than dropped, so a key is never silently missing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["dumps"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def dumps(config: Mapping[str, Any]) -> str:
    """``config`` as a TOML document (keys in the dict's order, scalars before tables)."""
    if not isinstance(config, Mapping):
        raise TypeError(f"a TOML document is a table (dict), not {type(config).__name__}")
    lines: list[str] = []
    _table(config, (), lines)
    return "\n".join(lines).lstrip("\n") + "\n" if lines else ""


def _is_table_array(value: object) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str | bytes)
        and len(value) > 0
        and all(isinstance(item, Mapping) for item in value)
    )


def _table(table: Mapping[str, Any], path: tuple[str, ...], lines: list[str]) -> None:
    subtables: list[tuple[str, Any]] = []
    for key, value in table.items():
        if not isinstance(key, str):
            raise TypeError(f"TOML keys are strings, not {key!r}")
        if isinstance(value, Mapping) or _is_table_array(value):
            subtables.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value, (*path, key))}")
    for key, value in subtables:
        sub = (*path, key)
        name = ".".join(_key(part) for part in sub)
        if isinstance(value, Mapping):
            # A table holding only tables needs no header of its own.
            if not value or any(
                not (isinstance(v, Mapping) or _is_table_array(v)) for v in value.values()
            ):
                lines += ["", f"[{name}]"]
            _table(value, sub, lines)
        else:
            for item in value:
                lines += ["", f"[[{name}]]"]
                _table(item, sub, lines)


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(value: object, path: tuple[str, ...]) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Mapping):
        items = ", ".join(f"{_key(k)} = {_value(v, (*path, k))}" for k, v in value.items())
        return "{" + items + "}" if items else "{}"
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        return "[" + ", ".join(_value(item, path) for item in value) + "]"
    where = ".".join(path)
    raise TypeError(f"{where}: no TOML form for {type(value).__name__} ({value!r})")
