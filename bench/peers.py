"""Per-request overhead next to the peers, in-process (direct WSGI calls with a prebuilt environ).

Each variant runs in a fresh interpreter (prometheus_client's multiprocess mode and OTel's global
providers are process-wide), and the variants take turns round after round so the noise of a
shared machine falls on all of them; medians are reported.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import textwrap

VARIANTS = {
    "bare plain-WSGI hello": "plain",
    "plain + ours (full: id, JSON access log, metrics)": "plain-ours",
    "plain + ours (metrics only)": "plain-ours-metrics",
    "plain + naive prometheus_client middleware (multiprocess)": "plain-naive",
    "plain + OTel WSGI middleware (SDK tracer + meter)": "plain-otel-sdk",
    "plain + OTel WSGI middleware (API no-op)": "plain-otel-noop",
    "bare Flask hello": "flask",
    "Flask + ours (full)": "flask-ours",
    "Flask + prometheus_flask_exporter (multiprocess)": "flask-pfe",
}

RUNNER = textwrap.dedent('''
    import os, sys, tempfile, time, statistics, logging
    variant, n = sys.argv[1], int(sys.argv[2])
    if variant in ("plain-naive", "flask-pfe"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()

    def hello(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"hello"]

    app = hello
    if variant.startswith("flask"):
        import flask
        fapp = flask.Flask("bench")
        fapp.add_url_rule("/api/users/<int:user_id>", "user", lambda user_id: "hello")
        app = fapp
        if variant == "flask-ours":
            from softfactory_obs.contrib.flask import init_app
            from softfactory_obs import ObservabilityMiddleware, configure_logging
            configure_logging(stream=open(os.devnull, "w"))
            init_app(fapp)
            app = ObservabilityMiddleware(fapp.wsgi_app)
        elif variant == "flask-pfe":
            from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics
            GunicornInternalPrometheusMetrics(fapp)
    elif variant.startswith("plain-ours"):
        from softfactory_obs import ObservabilityMiddleware, configure_logging
        configure_logging(stream=open(os.devnull, "w"))
        app = ObservabilityMiddleware(hello, access_log=variant == "plain-ours")
    elif variant == "plain-naive":
        from prometheus_client import Counter, Histogram
        requests = Counter("http_requests_total", "x", ["method", "path", "status"])
        latency = Histogram("http_request_duration_seconds", "x", ["method", "path"])
        def app(environ, start_response):
            start = time.perf_counter()
            status = []
            def sr(s, h, e=None):
                status.append(s)
                return start_response(s, h) if e is None else start_response(s, h, e)
            result = hello(environ, sr)
            method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
            requests.labels(method, path, status[0][:3]).inc()
            latency.labels(method, path).observe(time.perf_counter() - start)
            return result
    elif variant.startswith("plain-otel"):
        from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
        if variant == "plain-otel-sdk":
            from opentelemetry import metrics, trace
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.trace import TracerProvider
            trace.set_tracer_provider(TracerProvider())
            metrics.set_meter_provider(MeterProvider())
        app = OpenTelemetryMiddleware(hello)

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/api/users/42", "QUERY_STRING": "", "SERVER_NAME": "bench",
               "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
               "HTTP_HOST": "bench", "wsgi.url_scheme": "http", "wsgi.input": None, "wsgi.errors": sys.stderr,
               "wsgi.version": (1, 0), "wsgi.multithread": False, "wsgi.multiprocess": True,
               "wsgi.run_once": False}
    import io
    def start_response(status, headers, exc_info=None):
        return None
    def once():
        env = dict(environ)
        env["wsgi.input"] = io.BytesIO()
        result = app(env, start_response)
        for _ in result:
            pass
        close = getattr(result, "close", None)
        if close:
            close()
    for _ in range(500):
        once()
    t = time.perf_counter()
    for _ in range(n):
        once()
    print((time.perf_counter() - t) / n * 1e6)
''')


def run(rounds: int = 5, n: int = 5000) -> list[tuple[str, float]]:
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name, variant in VARIANTS.items():
            out = subprocess.run([sys.executable, "-c", RUNNER, variant, str(n)], capture_output=True, text=True,
                                 check=False)
            if out.returncode != 0:
                raise RuntimeError(f"{name}: {out.stderr.strip()[-500:]}")
            samples[name].append(float(out.stdout.strip().splitlines()[-1]))
    return [(name, statistics.median(values)) for name, values in samples.items()]
