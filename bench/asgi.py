"""The ASGI table: our ASGI front next to bare Starlette and what users assemble instead, in-process.

Each variant runs in a fresh interpreter (prometheus_client's multiprocess mode and OTel's
providers are process-wide) that drives the app as a minimal server would: per request an
``http`` scope of three headers, a ``receive`` giving the empty body then ``http.disconnect``, a
``send`` that keeps the messages; the status is checked. µs per request are medians of
interleaved rounds; instructions per request come from callgrind (``n`` and ``6 n`` requests,
the difference over ``5 n``), which the host's load does not move. The targets' shares are also
measured each in one interpreter (``target_shares``), where the host's slow spells cancel out.
"""

from __future__ import annotations

import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import PAUSE, PAUSE_VARIABLE, interleaved, load

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "starlette": "bare Starlette",
    "ours": "Starlette + ours (full: id, JSON access log, metrics)",
    "ours-metrics": "Starlette + ours (metrics only)",
    "exporter": "Starlette + starlette_exporter",
    "exporter-mp": "Starlette + starlette_exporter (multiprocess)",
    "cid-json": "Starlette + asgi-correlation-id + a JSON access line",
    "stack": "Starlette + starlette_exporter + asgi-correlation-id + a JSON access line",
    "otel-sdk": "Starlette + OTel ASGI (SDK tracer and meter)",
    "otel-api": "Starlette + OTel ASGI (API only)",
    "fastapi": "bare FastAPI",
    "instrumentator": "FastAPI + prometheus-fastapi-instrumentator",
}
BARE = {"instrumentator": "fastapi", "fastapi": "fastapi"}  # everything else against bare Starlette
MULTIPROCESS = ("exporter-mp",)

RUNNER = textwrap.dedent("""
    import asyncio, os, sys, time
    from bench.asgi import build, drive
    variant, n = sys.argv[1], int(sys.argv[2])
    app = build(variant)
    asyncio.run(drive(app, 300))
    time.sleep(float(os.environ.get("BENCH_PAUSE_SECONDS", "0")))
    t = time.perf_counter()
    asyncio.run(drive(app, n))
    print((time.perf_counter() - t) / n * 1e6)
""")
_COLLECTED = re.compile(r"Collected : (\d+)")


def bare_of(variant: str) -> str:
    """The bare app a variant's overhead is measured against."""
    return BARE.get(variant, "starlette")


async def _user(request: Any) -> Any:
    from starlette.responses import PlainTextResponse

    return PlainTextResponse("user " + request.path_params["user_id"])


def _starlette(middleware: list[Any] | None = None) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    return Starlette(routes=[Route("/users/{user_id}", _user)], middleware=middleware or [])


def _fastapi() -> Any:
    from fastapi import FastAPI
    from starlette.responses import PlainTextResponse

    app = FastAPI()

    @app.get("/users/{user_id}")
    async def get_user(user_id: str) -> Any:
        return PlainTextResponse("user " + user_id)

    return app


class AccessLine:
    """What users write next to asgi-correlation-id: a pure-ASGI JSON access line (python-json-logger)."""

    def __init__(self, app: Any, logger: logging.Logger) -> None:
        self.app, self.logger = app, logger

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.logger.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                },
            )


def _correlation_and_line() -> list[Any]:
    from asgi_correlation_id import CorrelationIdFilter, CorrelationIdMiddleware
    from pythonjsonlogger.json import JsonFormatter
    from starlette.middleware import Middleware

    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - for the runner's life
    handler.addFilter(CorrelationIdFilter())
    handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s %(correlation_id)s"))
    logger = logging.getLogger("access")
    logger.handlers[:], logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    return [Middleware(CorrelationIdMiddleware), Middleware(AccessLine, logger=logger)]


def build(variant: str, metrics_dir: str | None = None) -> Any:  # noqa: PLR0911 - one return per variant
    """The variant's app, configured as its documentation says (ours: its store in ``metrics_dir``,
    else a directory of its own)."""
    from starlette.middleware import Middleware

    if variant == "starlette":
        return _starlette()
    if variant in ("ours", "ours-metrics"):
        import softfactory_obs

        softfactory_obs.configure_logging(stream=open(os.devnull, "w"))  # noqa: SIM115
        options = {"access_log": False, "health": False} if variant == "ours-metrics" else {}
        return softfactory_obs.instrument_asgi(_starlette(), metrics_dir=metrics_dir or tempfile.mkdtemp(), **options)
    if variant in ("exporter", "exporter-mp"):
        from starlette_exporter import PrometheusMiddleware

        return _starlette([Middleware(PrometheusMiddleware)])
    if variant == "cid-json":
        return _starlette(_correlation_and_line())
    if variant == "stack":
        from starlette_exporter import PrometheusMiddleware

        return _starlette([*_correlation_and_line(), Middleware(PrometheusMiddleware)])
    if variant in ("otel-sdk", "otel-api"):
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        if variant == "otel-sdk":
            from opentelemetry import metrics, trace
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader
            from opentelemetry.sdk.trace import TracerProvider

            trace.set_tracer_provider(TracerProvider())
            metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
        return _starlette([Middleware(OpenTelemetryMiddleware)])
    if variant == "fastapi":
        return _fastapi()
    if variant == "instrumentator":
        from prometheus_fastapi_instrumentator import Instrumentator

        app = _fastapi()
        Instrumentator().instrument(app)
        return app
    raise ValueError(f"unknown ASGI variant {variant!r}")


