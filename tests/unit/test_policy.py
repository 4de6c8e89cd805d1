"""Unit tests for se.auth.policy.require: the one allow/deny decision for anonymous requests."""

from __future__ import annotations

import pytest

from se.auth.policy import Grant, Op, require
from se.errors import Forbidden, SEError, Unauthorized
from se.storage.paths import DavPath

PATH = DavPath(("atlas", "file.root"))

ALLOWED = {
    "none": set(),
    "read": {Op.STAT, Op.READ},
    "read-write": {Op.STAT, Op.READ, Op.CREATE, Op.MODIFY, Op.DELETE},
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
    assert {op.value for op in Op} == {"stat", "read", "create", "modify", "delete"}


GRANT = Grant(DavPath(("data", "run1")), frozenset({Op.READ, Op.CREATE}), "alice")


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
        (Op.CREATE, ("data",), True),  # and mkdir -p towards the granted path
        (Op.STAT, ("other",), False),
        (Op.CREATE, ("other",), False),
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
    grant = Grant(DavPath(("data", "f")), frozenset({Op.READ}))
    with pytest.raises(Forbidden):
        require(Op.CREATE, DavPath(("data",)), "none", grant)


def test_anonymous_level_still_applies_with_a_grant() -> None:
    require(Op.DELETE, DavPath(("x",)), "read-write", GRANT)
