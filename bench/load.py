"""Under gunicorn: throughput and p99 with wrk, the workers' CPU per request, worker RSS after the load.

Every variant is served by a real gunicorn (sync workers, the deployment the targets speak of)
and loaded by wrk on loopback (by Python client processes where wrk is missing), in turns round
after round so a noisy neighbour hits all of them. Our JSON access lines go to a file, as they
would to a container's log file. Worker RSS is read from /proc after the load and after a few
scrapes, so everything a worker imports over its life (the exposition code included) is counted.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from . import interleaved

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["bare", "ours", "ours-metrics", "naive", "flask", "flask-ours", "flask-pfe"]


@dataclass
class LoadResult:
    rps: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    # The workers' CPU time (user + system, all threads) per request answered: what the app and we
    # cost, without the load generator and the neighbours that share the cores and move req/s.
    cpu_us: list[float] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def gunicorn(variant: str, workers: int, tmp: str) -> Iterator[tuple[int, int]]:
    """A gunicorn serving ``variant``; yields (port, master pid)."""
    port = free_port()
    env = dict(os.environ, BENCH_VARIANT=variant, PYTHONPATH=str(ROOT))
    if variant in ("naive", "flask-pfe"):
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(dir=tmp)
    log = open(os.path.join(tmp, f"{variant}.log"), "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            str(workers),
            "-k",
            "sync",
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "bench.apps:app",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_serving(port, proc, f"gunicorn for {variant} (see {log.name})")
        yield port, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _wrk(port: int, seconds: float, connections: int, path: str) -> tuple[float, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    value, unit = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\b", out, re.M).groups()  # type: ignore[union-attr]
    return rps, float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


# Without wrk: the same closed loop from Python processes (one per connection), bounded in time.
# A fallback: the clients share the machine's cores with the server, more heavily than wrk does.
_CLIENT = """
import socket, sys, time
port, path, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
request = f"GET {path} HTTP/1.0\\r\\nHost: bench\\r\\n\\r\\n".encode()
latencies = []
deadline = time.perf_counter() + seconds
while (start := time.perf_counter()) < deadline:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(request)
        while s.recv(65536):
            pass
    latencies.append(time.perf_counter() - start)
print(" ".join(f"{x:.6f}" for x in latencies))
"""


def _python_load(port: int, seconds: float, connections: int, path: str) -> tuple[float, float]:
    clients = [
        subprocess.Popen(
            [sys.executable, "-c", _CLIENT, str(port), path, str(seconds)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(connections)
    ]
    latencies = sorted(float(x) for c in clients for x in c.communicate()[0].split())
    if not latencies:
        raise RuntimeError("the Python load generator completed no request")
    return len(latencies) / seconds, latencies[int(len(latencies) * 0.99) - 1] * 1000


def generator() -> str:
    return "wrk" if shutil.which("wrk") else "python"


def closed_loop(port: int, seconds: float, connections: int, path: str) -> tuple[float, float]:
    """Requests per second and p99 ms of ``connections`` closed-loop clients on ``path`` (wrk, or
    Python client processes where wrk is missing, at most 4 of them)."""
    if generator() == "wrk":
        return _wrk(port, seconds, connections, path)
    return _python_load(port, seconds, min(connections, 4), path)


def wait_until_serving(port: int, proc: subprocess.Popen[bytes], what: str, path: str = "/") -> None:
    """Poll ``path`` until the server answers (30 s at most, or until it exits)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            _get(port, path)
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.1)


def _workers_cpu_seconds(master: int) -> float:
    return sum(sum(child.cpu_times()[:2]) for child in psutil.Process(master).children())


def _worker_rss_mb(master: int) -> list[float]:
    return [child.memory_info().rss / 2**20 for child in psutil.Process(master).children()]


def run(
    rounds: int = 3, seconds: float = 5.0, workers: int = 4, connections: int = 16, path: str = "/api/users/42"
) -> dict[str, LoadResult]:
    load = closed_loop
    results = {v: LoadResult() for v in ORDER}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in interleaved(ORDER, rounds):
            with gunicorn(variant, workers, tmp) as (port, master):
                load(port, 1.0, connections, path)  # warm-up: imports, first binds, caches
                cpu = _workers_cpu_seconds(master)
                rps, p99 = load(port, seconds, connections, path)
                results[variant].cpu_us.append((_workers_cpu_seconds(master) - cpu) / (rps * seconds) * 1e6)
                for _ in range(4 * workers):  # let every worker serve a scrape, as Prometheus would
                    _get(port, "/metrics")
                results[variant].rps.append(rps)
                results[variant].p99_ms.append(p99)
                results[variant].rss_mb.append(statistics.median(_worker_rss_mb(master)))
    return results
