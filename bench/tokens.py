"""Cost of WLCG token authorization on small GETs: the same 4 KiB file fetched with wrk
anonymously (a public read rule) and with a bearer token, from the same se, same run.

A token is verified once (signature, claims, scopes) and then found in the verified-token
cache; the target is under 10% fewer requests/s than anonymous.  Run on demand:

    python bench/tokens.py [--duration 10] [--repeat 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.run import (  # noqa: E402
    GET_LUA,
    SMALL_NAME,
    SMALL_SIZE,
    format_markdown,
    log,
    run_wrk,
    start_se,
    stop_server,
    tool_version,
)
from se.auth import issuer  # noqa: E402

ISSUER = "https://bench-issuer.example/"
HEADER = ["test", "anonymous", "token", "ratio token/anonymous", "target", "met"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Small GETs with a WLCG token vs anonymous.")
    p.add_argument("--duration", type=int, default=10, help="wrk seconds per run")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="se-bench-tokens-") as tmp:
        base = Path(tmp)
        data = base / "data"
        data.mkdir()
        (data / SMALL_NAME).write_bytes(os.urandom(SMALL_SIZE))
        key, jwks = issuer.keygen(base / "keys")
        config = base / "se.toml"
        config.write_text(
            "[logging]\naccess_log = false\n"
            '[auth]\nanonymous = "none"\n'
            '[[auth.public]]\npath = "/"\nallow = ["read"]\n'
            f'[[auth.issuers]]\nissuer = "{ISSUER}"\njwks_file = "{jwks}"\n'
        )
        token = issuer.issue(
            issuer.load_key(key),
            ISSUER,
            "storage.read:/ storage.create:/upload",
            ["https://wlcg.cern.ch/jwt/v1/any"],
            3600,
            "bench",
        )
        server = start_se(base, data, args.workers, sys.executable, config)
        rates: dict[str, list[float]] = {"anonymous": [], "token": []}
        try:
            for i in range(args.repeat):
                for mode in ("anonymous", "token") if i % 2 == 0 else ("token", "anonymous"):
                    headers = [f"Authorization: Bearer {token}"] if mode == "token" else []
                    r = run_wrk(server, f"/{SMALL_NAME}", GET_LUA, 2, 64, args.duration, headers)
                    if r is None or r.non_2xx or not r.requests:
                        log(f"{mode}: no usable result ({r})")
                        return 1
                    rates[mode].append(r.rps)
                    log(f"run {i + 1} {mode}: {r.rps:,.0f} req/s")
        finally:
            stop_server(server)
    anon = statistics.median(rates["anonymous"])
    tok = statistics.median(rates["token"])
    ratio = tok / anon
    rows = [
        [
            "GET 4 KiB, wrk -t2 -c64 (req/s)",
            f"{anon:,.0f}",
            f"{tok:,.0f}",
            f"{ratio:.2f}x",
            ">= 0.90x",
            "yes" if ratio >= 0.9 else "no",
        ]
    ]
    log(
        f"\nMedian of {args.repeat}, se --workers {args.workers}, {os.cpu_count()} CPUs, "
        f"{tool_version(['wrk', '--version'])}; ES256 token, verified-token cache on.\n"
    )
    log(format_markdown(rows, HEADER))
    return 0


if __name__ == "__main__":
    sys.exit(main())
