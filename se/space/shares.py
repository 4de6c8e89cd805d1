"""Shares: which share a namespace path belongs to, and what SRR says of each.  Pure.

A file belongs to the share with the longest configured path that holds it (a path is a
collection prefix: ``/atlas`` holds ``/atlas`` and ``/atlas/x``, not ``/atlasx``).  With no
``[[shares]]`` at all, one implicit share (:data:`se.config.IMPLICIT_SHARE`) holds the whole
namespace, so accounting and SRR always have something to say.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from se.config import IMPLICIT_SHARE, ShareConfig, TapePoolConfig
from se.storage.paths import DavPath

__all__ = ["ShareMap", "effective_shares", "latency_of", "retention_of"]


def effective_shares(shares: Sequence[ShareConfig]) -> tuple[ShareConfig, ...]:
    """The shares in force: the configured ones, else the implicit whole-namespace share."""
    if shares:
        return tuple(shares)
    return (ShareConfig(name=IMPLICIT_SHARE, paths=("/",)),)


def _segments(prefix: str) -> tuple[str, ...]:
    return tuple(seg for seg in prefix.split("/") if seg)


def _on_tape(share: ShareConfig, pools: Sequence[TapePoolConfig]) -> bool:
    first = DavPath(_segments(share.prefixes[0]))
    return any(first.is_within(DavPath(_segments(pool.prefix))) for pool in pools)


def latency_of(share: ShareConfig, pools: Sequence[TapePoolConfig]) -> str:
    """SRR accesslatency: as configured, else nearline for a share in a tape pool."""
    if share.access_latency:
        return share.access_latency
    return "nearline" if _on_tape(share, pools) else "online"


def retention_of(share: ShareConfig, pools: Sequence[TapePoolConfig]) -> str:
    """SRR retentionpolicy: as configured, else custodial for a share in a tape pool."""
    if share.retention_policy:
        return share.retention_policy
    return "custodial" if _on_tape(share, pools) else "replica"


@dataclass(frozen=True, slots=True)
class ShareMap:
    """Longest-prefix lookup of a path's share."""

    shares: tuple[ShareConfig, ...]
    # (segments of a path, share), longest first
    _prefixes: tuple[tuple[tuple[str, ...], ShareConfig], ...] = ()

    @classmethod
    def of(cls, shares: Sequence[ShareConfig]) -> ShareMap:
        eff = effective_shares(shares)
        pairs = [(_segments(p), sh) for sh in eff for p in sh.prefixes]
        pairs.sort(key=lambda item: len(item[0]), reverse=True)
        return cls(eff, tuple(pairs))

    def share_of(self, path: DavPath) -> ShareConfig | None:
        segs = path.segments
        for prefix, share in self._prefixes:
            if segs[: len(prefix)] == prefix:
                return share
        return None

    def name_of(self, path: DavPath) -> str | None:
        share = self.share_of(path)
        return None if share is None else share.name

    def nested(self, path: DavPath) -> bool:
        """Whether a share path lies strictly below ``path``."""
        segs = path.segments
        n = len(segs)
        return any(len(p) > n and p[:n] == segs for p, _ in self._prefixes)

    def get(self, name: str) -> ShareConfig | None:
        for share in self.shares:
            if share.name == name:
                return share
        return None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.shares)

    def walk_roots(self, name: str | None) -> list[tuple[str, ...]]:
        """The trees a walk of share ``name`` covers (the whole namespace for None), none
        inside another."""
        if name is None:
            return [()]
        share = self.get(name)
        out: list[tuple[str, ...]] = []
        for p in sorted(_segments(q) for q in (share.prefixes if share is not None else ())):
            if not any(p[: len(q)] == q for q in out):  # sorted: a prefix before what it holds
                out.append(p)
        return out

    def own_paths(self, name: str) -> list[tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]]:
        """The share's paths, each with the share paths strictly below it, which a walk of
        that path leaves out (they belong to another share, or are walked on their own)."""
        share = self.get(name)
        if share is None:
            return []
        out = []
        for prefix in share.prefixes:
            segs = _segments(prefix)
            inner = tuple(
                p for p, _other in self._prefixes if len(p) > len(segs) and p[: len(segs)] == segs
            )
            out.append((segs, inner))
        return out
