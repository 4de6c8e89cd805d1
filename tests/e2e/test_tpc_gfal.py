"""gfal-copy driving third-party copies between two real ``se`` servers.

gfal2 is what FTS uses: these tests run it unchanged in pull and push mode, with its own
checksum verification (-K), overwrite handling (-f), and over davs:// where it first asks
each server for a macaroon and then hands the source's token over in
TransferHeaderAuthorization.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import BASE_CONFIG
from tests.e2e.clients import (
    adler32_hex,
    davs_url,
    make_tls,
    random_bytes,
    run,
    run_ok,
    tls_config,
    trust_env,
)
from tests.support import SEProcess

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("gfal_installed")]

FAST = BASE_CONFIG + "\n[tpc]\nmarker_period = 0.5\n"


@pytest.fixture
def pair(se_factory: Callable[..., SEProcess], tmp_path: Path) -> tuple[SEProcess, SEProcess]:
    return (
        se_factory(config=FAST, root=tmp_path / "src"),
        se_factory(config=FAST, root=tmp_path / "dst"),
    )


def leftovers(root: Path) -> list[str]:
    return [n for _d, _s, files in os.walk(root) for n in files if n.startswith(".se-upload-")]


@pytest.mark.parametrize("mode", ["pull", "push"])
@pytest.mark.parametrize("size", [0, 1, 3_000_001])
def test_gfal_tpc(mode: str, size: int, pair: tuple[SEProcess, SEProcess]) -> None:
    src, dst = pair
    data = random_bytes(size, size + 7)
    (src.root / "d").mkdir(parents=True)
    (src.root / "d" / "f.bin").write_bytes(data)
    target = f"{dst.url}/new/dir/{mode}-{size}.bin"
    res = run_ok(
        ["gfal-copy", "-p", "--copy-mode", mode, "-K", "ADLER32", f"{src.url}/d/f.bin", target]
    )
    assert "Copying" in res.stdout
    out = dst.root / "new" / "dir" / f"{mode}-{size}.bin"
    assert out.read_bytes() == data
    stored = os.getxattr(out, "user.se.checksum.adler32").decode().split(";")[0]
    assert stored == adler32_hex(data)
    assert not leftovers(dst.root)


def test_gfal_tpc_100_mib_pull_and_push(pair: tuple[SEProcess, SEProcess]) -> None:
    src, dst = pair
    data = random_bytes(100 * 1024 * 1024, 3)
    (src.root / "big.bin").write_bytes(data)
    want = f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"
    for mode in ("pull", "push"):
        run_ok(
            [
                "gfal-copy",
                "--copy-mode",
                mode,
                "-K",
                f"ADLER32:{want}",
                f"{src.url}/big.bin",
                f"{dst.url}/big-{mode}.bin",
            ],
            timeout=240,
        )
        assert (dst.root / f"big-{mode}.bin").read_bytes() == data


def test_gfal_overwrite_rules(pair: tuple[SEProcess, SEProcess]) -> None:
    src, dst = pair
    (src.root / "f").write_bytes(b"new content")
    (dst.root / "f").write_bytes(b"old")
    res = run(["gfal-copy", "--copy-mode", "pull", f"{src.url}/f", f"{dst.url}/f"])
    assert res.returncode != 0
    assert "exists" in (res.stderr + res.stdout).lower()
    assert (dst.root / "f").read_bytes() == b"old"
    run_ok(["gfal-copy", "-f", "--copy-mode", "pull", f"{src.url}/f", f"{dst.url}/f"])
    assert (dst.root / "f").read_bytes() == b"new content"


def test_gfal_pull_of_missing_source_fails_without_fallback(
    pair: tuple[SEProcess, SEProcess],
) -> None:
    src, dst = pair
    res = run(["gfal-copy", "--copy-mode", "pull", f"{src.url}/nope", f"{dst.url}/x"])
    assert res.returncode != 0
    assert not (dst.root / "x").exists()
    assert not leftovers(dst.root)


def test_gfal_tpc_over_davs_with_macaroons(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    """davs://: gfal2 asks both servers for tokens (POST application/macaroon-request),
    sends the COPY with the source's token in TransferHeaderAuthorization, and the data moves
    over TLS verified against the configured CA directory."""
    tls = make_tls(tmp_path)
    config = (
        tls_config(tls).replace("[tls]\n", f"[tls]\nca_dir = {json.dumps(str(tls.ca_dir))}\n")
        + '\n[logging]\nlevel = "info"\naccess_log = true\n'
    ).replace('[logging]\naccess_log = false\nlevel = "warning"\n', "")
    src = se_factory(config=config, root=tmp_path / "src")
    dst = se_factory(config=config, root=tmp_path / "dst")
    data = random_bytes(2_000_000, 11)
    (src.root / "s.bin").write_bytes(data)
    env = trust_env(tls)
    src_davs, dst_davs = (davs_url(s.url) for s in (src, dst))
    for mode in ("pull", "push"):
        run_ok(
            [
                "gfal-copy",
                "--copy-mode",
                mode,
                "-K",
                "ADLER32",
                src_davs + "/s.bin",
                dst_davs + f"/t-{mode}.bin",
            ],
            env=env,
        )
        assert (dst.root / f"t-{mode}.bin").read_bytes() == data
    logs = src.stderr() + dst.stderr()
    assert '"POST /s.bin' in src.stderr(), logs[-3000:]
    assert "tpc pull" in dst.stderr() and "tpc push" in src.stderr()
    # The tokens themselves never reach the logs.
    assert "eyJ" not in logs


def test_gfal_shows_where_a_pull_failed(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    """FTS sees what gfal2 reports: the failure line's phase tag and detail, unchanged."""
    src = se_factory(config=FAST, root=tmp_path / "src")
    dst = se_factory(config=FAST + "max_pull_bytes = 1000\n", root=tmp_path / "dst")
    (src.root / "f").write_bytes(random_bytes(5000, 21))
    res = run(["gfal-copy", "--copy-mode", "pull", f"{src.url}/f", f"{dst.url}/f"])
    assert res.returncode != 0
    out = res.stderr + res.stdout
    assert (
        "failure: local write: the source declares 5000 bytes, more than tpc.max_pull_bytes "
        "(1000); local=/f remote=" in out
    ), out
    assert not (dst.root / "f").exists()
    assert not leftovers(dst.root)
