"""An app's own prometheus_client metrics (default registry, no PROMETHEUS_MULTIPROC_DIR) on our
/metrics, added up over every worker, living and recycled, under real gunicorn."""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import prometheus_client
import psutil
import pytest
from helpers import LogCapture, require_binary, samples
from servers import ROOT, Gunicorn, get, scrape

from softfactory_obs.metrics.prometheus_bridge import PrometheusClientBridge
from softfactory_obs.store.metrics import Counter, Registry

PATH = f"{ROOT / 'tests'}{os.pathsep}{ROOT}"
N = 150


def _expected() -> dict[str, float]:
    baskets = [n % 150 + 0.5 for n in range(N)]
    return {
        "gift": sum(n % 2 for n in range(N)),
        "plain": sum(1 - n % 2 for n in range(N)),
        "count": N,
        "sum": sum(baskets),
        "le10": sum(b <= 10 for b in baskets),
    }


@pytest.mark.parametrize("preload", [False, True], ids=["import-per-worker", "preload"])
def test_prometheus_client_metrics_add_up_over_recycled_workers(tmp_path: Path, preload: bool) -> None:
    args = "--max-requests 20" + (" --preload" if preload else "")
    with Gunicorn(
        tmp_path,
        "promclient_app:app",
        workers=3,
        PYTHONPATH=PATH,
        GUNICORN_CMD_ARGS=args,
        SOFTFACTORY_OBS_MAINTENANCE_INTERVAL_SECONDS="0.5",
    ) as server:
        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda n: get(server.port, f"/order/{n}")[0], range(N)))
        assert codes == [200] * N
        want = _expected()
        deadline = time.monotonic() + 30
        while True:  # each live worker copies within one maintenance interval
            m = scrape(server.port)
            got = {
                "gift": m.get(("shop_orders_placed_total", (("kind", "gift"),))),
                "plain": m.get(("shop_orders_placed_total", (("kind", "plain"),))),
                "count": m.get(("shop_basket_value_euros_count", ())),
                "sum": m.get(("shop_basket_value_euros_sum", ())),
                "le10": m.get(("shop_basket_value_euros_bucket", (("le", "10.0"),))),
            }
            if got == want or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert got == want  # recycled workers' counts included: 150 requests over 20-request lives
        for _ in range(5):  # and stays exact whichever worker answers
            assert scrape(server.port)[("shop_orders_placed_total", (("kind", "gift"),))] == want["gift"]
        imports = m[("shop_module_imports_total", ())]
        assert server.proc is not None
        master = psutil.Process(server.proc.pid)
        live = {c.pid for c in master.children()}  # scrapes count as requests: workers recycle meanwhile
        m = scrape(server.port)
        live |= {c.pid for c in master.children()}
        workers = {int(pid) for (name, labels), _ in m.items() if name == "shop_worker_alive" for _, pid in labels}
        body = get(server.port, "/metrics")[1]
    # Preloaded: imported once, in the master. Otherwise once per worker incarnation (≥ 150/20).
    assert imports == 1 if preload else imports >= N // 20
    assert workers and workers <= live, (workers, live)  # gauges: one per live worker, never the master's
    assert b"shop_checkout_seconds" not in body and b"shop_build" not in body
    assert b"shop_orders_placed_total" in body  # the control for the two lines above
    warned = server.log_path.read_text()
    assert "'shop_checkout_seconds' is not on /metrics: its type (summary) does not add up" in warned
    assert "'shop_build' is not on /metrics: its type (info) does not add up" in warned
    (tmp_path / "scrape.txt").write_bytes(body)
    promtool = require_binary("promtool")
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_copies_are_increases_and_refusals_are_named(logs: LogCapture) -> None:
    """In one process: counters and histograms copied as their increase (twice copied, once
    counted), gauges by pid; a clash with our names and a 'pid' label refused with the reason."""
    registry = Registry()
    theirs = [
        prometheus_client.Counter("bridge_unit_orders", "orders", ["kind"]),
        prometheus_client.Histogram("bridge_unit_size_bytes", "sizes", buckets=(10, 100)),
        prometheus_client.Gauge("bridge_unit_depth", "queue depth"),
        prometheus_client.Gauge("bridge_unit_bad", "a pid label of its own", ["pid"]),
        prometheus_client.Counter("http_requests", "clashes with ours"),
    ]
    Counter("http_requests_total", "ours", registry=registry)
    try:
        bridge = PrometheusClientBridge(registry)
        theirs[0].labels("a").inc(2)
        theirs[1].observe(5)
        theirs[1].observe(50)
        theirs[2].set(7)
        theirs[3].labels("1").set(1)
        theirs[4].inc()
        bridge.copy()
        bridge.copy()  # nothing new: nothing added
        theirs[0].labels("a").inc()
        theirs[1].observe(500)
        bridge.copy()
        got = samples(registry)
    finally:
        for metric in theirs:
            prometheus_client.REGISTRY.unregister(metric)
    assert got[("bridge_unit_orders_total", (("kind", "a"),))] == 3
    assert got[("bridge_unit_size_bytes_bucket", (("le", "10.0"),))] == 1
    assert got[("bridge_unit_size_bytes_bucket", (("le", "100.0"),))] == 2
    assert got[("bridge_unit_size_bytes_bucket", (("le", "+Inf"),))] == 3
    assert got[("bridge_unit_size_bytes_sum", ())] == 555
    assert got[("bridge_unit_depth", (("pid", str(os.getpid())),))] == 7
    assert got[("http_requests_total", ())] == 0  # ours, untouched by theirs
    warnings = logs.raw()
    assert "'bridge_unit_bad' is not on /metrics: its label 'pid'" in warnings
    assert "'http_requests' is not on /metrics: softfactory_obs exposes a metric of that name" in warnings
    assert not any(name.startswith("bridge_unit_bad") for name, _ in got)
