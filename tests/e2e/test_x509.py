"""X.509 client certificates and VOMS proxies over HTTPS, next to tokens on one listener.

One real ``se`` (HTTPS, ``tls.client_certs = "optional"``) trusts the test PKI's CA
directory and vomsdir (tests/pki.py: proxies made by voms-proxy-fake, as VOMS clients make
them) and judges proxies by ``[[auth.x509]]`` rules with an "except" subtree.  Driven by
Python's ssl client, curl, gfal2 (X509_USER_PROXY) and davix; each precedence combination
of token and certificate is pinned.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest

from tests.e2e.clients import davs_url, run, run_ok
from tests.e2e.jwt_issuer import JWTIssuer
from tests.pki import Pki, User
from tests.support import SEProcess, poll, start_se

pytestmark = pytest.mark.timeout(300)

ISSUER = "https://issuer.x509-test/"
# A tape pool whose library never mounts while the tests run: requests stay SUBMITTED.
TAPE = """
[[auth.x509]]
fqan = "/dteam/Role=production"
path = "/tape"
allow = ["read", "stage"]

[tape]
enabled = true
database = {database}
min_request_age = 1e7

[[tape.pools]]
path = "/tape"
"""


def server_config(pki: Pki, jwks: Path, alice: User, extra: str = "") -> str:
    q = json.dumps
    rules = f"""
[[auth.public]]
path = "/public"
allow = ["read"]

[[auth.x509]]
fqan = "/dteam"
path = "/dteam"
allow = ["read"]

[[auth.x509]]
fqan = "/dteam/Role=production"
path = "/dteam"
allow = ["read", "modify"]

[[auth.x509]]
fqan = "/dteam/Role=production"
path = "/dteam/protected"
deny = ["modify"]

[[auth.x509]]
dn = {q(alice.dn)}
path = "/home/alice"
allow = ["read", "modify"]

[[auth.issuers]]
issuer = {q(ISSUER)}
jwks_file = {q(str(jwks))}
{extra}
"""
    logging = '[logging]\naccess_log = true\nlevel = "info"\n'
    return logging + pki.se_config(rules, auth="max_proxy_depth = 2")


@dataclass
class Site:
    pki: Pki
    se: SEProcess
    issuer: JWTIssuer
    alice: User
    bob: User


@pytest.fixture(scope="module")
def site(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("x509")
    issuer = JWTIssuer(work / "issuer", issuer=ISSUER)
    alice, bob = pki.user("alice"), pki.user("bob")
    root = work / "data"
    for folder in ("public", "dteam/protected", "home/alice"):
        (root / folder).mkdir(parents=True)
    (root / "public" / "p.txt").write_bytes(b"public\n")
    (root / "dteam" / "d.txt").write_bytes(b"dteam data\n")
    (root / "dteam" / "protected" / "keep.txt").write_bytes(b"keep\n")
    (root / "tape").mkdir()
    (root / "tape" / "t.bin").write_bytes(b"on tape" * 100)
    tape = TAPE.format(database=json.dumps(str(work / "tape.sqlite")))
    config = server_config(pki, issuer.write_jwks(), alice, tape)
    srv = start_se(work, root=root, config=config)
    yield Site(pki, srv, issuer, alice, bob)
    srv.stop()


@dataclass
class Answer:
    status: int
    body: bytes
    headers: Mapping[str, str]


def request(
    site: Site,
    method: str,
    path: str,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    token: str | None = None,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """One request with Python's ssl client (a new TLS connection each time)."""
    ctx = ssl.create_default_context(cafile=str(site.pki.ca_cert))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key or cert))
    port = site.se.port
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=30)
    sent = {"Authorization": f"Bearer {token}"} if token else {}
    sent.update(headers or {})
    try:
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        return Answer(resp.status, resp.read(), dict(resp.getheaders()))
    finally:
        conn.close()


def url(site: Site, path: str) -> str:
    return f"https://localhost:{site.se.port}{path}"


