"""The one allow/deny decision.  Pure.

Principals: the anonymous one (the configured anonymous level, plus explicit public rules)
and the holder of a bearer token (a WLCG JWT, or a token this server issued), whose
permissions arrive as a :class:`Grant`: rules of operations on namespace paths.  Handlers
call :func:`require` and nothing else decides.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from se.errors import Forbidden, Unauthorized
from se.storage.paths import DavPath

__all__ = ["OPS_OF", "Grant", "Op", "Rule", "ops_named", "require"]


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


_ANONYMOUS: dict[str, frozenset[Op]] = {
    "none": frozenset(),
    "read": frozenset({Op.STAT, Op.READ}),
    "read-write": frozenset(Op),
}


@dataclass(frozen=True, slots=True)
class Rule:
    """``ops`` on ``path`` and everything below it (whole segments)."""

    path: DavPath
    ops: frozenset[Op]
    dir_only: bool = False  # the path itself may only be a collection

    def allows(self, op: Op, path: DavPath) -> bool:
        if path.is_within(self.path):
            if self.dir_only and path == self.path and op in (Op.CREATE, Op.MODIFY):
                return False  # no file at a directory-only scope path
            return op in self.ops
        if self.path.is_within(path):
            # Ancestors of the rule's path: stat them, and create them (mkdir -p) where the
            # rule allows creating, as gfal2 does before writing a file it has a token for.
            return op is Op.STAT or (op is Op.MKDIR and Op.MKDIR in self.ops)
        return False


@dataclass(frozen=True, slots=True)
class Grant:
    """What a credential allows; ``subject`` and ``expires`` are for logs and limits."""

    rules: tuple[Rule, ...]
    subject: str = ""
    expires: float = 0.0  # Unix time the credential ends (0: unknown)

    @classmethod
    def of(cls, rules: Iterable[Rule], subject: str = "", expires: float = 0.0) -> Grant:
        return cls(tuple(rules), subject, expires)

    def allows(self, op: Op, path: DavPath) -> bool:
        return any(rule.allows(op, path) for rule in self.rules)


def require(
    op: Op,
    path: DavPath,
    anonymous: str,
    grant: Grant | None = None,
    public: Grant | None = None,
) -> None:
    """Raise unless the request may do ``op`` on ``path``.

    Without a credential: the anonymous level or a public rule, else 401 with a challenge.
    With one: its grant (or what anyone may do), else 403.
    """
    if op in _ANONYMOUS.get(anonymous, frozenset()):
        return
    if public is not None and public.allows(op, path):
        return
    if grant is None:
        raise Unauthorized(
            f"anonymous {op.value} access to {path} is not allowed",
            headers={"WWW-Authenticate": 'Bearer realm="se"'},
        )
    if not grant.allows(op, path):
        raise Forbidden(
            f"the token does not allow {op.value} access to {path}",
            headers={"WWW-Authenticate": 'Bearer realm="se", error="insufficient_scope"'},
        )