HEADERS = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench/1.0"), (b"accept", b"*/*")]


async def drive(app: Any, n: int) -> None:
    """``n`` requests to ``/users/<i>``, as a minimal server sends them; each must answer 200."""
    for i in range(n):
        path = f"/users/{i % 1000}"
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": list(HEADERS),
            "client": ("127.0.0.1", 54321),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        pending = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive(pending: list[dict[str, Any]] = pending) -> dict[str, Any]:
            return pending.pop() if pending else {"type": "http.disconnect"}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
            sent.append(message)

        await app(scope, receive, send)
        if sent[0]["status"] != 200:
            raise RuntimeError(f"status {sent[0]['status']}: {sent}")


async def chunks(apps: dict[str, Any], rounds: int, chunk: int) -> dict[str, list[float]]:
    """µs per request of each app, one sample per chunk of ``chunk`` requests, the apps taking
    turns in one process (in ``interleaved`` order)."""
    samples: dict[str, list[float]] = {name: [] for name in apps}
    for name in interleaved(list(apps), rounds):
        started = time.perf_counter()
        await drive(apps[name], chunk)
        samples[name].append((time.perf_counter() - started) / chunk * 1e6)
    return samples


def _env(variant: str, tmp: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(ROOT))
    env["SOFTFACTORY_OBS_MAINTENANCE_INTERVAL_SECONDS"] = "3600"  # its thread's work is not a request's
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if variant in MULTIPROCESS:
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(dir=tmp)
    return env


def run(rounds: int = 5, n: int = 5000) -> dict[str, list[float]]:
    """µs per request of every variant, one sample per round."""
    samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in interleaved(list(VARIANTS), rounds):
            command = [sys.executable, "-c", RUNNER, variant, str(n)]
            env = dict(_env(variant, tmp), **{PAUSE_VARIABLE: str(PAUSE)})
            out = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT, env=env)
            if out.returncode != 0:
                raise RuntimeError(f"{VARIANTS[variant]}: {out.stderr.strip()[-500:]}")
            samples[variant].append(float(out.stdout.strip().splitlines()[-1]))
    return samples


def _count(variant: str, n: int, tmp: str) -> int:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", RUNNER]
    out = subprocess.run(
        [*command, variant, str(n)], capture_output=True, text=True, check=False, cwd=ROOT, env=_env(variant, tmp)
    )
    found = _COLLECTED.search(out.stderr)
    if out.returncode != 0 or found is None:
        raise RuntimeError(f"{VARIANTS[variant]} under callgrind: {out.stderr.strip()[-500:]}")
    return int(found[1])


def instructions(n: int = 1000) -> dict[str, float]:
    """Instructions per request of every variant (two at a time: the counts do not mind sharing cores)."""
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
        jobs = {v: (pool.submit(_count, v, n, tmp), pool.submit(_count, v, 6 * n, tmp)) for v in VARIANTS}
        return {v: (six.result() - one.result()) / (5 * n) for v, (one, six) in jobs.items()}


# Served by uvicorn with several workers: the deployment the peers' users run.
SERVED = ["starlette", "ours", "ours-metrics", "exporter-mp", "stack", "otel-sdk"]


def throughput(
    rounds: int = 3, seconds: float = 4.0, workers: int = 2, connections: int = 16
) -> dict[str, list[float]]:
    """Requests per second of each of ``SERVED`` under ``uvicorn --workers``, in interleaved turns."""
    samples: dict[str, list[float]] = {v: [] for v in SERVED}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in interleaved(SERVED, rounds):
            port = load.free_port()
            env = _env(variant, tmp)
            env["BENCH_ASGI_VARIANT"] = variant
            env["BENCH_ASGI_STORE"] = tempfile.mkdtemp(dir=tmp)  # ours: one store for all the workers
            command = [sys.executable, "-m", "uvicorn", "--port", str(port), "--workers", str(workers)]
            command += ["--no-access-log", "--log-level", "warning", "bench.asgi_served:app"]
            with open(os.path.join(tmp, f"{variant}.log"), "wb") as log:
                proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
                try:
                    load.wait_until_serving(port, proc, f"uvicorn for {variant} (see {log.name})", "/users/1")
                    load.closed_loop(port, 1.0, connections, "/users/1")  # warm-up
                    samples[variant].append(load.closed_loop(port, seconds, connections, "/users/1")[0])
                finally:
                    proc.terminate()
                    proc.wait(30)
    return samples


def throughput_table(samples: dict[str, list[float]]) -> list[str]:
    """Median requests per second, and each variant's share of bare Starlette's."""
    medians = {v: statistics.median(s) for v, s in samples.items()}
    lines = ["| variant | req/s | x bare |", "|---|---:|---:|"]
    lines += [f"| {VARIANTS[v]} | {r:,.0f} | {r / medians['starlette']:.2f} |" for v, r in medians.items()]
    return lines


# Issue 21's targets: our overhead at most this fraction of the peer's.
TARGETS = [
    ("ours", "exporter-mp", 0.3),
    ("ours", "stack", 0.15),
    ("ours", "otel-sdk", 0.1),
    ("ours-metrics", "exporter", 0.2),
]


def table(values: dict[str, float], unit: str) -> list[str]:
    """Each variant, its overhead over its bare app, and the targets' ratios."""
    lines = [f"| variant | {unit} | overhead | x bare |", "|---|---:|---:|---:|"]
    for variant, value in values.items():
        base = values[bare_of(variant)]
        over = "" if variant in ("starlette", "fastapi") else f"{value - base:,.1f}"
        lines.append(f"| {VARIANTS[variant]} | {value:,.1f} | {over} | {value / base:.2f} |")
    for ours, peer, limit in TARGETS:
        mine, theirs = values[ours] - values[bare_of(ours)], values[peer] - values[bare_of(peer)]
        got = mine / theirs if theirs > 0 else float("nan")
        verdict = "yes" if got <= limit else "NO"
        lines.append(
            f"| *{VARIANTS[ours]} overhead / {VARIANTS[peer]} overhead* | <= {limit} | {got:.2f} | {verdict} |"
        )
    return lines


# A target's variants in one process: the bare app, ours, the peer.
SHARES_RUNNER = textwrap.dedent("""
    import asyncio, json, os, sys, time
    from bench.asgi import build, chunks, drive
    names, rounds, chunk = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
    apps = {name: build(name) for name in names}
    for app in apps.values():
        asyncio.run(drive(app, 300))
    time.sleep(float(os.environ.get("BENCH_PAUSE_SECONDS", "0")))
    print(json.dumps(asyncio.run(chunks(apps, rounds, chunk))))
""")


def target_shares(ours: str, peer: str, rounds: int = 30, chunk: int = 250) -> list[float]:
    """Our overhead as a share of the peer's, one share per round: ours, the peer and their bare app
    in one fresh interpreter, taking turns in chunks, so a slow spell of the host hits all three
    alike (between interpreters the bare app alone moves by a third, which no number of rounds
    averages out of a ratio of differences). A round in which the peer measured no slower than
    the bare app has no share."""
    bare = bare_of(ours)
    if bare_of(peer) != bare:
        raise ValueError(f"{ours} and {peer} are measured against different apps")
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(_env(peer, tmp), **{PAUSE_VARIABLE: str(PAUSE)})
        command = [sys.executable, "-c", SHARES_RUNNER, f"{bare},{ours},{peer}", str(rounds), str(chunk)]
        out = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{VARIANTS[ours]} against {VARIANTS[peer]}: {out.stderr.strip()[-500:]}")
    samples = json.loads(out.stdout.strip().splitlines()[-1])
    rounds_of = zip(samples[bare], samples[ours], samples[peer], strict=True)
    found = [(o - b) / (p - b) for b, o, p in rounds_of if p > b]  # a peer no slower than bare: noise, no share
    if not found:
        raise RuntimeError(f"{VARIANTS[peer]} never measured slower than {VARIANTS[bare]}: no share")
    return found


def shares(rounds: int = 30, chunk: int = 250) -> dict[str, list[float]]:
    """``target_shares`` of every target (``TARGETS``), by ``"ours/peer"``."""
    return {f"{ours}/{peer}": target_shares(ours, peer, rounds, chunk) for ours, peer, _ in TARGETS}


def shares_table(found: dict[str, list[float]]) -> list[str]:
    """Each target's median share over the rounds, their spread, and whether it is met."""
    lines = ["| our overhead / the peer's | at most | median | lowest | highest | met |"]
    lines.append("|---|---:|---:|---:|---:|---|")
    for ours, peer, limit in TARGETS:
        values = found[f"{ours}/{peer}"]
        median = statistics.median(values)
        name = f"{VARIANTS[ours]} / {VARIANTS[peer]}"
        verdict = "yes" if median <= limit else "NO"
        lines.append(f"| {name} | {limit} | {median:.3f} | {min(values):.3f} | {max(values):.3f} | {verdict} |")
    return lines
