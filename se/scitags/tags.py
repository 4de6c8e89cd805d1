"""SciTag values, where a request's tag comes from, and the IPv6 flow-label layout.  Pure.

A tag is ``(experiment << 6) | activity`` with 65 <= tag <= 65535.  An invalid value never
fails a request: it becomes experiment 0 / activity 0.  In the 20-bit flow label the
experiment id (9 bits) sits bit-reversed in bits 17..9 and the activity (6 bits) in bits
7..2; bits 19, 18, 8, 1 and 0 are entropy, random per connection.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

__all__ = [
    "INVALID",
    "Registry",
    "Tag",
    "decode_label",
    "flow_label",
    "parse_tag",
    "rev9",
    "select_tag",
]

MIN_TAG = 65
MAX_TAG = 65535
ENTROPY_MASK = 0xC0000 | 0x00100 | 0x00003
_DIGITS = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True, slots=True)
class Tag:
    experiment: int
    activity: int

    @property
    def value(self) -> int:
        return (self.experiment << 6) | self.activity

    @property
    def valid(self) -> bool:
        return self.experiment > 0 and self.activity > 0


INVALID = Tag(0, 0)


@functools.lru_cache(maxsize=1024)
def parse_tag(text: str | None) -> Tag | None:
    """A header or query value -> Tag; None when absent or blank; INVALID when malformed.
    (Remembered: clients send few distinct values, and a Tag is immutable.)"""
    if text is None or not text.strip():
        return None
    value = text.strip()
    if _DIGITS.fullmatch(value) is None:
        return INVALID
    number = int(value)
    if not MIN_TAG <= number <= MAX_TAG:
        return INVALID
    tag = Tag(number >> 6, number & 0x3F)
    return tag if tag.valid else INVALID


def select_tag(headers: Mapping[str, str], query: Mapping[str, str]) -> tuple[Tag | None, str]:
    """The request's tag by precedence (``SciTag``, ``TransferHeaderSciTag``,
    ``scitag.flow``) and where it came from ("" when none was given)."""
    value = headers.get("SciTag")
    if value is not None and (tag := parse_tag(value)) is not None:
        return tag, "SciTag"
    value = headers.get("TransferHeaderSciTag")
    if value is not None and (tag := parse_tag(value)) is not None:
        return tag, "TransferHeaderSciTag"
    value = query.get("scitag.flow") if query else None
    if value is not None and (tag := parse_tag(value)) is not None:
        return tag, "scitag.flow"
    return None, ""


def rev9(x: int) -> int:
    """The low 9 bits of x in reverse order."""
    out = 0
    for i in range(9):
        if x & (1 << i):
            out |= 1 << (8 - i)
    return out


def flow_label(tag: Tag, entropy: int, bit19_allowed: bool = True) -> int:
    """The 20-bit IPv6 flow label carrying ``tag``; ``entropy`` fills only the entropy bits.

    Experiments above 511 do not fit the 9-bit field and are reduced to their low 9 bits.
    With ``net.ipv6.flowlabel_state_ranges=1`` the kernel refuses labels with bit 19 set:
    pass ``bit19_allowed=False`` there.
    """
    label = (entropy & ENTROPY_MASK) | (rev9(tag.experiment) << 9) | ((tag.activity & 0x3F) << 2)
    if not bit19_allowed:
        label &= ~0x80000
    return label & 0xFFFFF


def decode_label(label: int) -> Tag:
    return Tag(rev9((label >> 9) & 0x1FF), (label >> 2) & 0x3F)


def _is_id(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Registry:
    """Experiment and activity names (the SciTags ``api.json``), for lookups both ways."""

    experiments: dict[int, str]
    activities: dict[tuple[int, int], str]

    @classmethod
    def parse(cls, text: str) -> Registry:
        data: Any = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("experiments"), list):
            raise ValueError("not a SciTags registry (no experiments list)")
        experiments: dict[int, str] = {}
        activities: dict[tuple[int, int], str] = {}
        for exp in data["experiments"]:
            if not isinstance(exp, dict):
                continue
            exp_id, name = exp.get("expId"), exp.get("expName")
            if not _is_id(exp_id) or not isinstance(name, str):
                continue
            experiments[exp_id] = name
            acts = exp.get("activities")
            for act in acts if isinstance(acts, list) else []:
                if isinstance(act, dict) and _is_id(act.get("activityId")):
                    activities[(exp_id, act["activityId"])] = str(act.get("activityName", ""))
        return cls(experiments, activities)

    def experiment_id(self, name: str) -> int | None:
        wanted = name.strip().lower()
        for exp_id, exp_name in self.experiments.items():
            if exp_name.lower() == wanted:
                return exp_id
        return None

    def activity_id(self, experiment: int, name: str) -> int | None:
        wanted = name.strip().lower()
        for (exp_id, act_id), act_name in self.activities.items():
            if exp_id == experiment and act_name.lower() == wanted:
                return act_id
        return None
