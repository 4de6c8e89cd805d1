"""bench/compare.py's table arithmetic: medians, per-round ratios, targets and ``fail``."""

from __future__ import annotations

from bench.compare import Line, Samples, line_ratio, status_lua, tables, target_cells

GET = Line("get", "GET", "se", ("xrootd", "nginx"), (("xrootd", 1.0),))
WALL = Line("wall", "wall", "se", ("xrootd",), (("xrootd", 1.0),), lower_better=True, digits=2)
FAILS = Line("fails", "failures", "se", ("xrootd",), absolute=("==", 0))


def samples(**rows: dict[str, list[float | None]]) -> Samples:
    s = Samples()
    for key, servers in rows.items():
        for server, values in servers.items():
            for v in values:
                s.add(key, server, v)
    return s


def test_ratio_of_medians_with_the_range_of_per_round_ratios() -> None:
    s = samples(get={"se": [100, 300, 200], "xrootd": [100, 200, 400], "nginx": [50, 50, 50]})
    assert line_ratio(s, GET, "xrootd") == (1.0, 0.5, 1.5)
    main, own = tables(s, [GET])
    assert own == []
    assert main == [
        [
            "GET",
            "200 (100-300)",
            "200 (100-400)",
            "50 (50-50)",
            "1.00x (0.50-1.50)",
            "4.00x (2.00-6.00)",
            ">= 1.0x XRootD",
            "yes",
        ]
    ]


def test_a_failed_round_makes_the_cell_fail_and_the_target_unknown() -> None:
    s = samples(get={"se": [100, None, 200], "xrootd": [100, 100, 100], "nginx": [1, 1, 1]})
    assert line_ratio(s, GET, "xrootd") is None
    row = tables(s, [GET])[0][0]
    assert row[1] == "fail" and row[4] == "-" and row[-1] == "n/a"


def test_lower_is_better_and_absolute_targets() -> None:
    s = samples(wall={"se": [2.0], "xrootd": [1.0]}, fails={"se": [0], "xrootd": [3]})
    assert target_cells(s, WALL) == ("<= 1.0x XRootD", "NO")
    assert target_cells(s, FAILS) == ("== 0", "yes")
    main, _ = tables(s, [WALL, FAILS])
    assert main[0][4] == "2.00x" and main[1][4] == ""  # no ratio for an absolute line


def test_status_lua_counts_unwanted_statuses() -> None:
    text = status_lua("PUT", [200, 201, 204])
    assert 'wrk.method = "PUT"' in text
    assert "if status ~= 200 and status ~= 201 and status ~= 204 then" in text
    assert "BENCH {" in text
