"""The one allow/deny decision.  Pure.

Principals: the anonymous one (the configured anonymous level, plus explicit public rules)
and the holder of a credential (a WLCG JWT, a token this server issued, or an X.509
certificate or VOMS proxy), whose permissions arrive as a :class:`Grant`: rules of
operations on namespace paths.  Handlers call :func:`require` and nothing else decides.

A rule allows or denies its operations at its path and below, for one principal the
credential holds (a token group, an FQAN pattern, a DN, or "anyone" for the anonymous level
and the public rules).  For one operation on one path, each principal's rules that cover it
(path at or above, operation among theirs) are looked at: the most specific path decides,
and at equal paths a deny wins.  The request may if any principal's decision allows it: a
deny takes away what the same principal's broader rules give, never what another principal
grants (a member of /wlcg and /wlcg/test writes where /wlcg/test may, even where /wlcg is
denied).  With no covering rule at all, the ancestors of an allowing rule's path may be
stat'ed (and created where it allows creating), as clients do before writing below them.
Without deny rules this is the plain union of the rules.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from se.errors import Forbidden, Unauthorized
from se.storage.paths import DavPath

__all__ = [
    "OPS_OF",
    "Grant",
    "Op",
    "Rule",
    "denied_ops",
    "explain",
    "holds",
    "named_rules",
    "ops_named",
    "require",
]


class Op(enum.Enum):
    STAT = "stat"  # HEAD, PROPFIND Depth 0: metadata of one resource
    READ = "read"  # GET, PROPFIND Depth 1, the source of a COPY
    MKDIR = "mkdir"  # MKCOL
    CREATE = "create"  # PUT of a new file, COPY/MOVE to a new name
    MODIFY = "modify"  # overwrite, PROPPATCH
    DELETE = "delete"  # DELETE, the source of a MOVE
    STAGE = "stage"  # tape recall requests
    POLL = "poll"  # tape locality and request status


# What each configured or scoped permission name allows (WLCG profile 1.3 semantics).
OPS_OF: dict[str, frozenset[Op]] = {
    "read": frozenset({Op.STAT, Op.READ}),
    "create": frozenset({Op.STAT, Op.MKDIR, Op.CREATE}),
    "modify": frozenset({Op.STAT, Op.MKDIR, Op.CREATE, Op.MODIFY, Op.DELETE}),
    "stage": frozenset({Op.STAT, Op.STAGE, Op.POLL}),
    "poll": frozenset({Op.POLL}),
}


def ops_named(names: Iterable[str], stage_implies_read: bool = False) -> frozenset[Op]:
    """The operations a list of permission names allows."""
    ops: set[Op] = set()
    for name in names:
        ops |= OPS_OF.get(name, frozenset())
        if name == "stage" and stage_implies_read:
            ops |= OPS_OF["read"]
    return frozenset(ops)


def denied_ops(names: Iterable[str]) -> frozenset[Op]:
    """The operations a deny list takes away: what each name adds beyond stat ("read" takes
    stat too), so that denying writes below a path still lets it be listed."""
    ops: set[Op] = set()
    for name in names:
        named = OPS_OF.get(name, frozenset())
        ops |= named if name == "read" else named - {Op.STAT}
    return frozenset(ops)


def named_rules(
    path: DavPath,
    allow: Iterable[str],
    deny: Iterable[str],
    principal: str = "",
    stage_implies_read: bool = False,
) -> list[Rule]:
    """The rules of one configured entry: its allowed and its denied operations at
    ``path``, for one principal (token group rules, ``[[auth.x509]]``, public rules)."""
    allow, deny = tuple(allow), tuple(deny)
    rules = []
    if allow:
        rules.append(Rule(path, ops_named(allow, stage_implies_read), principal=principal))
    if deny:
        rules.append(Rule(path, denied_ops(deny), deny=True, principal=principal))
    return rules


_ANONYMOUS: dict[str, frozenset[Op]] = {
    "none": frozenset(),
    "read": frozenset({Op.STAT, Op.READ}),
    "read-write": frozenset(Op),
}


@dataclass(frozen=True, slots=True)
class Rule:
    """``ops`` on ``path`` and everything below it (whole segments), allowed or denied."""

    path: DavPath
    ops: frozenset[Op]
    dir_only: bool = False  # the path itself may only be a collection
    deny: bool = False
    principal: str = ""  # whose rule: a deny weighs only against the same principal's rules

    def covers(self, op: Op, path: DavPath) -> bool:
        """Whether this rule speaks for ``op`` on ``path`` (is at or above it)."""
        if op not in self.ops or not path.is_within(self.path):
            return False
        # A directory-only scope allows no file at its own path (and says nothing there).
        return self.deny or not (self.dir_only and path == self.path and op in _FILE_OPS)

    def _ancestor_allows(self, op: Op, path: DavPath) -> bool:
        # Ancestors of the rule's path: stat them, and create them (mkdir -p) where the
        # rule allows creating, as gfal2 does before writing a file it has a token for.
        if self.path.is_within(path) and path != self.path:
            return op is Op.STAT or (op is Op.MKDIR and Op.MKDIR in self.ops)
        return False


_FILE_OPS = (Op.CREATE, Op.MODIFY)
_NO_OPS: frozenset[Op] = frozenset()


@dataclass(frozen=True, slots=True)
class Grant:
    """What a credential allows; ``subject`` and ``expires`` are for logs and limits,
    ``kind`` names the credential in refusals ("token", "certificate"), ``attributes`` are
    its VOMS FQANs (for logs; the rules already say what they allow)."""

    rules: tuple[Rule, ...]
    subject: str = ""
    expires: float = 0.0  # Unix time the credential ends (0: unknown)
    kind: str = "token"
    attributes: tuple[str, ...] = ()

    @classmethod
    def of(
        cls, rules: Iterable[Rule], subject: str = "", expires: float = 0.0, kind: str = "token"
    ) -> Grant:
        return cls(tuple(rules), subject, expires, kind)

    def allows(self, op: Op, path: DavPath, floor: frozenset[Op] = _NO_OPS) -> bool:
        """The decision for ``op`` on ``path``; ``floor``: operations allowed at the root
        (the anonymous level), which the grant's deny rules can take away below it."""
        verdict = self._decide(op, path, floor)
        if verdict is not None:
            return verdict
        return any(not rule.deny and rule._ancestor_allows(op, path) for rule in self.rules)

    def _decide(self, op: Op, path: DavPath, floor: frozenset[Op]) -> bool | None:
        """True if some principal's most specific covering rule allows (deny wins ties
        within a principal), False if rules cover but none allows, None if none covers.
        The floor belongs to the principal "" (anyone)."""
        best: dict[str, tuple[int, bool]] = {"": (0, True)} if op in floor else {}
        for rule in self.rules:
            if not rule.covers(op, path):
                continue
            length = len(rule.path.segments)
            seen = best.get(rule.principal)
            if seen is None or length > seen[0]:
                best[rule.principal] = (length, not rule.deny)
            elif length == seen[0] and rule.deny:
                best[rule.principal] = (length, False)
        if not best:
            return None
        return any(verdict for _, verdict in best.values())

    def holds(self, op: Op, path: DavPath, floor: frozenset[Op] = _NO_OPS) -> bool:
        """Whether ``op`` is allowed on ``path`` and on everything below it (no ancestor
        allowance): what a token restricted to ``path`` may be issued for.  One principal
        must hold it on the whole subtree (no deny of its own below ``path``)."""
        principals = {rule.principal for rule in self.rules} | ({""} if op in floor else set())
        for principal in principals:
            own = Grant(tuple(r for r in self.rules if r.principal == principal))
            if own._decide(op, path, floor if principal == "" else _NO_OPS) is not True:
                continue
            if not any(r.deny and op in r.ops and r.path.is_within(path) for r in own.rules):
                return True
        return False


