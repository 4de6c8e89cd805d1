from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.pki import Pki, build_pki
from tests.support import SEProcess, start_se

# The se.testing plugin (se_server, se_issuer, ...) is registered by its pytest11 entry point
# once se is installed; named here too for a checkout whose install predates it.
pytest_plugins = ["se.testing"]

# Quiet, RFC-strict-enough defaults for tests; individual tests add to this.
BASE_CONFIG = """
[logging]
access_log = false
level = "warning"
"""


@pytest.fixture
def se_factory(tmp_path: Path) -> Iterator[Callable[..., SEProcess]]:
    """Start any number of real servers; all are stopped at the end of the test."""
    started: list[SEProcess] = []

    def start(
        config: str = BASE_CONFIG, root: Path | None = None, extra_args: list[str] | None = None
    ) -> SEProcess:
        srv = start_se(tmp_path, root=root, config=config, extra_args=extra_args)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def se(se_factory: Callable[..., SEProcess]) -> SEProcess:
    """One real server with the default configuration on a fresh data directory."""
    return se_factory()


def need(*tools: str) -> None:
    """Skip unless every external client is installed (.ci/run installs them all)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The test grid PKI (tests/pki.py): CA directory, vomsdir, host, users, proxies."""
    return build_pki(tmp_path_factory.mktemp("pki"))