def grid_env(site: Site, proxy: Path) -> dict[str, str]:
    return {"X509_USER_PROXY": str(proxy), "X509_CERT_DIR": str(site.pki.ca_dir)}


# --------------------------------------------------------------------------- policy


def test_fqan_rules_decide_with_an_except_subtree(site: Site) -> None:
    member = site.pki.proxy(site.bob, fqans=("/dteam",))
    production = site.pki.proxy(site.bob, fqans=("/dteam/Role=production", "/dteam"))
    assert request(site, "GET", "/dteam/d.txt", cert=member).status == 200
    refused = request(site, "PUT", "/dteam/m.txt", cert=member, body=b"x")
    assert refused.status == 403
    assert b"certificate does not allow" in refused.body
    assert request(site, "PUT", "/dteam/new.txt", cert=production, body=b"new").status == 201
    assert (site.se.root / "dteam" / "new.txt").read_bytes() == b"new"
    denied = request(site, "PUT", "/dteam/protected/x.txt", cert=production, body=b"x")
    assert denied.status == 403
    assert request(site, "DELETE", "/dteam/protected/keep.txt", cert=production).status == 403
    assert (site.se.root / "dteam" / "protected" / "keep.txt").exists()
    # The protected subtree stays readable: only writes were denied there.
    assert request(site, "GET", "/dteam/protected/keep.txt", cert=production).body == b"keep\n"


def test_every_fqan_counts_not_only_the_primary_one(site: Site) -> None:
    # The production role listed second still gives its rights (XRootD maps the first only).
    proxy = site.pki.proxy(site.bob, fqans=("/dteam", "/dteam/Role=production"))
    assert request(site, "PUT", "/dteam/second.txt", cert=proxy, body=b"2").status == 201


def test_dn_rule_with_the_bare_certificate_and_with_a_proxy(site: Site) -> None:
    alice = site.alice
    eec = request(site, "PUT", "/home/alice/a.txt", cert=alice.cert, key=alice.key, body=b"a")
    assert eec.status == 201
    proxy = site.pki.proxy(alice, vo=None)  # no VOMS attributes at all
    assert request(site, "GET", "/home/alice/a.txt", cert=proxy).body == b"a"
    assert request(site, "GET", "/home/alice/a.txt", cert=site.pki.proxy(site.bob)).status == 403


def test_anonymous_requests_keep_the_public_rules(site: Site) -> None:
    assert request(site, "GET", "/public/p.txt").status == 200
    refused = request(site, "GET", "/dteam/d.txt")
    assert refused.status == 401
    assert refused.headers.get("WWW-Authenticate", "").startswith("Bearer")


# --------------------------------------------------------------------------- refusals


def test_expired_proxy_is_refused_with_the_reason(site: Site) -> None:
    proxy = site.pki.proxy(site.bob, expired=True)
    answer = request(site, "GET", "/public/p.txt", cert=proxy)
    assert answer.status == 401
    assert b"expired" in answer.body


def test_revoked_user_is_refused(site: Site) -> None:
    """A CRL that fetch-crl puts in place is honoured within the CA directory's check
    interval (5 s) for chains not seen before."""
    carol = site.pki.user("carol")
    assert request(site, "GET", "/public/p.txt", cert=carol.cert, key=carol.key).status == 200
    site.pki.revoke(carol)
    deadline = time.monotonic() + 15
    while True:
        answer = request(site, "GET", "/public/p.txt", cert=site.pki.proxy(carol, vo=None))
        if answer.status != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert answer.status == 401
    assert b"revoked" in answer.body


def test_untrusted_ca_fails_the_handshake(site: Site) -> None:
    rogue = site.pki.user("mallory", rogue=True)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        request(site, "GET", "/public/p.txt", cert=site.pki.proxy(rogue, vo=None))