def require(
    op: Op,
    path: DavPath,
    anonymous: str,
    grant: Grant | None = None,
    public: Grant | None = None,
) -> None:
    """Raise unless the request may do ``op`` on ``path``.

    What anyone may do (the anonymous level, with the public rules' allows and denies over
    it) is allowed to every request.  Beyond that: without a credential, 401 with a
    challenge; with one, its grant decides, else 403.
    """
    floor = _ANONYMOUS.get(anonymous, _NO_OPS)
    if public is None:
        if op in floor:
            return
    elif public.allows(op, path, floor):
        return
    if grant is None:
        raise Unauthorized(
            f"anonymous {op.value} access to {path} is not allowed",
            headers={"WWW-Authenticate": 'Bearer realm="se"'},
        )
    if not grant.allows(op, path):
        raise Forbidden(
            f"the {grant.kind} does not allow {op.value} access to {path}",
            headers={"WWW-Authenticate": 'Bearer realm="se", error="insufficient_scope"'},
        )


def _describe(rule: Rule, who: str) -> str:
    ops = ",".join(sorted(op.value for op in rule.ops))
    return f"{rule.principal or who}: {'deny' if rule.deny else 'allow'} {ops} on {rule.path}"


def _deciding(grant: Grant, op: Op, path: DavPath) -> Rule | None:
    """The rule of ``grant`` that decided ``op`` on ``path`` (the most specific covering
    one of the principal whose verdict stands), or None (an ancestor allowance)."""
    verdict = grant._decide(op, path, _NO_OPS)
    best: Rule | None = None
    for rule in grant.rules:
        if not rule.covers(op, path) or rule.deny == bool(verdict):
            continue
        if best is None or len(rule.path.segments) > len(best.path.segments):
            best = rule
    return best


def explain(
    op: Op, path: DavPath, anonymous: str, grant: Grant | None = None, public: Grant | None = None
) -> str:
    """Which rule made :func:`require`'s decision, in words (for events, not for clients):
    ``anonymous level read``, ``public: allow read,stat on /pub``, ``group /atlas: deny
    ... on /atlas/protected``, ``token: allow ... on /data`` ..."""
    floor = _ANONYMOUS.get(anonymous, _NO_OPS)
    if public is None and op in floor:
        return f"anonymous level {anonymous}"
    if public is not None and public.allows(op, path, floor):
        rule = _deciding(public, op, path)
        return _describe(rule, "public") if rule is not None else f"anonymous level {anonymous}"
    if grant is None:
        return "no credential"
    rule = _deciding(grant, op, path)
    if rule is not None:
        return _describe(rule, grant.kind)
    if grant.allows(op, path):
        return f"{grant.kind}: parent of an allowed path"
    return f"{grant.kind}: no rule covers {op.value} on {path}"


def holds(op: Op, path: DavPath, anonymous: str, grant: Grant | None, public: Grant | None) -> bool:
    """Whether ``op`` is allowed on ``path`` and everything below it, for a request with
    this grant: what a token issued for ``path`` would allow.  Stricter than
    :func:`require`, which lets the ancestors of a granted path be stat'ed (and created):
    a token for ``/a`` must never yield one for ``/`` (that would stat every path), nor one
    for ``/a`` when a rule denies ``op`` somewhere below it."""
    floor = _ANONYMOUS.get(anonymous, _NO_OPS)
    anyone = Grant(()) if public is None else public
    if anyone.holds(op, path, floor):
        return True
    return grant is not None and grant.holds(op, path)
