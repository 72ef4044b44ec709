"""In-process overhead of the middleware: call the WSGI callable directly, many times, median of repeats.

Variants are measured interleaved (A, B, C, A, B, C, ...) in one run, so the noise of a shared
machine hits them alike; results are medians, overhead is the difference to the bare app.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any
from wsgiref.util import setup_testing_defaults

from softfactory_obs import ObservabilityMiddleware, configure_logging

from . import peers, store

WSGIApp = Callable[[dict[str, Any], Any], Any]


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def make_environ() -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/api/users/42", "QUERY_STRING": "page=2",
        "REMOTE_ADDR": "127.0.0.1", "HTTP_USER_AGENT": "bench/1.0",
    }
    setup_testing_defaults(environ)
    return environ


def serve_once(app: WSGIApp, environ: dict[str, Any]) -> None:
    result = app(environ.copy(), start_response)
    for _ in result:
        pass
    close = getattr(result, "close", None)
    if close is not None:
        close()


def time_per_call(app: WSGIApp, environ: dict[str, Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        serve_once(app, environ)
    return (time.perf_counter() - start) / n * 1e6


def variants() -> dict[str, WSGIApp]:
    return {
        "bare plain-WSGI hello": hello,
        "ours: full (id, JSON log, metrics)": ObservabilityMiddleware(hello, auto_configure_logging=False),
        "ours: metrics, no access log": ObservabilityMiddleware(hello, access_log=False,
                                                                 auto_configure_logging=False),
        "ours: id + access log, no metrics": ObservabilityMiddleware(hello, metrics=False,
                                                                      auto_configure_logging=False),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=20000, help="calls per measurement")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds; the median is reported")
    parser.add_argument("--only", choices=["wsgi", "peers", "store", "scrape"], help="run one part only")
    parser.add_argument("--dead", default="100,1000,8000", help="dead-worker counts for the scrape benchmark")
    args = parser.parse_args(argv)
    if args.only in (None, "wsgi"):
        wsgi_overhead(args)
    if args.only in (None, "peers"):
        print("\nper-request cost next to the peers, µs (median of 5 rounds, each variant in its own interpreter)")
        rows = peers.run()
        base = dict(rows)
        for name, us in rows:
            bare = base["bare Flask hello"] if name.startswith("Flask") else base["bare plain-WSGI hello"]
            overhead = "" if name.startswith("bare") else f"{us - bare:10.2f}"
            print(f"  {name:<60} {us:9.2f} {overhead:>10}")
    if args.only in (None, "store"):
        print("\nstore writes, ns per call (median of 5 x 200k, each in a fresh interpreter)")
        for name, ns in store.write_costs():
            print(f"  {name:<40} {ns:8.0f}")
    if args.only in (None, "scrape"):
        counts = tuple(int(x) for x in args.dead.split(","))
        print(f"\nscrape time vs dead workers ({store.ROUTES} routes, counter + histogram each)")
        rows = store.scrape_vs_dead(counts)
        for name, n, seconds in rows:
            print(f"  {name:<42} dead={n:<6} {seconds * 1000:10.1f} ms")
        for name in {r[0] for r in rows}:
            series = {n: s for label, n, s in rows if label == name}
            if len(series) > 1:
                lo, hi = min(series), max(series)
                print(f"  ratio {hi}/{lo} {name:<40} {series[hi] / series[lo]:6.2f}")
    return 0


def wsgi_overhead(args: argparse.Namespace) -> None:

    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    configure_logging(stream=devnull)  # real formatting and a real write per line, to /dev/null
    apps = variants()
    environ = make_environ()
    for app in apps.values():  # warm up
        time_per_call(app, environ, 1000)
    samples: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(args.repeats):
        for name, app in apps.items():
            samples[name].append(time_per_call(app, environ, args.iterations))
    logging.shutdown()

    bare = statistics.median(samples["bare plain-WSGI hello"])
    python = sys.version.split()[0]
    print(f"in-process, {args.iterations} calls x {args.repeats} interleaved rounds, median; python {python}")
    print(f"{'variant':<36} {'µs/request':>11} {'overhead µs':>12} {'x bare':>8}")
    for name, values in samples.items():
        med = statistics.median(values)
        over = "" if name.startswith("bare") else f"{med - bare:12.2f}"
        print(f"{name:<36} {med:11.2f} {over:>12} {med / bare:8.1f}")


if __name__ == "__main__":
    sys.exit(main())
