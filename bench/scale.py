"""Scrape at scale: N live workers x E endpoints, ours next to prometheus_client's multiprocess mode.

The shape of a large gunicorn deployment: N live worker processes (forked from a parent that
imported the library, as a ``--preload`` master does), each holding, for E endpoints, one counter
series and one histogram with the default 15 buckets, each written one to three times. The workers
stay alive, holding their files (and our shards' lifetime locks), while a separate, long-lived
scraper process answers the scrapes, as the worker that answers ``/metrics`` would.

Per cell and store the scraper reports: its first scrape (ours parses every shard's key table
then), the steady scrape in the text format and in OpenMetrics (median of interleaved rounds,
ours then theirs), the exposition floor (building and encoding the same merged families again,
without reading the store), its resident memory before any scrape, at its peak and after the
scrapes, and the store's size on disk. Every scrape's totals are checked against what the workers
wrote, so a fast wrong answer cannot win.

Run alone: ``python -m bench.scale [--cells 4x100,16x1000,64x1000]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

STORES = ("ours", "prom")
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
    else:
        from softfactory_obs.store.metrics import Counter, Histogram, Registry

        registry = Registry(path)
        counter = Counter("http_requests_total", "Requests", ["method", "endpoint", "status"], registry=registry)
        histogram = Histogram("http_request_duration_seconds", "Latency", ["method", "endpoint"], registry=registry)
    for i in range(e):
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


def _scrapers(store: str, path: str) -> tuple[Callable[[str], bytes], Callable[[], Callable[[str], bytes]]]:
    """(scrape in a format, a function that returns the exposition floor's encoder)."""
    if store == "prom":
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector
        from prometheus_client.openmetrics import exposition as openmetrics

        encoders = {"text": generate_latest, "openmetrics": openmetrics.generate_latest}

        def scrape(fmt: str) -> bytes:  # its documented /metrics handler
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return encoders[fmt](registry)

        def floor() -> Callable[[str], bytes]:
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
    from softfactory_obs.metrics.exposition import MetricsApp, families_from
    from softfactory_obs.metrics.formats import OPENMETRICS, encode_openmetrics, encode_text
    from softfactory_obs.store.metrics import Registry

    registry = Registry(path)
    app = MetricsApp(registry)  # what the middleware mounts at /metrics
    accept = {"text": "text/plain", "openmetrics": OPENMETRICS}
    ours_encoders = {"text": encode_text, "openmetrics": encode_openmetrics}

    def scrape_ours(fmt: str) -> bytes:
        return app.render(accept[fmt])[0]

    def floor_ours() -> Callable[[str], bytes]:
        snap = registry.snapshot()
        return lambda fmt: ours_encoders[fmt](list(families_from(snap)))

    return scrape_ours, floor_ours


def scraper(store: str, path: str) -> None:
    """Answer JSON commands on stdin: scrape, floor, quit."""
    scrape, floor = _scrapers(store, path)
    encode: Callable[[str], bytes] | None = None

    def reply(obj: dict[str, Any]) -> None:
        obj.update(_rss_kb())
        print(json.dumps(obj), flush=True)

    reply({"ready": True})
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "quit":
            return
        if command["op"] == "floor" and encode is None:
            encode = floor()
        run = scrape if command["op"] == "scrape" else encode
        assert run is not None
        started = time.perf_counter()
        body = run(command["format"])
        seconds = time.perf_counter() - started
        totals = [sum(float(v) for v in pattern.findall(body)) for pattern in (TOTAL, COUNT)]
        del body
        gc.collect()
        reply({"s": seconds, "totals": totals})


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
            scrapers = {s: Child(["scraper", s, paths[s]], _env(s, paths[s])) for s in STORES}
            try:
                for store, child in scrapers.items():
                    out[store] = {"disk_bytes": _disk_bytes(paths[store]), "idle_rss_kb": child.ask()["VmRSS"]}
                for store, child in scrapers.items():
                    first = _checked(child.ask({"op": "scrape", "format": "text"}), expected, store)
                    out[store]["first_s"] = first["s"]
                for fmt in ("text", "openmetrics"):
                    for op in ("scrape", "floor"):
                        for _ in range(rounds):
                            for store, child in scrapers.items():
                                answer = _checked(child.ask({"op": op, "format": fmt}), expected, store)
                                out[store].setdefault(f"{op}_{fmt}_s", []).append(answer["s"])
                for store, child in scrapers.items():
                    last = child.ask({"op": "scrape", "format": "text"})
                    out[store].update(kept_rss_kb=last["VmRSS"], peak_rss_kb=last["VmHWM"])
            finally:
                for child in scrapers.values():
                    child.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return out


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


def _ms(values: Any) -> str:
    value = statistics.median(values) if isinstance(values, list) else values
    return f"{value * 1000:,.0f}" if value >= 0.1 else f"{value * 1000:,.1f}"


def figures(cell: dict[str, Any]) -> dict[str, float]:
    """Our figures of one cell that the targets judge."""
    ours = cell["ours"]
    steady = statistics.median(ours["scrape_text_s"])
    return {
        "steady_ms": steady * 1000,
        "of_floor": steady / statistics.median(ours["floor_text_s"]),
        "first_of_steady": ours["first_s"] / steady,
        "kept_mb": (ours["kept_rss_kb"] - ours["idle_rss_kb"]) / 1024,
    }


def table(results: list[dict[str, Any]]) -> list[str]:
    """One row per cell and store, then ours against theirs."""
    lines = [
        "| (N, E) | store | first scrape ms | steady ms | steady OpenMetrics ms | exposition floor ms | "
        "steady / floor | first / steady | RSS MB: idle / peak / kept | store on disk MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for store in STORES:
            s = r[store]
            steady, floor = statistics.median(s["scrape_text_s"]), statistics.median(s["floor_text_s"])
            lines.append(
                f"| ({r['n']}, {r['e']:,}) | {LABEL[store]} | {_ms(s['first_s'])} | {_ms(steady)} | "
                f"{_ms(s['scrape_openmetrics_s'])} | {_ms(floor)} | {steady / floor:.2f} | "
                f"{s['first_s'] / steady:.2f} | {s['idle_rss_kb'] / 1024:.0f} / {s['peak_rss_kb'] / 1024:.0f} / "
                f"{s['kept_rss_kb'] / 1024:.0f} | {s['disk_bytes'] / 1e6:.1f} |"
            )
        ours, prom = (statistics.median(r[s]["scrape_text_s"]) for s in STORES)
        lines.append(f"| ({r['n']}, {r['e']:,}) | *ours / theirs, steady* | | {ours / prom:.3f} | | | | | | |")
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default="4x100,16x1000,64x1000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    results = run(parse_cells(args.cells), args.rounds)
    print("\n".join(table(results)))
    print(json.dumps(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
