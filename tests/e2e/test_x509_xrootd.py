"""Third-party copies between ``se`` and a real XRootD (XrdHttp + libXrdHttpTPC 5.5), driven
the way FTS drives them: ``gfal-copy`` with a VOMS proxy (``X509_USER_PROXY``), ``davs://``
URLs, pull and push, in both directions.

Both servers run in one loopback-only network namespace (tests/xrootd.py) with the host
certificate of the test PKI (tests/pki.py).  XRootD is configured as a grid site would be
(:func:`tests.xrootd.grid_site`): client proxies verified against the CA directory, VOMS
attributes extracted by libXrdVoms (first FQAN only: XRootD 5.5 refuses a proxy whose
further FQANs have no role), ``ofs.authorize 1`` with everything below /dteam for the dteam
VO and nothing for anyone else, so anonymous requests and proxies without a dteam AC get 403.
``se`` asks for client certificates (``optional``) and has an ``[[auth.x509]]`` rule for
/dteam.

Two XRootD instances differ in one thing, the macaroons plugin:

* ``xrd-mac`` (port 1095) issues macaroons (``ofs.authlib libXrdMacaroons.so``,
  ``http.exthandler xrdmacaroons``) and accepts them as bearer tokens, which XrdHttp 5.5 only
  passes to the authorization layer with ``http.header2cgi Authorization authz`` (without it
  a macaroon that ``se`` presents is ignored and the request is anonymous: 403; a COPY's own
  token reaches the TPC handler either way).  All four copies work: gfal2 asks each endpoint
  for a macaroon over its proxy-authenticated connection (RETRIEVE_BEARER_TOKEN, on in
  Debian's http_plugin.conf) and hands the passive side's to the active side in
  ``TransferHeaderAuthorization`` with ``Credential: none``.
* ``xrd`` (port 1094) has no macaroons plugin: its answer to gfal2's macaroon request is 501.
  When XRootD is the active side (the COPY goes to XRootD), ``se`` is the passive side and
  issues the macaroon.  When ``se`` is the active side, gfal2 2.21 has no token for XRootD
  and sends the COPY to ``se`` with ``Credential: gridsite``: ``se`` answers 307 with
  ``X-Delegate-To``, davix delegates the proxy to ``se``'s GridSite delegation endpoint and
  repeats the COPY, and ``se`` presents the delegated proxy to XRootD as its TLS client
  certificate (XRootD judges it by its VOMS AC like any proxy).  All four copies work.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import need
from tests.e2e.clients import client_env, need_gfal, random_bytes
from tests.pki import Pki
from tests.support import SEProcess, poll
from tests.xrootd import (
    Netns,
    XRootD,
    find_plugin,
    give_to_xrootd,
    grid_site,
    scratch_dir,
    start_se_in,
    start_xrootd,
    xrootd_test_marks,
)

pytestmark = xrootd_test_marks(timeout=120)

XRD_PORT = 1094  # no macaroons plugin
XRD_MAC_PORT = 1095  # with the macaroons plugin
SIZE = 1 << 20
COPY_TIMEOUT = 60.0
FQANS = ("/dteam/Role=production", "/dteam")


@dataclass
class Grid:
    ns: Netns
    pki: Pki
    proxy: Path  # /dteam/Role=production, /dteam
    xrd: XRootD  # without macaroons
    xrd_mac: XRootD  # with macaroons
    se: SEProcess

    def env(self, proxy: Path | None = None) -> dict[str, str]:
        return client_env(
            {"X509_USER_PROXY": str(proxy or self.proxy), "X509_CERT_DIR": str(self.pki.ca_dir)}
        )


def start_grid_xrootd(ns: Netns, scratch: Path, pki: Pki, port: int, macaroons: bool) -> XRootD:
    """An XRootD that wants a proxy of the dteam VO below /dteam (see the module docstring)."""
    site = grid_site(
        scratch / f"grid-{port}",  # the xrootd user can read it, unlike pytest's tmp dirs
        pki.ca_dir,
        pki.vomsdir,
        "o dteam /dteam a",
        macaroons=macaroons,
    )
    data = scratch / f"xrd-data-{port}"
    (data / "dteam").mkdir(parents=True)
    return start_xrootd(
        ns,
        scratch,
        data,
        port,
        tls=pki.host_tls(),
        extra_config=site.extra_config,
        env=site.env,
    )


def se_config(pki: Pki) -> str:
    rules = """
