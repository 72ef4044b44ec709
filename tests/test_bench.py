"""`make bench`'s arithmetic: what it reports against issue 8's targets must follow from what it measured."""

from __future__ import annotations

import importlib
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository's bench/ folder, not an installed package
bench = importlib.import_module("bench.__main__")


def report(**parts: Any) -> dict[str, Any]:
    return {"meta": {"date": "then"}, **parts}


def row(lines: list[str], starts: str) -> list[str]:
    [found] = [line for line in lines if line.startswith(f"| {starts}")]
    return [cell.strip() for cell in found.strip("|").split("|")]


def test_instructions_are_converted_by_the_naive_middleware_measured_beside_them() -> None:
    counts = {"bare": 5_000.0, "ours": 86_000.0, "ours-metrics": 32_000.0, "naive": 59_000.0}
    lines = bench.instructions_table(counts)
    over, times, at_speed = row(lines, bench.VARIANTS["ours-metrics"])[2:]
    assert (over, times, at_speed) == ("27,000", "0.50", "2.65")  # 27k of naive's 54k, and 5.3 µs x 0.5
    targets = bench.targets_table(report(instructions_per_request=counts))
    full, metrics = [line for line in targets if line.startswith("|   the same by instructions")]
    assert "| <= 10 | 7.95 | yes |" in full  # 81k / 54k x 5.3
    assert "| <= 3 | 2.65 | yes |" in metrics


def test_gunicorn_throughput_is_judged_on_medians_and_on_each_round() -> None:
    gunicorn = {
        "bare": {"rps": [1000.0, 600.0, 1000.0], "rss_mb": [19.0] * 3, "cpu_us": [200.0, 260.0, 210.0]},
        # A host that slowed down in round 2 for both: each round's ratio is 0.92, the medians' 0.92 too.
        "ours": {"rps": [920.0, 552.0, 920.0], "rss_mb": [22.0] * 3, "cpu_us": [250.0, 300.0, 260.0]},
    }
    targets = bench.targets_table(report(gunicorn=gunicorn))
    assert row(targets, "gunicorn full / bare")[2:4] == ["0.92", "yes"]
    assert row(targets, "  the same, median of each round's ratio")[2:4] == ["0.92", "yes"]
    assert row(targets, "  the same by the workers' CPU")[2:4] == ["0.81", "NO"]  # 210 / 260
    assert row(targets, "worker RSS above bare")[2:4] == ["3.00", "yes"]
    # Unpaired medians can flatter or hide: ours slow in the round bare was fast.
    gunicorn["ours"]["rps"] = [800.0, 590.0, 990.0]
    del gunicorn["ours"]["cpu_us"]  # a run saved before the CPU was measured: that row is left out
    targets = bench.targets_table(report(gunicorn=gunicorn))
    assert not [line for line in targets if "CPU" in line]
    assert row(targets, "gunicorn full / bare")[2:4] == ["0.80", "NO"]
    assert row(targets, "  the same, median of each round's ratio")[2:4] == ["0.98", "yes"]


def test_parts_that_did_not_run_are_left_out_and_the_previous_run_is_shown() -> None:
    now = report(import_ms={"softfactory_obs": 160.0})
    before = report(import_ms={"softfactory_obs": 120.0})
    targets = bench.targets_table(now, before)
    assert row(targets, "import softfactory_obs")[2:5] == ["160.00", "NO", "120.00"]
    assert not [line for line in targets if "gunicorn" in line or "instructions" in line]


def test_rounds_alternate_the_order_so_no_variant_always_runs_first() -> None:
    assert list(importlib.import_module("bench").interleaved(["bare", "ours", "naive"], 3)) == [
        "bare",
        "ours",
        "naive",
        "naive",
        "ours",
        "bare",
        "bare",
        "ours",
        "naive",
    ]


def test_the_bench_runs_a_part_end_to_end() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "startup", "--no-save"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    imported = row(out.splitlines(), "softfactory_obs")
    assert 0 < float(imported[1]) < 5000
    assert "| import softfactory_obs, ms | <= 150 |" in out


