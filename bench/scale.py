"""Scrape at scale: N live workers x E endpoints, ours next to prometheus_client's multiprocess mode.

The shape of a large gunicorn deployment: N live worker processes (forked from a parent that
imported the library, as a ``--preload`` master does), each holding, for E endpoints, one counter
series and one histogram with the default 15 buckets, each written one to three times. The workers
stay alive, holding their files (and our shards' lifetime locks), while a separate, long-lived
scraper process answers the scrapes, as the worker that answers ``/metrics`` would.

Per cell and store: the first scrape of a fresh scraper (ours parses the shards' key tables then;
a fresh scraper per round), the steady scrape in the text format and in OpenMetrics (median of interleaved rounds,
ours then theirs), the exposition floor (ours: the same merged series in one in-memory registry,
scraped; theirs: the merged families encoded again), its resident memory before any scrape, at
its peak and after the scrapes, and the store's size on disk. Every scrape's totals are checked against what the workers
wrote, so a fast wrong answer cannot win.

Run alone: ``python -m bench.scale [--cells 4x100,16x1000,64x1000]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

STORES = ("ours", "prom")
FORMATS = ("text", "openmetrics")
LARGEST = (64, 1000)  # the cell the targets speak of
LABEL = {"ours": "ours", "prom": "prometheus_client multiprocess"}
OBSERVED = (0.003, 0.02, 0.07, 0.3, 1.2, 12.0)  # spread over the default buckets, +Inf included
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STARTING_AT_ONCE = 2  # workers writing their series at the same time (2 cores)
TOTAL = re.compile(rb"^http_requests_total\{[^}]*\} (\S+)$", re.M)
COUNT = re.compile(rb"^http_request_duration_seconds_count\{[^}]*\} (\S+)$", re.M)


def writes(worker: int, endpoint: int) -> int:
    """How many requests worker ``worker`` counts for endpoint ``endpoint``: 1 to 3."""
    return 1 + (worker + endpoint) % 3


def expected_total(n: int, e: int) -> int:
    return sum(writes(w, i) for w in range(n) for i in range(e))


def _rss_kb() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out


# -- the processes ------------------------------------------------------------------------------


def _write_series(store: str, path: str, worker: int, e: int) -> None:
    if store == "prom":
        from prometheus_client import Counter, Histogram

        counter = Counter("http_requests_total", "Requests", ["method", "endpoint", "status"])
        histogram = Histogram("http_request_duration_seconds", "Latency", ["method", "endpoint"])
        _serve(counter, histogram, [worker], e)
    else:
        from softfactory_obs.store.metrics import Registry

        _serve(*_our_families(Registry(path)), [worker], e)


def _our_families(registry: Any) -> tuple[Any, Any]:
    from softfactory_obs.store.metrics import Counter, Histogram

    return (
        Counter("http_requests_total", "Requests", ["method", "endpoint", "status"], registry=registry),
        Histogram("http_request_duration_seconds", "Latency", ["method", "endpoint"], registry=registry),
    )


def _serve(counter: Any, histogram: Any, workers: Iterable[int], e: int) -> None:
    """What ``workers`` counted, written into ``counter`` and ``histogram``. With
    SCALE_SHUFFLED=1 each worker meets its endpoints in an order of its own (no two shards alike)."""
    for worker in workers:
        order = list(range(e))
        if os.environ.get("SCALE_SHUFFLED") == "1":
            random.Random(worker).shuffle(order)
        for i in order:
            c, h = counter.labels("GET", f"/e{i}", "200"), histogram.labels("GET", f"/e{i}")
            for j in range(writes(worker, i)):
                c.inc()
                h.observe(OBSERVED[(7 * worker + i + j) % len(OBSERVED)])


def fleet(store: str, path: str, n: int, e: int) -> None:
    """Fork ``n`` workers that write their series, say so on stdout, and live until stdin closes."""
    if store == "prom":
        import prometheus_client  # noqa: F401 - imported before the fork, as a preloading master does
    else:
        import softfactory_obs.store  # noqa: F401
    ready_r, ready_w = os.pipe()
    pids: list[int] = []
    starting = 0
    try:
        for w in range(n):
            if starting >= STARTING_AT_ONCE:
                if os.read(ready_r, 1) != b"1":
                    raise SystemExit("a worker failed to write its series")
                starting -= 1
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    _write_series(store, path, w, e)
                    os.write(ready_w, b"1")
                    while os.read(0, 65536):  # hold the files (and locks) until stdin closes
                        pass
                    code = 0
                finally:
                    if code:
                        os.write(ready_w, b"0")  # the parent is waiting for a byte
                    os._exit(code)
            pids.append(pid)
            starting += 1
        for _ in range(starting):
            if os.read(ready_r, 1) != b"1":
                raise SystemExit("a worker failed to write its series")
        print(json.dumps({"pids": pids}), flush=True)
        while os.read(0, 65536):
            pass
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _scrapers(store: str, path: str) -> tuple[Callable[[str], bytes], Callable[[int, int], Callable[[str], bytes]]]:
    """(scrape in a format, a function of (N, E) that returns the exposition floor in a format)."""
    if store == "prom":
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector
        from prometheus_client.openmetrics import exposition as openmetrics

        encoders = {"text": generate_latest, "openmetrics": openmetrics.generate_latest}

        def scrape(fmt: str) -> bytes:  # its documented /metrics handler
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return encoders[fmt](registry)

        def floor(n: int, e: int) -> Callable[[str], bytes]:  # their merged collection, encoded again
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            merged = list(registry.collect())

            class Merged:
                def collect(self) -> list[Any]:
                    return merged

            fixed = CollectorRegistry(auto_describe=False)
            fixed.register(Merged())  # type: ignore[arg-type]
            return lambda fmt: encoders[fmt](fixed)

        return scrape, floor
    from softfactory_obs.metrics.exposition import MetricsApp
    from softfactory_obs.metrics.formats import OPENMETRICS
    from softfactory_obs.store.metrics import Registry

    app = MetricsApp(Registry(path))  # what the middleware mounts at /metrics
    accept = {"text": "text/plain", "openmetrics": OPENMETRICS}

    def scrape_ours(fmt: str) -> bytes:
        return app.render(accept[fmt])[0]

    def floor_ours(n: int, e: int) -> Callable[[str], bytes]:
        # The same merged series in one in-memory registry: a scrape with nothing to merge.
        memory = Registry(None)
        _serve(*_our_families(memory), range(n), e)
        alone = MetricsApp(memory)
        return lambda fmt: alone.render(accept[fmt])[0]

    return scrape_ours, floor_ours


def scraper(store: str, path: str, floor_of: tuple[int, int] | None = None) -> None:
    """Answer scrape commands on stdin (``{"format": ...}``) with the time taken: a scraper of the
    store at ``path``, or with ``floor_of=(N, E)`` the exposition floor of that cell."""
    scrape, floor = _scrapers(store, path)
    run = scrape if floor_of is None else floor(*floor_of)

    def reply(obj: dict[str, Any]) -> None:
        obj.update(_rss_kb())
        print(json.dumps(obj), flush=True)

    reply({"ready": True})
    for line in sys.stdin:
        command = json.loads(line)
        started, cpu = time.perf_counter(), time.process_time()
        body = run(command["format"])
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        totals = [sum(float(v) for v in pattern.findall(body)) for pattern in (TOTAL, COUNT)]
        del body
        gc.collect()
        reply({"s": seconds, "cpu_s": cpu, "totals": totals})


class Child:
    """A subprocess spoken to in JSON lines."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-m", "bench.scale", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )

    def ask(self, command: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.p.stdin is not None and self.p.stdout is not None
        if command is not None:
            self.p.stdin.write((json.dumps(command) + "\n").encode())
            self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.p.args} exited with {self.p.wait()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def stop(self) -> None:
        assert self.p.stdin is not None
        with contextlib.suppress(OSError):
            self.p.stdin.close()
        try:
            self.p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        if self.p.stdout is not None:
            self.p.stdout.close()


def _env(store: str, path: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "SOFTFACTORY_OBS_METRICS_DIR")}
    if store == "prom":
        env["PROMETHEUS_MULTIPROC_DIR"] = path
    return env


