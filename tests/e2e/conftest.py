"""Fixtures shared by the end-to-end test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.clients import need_gfal
from tests.e2e.tpc_remote import Remote

__all__ = ["GFAL_TOOLS", "gfal_installed", "remote", "remote2"]

# The gfal-* commands the gfal2 test modules run (all from Debian's gfal2-util-scripts).
GFAL_TOOLS = (
    "gfal-archivepoll",
    "gfal-bringonline",
    "gfal-copy",
    "gfal-evict",
    "gfal-ls",
    "gfal-mkdir",
    "gfal-rename",
    "gfal-rm",
    "gfal-stat",
    "gfal-sum",
    "gfal-xattr",
)


@pytest.fixture
def gfal_installed() -> None:
    """Skip unless gfal2's command-line tools run here.  A gfal2 test module says
    ``pytestmark = pytest.mark.usefixtures("gfal_installed")``; the clients it starts get
    their environment from :func:`tests.e2e.clients.client_env` (no proxy, no credentials of
    the user running the tests)."""
    need_gfal(*GFAL_TOOLS)


@pytest.fixture(scope="module")
def remote() -> Iterator[Remote]:
    """A misbehaving-on-request HTTP source/destination for third-party copies."""
    with Remote() as r:
        yield r


@pytest.fixture(scope="module")
def remote2() -> Iterator[Remote]:
    """A second origin (another port), for cross-origin redirects."""
    with Remote() as r:
        yield r