def test_the_cold_table_compares_overheads_with_the_naive_middleware() -> None:
    lines = bench.cold_table({"bare": [4.0, 5.0, 4.0], "ours": [40.0, 44.0, 39.0], "naive": [24.0, 26.0, 30.0]})
    assert row(lines, bench.VARIANTS["ours"])[1:] == ["40.00", "39.00-44.00", "36.00", "1.64"]  # 36 / 22
    assert row(lines, bench.VARIANTS["bare"])[3:] == ["", ""]


def test_the_asgi_table_judges_our_overhead_against_each_peers() -> None:
    asgi = importlib.import_module("bench.asgi")
    counts = {v: 100.0 for v in asgi.VARIANTS}  # every variant at bare Starlette's, then overheads:
    counts.update({"ours": 190.0, "ours-metrics": 150.0, "exporter": 350.0, "exporter-mp": 400.0})
    counts.update({"stack": 700.0, "otel-sdk": 1000.0, "fastapi": 300.0, "instrumentator": 550.0})
    lines = asgi.table(counts, "instructions/request")
    assert row(lines, asgi.VARIANTS["instrumentator"])[1:] == ["550.0", "250.0", "1.83"]  # against bare FastAPI
    name = f"*{asgi.VARIANTS['ours']} overhead / {asgi.VARIANTS['exporter-mp']} overhead*"
    assert row(lines, name)[1:] == ["<= 0.3", "0.30", "yes"]  # 90 / 300
    name = f"*{asgi.VARIANTS['ours']} overhead / {asgi.VARIANTS['stack']} overhead*"
    assert row(lines, name)[1:] == ["<= 0.15", "0.15", "yes"]  # 90 / 600
    name = f"*{asgi.VARIANTS['ours-metrics']} overhead / {asgi.VARIANTS['exporter']} overhead*"
    assert row(lines, name)[1:] == ["<= 0.2", "0.20", "yes"]  # 50 / 250
    counts["ours"] = 200.0
    name = f"*{asgi.VARIANTS['ours']} overhead / {asgi.VARIANTS['otel-sdk']} overhead*"
    assert row(asgi.table(counts, "µs"), name)[1:] == ["<= 0.1", "0.11", "NO"]  # 100 / 900


def test_a_targets_shares_are_measured_in_one_process_round_by_round() -> None:
    asgi = importlib.import_module("bench.asgi")
    # A real small run: bare Starlette, ours (metrics only) and ours (full) as the peer, in turns.
    found = asgi.target_shares("ours-metrics", "ours", rounds=5, chunk=100)
    # A share per round, but for a round where a stall of the host made bare Starlette the slower.
    assert 3 <= len(found) <= 5, found
    assert all(math.isfinite(value) and abs(value) < 100 for value in found), found
    with pytest.raises(ValueError, match="different apps"):  # FastAPI's overhead is not Starlette's
        asgi.target_shares("ours", "instrumentator", rounds=1, chunk=1)
    shares = {f"{ours}/{peer}": [0.2, 0.1, 0.3] for ours, peer, _ in asgi.TARGETS}
    shares["ours/stack"] = [0.14, 0.16, 0.15, 0.2]  # median 0.155: over 0.15
    lines = asgi.shares_table(shares)
    assert row(lines, f"{asgi.VARIANTS['ours']} / {asgi.VARIANTS['exporter-mp']}")[1:] == [
        "0.3",
        "0.200",
        "0.100",
        "0.300",
        "yes",
    ]
    assert row(lines, f"{asgi.VARIANTS['ours']} / {asgi.VARIANTS['stack']}")[1:] == [
        "0.15",
        "0.155",
        "0.140",
        "0.200",
        "NO",
    ]


def test_the_uvicorn_table_takes_medians_against_bare_starlettes() -> None:
    asgi = importlib.import_module("bench.asgi")
    samples = {v: [100.0, 300.0, 200.0] for v in asgi.SERVED}  # median 200 each, then ours:
    samples["ours"] = [170.0, 100.0, 150.0]
    lines = asgi.throughput_table(samples)
    assert row(lines, asgi.VARIANTS["starlette"])[1:] == ["200", "1.00"]
    assert row(lines, asgi.VARIANTS["ours"])[1:] == ["150", "0.75"]
    assert len(lines) == 2 + len(asgi.SERVED)


