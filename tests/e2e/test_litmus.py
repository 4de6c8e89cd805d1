"""The litmus WebDAV compliance suites (basic, copymove, props, http) against a real server.

``locks`` is left out: ``se`` is DAV class 1 (no LOCK), so that suite only skips.  The server
runs with ``create_parents = false`` (RFC 4918: 409 for a PUT below a missing collection, as
litmus's ``put_no_parent`` expects), while ``se`` by default creates parents like dCache and
XRootD; that switch is the documented, configurable RFC behaviour.  (litmus 0.13 as packaged
by Debian actually probes ``put_no_parent`` with a MKCOL, which answers 409 either way.)
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import BASE_CONFIG, need
from tests.support import SEProcess

pytestmark = pytest.mark.clients

LITMUS_CONFIG = BASE_CONFIG + "\n[storage]\ncreate_parents = false\n"
SUITES = ("basic", "copymove", "props", "http")

_SUMMARY = re.compile(
    r"<- summary for `(?P<suite>[^']+)': of (?P<run>\d+) tests run: "
    r"(?P<passed>\d+) passed, (?P<failed>\d+) failed"
)
_SKIPPED = re.compile(r"-> (\d+) tests? (?:was|were) skipped")
_TEST_LINE = re.compile(r"^\s*\d+\.\s+\w+\.*")


def _failures(output: str) -> list[str]:
    """The lines naming a failed or skipped test (with litmus's reason)."""
    return [
        line.strip()
        for line in output.splitlines()
        if _TEST_LINE.match(line) and re.search(r"\b(FAIL|SKIPPED)\b", line)
    ]


@pytest.mark.parametrize("suite", SUITES)
def test_litmus_suite(suite: str, tmp_path: Path, se_factory: Callable[..., SEProcess]) -> None:
    need("litmus")
    root = tmp_path / "data"
    (root / "litmus").mkdir(parents=True)  # litmus works inside an existing collection
    srv = se_factory(LITMUS_CONFIG, root=root)
    workdir = tmp_path / "litmus-run"  # litmus writes debug.log and child.log here
    workdir.mkdir()

    proc = subprocess.run(
        ["litmus", f"{srv.url}/litmus/"],
        env={**os.environ, "TESTS": suite},
        cwd=workdir,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=180,
    )
    output = proc.stdout + proc.stderr
    failing = _failures(output)
    context = f"litmus {suite} output:\n{output[-6000:]}\nserver stderr:\n{srv.stderr()[-3000:]}"

    summaries = [m.groupdict() for m in _SUMMARY.finditer(output)]
    assert [s["suite"] for s in summaries] == [suite], f"no summary for {suite}\n{context}"
    summary = summaries[0]
    assert summary["failed"] == "0", f"{suite}: failing tests: {failing}\n{context}"
    assert proc.returncode == 0, f"{suite}: exit {proc.returncode}, failing: {failing}\n{context}"
    # init, begin and finish are bookkeeping; a real run has more than those.
    assert int(summary["run"]) > 3, context
    assert summary["passed"] == summary["run"], f"{suite}: {failing}\n{context}"
    assert not _SKIPPED.search(output), f"{suite}: skipped tests: {failing}\n{context}"
    assert failing == [], context

    if suite == "http":
        # expect100 passes on any status line; make sure it was the interim 100 it got.
        debug = (workdir / "debug.log").read_text(errors="replace")
        assert "[status] HTTP/1.1 100 Continue" in debug, context
    assert srv.proc.poll() is None, f"server exited during the {suite} suite\n{context}"
