"""A pytest plugin that runs real ``se`` servers for the tests of clients (FTS, Rucio,
gfal2, DIRAC, ...) and of ``se`` itself.  Registered by ``pip install se`` (entry point
``pytest11``); it imports nothing heavy and starts nothing until a fixture is used.

Fixtures:

- ``se_issuer`` (session): a :class:`~se.testing.issuer.JWTIssuer` with its own keys;
  ``se_issuer.mint(scopes=[...], sub=..., aud=..., lifetime=..., groups=[...])`` returns a
  WLCG token every server below accepts.
- ``se_server_factory`` (session): ``se_server_factory(config_dict, workers=N, tls=True,
  issuer=..., issuer_config={...})`` starts a server (:class:`~se.testing.server.SEServer`:
  ``url``, ``dav_url``, ``root``, ``log()``, ``stop()``, ``faults``, ``events``) that
  trusts ``se_issuer``; all are stopped at the end of the session unless stopped before.
- ``se_server`` (function): one server for the test, data in the test's ``tmp_path``,
  stopped after it.  ``@pytest.mark.se_server(config={...}, workers=2, tls=True)`` passes
  arguments to the factory.

Everything also works without pytest fixtures: ``from se.testing import SEServerFactory``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from se.testing.api import EventsClient, FaultsClient, SEAPIError
    from se.testing.issuer import ANY_AUDIENCE, DEFAULT_SCOPE, JWTIssuer
    from se.testing.server import SEServer, SEServerFactory, deep_merge
    from se.testing.toml import dumps

__all__ = [
    "ANY_AUDIENCE",
    "DEFAULT_SCOPE",
    "ISSUER",
    "EventsClient",
    "FaultsClient",
    "JWTIssuer",
    "SEAPIError",
    "SEServer",
    "SEServerFactory",
    "deep_merge",
    "dumps",
    "se_issuer",
    "se_server",
    "se_server_factory",
]

# The iss of the session's issuer; never fetched (servers read its keys from a file).
ISSUER = "https://se-testing-issuer.invalid/"

# Imported on first use, so that loading the plugin costs (almost) nothing.
_LAZY = {
    "EventsClient": "se.testing.api",
    "FaultsClient": "se.testing.api",
    "SEAPIError": "se.testing.api",
    "ANY_AUDIENCE": "se.testing.issuer",
    "DEFAULT_SCOPE": "se.testing.issuer",
    "JWTIssuer": "se.testing.issuer",
    "SEServer": "se.testing.server",
    "SEServerFactory": "se.testing.server",
    "deep_merge": "se.testing.server",
    "dumps": "se.testing.toml",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "se_server(**kwargs): arguments for the se_server fixture's server "
        "(config={...}, workers=N, tls=True, issuer_config={...}; see se.testing)",
    )


@pytest.fixture(scope="session")
def se_issuer(tmp_path_factory: pytest.TempPathFactory) -> JWTIssuer:
    """The session's token issuer (RS256 and ES256 keys; its JWKS goes to every server)."""
    from se.testing.issuer import JWTIssuer

    return JWTIssuer(tmp_path_factory.mktemp("se-issuer"), issuer=ISSUER)


@pytest.fixture(scope="session")
def se_server_factory(
    tmp_path_factory: pytest.TempPathFactory, se_issuer: JWTIssuer
) -> Iterator[SEServerFactory]:
    """Starts real ``se serve`` processes (each trusting ``se_issuer``); stops them all at
    the end of the session."""
    from se.testing.server import SEServerFactory

    factory = SEServerFactory(tmp_path_factory.mktemp("se-servers"), issuer=se_issuer)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def se_server(
    request: pytest.FixtureRequest, se_server_factory: SEServerFactory, tmp_path: Path
) -> Iterator[SEServer]:
    """One real server for this test (data in ``tmp_path / "se"``), stopped after it.
    Its configuration comes from ``@pytest.mark.se_server(config={...}, ...)``."""
    marker = request.node.get_closest_marker("se_server")
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    if marker is not None and marker.args:
        kwargs.setdefault("config", marker.args[0])
    srv = se_server_factory(workdir=tmp_path / "se", **kwargs)
    try:
        yield srv
    finally:
        srv.stop()
        if srv in se_server_factory.servers:
            se_server_factory.servers.remove(srv)