@pytest.mark.parametrize("voms", ["unlisted", "rogue"])
def test_an_untrusted_ac_leaves_the_dn_only(site: Site, voms: str) -> None:
    proxy = site.pki.proxy(site.alice, fqans=("/dteam/Role=production",), voms=voms)
    assert request(site, "PUT", "/dteam/ac.txt", cert=proxy, body=b"x").status == 403
    assert request(site, "GET", "/home/alice/a.txt", cert=proxy).status in (200, 404)
    assert "VOMS attributes of " + site.alice.dn in site.se.stderr()


def test_no_rule_for_the_dn_or_another_vo(site: Site) -> None:
    atlas = site.pki.proxy(site.bob, vo="atlas", fqans=("/atlas", "/atlas/Role=production"))
    assert request(site, "GET", "/dteam/d.txt", cert=atlas).status == 403
    assert request(site, "GET", "/home/alice/a.txt", cert=site.pki.proxy(site.bob)).status == 403


def test_proxy_chain_depth_is_limited(site: Site) -> None:
    ok = site.pki.proxy(site.bob, fqans=("/dteam",), depth=2)
    assert request(site, "GET", "/dteam/d.txt", cert=ok).status == 200
    deep = site.pki.proxy(site.bob, fqans=("/dteam",), depth=3)
    answer = request(site, "GET", "/dteam/d.txt", cert=deep)
    assert answer.status == 401
    assert b"3 proxies" in answer.body


def test_expired_or_tampered_ac_is_ignored(site: Site) -> None:
    for proxy in (
        site.pki.proxy(site.bob, fqans=("/dteam/Role=production",), ac_expired=True),
        site.pki.proxy(site.bob, fqans=("/dteam/Role=production",), tamper_ac=True),
    ):
        assert request(site, "PUT", "/dteam/t.txt", cert=proxy, body=b"x").status == 403


# --------------------------------------------------------------------------- precedence


@pytest.mark.parametrize(
    ("token", "cert", "status"),
    [
        ("none", "none", 401),  # anonymous: nothing allowed there
        ("none", "production", 201),  # the certificate decides
        ("valid-read", "production", 403),  # a presented token decides alone
        ("valid-write", "none", 201),
        ("invalid", "production", 401),  # an invalid token is never ignored
        ("valid-write", "rogue-ac", 201),
        ("none", "expired", 401),
    ],
)
def test_token_and_certificate_precedence(site: Site, token: str, cert: str, status: int) -> None:
    tokens = {
        "none": None,
        "valid-read": site.issuer.mint(scope="storage.read:/"),
        "valid-write": site.issuer.mint(scope="storage.modify:/dteam"),
        "invalid": site.issuer.mint(scope="storage.modify:/", exp=time.time() - 3600),
    }
    certs = {
        "none": None,
        "production": site.pki.proxy(site.bob, fqans=("/dteam/Role=production",)),
        "rogue-ac": site.pki.proxy(site.bob, voms="rogue"),
        "expired": site.pki.proxy(site.bob, expired=True),
    }
    path = f"/dteam/prec-{token}-{cert}.txt"
    answer = request(site, "PUT", path, cert=certs[cert], token=tokens[token], body=b"p")
    assert answer.status == status, answer.body


def test_access_log_names_the_dn_and_the_primary_fqan(site: Site) -> None:
    proxy = site.pki.proxy(site.bob, fqans=("/dteam/Role=production", "/dteam"))
    request(site, "GET", "/dteam/d.txt?marker=log-x509", cert=proxy)
    request(site, "GET", "/public/p.txt?marker=log-token", token=site.issuer.mint())
    # The line is written after the answer is sent: wait for it.
    assert poll(lambda: "marker=log-token" in site.se.stderr(), timeout=10)
    lines = site.se.stderr().splitlines()
    x509 = next(line for line in lines if "marker=log-x509" in line)
    assert f'"{site.bob.dn} /dteam/Role=production"' in x509
    assert " 200 " in x509
    token = next(line for line in lines if "marker=log-token" in line)
    assert f"@{ISSUER}" in token


# --------------------------------------------------------------------------- real clients


