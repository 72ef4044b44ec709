"""Store benchmarks: the cost of one write, and scrape time as dead workers pile up, ours vs prometheus_client.

Dead workers are simulated by copying one real worker's files N times under new names (new pids
for prometheus_client, new incarnation ids for ours): both scrapes then do exactly the work they
would after N worker restarts.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from softfactory_obs.metrics.exposition import MetricsApp
from softfactory_obs.store.directory import StoreDirectory
from softfactory_obs.store.metrics import Registry

ROUTES = 50


def per_call_ns(fn: Callable[[], None], n: int = 200_000, repeats: int = 5) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter_ns() - start) / n)
    return statistics.median(samples)


def write_costs() -> list[tuple[str, float]]:
    """Median ns per call (7 x 200k), each variant in a fresh interpreter so the two libraries do not meet."""
    script = textwrap.dedent("""
        import os, sys, tempfile, time, statistics
        mode = sys.argv[1]
        if mode == "prom-multiprocess":
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
        if mode.startswith("prom"):
            from prometheus_client import Counter, Histogram
            c = Counter("x_total", "x", ["a"]).labels("b")
            h = Histogram("y_seconds", "y", ["a"]).labels("b")
        else:
            from softfactory_obs.store.metrics import Counter, Histogram, Registry
            r = Registry(tempfile.mkdtemp() if mode == "ours-directory" else None)
            c = Counter("x_total", "x", ["a"], registry=r).labels("b")
            h = Histogram("y_seconds", "y", ["a"], registry=r).labels("b")
        import timeit
        def run(stmt, n=200000):  # a statement, not a callable: no wrapper call inside the loop
            return statistics.median(t / n * 1e9 for t in timeit.repeat(stmt, globals=globals(), number=n, repeat=7))
        print(run("c.inc()"), run("h.observe(0.12)"))
    """)
    rows = []
    for mode in ("prom-single", "prom-multiprocess", "ours-memory", "ours-directory"):
        out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
        inc, observe = map(float, out.stdout.split())
        rows.append((f"{mode} counter inc", inc))
        rows.append((f"{mode} histogram observe", observe))
    return rows


WORKER = textwrap.dedent("""
    import os, sys
    kind, path = sys.argv[1], sys.argv[2]
    if kind == "prom":
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        from prometheus_client import Counter, Histogram
        c = Counter("http_requests_total", "x", ["endpoint", "status"])
        h = Histogram("http_request_duration_seconds", "x", ["endpoint"])
    else:
        from softfactory_obs.store.metrics import Counter, Histogram, Registry
        r = Registry(path)
        c = Counter("http_requests_total", "x", ["endpoint", "status"], registry=r)
        h = Histogram("http_request_duration_seconds", "x", ["endpoint"], registry=r)
    for i in range(ROUTES):
        c.labels(f"/route/{i}", "200").inc()
        h.labels(f"/route/{i}").observe(0.05)
""").replace("ROUTES", str(ROUTES))


def _one_worker(kind: str, path: Path) -> None:
    subprocess.run([sys.executable, "-c", WORKER, kind, str(path)], check=True)


def _clone(kind: str, template: Path, target: Path, n: int) -> None:
    files = sorted(p for p in template.iterdir() if p.suffix in (".db", ".shard"))
    for i in range(n):
        for f in files:
            if kind == "prom":  # counter_<pid>.db
                name = f"{f.name.split('_')[0]}_{100000 + i}.db"
            else:  # w-<pid>-<ns>-<rand>.shard
                name = f"w-{100000 + i}-{i}-{os.urandom(8).hex()}.shard"
            shutil.copyfile(f, target / name)


def _scrape_prom(path: Path) -> float:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    start = time.perf_counter()
    generate_latest(registry)
    return time.perf_counter() - start


def _scrape_ours(path: Path) -> float:
    app = MetricsApp(Registry(str(path)))
    start = time.perf_counter()
    app.render()
    return time.perf_counter() - start


def scrape_vs_dead(counts: tuple[int, ...] = (100, 1000, 8000)) -> list[tuple[str, int, float]]:
    rows: list[tuple[str, int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("prom", "ours"):
            template = Path(tmp) / f"{kind}-template"
            template.mkdir()
            _one_worker(kind, template)
            for n in counts:
                target = Path(tmp) / f"{kind}-{n}"
                target.mkdir()
                _clone(kind, template, target, n)
                if kind == "prom":
                    rows.append(
                        ("prometheus_client multiprocess", n, statistics.median(_scrape_prom(target) for _ in range(3)))
                    )
                else:
                    first = _scrape_ours(target)  # reads all N dead shards once...
                    start = time.perf_counter()
                    while StoreDirectory(str(target)).compact(max_shards=1024):
                        pass  # ...the maintenance thread absorbs them...
                    compact = time.perf_counter() - start
                    steady = statistics.median(_scrape_ours(target) for _ in range(5))  # ...then scrapes are flat
                    rows.append(("ours, first scrape before compaction", n, first))
                    rows.append(("ours, compaction (off the request path)", n, compact))
                    rows.append(("ours, every later scrape", n, steady))
                shutil.rmtree(target)
    return rows
