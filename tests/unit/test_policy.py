"""Unit tests for se.auth.policy.require: the one allow/deny decision for anonymous requests."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from se.auth.policy import OPS_OF, Grant, Op, Rule, denied_ops, holds, ops_named, require
from se.errors import Forbidden, SEError, Unauthorized
from se.storage.paths import DavPath

PATH = DavPath(("atlas", "file.root"))

ALLOWED = {
    "none": set(),
    "read": {Op.STAT, Op.READ},
    "read-write": set(Op),
}


@pytest.mark.parametrize("level", ["none", "read", "read-write", "READ", "write", ""])
@pytest.mark.parametrize("op", list(Op))
def test_require_table(op: Op, level: str) -> None:
    if op in ALLOWED.get(level, set()):
        require(op, PATH, level)  # allowed: returns without raising
        return
    with pytest.raises(Unauthorized) as info:
        require(op, PATH, level)
    exc = info.value
    assert isinstance(exc, SEError)
    assert exc.status == 401
    assert "\n" not in exc.reason
    assert op.value in exc.reason
    assert "/atlas/file.root" in exc.reason
    # RFC 9110 §11.6.1: a 401 carries a challenge.
    assert exc.headers.get("WWW-Authenticate", "").startswith("Bearer")


@pytest.mark.parametrize("path", [DavPath(()), DavPath(("a",)), DavPath(("a", "b", "c"))])
def test_decision_does_not_depend_on_path(path: DavPath) -> None:
    for op in Op:
        require(op, path, "read-write")
    require(Op.READ, path, "read")
    with pytest.raises(Unauthorized):
        require(Op.DELETE, path, "read")


def test_every_op_is_covered() -> None:
    assert {op.value for op in Op} == {
        "stat",
        "read",
        "mkdir",
        "create",
        "modify",
        "delete",
        "stage",
        "poll",
    }


GRANT = Grant.of(
    [Rule(DavPath(("data", "run1")), frozenset({Op.STAT, Op.READ, Op.MKDIR, Op.CREATE}))], "alice"
)


@pytest.mark.parametrize(
    ("op", "segments", "allowed"),
    [
        (Op.READ, ("data", "run1"), True),
        (Op.READ, ("data", "run1", "f"), True),
        (Op.CREATE, ("data", "run1", "sub", "f"), True),
        (Op.STAT, ("data", "run1", "f"), True),
        (Op.MODIFY, ("data", "run1", "f"), False),
        (Op.DELETE, ("data", "run1", "f"), False),
        (Op.READ, ("data", "run10"), False),  # whole segments only
        (Op.READ, ("data",), False),  # no listing of ancestors
        (Op.STAT, ("data",), True),  # but stat of them
        (Op.STAT, (), True),
        (Op.MKDIR, ("data",), True),  # and mkdir -p towards the granted path
        (Op.CREATE, ("data",), False),  # but no file there
        (Op.STAT, ("other",), False),
        (Op.MKDIR, ("other",), False),
    ],
)
def test_grant(op: Op, segments: tuple[str, ...], allowed: bool) -> None:
    path = DavPath(segments)
    if allowed:
        require(op, path, "none", GRANT)
        return
    with pytest.raises(Forbidden) as info:
        require(op, path, "none", GRANT)
    assert info.value.status == 403


def test_grant_without_create_cannot_mkdir_ancestors() -> None:
    grant = Grant.of([Rule(DavPath(("data", "f")), OPS_OF["read"])])
    with pytest.raises(Forbidden):
        require(Op.MKDIR, DavPath(("data",)), "none", grant)


def test_dir_only_rule_refuses_a_file_at_its_path() -> None:
    grant = Grant.of([Rule(DavPath(("d",)), OPS_OF["create"], dir_only=True)])
    require(Op.MKDIR, DavPath(("d",)), "none", grant)
    require(Op.CREATE, DavPath(("d", "f")), "none", grant)
    with pytest.raises(Forbidden):
        require(Op.CREATE, DavPath(("d",)), "none", grant)


def test_public_rules_apply_without_credentials() -> None:
    public = Grant.of([Rule(DavPath(("pub",)), OPS_OF["read"])])
    require(Op.READ, DavPath(("pub", "f")), "none", None, public)
    with pytest.raises(Unauthorized):
        require(Op.READ, DavPath(("private",)), "none", None, public)
    with pytest.raises(Unauthorized):
        require(Op.CREATE, DavPath(("pub", "f")), "none", None, public)


@pytest.mark.parametrize(
    ("name", "allowed", "denied"),
    [
        ("read", {Op.STAT, Op.READ}, {Op.CREATE, Op.MODIFY, Op.DELETE, Op.STAGE}),
        ("create", {Op.STAT, Op.MKDIR, Op.CREATE}, {Op.READ, Op.MODIFY, Op.DELETE}),
        ("modify", {Op.CREATE, Op.MODIFY, Op.DELETE}, {Op.READ, Op.STAGE}),
        ("stage", {Op.STAT, Op.STAGE, Op.POLL}, {Op.READ, Op.CREATE}),
        ("poll", {Op.POLL}, {Op.STAT, Op.READ, Op.STAGE}),
    ],
)
def test_profile_1_3_permissions(name: str, allowed: set[Op], denied: set[Op]) -> None:
    assert allowed <= OPS_OF[name]
    assert not denied & OPS_OF[name]


def test_stage_implies_read_switch() -> None:
    assert Op.READ not in ops_named(["stage"])
    assert Op.READ in ops_named(["stage"], stage_implies_read=True)


def test_anonymous_level_still_applies_with_a_grant() -> None:
    require(Op.DELETE, DavPath(("x",)), "read-write", GRANT)


_SEG = st.sampled_from(["a", "b", "ab", "foo", "foobar", "x.y", "-"])
_PATHS = st.lists(_SEG, max_size=5).map(lambda s: DavPath(tuple(s)))


@given(_PATHS, _PATHS, st.sampled_from(sorted(OPS_OF)), st.sampled_from(list(Op)), st.booleans())
def test_rule_never_grants_outside_its_path(
    scope: DavPath, path: DavPath, name: str, op: Op, dir_only: bool
) -> None:
    """Below the scope path: exactly its operations (dir-only: no file at the path itself).
    Ancestors: at most stat and mkdir.  Anywhere else (siblings such as /foobar for /foo):
    nothing."""
    rule = Rule(scope, OPS_OF[name], dir_only)
    allowed = Grant.of([rule]).allows(op, path)
    inside = path.segments[: len(scope.segments)] == scope.segments
    ancestor = scope.segments[: len(path.segments)] == path.segments
    if inside:
        file_at_dir = dir_only and path == scope and op in (Op.CREATE, Op.MODIFY)
        assert allowed == (op in OPS_OF[name] and not file_at_dir)
    elif ancestor:
        assert allowed == (op is Op.STAT or (op is Op.MKDIR and Op.MKDIR in OPS_OF[name]))
    else:
        assert not allowed


# --- deny rules: the most specific path decides, a deny wins ties -------------------------

ATLAS = DavPath(("atlas",))
PROTECTED = DavPath(("atlas", "protected"))
EXCEPT = Grant.of(
    [
        Rule(ATLAS, OPS_OF["modify"] | OPS_OF["read"]),
        Rule(PROTECTED, denied_ops(["modify"]), deny=True),
    ]
)


@pytest.mark.parametrize(
    ("op", "segments", "allowed"),
    [
        (Op.CREATE, ("atlas", "f"), True),
        (Op.DELETE, ("atlas", "f"), True),
        (Op.CREATE, ("atlas", "protected", "f"), False),
        (Op.DELETE, ("atlas", "protected", "f"), False),
        (Op.MKDIR, ("atlas", "protected", "d"), False),
        (Op.DELETE, ("atlas", "protected"), False),  # the subtree's root is inside it
        (Op.READ, ("atlas", "protected", "f"), True),  # denying writes leaves reads alone
        (Op.STAT, ("atlas", "protected"), True),
        (Op.CREATE, ("atlas", "protectedness"), True),  # whole segments only
    ],
)
def test_a_group_may_write_its_area_except_a_protected_subtree(
    op: Op, segments: tuple[str, ...], allowed: bool
) -> None:
    assert EXCEPT.allows(op, DavPath(segments)) is allowed


def test_a_more_specific_allow_reopens_a_denied_subtree() -> None:
    grant = Grant.of([*EXCEPT.rules, Rule(PROTECTED.child("drop"), OPS_OF["create"])])
    assert grant.allows(Op.CREATE, PROTECTED.child("drop").child("f"))
    assert not grant.allows(Op.CREATE, PROTECTED.child("other"))


def test_deny_wins_a_tie_and_beats_the_ancestor_allowance() -> None:
    grant = Grant.of(
        [
            Rule(ATLAS, OPS_OF["read"]),
            Rule(ATLAS, denied_ops(["read"]), deny=True),
            Rule(DavPath(("x",)), denied_ops(["read"]), deny=True),
            Rule(DavPath(("x", "y", "z")), OPS_OF["create"]),
        ]
    )
    assert not grant.allows(Op.READ, ATLAS.child("f"))
    # /x/y is an ancestor of an allowed path, but a deny covers it: no stat there.
    assert not grant.allows(Op.STAT, DavPath(("x", "y")))
    assert grant.allows(Op.STAT, DavPath(("x", "y", "z")))


def test_denied_ops_keep_stat_unless_read_is_denied() -> None:
    assert Op.STAT not in denied_ops(["modify", "create", "stage", "poll"])
    assert denied_ops(["read"]) == {Op.STAT, Op.READ}
    assert Op.DELETE in denied_ops(["modify"])


def test_public_deny_takes_away_from_the_anonymous_level() -> None:
    public = Grant.of([Rule(PROTECTED, denied_ops(["read"]), deny=True)])
    require(Op.READ, ATLAS.child("f"), "read", None, public)
    with pytest.raises(Unauthorized):
        require(Op.READ, PROTECTED.child("f"), "read", None, public)
    # A credential that allows it still may: the public rules say what anyone may do.
    grant = Grant.of([Rule(PROTECTED, OPS_OF["read"])])
    require(Op.READ, PROTECTED.child("f"), "read", grant, public)


def test_refusals_name_the_credential() -> None:
    grant = Grant.of([], "/DC=org/CN=Alice", kind="certificate")
    with pytest.raises(Forbidden) as info:
        require(Op.READ, ATLAS, "none", grant)
    assert "certificate" in info.value.reason


def test_a_delegated_token_never_spans_a_denied_subtree() -> None:
    assert holds(Op.CREATE, ATLAS.child("f"), "none", EXCEPT, None)
    assert not holds(Op.CREATE, ATLAS, "none", EXCEPT, None)  # /atlas/protected is below
    assert not holds(Op.CREATE, PROTECTED, "none", EXCEPT, None)
    assert holds(Op.READ, ATLAS, "none", EXCEPT, None)
    assert not holds(Op.STAT, DavPath(()), "none", EXCEPT, None)  # no ancestor allowance
    public = Grant.of([Rule(PROTECTED, denied_ops(["read"]), deny=True)])
    assert holds(Op.READ, ATLAS.child("f"), "read", None, public)
    assert not holds(Op.READ, ATLAS, "read", None, public)


_OPS = st.sampled_from(list(Op))
_RULES = st.lists(
    st.tuples(_PATHS, st.sampled_from(sorted(OPS_OF)), st.booleans(), st.sampled_from("pq")),
    max_size=6,
)
_RuleSpec = tuple[DavPath, str, bool, str]


def _model(rules: list[_RuleSpec], op: Op, path: DavPath) -> bool:
    """The documented semantics, written the slow way: per principal, the covering rules of
    the greatest depth decide and a deny among them wins; allowed if any principal allows;
    without any covering rule, an ancestor allowance."""
    verdicts = []
    for principal in {who for *_, who in rules}:
        covering = [
            (len(p.segments), deny)
            for p, name, deny, who in rules
            if who == principal
            and path.segments[: len(p.segments)] == p.segments
            and op in (denied_ops([name]) if deny else OPS_OF[name])
        ]
        if covering:
            depth = max(d for d, _ in covering)
            verdicts.append(not any(deny for d, deny in covering if d == depth))
    if verdicts:
        return any(verdicts)
    return any(
        not deny
        and p.segments[: len(path.segments)] == path.segments
        and p != path
        and (op is Op.STAT or (op is Op.MKDIR and Op.MKDIR in OPS_OF[name]))
        for p, name, deny, _ in rules
    )


def _grant(rules: list[_RuleSpec]) -> Grant:
    return Grant.of(
        Rule(p, denied_ops([name]) if deny else OPS_OF[name], deny=deny, principal=who)
        for p, name, deny, who in rules
    )


@settings(max_examples=1000, deadline=None)
@given(_RULES, _PATHS, _OPS)
def test_decision_matches_the_documented_model(
    rules: list[_RuleSpec], path: DavPath, op: Op
) -> None:
    assert _grant(rules).allows(op, path) == _model(rules, op, path)


@given(_RULES, _PATHS, _OPS)
def test_without_deny_rules_a_grant_is_the_union_of_its_rules(
    rules: list[_RuleSpec], path: DavPath, op: Op
) -> None:
    allows = [(p, name, False, who) for p, name, _, who in rules]
    grant = _grant(allows)
    assert grant.allows(op, path) == any(Grant.of([r]).allows(op, path) for r in grant.rules)


@given(_RULES, _PATHS, _PATHS, _OPS)
def test_a_held_path_allows_everything_below_it(
    rules: list[_RuleSpec], path: DavPath, below: DavPath, op: Op
) -> None:
    """What a macaroon for ``path`` would allow is allowed by the grant it came from."""
    grant = _grant(rules)
    if grant.holds(op, path):
        inner = DavPath(path.segments + below.segments)
        assert grant.allows(op, inner)


@given(_RULES, _PATHS, _OPS)
def test_adding_a_deny_never_allows_more(rules: list[_RuleSpec], path: DavPath, op: Op) -> None:
    grant = _grant(rules)
    for deny_path, name, _, who in rules:
        extra = Rule(deny_path, denied_ops([name]), deny=True, principal=who)
        denied = Grant.of([*grant.rules, extra])
        assert not denied.allows(op, path) or grant.allows(op, path)


def test_a_deny_weighs_only_against_its_own_principal() -> None:
    """The WLCG JWT compliance suite's policy: /wlcg may write everywhere but /protected,
    /wlcg/test may write /protected; a member of both writes there."""
    wlcg = [
        Rule(DavPath(()), OPS_OF["modify"] | OPS_OF["read"], principal="/wlcg"),
        Rule(DavPath(("protected",)), denied_ops(["modify"]), deny=True, principal="/wlcg"),
    ]
    test = [Rule(DavPath(("protected",)), OPS_OF["modify"], principal="/wlcg/test")]
    target = DavPath(("protected", "f"))
    assert not Grant.of(wlcg).allows(Op.CREATE, target)
    assert Grant.of(wlcg + test).allows(Op.CREATE, target)
    assert Grant.of(test).allows(Op.CREATE, target)
    # Both principals together hold writes on /protected for a delegated token; /wlcg
    # alone does not hold them on / (its own deny lies below).
    assert Grant.of(wlcg + test).holds(Op.CREATE, DavPath(("protected",)))
    assert not Grant.of(wlcg + test).holds(Op.CREATE, DavPath(()))
