"""Work gathered during a turn of the event loop and done once at its end (or later).

Used by the writers that batch what many requests produce (fireflies, access log lines).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["at_end_of_turn"]


def at_end_of_turn(callback: Callable[[], None], delay: float = 0.0) -> bool:
    """Run ``callback`` once the running event loop's turn ends (or ``delay`` seconds
    later); True.  Without a running loop (tools, tests) it runs at once; False."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        callback()
        return False
    if delay > 0:
        loop.call_later(delay, callback)
    else:
        loop.call_soon(callback)
    return True