def scale_cell(steady: float, floor: float, first: float, idle_kb: int, kept_kb: int) -> dict[str, Any]:
    ours = {
        "first_s": [first, first * 2, first / 2],
        "scrape_text_s": [steady, steady * 2, steady / 2],  # a slow spell in round 2 hits everything
        "floor_text_s": [floor, floor * 2, floor / 2],
        "scrape_openmetrics_s": [steady] * 3,
        "idle_rss_kb": [idle_kb] * 3,
        "peak_rss_kb": [kept_kb + 1024] * 3,
        "kept_rss_kb": [kept_kb, kept_kb + 2048, kept_kb - 1024],
        "disk_bytes": 130_000_000,
    }
    prom = {**ours, "scrape_text_s": [steady * 30, steady * 60, steady * 15], "first_s": [steady * 30] * 3}
    return {"n": 64, "e": 1000, "ours": ours, "prom": prom}


def test_scale_targets_follow_from_the_largest_cell() -> None:
    cell = scale_cell(steady=0.2, floor=0.1, first=0.3, idle_kb=25 * 1024, kept_kb=40 * 1024)
    targets = bench.targets_table(report(scale=[{**cell, "n": 4, "e": 100}, cell]))
    assert row(targets, "scrape at (64, 1,000), steady text, ms")[2:4] == ["200.00", "yes"]  # the median
    assert row(targets, "  steady / exposition floor")[2:4] == ["2.00", "NO"]  # each round's ratio
    assert row(targets, "  first scrape in a fresh worker / steady")[2:4] == ["1.50", "yes"]
    assert row(targets, "  memory kept after scraping")[2:4] == ["15.00", "yes"]  # median of 15, 17, 14
    lines = bench.scale.table([cell])
    assert row(lines, "(64, 1,000) | ours")[2:4] == ["300", "200"]
    assert row(lines, "(64, 1,000) | *ours / theirs")[3] == "0.033"
    # Without the (64, 1,000) cell the targets are left out, not judged on a smaller one.
    assert not [line for line in bench.targets_table(report(scale=[{**cell, "n": 4}])) if "(64, 1,000)" in line]


def test_the_scale_bench_runs_real_workers_and_checks_their_totals() -> None:
    [cell] = bench.scale.run([(3, 40)], rounds=1)
    for store in ("ours", "prom"):
        assert cell[store]["first_s"][0] > 0 and len(cell[store]["scrape_text_s"]) == 1
        assert cell[store]["peak_rss_kb"][0] >= cell[store]["kept_rss_kb"][0] > 0
    figures = bench.scale.figures(cell)
    assert figures["steady_ms"] > 0 and figures["of_floor"] > 0
    sizes = bench.scale.per_series_bytes()
    assert 0 < sizes["counter"] < sizes["histogram"]
    # The harness refuses a scrape whose totals differ from what the workers wrote.
    with pytest.raises(AssertionError, match="summed to"):
        bench.scale._checked({"totals": [1.0, 2.0]}, 2.0, "ours")


def test_the_asgi_parts_run_in_one_process_and_are_tabled_against_bare_starlette() -> None:
    parts = importlib.import_module("bench.asgi_parts")
    # A real small run in its own interpreter (it configures logging); the driver checks every 200.
    command = [sys.executable, "-m", "bench.asgi_parts", "--rounds", "2", "--chunk", "20"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    for name in ["bare", *parts.PARTS]:
        median, over = row(lines, f"{name} |")[1:]
        assert float(median) > 0 and (over == "+0.0") == (name == "bare"), lines
    lines = parts.table({"bare": [10.0, 30.0, 20.0], "ids": [26.0], "full": [45.5]})
    assert row(lines, "bare")[1:] == ["20.0", "+0.0"]
    assert row(lines, "ids")[1:] == ["26.0", "+6.0"]
    assert row(lines, "full")[1:] == ["45.5", "+25.5"]
