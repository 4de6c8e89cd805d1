"""Helpers shared by the end-to-end tests that drive real grid clients (gfal2, davix, rclone, curl).

Every external command runs through :func:`run` / :func:`run_bytes` (bounded by a timeout,
output captured); :func:`parse_byteranges` parses a ``multipart/byteranges`` body strictly,
the way davix maps each part's ``Content-Range`` back onto the requested chunks; and
:func:`make_tls` builds a throwaway CA plus a server certificate for 127.0.0.1 with
``trustme``, laid out for curl (``--cacert``) and for gfal2/davix (a hashed CA directory).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import crc32c
import pytest

from tests.conftest import BASE_CONFIG

__all__ = [
    "GFAL_PYTHON",
    "Part",
    "TLSFiles",
    "adler32_hex",
    "b64",
    "check_vector_read",
    "client_env",
    "crc32c_hex",
    "davs_url",
    "make_tls",
    "need_gfal",
    "parse_byteranges",
    "random_bytes",
    "run",
    "run_bytes",
    "run_ok",
    "tls_config",
    "tree_bytes",
    "trust_env",
]

# gfal-* are /bin/sh wrappers that pick the first python able to import gfal2; a virtualenv
# python earlier on PATH cannot, so point them at the Debian interpreter explicitly.
GFAL_PYTHON = "/usr/bin/python3"
TIMEOUT = 120.0


def client_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["GFAL_PYTHONBIN"] = GFAL_PYTHON
    # Never pick up a proxy or the user's grid credentials (an X.509 proxy, a WLCG token).
    for name in (
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "X509_USER_PROXY",
        "BEARER_TOKEN",
    ):
        env.pop(name, None)
    env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost,::1"
    env.update(extra or {})
    return env


def run(
    args: Sequence[str | Path],
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        env=client_env(env),
        stdin=subprocess.DEVNULL,
        check=False,
    )


def run_bytes(
    args: Sequence[str | Path],
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        timeout=timeout,
        env=client_env(env),
        stdin=subprocess.DEVNULL,
        check=False,
    )


def run_ok(
    args: Sequence[str | Path],
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run and assert exit code 0, showing the command's output when it is not."""
    res = run(args, env, timeout)
    assert res.returncode == 0, (
        f"{' '.join(str(a) for a in args)} -> {res.returncode}\n"
        f"stdout: {res.stdout[-3000:]}\nstderr: {res.stderr[-3000:]}"
    )
    return res


