"""The apps every benchmark measures: one hello endpoint, bare or wrapped by us or by a peer.

``build(variant)`` is used in-process (bench/peers.py) and by gunicorn (``bench.apps:app``, the
variant taken from ``BENCH_VARIANT``), so both measure exactly the same code.
Peers that keep multiprocess state (prometheus_client, prometheus_flask_exporter) need
``PROMETHEUS_MULTIPROC_DIR`` set before this module is imported; the callers do that.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import IO, Any

WSGIApp = Callable[[dict[str, Any], Any], Any]
PATH = "/api/users/42"

VARIANTS = {
    "bare": "bare plain-WSGI hello",
    "ours": "plain + ours (full: id, JSON access log, metrics)",
    "ours-metrics": "plain + ours (metrics only)",
    "ours-log": "plain + ours (id + JSON access log only)",
    "naive": "plain + naive prometheus_client middleware (multiprocess)",
    "otel-sdk": "plain + OTel WSGI middleware (SDK tracer + meter)",
    "otel-noop": "plain + OTel WSGI middleware (API no-op)",
    "flask": "bare Flask hello",
    "flask-ours": "Flask + ours (full)",
    "flask-pfe": "Flask + prometheus_flask_exporter (multiprocess)",
}


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def build(variant: str, log_stream: IO[str] | None = None) -> WSGIApp:
    """The app for ``variant``; our JSON logs go to ``log_stream``, or stdout (gunicorn's) when None."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {', '.join(VARIANTS)}, got {variant!r}")
    if variant in ("ours", "ours-metrics", "ours-log", "flask-ours"):
        from softfactory_obs import configure_logging

        configure_logging(stream=log_stream)
    if variant.startswith("flask"):
        return _flask(variant)
    if variant.startswith("ours"):
        from softfactory_obs import ObservabilityMiddleware

        return ObservabilityMiddleware(hello, access_log=variant != "ours-metrics", metrics=variant != "ours-log")
    if variant == "naive":
        return _naive()
    if variant.startswith("otel"):
        return _otel(variant)
    return hello


def _flask(variant: str) -> WSGIApp:
    import flask

    app = flask.Flask("bench")
    app.add_url_rule("/api/users/<int:user_id>", "user", lambda user_id: "hello")
    if variant == "flask-ours":
        from softfactory_obs import ObservabilityMiddleware
        from softfactory_obs.contrib.flask import init_app

        init_app(app)
        return ObservabilityMiddleware(app.wsgi_app)
    if variant == "flask-pfe":
        from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

        GunicornInternalPrometheusMetrics(app)
    return app


def _naive() -> WSGIApp:
    """What a team writes in an afternoon: two metrics, raw path label, no ids, no logs."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    requests = Counter("http_requests_total", "x", ["method", "path", "status"])
    latency = Histogram("http_request_duration_seconds", "x", ["method", "path"])

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/metrics":
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4")])
            return [generate_latest(registry)]
        start = time.perf_counter()
        status: list[str] = []

        def capture(s: str, h: list[tuple[str, str]], e: Any = None) -> Any:
            status.append(s)
            return start_response(s, h) if e is None else start_response(s, h, e)

        result = hello(environ, capture)
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        requests.labels(method, path, status[0][:3]).inc()
        latency.labels(method, path).observe(time.perf_counter() - start)
        return result

    return app


def _otel(variant: str) -> WSGIApp:
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    if variant == "otel-sdk":
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider

        trace.set_tracer_provider(TracerProvider())
        metrics.set_meter_provider(MeterProvider())
    return OpenTelemetryMiddleware(hello)


if os.environ.get("BENCH_VARIANT"):  # imported by gunicorn
    app = build(os.environ["BENCH_VARIANT"])