@contextlib.contextmanager
def _fleets(base: str, n: int, e: int) -> Iterator[dict[str, str]]:
    paths, fleets = {}, []
    try:
        for store in STORES:
            paths[store] = os.path.join(base, store)
            os.makedirs(paths[store])
            fleets.append(Child(["fleet", store, paths[store], str(n), str(e)], _env(store, paths[store])))
            fleets[-1].ask()  # every worker has written its series
        yield paths
    finally:
        for child in fleets:
            child.stop()


def _disk_bytes(path: str) -> int:
    return sum(os.stat(os.path.join(path, f)).st_blocks * 512 for f in os.listdir(path))


def cell(n: int, e: int, rounds: int) -> dict[str, Any]:
    """Everything measured for one (N, E), both stores."""
    expected = float(expected_total(n, e))
    out: dict[str, Any] = {"n": n, "e": e}
    base = tempfile.mkdtemp(prefix="scale-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        with _fleets(base, n, e) as paths:
            for store in STORES:
                out[store] = {"disk_bytes": _disk_bytes(paths[store])}
            floors = {s: Child(["floor", s, paths[s], str(n), str(e)], _env(s, paths[s])) for s in STORES}
            try:
                for child in floors.values():
                    child.ask()
                for _ in range(rounds):  # everything once per round, ours then theirs: a slow spell hits both
                    for store in STORES:
                        _round(out[store], Child(["scraper", store, paths[store]], _env(store, paths[store])), expected)
                        for fmt in FORMATS:
                            answer = _checked(floors[store].ask({"format": fmt}), expected, store)
                            _note(out[store], f"floor_{fmt}", answer)
            finally:
                for child in floors.values():
                    child.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return out


def _round(out: dict[str, Any], scraper: Child, expected: float) -> None:
    """A fresh scraper: its first scrape, then a steady one in each format, and its memory."""
    try:
        _note(out, "idle_rss_kb", scraper.ask()["VmRSS"])
        _note(out, "first", _checked(scraper.ask({"format": "text"}), expected, "first"))
        for fmt in FORMATS:
            answer = _checked(scraper.ask({"format": fmt}), expected, fmt)
            _note(out, f"scrape_{fmt}", answer)
        _note(out, "kept_rss_kb", answer["VmRSS"])
        _note(out, "peak_rss_kb", answer["VmHWM"])
    finally:
        scraper.stop()


def _note(out: dict[str, Any], what: str, answer: dict[str, Any] | int) -> None:
    if isinstance(answer, int):
        out.setdefault(what, []).append(answer)
    else:
        out.setdefault(f"{what}_s", []).append(answer["s"])
        out.setdefault(f"{what}_cpu_s", []).append(answer["cpu_s"])


def _checked(answer: dict[str, Any], expected: float, store: str) -> dict[str, Any]:
    if answer["totals"] != [expected, expected]:
        raise AssertionError(f"{store}: the scrape summed to {answer['totals']}, the workers wrote {expected:g}")
    return answer


def per_series_bytes() -> dict[str, int]:
    """Bytes one worker's shard takes per counter series and per default-bucket histogram series
    (one endpoint's labels, as the HTTP metrics write them)."""
    from softfactory_obs.store.metrics import Counter, Histogram, Registry
    from softfactory_obs.store.shard import record_size

    registry = Registry(None)
    counter = Counter("http_requests_total", "x", ["method", "endpoint", "status"], registry=registry)
    histogram = Histogram("http_request_duration_seconds", "x", ["method", "endpoint"], registry=registry)
    children = {
        "counter": counter.labels("GET", "/api/v1/items/{item_id}", "200"),
        "histogram": histogram.labels("GET", "/api/v1/items/{item_id}"),
    }
    return {kind: sum(record_size(raw, k) for raw, k in child.keys) for kind, child in children.items()}


def run(cells: list[tuple[int, int]], rounds: int = 3) -> list[dict[str, Any]]:
    return [cell(n, e, rounds) for n, e in cells]


def _mb(kb: list[int]) -> str:
    return f"{statistics.median(kb) / 1024:.0f}"


def _ms(values: Any) -> str:
    value = statistics.median(values) if isinstance(values, list) else values
    return f"{value * 1000:,.0f}" if value >= 0.1 else f"{value * 1000:,.1f}"


def _paired(top: list[float], bottom: list[float]) -> float:
    """The median of each round's ratio: both ran within a second of each other."""
    return statistics.median(a / b for a, b in zip(top, bottom, strict=True))


def figures(cell: dict[str, Any]) -> dict[str, float]:
    """Our figures of one cell that the targets judge."""
    ours = cell["ours"]
    kept = [k - i for k, i in zip(ours["kept_rss_kb"], ours["idle_rss_kb"], strict=True)]
    return {
        "steady_ms": statistics.median(ours["scrape_text_s"]) * 1000,
        "of_floor": _paired(ours["scrape_text_s"], ours["floor_text_s"]),
        "first_of_steady": _paired(ours["first_s"], ours["scrape_text_s"]),
        "kept_mb": statistics.median(kept) / 1024,
    }


def table(results: list[dict[str, Any]]) -> list[str]:
    """One row per cell and store, then ours against theirs. Ratios are medians of each round's."""
    lines = [
        "| (N, E) | store | first scrape ms | steady ms | steady OpenMetrics ms | exposition floor ms | "
        "steady / floor | first / steady | RSS MB: idle / peak / kept | store on disk MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for store in STORES:
            s = r[store]
            of_floor, first = _paired(s["scrape_text_s"], s["floor_text_s"]), _paired(s["first_s"], s["scrape_text_s"])
            lines.append(
                f"| ({r['n']}, {r['e']:,}) | {LABEL[store]} | {_ms(s['first_s'])} | {_ms(s['scrape_text_s'])} | "
                f"{_ms(s['scrape_openmetrics_s'])} | {_ms(s['floor_text_s'])} | {of_floor:.2f} | {first:.2f} | "
                f"{_mb(s['idle_rss_kb'])} / {_mb(s['peak_rss_kb'])} / {_mb(s['kept_rss_kb'])} | "
                f"{s['disk_bytes'] / 1e6:.1f} |"
            )
        ratio = _paired(r["ours"]["scrape_text_s"], r["prom"]["scrape_text_s"])
        lines.append(f"| ({r['n']}, {r['e']:,}) | *ours / theirs, steady* | | {ratio:.3f} | | | | | | |")
    return lines


def parse_cells(text: str) -> list[tuple[int, int]]:
    """``"4x100,64x1000"`` -> [(4, 100), (64, 1000)]."""
    out = []
    for item in text.split(","):
        n, e = item.lower().split("x")
        out.append((int(n), int(e)))
    return out


def main(argv: list[str]) -> int:
    if argv and argv[0] == "fleet":
        fleet(argv[1], argv[2], int(argv[3]), int(argv[4]))
        return 0
    if argv and argv[0] == "scraper":
        scraper(argv[1], argv[2])
        return 0
    if argv and argv[0] == "floor":
        scraper(argv[1], argv[2], (int(argv[3]), int(argv[4])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default="4x100,16x1000,64x1000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shuffled", action="store_true", help="every worker creates its series in its own order")
    args = parser.parse_args(argv)
    if args.shuffled:
        os.environ["SCALE_SHUFFLED"] = "1"  # inherited by the fleets
    results = run(parse_cells(args.cells), args.rounds)
    print("\n".join(table(results)))
    print(json.dumps(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
