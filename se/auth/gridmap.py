"""What an X.509 identity may do: the ``[[auth.x509]]`` rules, matched on the VOMS FQANs
and the end-entity DN of a verified certificate or proxy.  Pure.

FQANs come as VOMS writes them, ``/atlas/de/Role=production/Capability=NULL`` or
``/atlas/de/Role=production``; ``Role=NULL`` and ``Capability=NULL`` mean "no role" and are
dropped, so every FQAN is a group and an optional role.  A pattern is the same shape with
``*`` as a wildcard for any run of characters:

* ``/atlas`` matches the group ``/atlas`` without a role.  Every member of a VO holds that
  FQAN (a VOMS server lists each group of the user, and the role asked for in addition), so
  it means "members of atlas";
* ``/atlas/Role=production`` matches that group with that role only;
* ``/atlas/*`` matches the subgroups of ``/atlas`` (no role), ``/atlas*`` the group and its
  subgroups, ``/atlas/Role=*`` the group with any role or none.

A rule applies when any FQAN of the identity matches (all of them count, in the AC's order,
not only the first as XRootD does) and, where it names one, the DN is the identity's;
a rule may name both.  The matching rules' allows and denies together are the grant, judged
by :mod:`se.auth.policy` like a token's; the rules naming the same FQAN pattern and DN are
one principal (a deny of ``/atlas`` rules takes away what ``/atlas`` rules give, not what
``/atlas/Role=production`` rules give).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from se.auth.cadir import normalise_dn
from se.auth.policy import Grant, Rule, named_rules
from se.config import X509Rule
from se.storage.paths import confine

__all__ = ["Fqan", "FqanPattern", "GridMap", "parse_fqan"]


@dataclass(frozen=True, slots=True)
class Fqan:
    group: str  # "/atlas/de"
    role: str  # "" for none


def parse_fqan(text: str) -> Fqan:
    """A VOMS FQAN as group and role (ValueError when it is not one)."""
    if not text.startswith("/"):
        raise ValueError(f"not an FQAN: {text!r}")
    group: list[str] = []
    role = ""
    for part in text[1:].removesuffix("/").split("/"):
        if not part:
            raise ValueError(f"not an FQAN: {text!r}")
        key, eq, value = part.partition("=")
        if eq and key == "Role":
            role = "" if value == "NULL" else value
        elif eq and key == "Capability":
            continue  # deprecated by VOMS, always NULL in practice
        elif eq or role:
            raise ValueError(f"not an FQAN: {text!r}")
        else:
            group.append(part)
    if not group:
        raise ValueError(f"not an FQAN: {text!r}")
    return Fqan("/" + "/".join(group), role)


def _glob(text: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(piece) for piece in text.split("*")), re.S)


@dataclass(frozen=True, slots=True)
class FqanPattern:
    """One FQAN pattern of a rule, compiled."""

    text: str
    group: re.Pattern[str]
    role: re.Pattern[str]

    @classmethod
    def parse(cls, text: str) -> FqanPattern:
        fqan = parse_fqan(text)
        return cls(text, _glob(fqan.group), _glob(fqan.role))

    def matches(self, fqan: Fqan) -> bool:
        return bool(self.group.fullmatch(fqan.group) and self.role.fullmatch(fqan.role))


@dataclass(frozen=True, slots=True)
class _Entry:
    pattern: FqanPattern | None
    dn: str
    rules: tuple[Rule, ...]


class GridMap:
    """The ``[[auth.x509]]`` rules of a configuration (ValueError naming the rule that
    cannot be used); DNs are kept in the slash form identities carry."""

    def __init__(self, rules: Iterable[X509Rule], stage_implies_read: bool = False) -> None:
        entries = []
        for i, rule in enumerate(rules):
            try:
                pattern = FqanPattern.parse(rule.fqan) if rule.fqan else None
                dn = normalise_dn(rule.dn) if rule.dn else ""
            except ValueError as exc:
                raise ValueError(f"auth.x509[{i}]: {exc}") from None
            path = confine(rule.path)
            # The principal a deny weighs against: the same FQAN pattern and DN.
            who = f"x509 {rule.fqan} {dn}"
            made = named_rules(path, rule.allow, rule.deny, who, stage_implies_read)
            entries.append(_Entry(pattern, dn, tuple(made)))
        self._entries = tuple(entries)

    def grant(
        self, dn: str, fqans: Sequence[str], expires: float, subject: str | None = None
    ) -> Grant:
        """The grant of an identity with end-entity ``dn`` (slash form) and these FQANs;
        FQANs that are not well formed match nothing."""
        parsed = []
        for text in fqans:
            try:
                parsed.append(parse_fqan(text))
            except ValueError:
                continue
        rules: list[Rule] = []
        for entry in self._entries:
            if entry.dn and entry.dn != dn:
                continue
            if entry.pattern is not None and not any(entry.pattern.matches(f) for f in parsed):
                continue
            rules.extend(entry.rules)
        return Grant(
            tuple(rules),
            dn if subject is None else subject,
            expires,
            kind="certificate",
            attributes=tuple(fqans),
        )