def need_gfal(*tools: str) -> None:
    """Skip unless the gfal-* scripts are installed and the Debian python can import gfal2."""
    missing = [t for t in ("gfal-copy", *tools) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    probe = subprocess.run(
        [GFAL_PYTHON, "-c", "import gfal2, gfal2_util"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"{GFAL_PYTHON} cannot import gfal2")


# --------------------------------------------------------------------------- data


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def adler32_hex(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def crc32c_hex(data: bytes) -> str:
    return f"{crc32c.crc32c(data) & 0xFFFFFFFF:08x}"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def md5_b64(data: bytes) -> str:
    return b64(hashlib.md5(data).digest())


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Relative path -> content of every regular file below ``root`` (the server's state,
    ``.se-state``, left out)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".se-state" not in p.relative_to(root).parts
    }


# --------------------------------------------------------------------------- multipart


@dataclass(frozen=True)
class Part:
    start: int
    end: int  # inclusive, as in Content-Range
    total: int
    data: bytes


_BOUNDARY = re.compile(r';\s*boundary=(?:"([^"]{1,70})"|([^;\s"]{1,70}))', re.IGNORECASE)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


def parse_byteranges(body: bytes, content_type: str) -> list[Part]:
    """Parse a multipart/byteranges body (RFC 9110 §14.6, RFC 2046 §5.1.1), strictly.

    Each part must carry ``Content-Range: bytes a-b/size`` and exactly ``b - a + 1`` bytes;
    the body must end with the closing delimiter.
    """
    assert content_type.lower().startswith("multipart/byteranges"), content_type
    m = _BOUNDARY.search(content_type)
    assert m is not None, f"no boundary in {content_type!r}"
    delim = b"--" + (m.group(1) or m.group(2)).encode("ascii")
    if body.startswith(delim):
        body = b"\r\n" + body  # the first delimiter needs no CRLF before it
    segments = body.split(b"\r\n" + delim)
    assert len(segments) >= 3, f"no parts in multipart body: {body[:200]!r}"
    parts: list[Part] = []
    for seg in segments[1:-1]:
        assert seg.startswith(b"\r\n"), f"bad part start: {seg[:80]!r}"
        head, sep, data = seg[2:].partition(b"\r\n\r\n")
        assert sep, f"part without header end: {seg[:200]!r}"
        fields: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, colon, value = line.partition(":")
            assert colon, f"bad part header line {line!r}"
            fields[name.strip().lower()] = value.strip()
        cr = _CONTENT_RANGE.fullmatch(fields.get("content-range", ""))
        assert cr is not None, f"part without a valid Content-Range: {fields}"
        start, end, total = (int(g) for g in cr.groups())
        assert len(data) == end - start + 1, f"part {start}-{end} carries {len(data)} bytes"
        parts.append(Part(start, end, total, data))
    last = segments[-1]
    assert last.startswith(b"--"), f"missing closing delimiter: {last[:80]!r}"
    assert last[2:].strip(b"\r\n\t ") == b"", f"junk after closing delimiter: {last[:80]!r}"
    return parts


def check_vector_read(parts: list[Part], ranges: list[tuple[int, int]], data: bytes) -> None:
    """What davix's vector read needs: every part is real file data inside a requested
    range (parts may be coalesced), and together the parts cover every requested byte."""
    covered: set[int] = set()
    for p in parts:
        assert p.total == len(data)
        assert p.data == data[p.start : p.end + 1], f"wrong bytes in part {p.start}-{p.end}"
        # A coalesced part may span the gap between two requested ranges, but it must
        # begin and end inside requested ranges.
        starts_inside = any(a <= p.start <= b for a, b in ranges)
        ends_inside = any(a <= p.end <= b for a, b in ranges)
        assert starts_inside and ends_inside, f"part {p.start}-{p.end} outside the ranges"
        covered.update(range(p.start, p.end + 1))
    for a, b in ranges:
        missing = [i for i in range(a, b + 1) if i not in covered]
        assert not missing, f"range {a}-{b}: {len(missing)} bytes not returned"


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TLSFiles:
    ca_pem: Path
    cert_pem: Path
    key_pem: Path
    ca_dir: Path  # holds the CA as <subject hash>.0, like /etc/grid-security/certificates


def make_tls(workdir: Path) -> TLSFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost."""
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    tls_dir = workdir / "tls"
    tls_dir.mkdir()
    ca_pem = tls_dir / "ca.pem"
    cert_pem = tls_dir / "cert.pem"
    key_pem = tls_dir / "key.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    leaf.private_key_pem.write_to_path(str(key_pem))
    cert_pem.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    res = run_ok(["openssl", "x509", "-hash", "-noout", "-in", ca_pem], timeout=30)
    subject_hash = res.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{8}", subject_hash), subject_hash
    ca_dir = tls_dir / "certificates"
    ca_dir.mkdir()
    shutil.copyfile(ca_pem, ca_dir / f"{subject_hash}.0")
    return TLSFiles(ca_pem, cert_pem, key_pem, ca_dir)


def trust_env(files: TLSFiles) -> dict[str, str]:
    """The environment in which gfal2 and davix trust the throwaway CA (and only it)."""
    return {"X509_CERT_DIR": str(files.ca_dir)}


def davs_url(https_url: str) -> str:
    """The ``davs://`` URL gfal2 is given for a server's ``https://`` URL."""
    assert https_url.startswith("https://"), https_url
    return "davs://" + https_url.removeprefix("https://")


def tls_config(files: TLSFiles) -> str:
    return (
        BASE_CONFIG
        + "\n[tls]\n"
        + f"cert = {json.dumps(str(files.cert_pem))}\n"
        + f"key = {json.dumps(str(files.key_pem))}\n"
    )
