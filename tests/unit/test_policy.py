"""Unit tests for se.auth.policy.require: the one allow/deny decision for anonymous requests."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from se.auth.policy import OPS_OF, Grant, Op, Rule, ops_named, require
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
    allowed = rule.allows(op, path)
    inside = path.segments[: len(scope.segments)] == scope.segments
    ancestor = scope.segments[: len(path.segments)] == path.segments
    if inside:
        file_at_dir = dir_only and path == scope and op in (Op.CREATE, Op.MODIFY)
        assert allowed == (op in OPS_OF[name] and not file_at_dir)
    elif ancestor:
        assert allowed == (op is Op.STAT or (op is Op.MKDIR and Op.MKDIR in OPS_OF[name]))
    else:
        assert not allowed
