"""The one allow/deny decision.  Pure.

Until token authorization lands, the only principal is the anonymous one and the rule is the
configured anonymous access level (``auth.anonymous``, or read-write on a loopback-only
server with no [auth] section).  Handlers call :func:`require` and nothing else decides.
"""

from __future__ import annotations

import enum

from se.errors import Unauthorized
from se.storage.paths import DavPath

__all__ = ["Op", "require"]


class Op(enum.Enum):
    READ = "read"  # GET, HEAD, PROPFIND, OPTIONS
    CREATE = "create"  # PUT of a new file, MKCOL, COPY/MOVE to a new name
    MODIFY = "modify"  # overwrite, PROPPATCH
    DELETE = "delete"  # DELETE, the source of a MOVE


_ALLOWED: dict[str, frozenset[Op]] = {
    "none": frozenset(),
    "read": frozenset({Op.READ}),
    "read-write": frozenset(Op),
}


def require(op: Op, path: DavPath, anonymous: str) -> None:
    """Raise unless an anonymous request may perform ``op`` on ``path``."""
    if op not in _ALLOWED.get(anonymous, frozenset()):
        raise Unauthorized(
            f"anonymous {op.value} access to {path} is not allowed",
            headers={"WWW-Authenticate": 'Bearer realm="se"'},
        )
