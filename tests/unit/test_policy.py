"""Unit tests for se.auth.policy.require: the one allow/deny decision for anonymous requests."""

from __future__ import annotations

import pytest

from se.auth.policy import Op, require
from se.errors import SEError, Unauthorized
from se.storage.paths import DavPath

PATH = DavPath(("atlas", "file.root"))

ALLOWED = {
    "none": set(),
    "read": {Op.READ},
    "read-write": {Op.READ, Op.CREATE, Op.MODIFY, Op.DELETE},
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
    assert {op.value for op in Op} == {"read", "create", "modify", "delete"}
