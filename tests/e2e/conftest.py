"""Fixtures shared by the end-to-end test modules."""

from __future__ import annotations

import pytest

from tests.e2e.clients import need_gfal

__all__ = ["GFAL_TOOLS", "gfal_installed"]

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