def test_curl_with_a_proxy(site: Site) -> None:
    proxy = site.pki.proxy(site.bob, fqans=("/dteam/Role=production",))
    src = site.se.root.parent / "curl-up.txt"
    src.write_bytes(b"from curl\n")
    common: list[str | Path] = [
        *("curl", "-sS", "--cacert", site.pki.ca_cert, "--cert", proxy, "--key", proxy)
    ]
    run_ok([*common, "-f", "-T", src, url(site, "/dteam/curl.txt")])
    got = run_ok([*common, "-f", url(site, "/dteam/curl.txt")])
    assert got.stdout == "from curl\n"
    refused = run(
        [
            *common,
            "-w",
            "%{http_code}",
            "-o",
            "/dev/null",
            "-T",
            src,
            url(site, "/dteam/protected/c"),
        ]
    )
    assert refused.stdout == "403"


def test_gfal_with_x509_user_proxy(site: Site) -> None:
    from tests.e2e.clients import need_gfal

    need_gfal("gfal-ls", "gfal-rm", "gfal-stat", "gfal-mkdir")
    proxy = site.pki.proxy(site.bob, fqans=("/dteam/Role=production", "/dteam"))
    env = grid_env(site, proxy)
    base = davs_url(url(site, "/dteam"))
    src = site.se.root.parent / "gfal-up.bin"
    src.write_bytes(b"g" * 100_000)
    run_ok(["gfal-mkdir", "-p", f"{base}/gfal/sub"], env)
    run_ok(["gfal-copy", "-f", f"file://{src}", f"{base}/gfal/sub/g.bin"], env)
    assert (site.se.root / "dteam" / "gfal" / "sub" / "g.bin").stat().st_size == 100_000
    assert "g.bin" in run_ok(["gfal-ls", f"{base}/gfal/sub"], env).stdout
    assert "100000" in run_ok(["gfal-stat", f"{base}/gfal/sub/g.bin"], env).stdout
    run_ok(["gfal-rm", f"{base}/gfal/sub/g.bin"], env)
    assert not (site.se.root / "dteam" / "gfal" / "sub" / "g.bin").exists()
    denied = run(["gfal-copy", "-f", f"file://{src}", f"{base}/protected/g.bin"], env)
    assert denied.returncode != 0
    assert not (site.se.root / "dteam" / "protected" / "g.bin").exists()


