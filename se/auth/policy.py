"""The one allow/deny decision.  Pure.

Two kinds of principal exist so far: the anonymous one, governed by the configured
anonymous access level (``auth.anonymous``, or read-write on a loopback-only server with
no [auth] section), and the holder of a server-issued bearer token (a "macaroon", see
``se.auth.macaroons``) carrying a :class:`Grant`.  Handlers call :func:`require` and
nothing else decides.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from se.errors import Forbidden, Unauthorized
from se.storage.paths import DavPath

__all__ = ["Grant", "Op", "require"]


class Op(enum.Enum):
    STAT = "stat"  # HEAD, PROPFIND Depth 0: metadata of one resource
    READ = "read"  # GET, PROPFIND Depth 1, the source of a COPY
    CREATE = "create"  # PUT of a new file, MKCOL, COPY/MOVE to a new name
    MODIFY = "modify"  # overwrite, PROPPATCH
    DELETE = "delete"  # DELETE, the source of a MOVE


_ALLOWED: dict[str, frozenset[Op]] = {
    "none": frozenset(),
    "read": frozenset({Op.STAT, Op.READ}),
    "read-write": frozenset(Op),
}


@dataclass(frozen=True, slots=True)
class Grant:
    """What a bearer token allows: operations on a path and everything below it."""

    path: DavPath
    ops: frozenset[Op]
    subject: str = ""
    expires: float = 0.0  # Unix time the token ends (0: unknown)

    def allows(self, op: Op, path: DavPath) -> bool:
        if path.is_within(self.path):
            return op in self.ops or (op is Op.STAT and bool(self.ops))
        if self.path.is_within(path):
            # Ancestors of the granted path: stat them and create them (mkdir -p), as
            # gfal2 does with a token scoped to the file it is about to write.
            return op is Op.STAT or (op is Op.CREATE and Op.CREATE in self.ops)
        return False


def require(op: Op, path: DavPath, anonymous: str, grant: Grant | None = None) -> None:
    """Raise unless the request (anonymous, or holding ``grant``) may do ``op`` on ``path``."""
    if op in _ALLOWED.get(anonymous, frozenset()):
        return
    if grant is None:
        raise Unauthorized(
            f"anonymous {op.value} access to {path} is not allowed",
            headers={"WWW-Authenticate": 'Bearer realm="se"'},
        )
    if not grant.allows(op, path):
        raise Forbidden(f"the token does not allow {op.value} access to {path}")
