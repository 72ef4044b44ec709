"""Per-request overhead next to the peers, in-process (direct WSGI calls with a prebuilt environ).

Each variant runs in a fresh interpreter (prometheus_client's multiprocess mode and OTel's global
providers are process-wide), and the variants take turns round after round so the noise of a
shared machine falls on all of them; medians are reported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from . import PAUSE, PAUSE_VARIABLE, interleaved
from .apps import VARIANTS

ROOT = Path(__file__).resolve().parent.parent
ORDER = [
    "bare",
    "ours",
    "ours-metrics",
    "ours-log",
    "naive",
    "otel-sdk",
    "otel-noop",
    "flask",
    "flask-ours",
    "flask-pfe",
]

RUNNER = textwrap.dedent("""
    import io, os, sys, time
    from bench.apps import PATH, build
    variant, n = sys.argv[1], int(sys.argv[2])
    sweep = int(sys.argv[3]) if len(sys.argv) > 3 else 0  # bytes to run through the caches before each request
    app = build(variant, log_stream=open(os.devnull, "w"))
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": PATH, "QUERY_STRING": "", "SERVER_NAME": "bench",
               "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
               "HTTP_HOST": "bench", "wsgi.url_scheme": "http", "wsgi.input": None, "wsgi.errors": sys.stderr,
               "wsgi.version": (1, 0), "wsgi.multithread": False, "wsgi.multiprocess": True,
               "wsgi.run_once": False}
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
    time.sleep(float(os.environ.get("BENCH_PAUSE_SECONDS", "0")))
    if not sweep:
        t = time.perf_counter()
        for _ in range(n):
            once()
        print((time.perf_counter() - t) / n * 1e6)
    else:
        data, objects = bytearray(sweep), [object() for _ in range(sweep // 200)]
        spent = 0.0
        for _ in range(n):
            bytes(data)  # data caches, and the allocator's hot blocks
            for _ in objects:
                pass
            t = time.perf_counter()
            once()
            spent += time.perf_counter() - t
        print(spent / n * 1e6)
""")


# With the caches swept before each request, as a gunicorn worker meets its next request after
# the kernel, the parser and the other workers have run: our in-process cost times 3-4 there.
COLD_ORDER = ["bare", "ours", "ours-metrics", "ours-log", "naive"]
COLD_SWEEP = 4_000_000


def run(rounds: int = 5, n: int = 5000, order: list[str] | None = None, sweep: int = 0) -> dict[str, list[float]]:
    """µs per request of every variant, one sample per round (``sweep``: bytes run through the
    caches before each request, whose time is not counted)."""
    order = order or ORDER
    samples: dict[str, list[float]] = {v: [] for v in order}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in interleaved(order, rounds):
            env = dict(os.environ, **{PAUSE_VARIABLE: str(PAUSE)})
            if variant in ("naive", "flask-pfe"):
                env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(dir=tmp)
            out = subprocess.run(
                [sys.executable, "-c", RUNNER, variant, str(n), str(sweep)],
                capture_output=True,
                text=True,
                check=False,
                cwd=ROOT,
                env=env,
            )
            if out.returncode != 0:
                raise RuntimeError(f"{VARIANTS[variant]}: {out.stderr.strip()[-500:]}")
            samples[variant].append(float(out.stdout.strip().splitlines()[-1]))
    return samples
