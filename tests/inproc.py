"""``se`` in the test's own event loop: the real application (:func:`se.app.create_app`) behind
pytest-aiohttp's test server and client, on a fresh data directory.

No subprocess, no start-up wait: a handler edge case costs a request, not a server.  What an
in-process server cannot show (several workers, signals, crash recovery, the direct-PUT socket
path) stays in ``tests/e2e``.

Use the fixtures (registered by ``tests/unit/conftest.py``): ``inproc`` is one server with the
default configuration; ``inproc_factory(**sections)`` starts more, each section a mapping merged
over the defaults (``inproc_factory(storage={"create_parents": False})``).
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from se.app import create_app
from se.config import Config, load_mapping

__all__ = ["InProcessSE", "MakeInProcessSE", "inproc", "inproc_factory", "inproc_mapping"]

Client = TestClient[web.Request, web.Application]


@dataclass(frozen=True)
class InProcessSE:
    client: Client
    root: Path
    cfg: Config

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` on this server (for Destination headers)."""
        return str(self.client.make_url(path))


MakeInProcessSE = Callable[..., Awaitable[InProcessSE]]


def inproc_mapping(root: Path, **sections: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration of an in-process server: ``root`` as the data directory, the
    defaults for the rest, and ``sections`` merged key by key over that."""
    # The state directory beside the data, so that a test sees in the data directory only
    # what its requests made (the space accounting's database is created at start).
    state = str(root.parent / f"{root.name}-state")
    mapping: dict[str, dict[str, Any]] = {"storage": {"root": str(root), "state_dir": state}}
    for name, values in sections.items():
        mapping.setdefault(name, {}).update(values)
    return dict(mapping)


@pytest.fixture
async def inproc_factory(aiohttp_client: AiohttpClient, tmp_path: Path) -> MakeInProcessSE:
    """Start in-process servers, each on its own data directory below ``tmp_path``; all are
    closed by pytest-aiohttp at the end of the test."""
    seq = itertools.count()

    async def make(**sections: Mapping[str, Any]) -> InProcessSE:
        root = tmp_path / f"data-{next(seq)}"
        root.mkdir()
        cfg = load_mapping(inproc_mapping(root, **sections))
        client = await aiohttp_client(create_app(cfg, sweep=False))
        return InProcessSE(client, root, cfg)

    return make


@pytest.fixture
async def inproc(inproc_factory: MakeInProcessSE) -> InProcessSE:
    """One in-process server with the default configuration."""
    return await inproc_factory()