def test_davix_with_a_proxy(site: Site) -> None:
    from tests.conftest import need

    need("davix-put", "davix-get")
    proxy = site.pki.proxy(site.bob, fqans=("/dteam/Role=production",))
    src = site.se.root.parent / "davix-up.txt"
    src.write_bytes(b"from davix\n")
    common: list[str | Path] = ["--cert", proxy, "--key", proxy, "--capath", site.pki.ca_dir]
    run_ok(["davix-put", *common, src, url(site, "/dteam/davix.txt")])
    got = run_ok(["davix-get", *common, url(site, "/dteam/davix.txt")])
    assert got.stdout == "from davix\n"


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_gfal_third_party_copy_with_a_proxy(
    site: Site, mode: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """gfal2 as FTS drives it: the proxy authenticates to both servers, each issues a
    macaroon for it, and the COPY carries the other side's in TransferHeaderAuthorization."""
    from tests.e2e.clients import need_gfal

    need_gfal("gfal-copy")
    work = tmp_path_factory.mktemp(f"x509-tpc-{mode}")
    config = server_config(site.pki, site.issuer.write_jwks(), site.alice)
    other = start_se(work, root=work / "data", config=config)
    try:
        proxy = site.pki.proxy(site.bob, fqans=("/dteam/Role=production", "/dteam"))
        data = bytes(range(256)) * 4000
        (site.se.root / "dteam" / f"tpc-{mode}.bin").write_bytes(data)
        src = davs_url(url(site, f"/dteam/tpc-{mode}.bin"))
        dst = davs_url(f"https://localhost:{other.port}/dteam/in/tpc-{mode}.bin")
        run_ok(
            ["gfal-copy", "-p", "--copy-mode", mode, "-K", "ADLER32", src, dst],
            grid_env(site, proxy),
        )
        assert (other.root / "dteam" / "in" / f"tpc-{mode}.bin").read_bytes() == data
        # The destination refuses what the proxy's rules refuse, TPC or not.
        denied = run(
            ["gfal-copy", "--copy-mode", mode, src, dst.replace("/in/", "/protected/")],
            grid_env(site, proxy),
        )
        assert denied.returncode != 0
        assert not (other.root / "dteam" / "protected" / f"tpc-{mode}.bin").exists()
    finally:
        other.stop()


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_gfal_third_party_copy_with_gridsite_delegation(
    site: Site, mode: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """gfal2 told not to fetch macaroons (as when the other side cannot issue one) sends
    ``Credential: gridsite``: the active se answers 307 + X-Delegate-To, davix delegates the
    proxy to se's delegation endpoint and repeats the COPY, and se presents the delegated
    proxy (a proxy of the proxy, with its VOMS AC) to the other se."""
    from tests.e2e.clients import need_gfal

    need_gfal("gfal-copy")
    work = tmp_path_factory.mktemp(f"x509-dlg-{mode}")
    config = server_config(site.pki, site.issuer.write_jwks(), site.alice)
    other = start_se(work, root=work / "data", config=config)
    no_tokens = ["-D", "HTTP PLUGIN:RETRIEVE_BEARER_TOKEN=false"]
    try:
        proxy = site.pki.proxy(site.bob, fqans=("/dteam/Role=production", "/dteam"))
        data = bytes(range(256)) * 3000
        (site.se.root / "dteam" / f"dlg-{mode}.bin").write_bytes(data)
        src = davs_url(url(site, f"/dteam/dlg-{mode}.bin"))
        dst = davs_url(f"https://localhost:{other.port}/dteam/in/dlg-{mode}.bin")
        active = site.se if mode == "push" else other
        active_path = f"/dteam/{'' if mode == 'push' else 'in/'}dlg-{mode}.bin"
        res = run_ok(
            ["gfal-copy", *no_tokens, "-vvv", "-p", "--copy-mode", mode, src, dst],
            grid_env(site, proxy),
        )
        assert "Credential: gridsite" in res.stderr + res.stdout
        assert (other.root / "dteam" / "in" / f"dlg-{mode}.bin").read_bytes() == data
        log = active.stderr()
        assert f'"COPY {active_path} HTTP/1.1" 307 ' in log, log[-3000:]
        assert '"POST /.well-known/se/gridsite-delegation HTTP/1.1" 200 ' in log
        assert f'"COPY {active_path} HTTP/1.1" 202 ' in log
        # The passive side saw the delegated proxy: Bob's DN and his VOMS attributes.
        passive, method = (other, "PUT") if mode == "push" else (site.se, "GET")
        passive_path = f"/dteam/in/dlg-{mode}.bin" if mode == "push" else f"/dteam/dlg-{mode}.bin"
        line = next(
            x for x in passive.stderr().splitlines() if f'"{method} {passive_path} HTTP' in x
        )
        assert f'"{site.bob.dn} /dteam/Role=production"' in line, line
        # What the delegated proxy may not do, it may not do: the passive side refuses.
        denied = run(
            ["gfal-copy", *no_tokens, "--copy-mode", mode, src, dst.replace("/in/", "/protected/")],
            grid_env(site, proxy),
        )
        assert denied.returncode != 0
        assert not (other.root / "dteam" / "protected" / f"dlg-{mode}.bin").exists()
    finally:
        other.stop()


def _soap(
    op: str, args: str = "", ns: str = "http://www.gridsite.org/namespaces/delegation-2"
) -> bytes:
    return (
        '<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
        f'xmlns:d="{ns}"><s:Body><d:{op}>{args}</d:{op}></s:Body></s:Envelope>'
    ).encode()


def _return(answer: Answer, op: str) -> str:
    import xml.etree.ElementTree as ET

    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"].startswith("text/xml")
    found = ET.fromstring(answer.body).find(f".//{op}Return")
    assert found is not None, answer.body
    return "".join(found.itertext())


def test_delegation_endpoint(site: Site) -> None:
    """The delegation service as a SOAP client sees it, and what it refuses."""
    from cryptography import x509 as cx509

    from tests.pki import sign_proxy

    path = "/.well-known/se/gridsite-delegation"
    dave = site.pki.user("dave")
    proxy = site.pki.proxy(dave, fqans=("/dteam",))

    def call(body: bytes, cert: Path | None = proxy) -> Answer:
        return request(
            site, "POST", path, cert=cert, body=body, headers={"Content-Type": "text/xml"}
        )

    assert _return(call(_soap("getInterfaceVersion")), "getInterfaceVersion") == "2.0.0"
    none_yet = call(_soap("getTerminationTime", "<delegationID>1234</delegationID>"))
    assert none_yet.status == 500 and b"no delegated proxy with ID" in none_yet.body
    assert b"<faultstring>" in none_yet.body
    csr = _return(call(_soap("getProxyReq", "<delegationID>1234</delegationID>")), "getProxyReq")
    key = cx509.load_pem_x509_csr(csr.encode()).public_key()
    # Somebody else's proxy, signed for this request, is refused ...
    foreign = sign_proxy(site.pki.proxy(site.alice, fqans=("/dteam",)), key).decode()
    put = "<delegationID>1234</delegationID><proxy>{}</proxy>"
    refused = call(_soap("putProxy", put.format(foreign)))
    assert refused.status == 500 and f"not of the caller {dave.dn}".encode() in refused.body
    # ... the caller's own is kept.
    own = sign_proxy(proxy, key).decode()
    assert call(_soap("putProxy", put.format(own))).status == 200
    ends = _return(
        call(_soap("getTerminationTime", "<delegationID>1234</delegationID>")), "getTerminationTime"
    )
    assert ends.endswith("Z") and ends > time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    new = call(_soap("getNewProxyReq"))
    assert b"<proxyRequest>-----BEGIN CERTIFICATE REQUEST-----" in new.body
    assert call(_soap("destroy", "<delegationID>1234</delegationID>")).status == 200
    # Interface 1 has getProxyReq and putProxy only.
    v1 = "http://www.gridsite.org/namespaces/delegation-1"
    assert _return(call(_soap("getProxyReq", "<delegationID>v1</delegationID>", v1)), "getProxyReq")
    assert call(_soap("destroy", "", v1)).status == 400
    # Not SOAP, no certificate, another method.
    assert call(b"{}").status == 400
    anonymous = call(_soap("getVersion"), cert=None)
    assert anonymous.status == 403 and b"needs a client certificate" in anonymous.body
    assert request(site, "GET", path, cert=proxy).status == 405
    # A gridsite COPY without a certificate cannot be delegated for.
    copy = request(
        site,
        "COPY",
        "/dteam/in/x.bin",
        headers={"Source": "https://localhost:9/x", "Credential": "gridsite"},
        token=None,
    )
    assert copy.status in (401, 403), copy.body
    bogus = request(
        site,
        "COPY",
        "/dteam/d.txt",
        cert=proxy,
        headers={"Destination": "https://localhost:9/x", "Credential": "x509"},
    )
    assert bogus.status == 400 and b"unsupported Credential 'x509'" in bogus.body


def test_macaroon_issued_to_a_proxy_is_no_wider_than_its_rules(site: Site) -> None:
    (site.se.root / "dteam" / "sub").mkdir(exist_ok=True)
    proxy = site.pki.proxy(site.bob, fqans=("/dteam/Role=production",))
    body = json.dumps({"caveats": ["activity:UPLOAD,DOWNLOAD"], "validity": "PT1H"}).encode()
    ctx = ssl.create_default_context(cafile=str(site.pki.ca_cert))
    ctx.load_cert_chain(str(proxy))
    # Activities the proxy does not hold on the whole subtree are dropped: /dteam/ itself
    # gets downloads only, since a deny for writes lies below it.
    expected = {
        "/dteam/sub/": {"UPLOAD", "DOWNLOAD"},
        "/dteam/": {"DOWNLOAD"},
        "/dteam/protected/": {"DOWNLOAD"},
        "/": None,
    }
    tokens: dict[str, str] = {}
    for path, activities in expected.items():
        conn = http.client.HTTPSConnection("localhost", site.se.port, context=ctx, timeout=30)
        conn.request(
            "POST", path, body=body, headers={"Content-Type": "application/macaroon-request"}
        )
        resp = conn.getresponse()
        answer = resp.read()
        conn.close()
        if activities is None:
            assert resp.status == 403, (path, resp.status, answer)
            continue
        assert resp.status == 200, (path, resp.status, answer)
        token = tokens[path] = json.loads(answer)["macaroon"]
        claims = jwt.decode(token, options={"verify_signature": False})
        assert set(claims["activities"].split(",")) == activities
        assert claims["sub"] == site.bob.dn
    # The macaroon alone (no certificate) writes where it was issued, and nowhere else.
    writer = tokens["/dteam/sub/"]
    assert request(site, "PUT", "/dteam/sub/mac.txt", token=writer, body=b"m").status == 201
    assert request(site, "PUT", "/dteam/mac.txt", token=writer, body=b"m").status == 403
    reader = tokens["/dteam/protected/"]
    assert request(site, "GET", "/dteam/protected/keep.txt", token=reader).status == 200
    assert request(site, "PUT", "/dteam/protected/m.txt", token=reader, body=b"m").status == 403


def test_tape_stage_requests_belong_to_the_dn(site: Site) -> None:
    production = site.pki.proxy(site.bob, fqans=("/dteam/Role=production",))
    body = json.dumps({"files": [{"path": "/tape/t.bin"}]}).encode()
    answer = request(site, "POST", "/api/v1/stage", cert=production, body=body)
    assert answer.status == 201, answer.body
    rid = json.loads(answer.body)["requestId"]
    polled = request(site, "GET", f"/api/v1/stage/{rid}", cert=production)
    assert polled.status == 200
    # A proxy whose rules do not cover /tape can neither stage nor poll there.
    member = site.pki.proxy(site.bob, fqans=("/dteam",))
    assert request(site, "POST", "/api/v1/stage", cert=member, body=body).status == 403
    assert request(site, "GET", f"/api/v1/stage/{rid}", cert=member).status in (403, 404)
    config = site.se.config
    assert config is not None
    listing = run_ok([sys.executable, "-m", "se", "tape", "ls", "--config", config])
    line = next(row for row in listing.stdout.splitlines() if rid in row)
    assert site.bob.dn in line


def _put_over(sock: ssl.SSLSocket, path: str) -> bytes:
    """One PUT on a TLS socket with Connection: close; the whole answer."""
    sock.sendall(
        f"PUT {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n"
        "Connection: close\r\n\r\nr".encode()
    )
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_a_resumed_session_keeps_its_identity(site: Site, version: str) -> None:
    """Clients such as davix resume TLS sessions.  A listener that asks for client
    certificates resumes only from OpenSSL's session cache (TLS 1.2 session IDs, TLS 1.3
    stateful tickets), whose session keeps the chain the client sent, judged again: the
    resumed connection is the same proxy."""
    proxy = site.pki.proxy(site.bob, fqans=("/dteam/Role=production",))
    ctx = ssl.create_default_context(cafile=str(site.pki.ca_cert))
    ctx.load_cert_chain(str(proxy))
    ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)
    session = None
    reused = []
    for attempt in range(3):
        raw = socket.create_connection(("localhost", site.se.port), timeout=30)
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as sock:
            answer = _put_over(sock, f"/dteam/resumed-{version}-{attempt}.txt")
            assert answer.startswith(b"HTTP/1.1 201"), (attempt, answer[:300])
            reused.append(sock.session_reused)
            session = sock.session
    assert reused == [False, True, True]
