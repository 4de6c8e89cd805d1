"""The verified-token cache: per token and URL, until expiry or five minutes, bounded."""

from __future__ import annotations

from se.auth.cache import CACHE_SECONDS, GrantCache
from se.auth.policy import Grant


def test_hit_until_the_token_expires() -> None:
    cache = GrantCache(10)
    grant = Grant((), "alice", expires=1000.0)
    cache.put("t", "http://a", grant, now=900.0)
    assert cache.get("t", "http://a", now=999.0) is grant
    assert cache.get("t", "http://b", now=999.0) is None  # another audience context
    assert cache.get("t", "http://a", now=1000.0) is None
    assert cache.get("t", "http://a", now=900.0) is None  # dropped once expired


def test_at_most_five_minutes() -> None:
    cache = GrantCache(10)
    cache.put("t", "w", Grant((), expires=0.0), now=0.0)
    assert cache.get("t", "w", now=CACHE_SECONDS - 1) is not None
    assert cache.get("t", "w", now=CACHE_SECONDS) is None


def test_bounded_least_recently_used_first() -> None:
    cache = GrantCache(2)
    for name in ("a", "b"):
        cache.put(name, "w", Grant((), name), now=0.0)
    assert cache.get("a", "w", now=1.0) is not None  # a is now the most recent
    cache.put("c", "w", Grant((), "c"), now=1.0)
    assert cache.get("b", "w", now=1.0) is None
    assert cache.get("a", "w", now=1.0) is not None
    assert cache.get("c", "w", now=1.0) is not None
    off = GrantCache(0)
    off.put("a", "w", Grant(()), now=0.0)
    assert off.get("a", "w", now=0.0) is None