[[auth.x509]]
fqan = "/dteam"
path = "/dteam"
allow = ["read", "create", "modify"]

[tpc]
marker_period = 0.5
stall_timeout = 20.0
"""
    return '[logging]\naccess_log = true\nlevel = "info"\n' + pki.se_config(rules)


@pytest.fixture(scope="module")
def grid(pki: Pki) -> Iterator[Grid]:
    need_gfal("gfal-copy")
    need("voms-proxy-fake")
    for lib in ("libXrdVoms-5.so", "libXrdMacaroons-5.so"):
        if find_plugin(lib) is None:
            pytest.skip(
                f"XRootD plugin {lib} not found (xrootd-voms-plugins, xrootd-server-plugins)"
            )
    with scratch_dir() as scratch, Netns() as ns:
        xrd = start_grid_xrootd(ns, scratch, pki, XRD_PORT, macaroons=False)
        xrd_mac = start_grid_xrootd(ns, scratch, pki, XRD_MAC_PORT, macaroons=True)
        root = scratch / "se-root"
        (root / "dteam").mkdir(parents=True)
        se = start_se_in(ns, scratch, root, se_config(pki))
        try:
            yield Grid(ns, pki, pki.proxy(pki.user("alice"), fqans=FQANS), xrd, xrd_mac, se)
        finally:
            se.stop()
            xrd_mac.stop()
            xrd.stop()


def xrd_davs(xrd: XRootD, path: str) -> str:
    return f"davs://localhost:{xrd.port}{path}"


def se_davs(se: SEProcess, path: str) -> str:
    return f"davs://localhost:{se.port}{path}"


def gfal_copy(
    grid: Grid, mode: str, src: str, dst: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    """``gfal-copy`` inside the namespace, third-party only (``--copy-mode`` turns off the
    fallback to a streamed copy through the client)."""
    args = ["gfal-copy", *extra, "-p", "--copy-mode", mode, "-K", "ADLER32", src, dst]
    return grid.ns.run(args, env=grid.env(), timeout=COPY_TIMEOUT + 30)


def access_line(se: SEProcess, method: str, path: str) -> str:
    """The access log line of the last ``method path`` request (waits for it briefly)."""
    pattern = re.compile(rf'"{method} {re.escape(path)} HTTP/1\.1" \d{{3}} .*')
    assert poll(lambda: pattern.search(se.stderr()) is not None, timeout=10), se.stderr()[-3000:]
    lines: list[str] = pattern.findall(se.stderr())
    return lines[-1]


# --------------------------------------------------------------------------- XRootD's side


def test_xrootd_wants_a_proxy_with_the_vo(grid: Grid) -> None:
    """The XRootD peers really authenticate: anonymous and VO-less proxies are refused."""
    data = random_bytes(4096, seed=1)
    for xrd in (grid.xrd, grid.xrd_mac):
        (xrd.data_dir / "dteam" / "probe.bin").write_bytes(data)
        give_to_xrootd(xrd.data_dir / "dteam" / "probe.bin")
        url = f"https://localhost:{xrd.port}/dteam/probe.bin"
        common: list[str | Path] = [
            "--cacert",
            grid.pki.ca_cert,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ]
        assert grid.ns.curl([*common, url], timeout=20).stdout == "403"
        no_vo = grid.pki.proxy(grid.pki.user("alice"), vo=None)
        assert (
            grid.ns.curl([*common, "--cert", no_vo, "--key", no_vo, url], timeout=20).stdout
            == "403"
        )
        got = grid.ns.curl(
            ["--cacert", grid.pki.ca_cert, "--cert", grid.proxy, "--key", grid.proxy, url],
            timeout=20,
            text=False,
        )
        assert got.stdout == data, got.stderr


# --------------------------------------------------------------------------- copies


CASES = [
    # (XRootD instance, direction, gfal-copy mode)
    (kind, direction, mode)
    for kind in ("xrd-mac", "xrd")
    for direction in ("se-to-xrootd", "xrootd-to-se")
    for mode in ("pull", "push")
]


def _se_is_active(direction: str, mode: str) -> bool:
    """The COPY goes to the destination for a pull, to the source for a push."""
    se_is_destination = direction == "xrootd-to-se"
    return se_is_destination == (mode == "pull")


@pytest.mark.parametrize(("kind", "direction", "mode"), CASES)
def test_gfal_copy_with_a_proxy(grid: Grid, kind: str, direction: str, mode: str) -> None:
    xrd = grid.xrd_mac if kind == "xrd-mac" else grid.xrd
    name = f"{kind}-{direction}-{mode}.bin"
    data = random_bytes(SIZE, seed=zlib.crc32(name.encode()))
    se_path, xrd_path = f"/dteam/from-se/{name}", f"/dteam/from-xrd/{name}"
    if direction == "se-to-xrootd":
        source = grid.se.root / se_path.lstrip("/")
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(data)
        src, dst = se_davs(grid.se, se_path), xrd_davs(xrd, f"/dteam/in/{name}")
        target = xrd.data_dir / "dteam" / "in" / name
        se_side, se_method = se_path, "COPY" if mode == "push" else "GET"
    else:
        source = xrd.data_dir / xrd_path.lstrip("/")
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(data)
        give_to_xrootd(source.parent)
        src, dst = xrd_davs(xrd, xrd_path), se_davs(grid.se, f"/dteam/in/{name}")
        target = grid.se.root / "dteam" / "in" / name
        se_side, se_method = f"/dteam/in/{name}", "COPY" if mode == "pull" else "PUT"
    se_active = _se_is_active(direction, mode)

    if kind == "xrd" and se_active:
        # No macaroon from XRootD: gfal2 sends Credential: gridsite; se answers 307 with
        # X-Delegate-To, davix delegates the proxy, repeats the COPY, and se presents the
        # delegated proxy to XRootD as its TLS client certificate.
        delegations = grid.se.root / ".se-state" / "delegation"
        shutil.rmtree(delegations, ignore_errors=True)  # each case delegates afresh
        res = gfal_copy(grid, mode, src, dst, "-vvv")
        output = res.stdout + res.stderr
        assert res.returncode == 0, output[-5000:]
        stored = list(delegations.glob("*/*.pem"))
        assert len(stored) == 1 and stored[0].stat().st_mode & 0o777 == 0o600, stored
        assert "Credential: gridsite" in output, output[-3000:]
        assert target.read_bytes() == data
        log = grid.se.stderr()
        assert re.search(rf'"COPY {re.escape(se_side)} HTTP/1\.1" 307 ', log), log[-3000:]
        assert '"POST /.well-known/se/gridsite-delegation HTTP/1.1" 200 ' in log, log[-3000:]
        assert '" 202 ' in access_line(grid.se, "COPY", se_side)
        return

    res = gfal_copy(grid, mode, src, dst)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert target.read_bytes() == data
    # It was a third-party copy: se ran it (202), or XRootD fetched from / sent to se.
    line = access_line(grid.se, se_method, se_side)
    if se_active:
        assert '" 202 ' in line, line
    else:
        assert "xrootd-tpc" in line, line
        assert grid.pki.user("alice").dn in line, line  # the macaroon se issued to the proxy
