"""Per-worker process metrics: sampled off the request path, bounded labels, live-only, CPU monotone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from helpers import call_wsgi, in_child, make_environ, samples
from servers import Gunicorn, get, scrape, worker_pids

from softfactory_obs import ObservabilityMiddleware, procfs
from softfactory_obs.metrics.process import ProcessSampler
from softfactory_obs.store.metrics import Registry


def test_sample_reports_this_process(tmp_path: Path) -> None:
    registry = Registry(str(tmp_path / "store"))
    sampler = ProcessSampler(registry, service="svc", version="1.2")
    sampler.sample()
    got = samples(registry)
    rss = got[("process_resident_memory_bytes", (("worker", "0"),))]
    assert abs(rss - psutil.Process().memory_info().rss) / rss < 0.2
    assert got[("process_open_fds", (("worker", "0"),))] >= 3
    assert got[("app_info", (("service", "svc"), ("version", "1.2")))] == 1
    assert got[("app_uptime_seconds", ())] >= 0
    assert got[("process_cpu_seconds_total", ())] > 0


def test_slots_are_reused_and_dead_workers_vanish(tmp_path: Path) -> None:
    registry = Registry(str(tmp_path / "store"))
    sampler = ProcessSampler(registry)
    sampler.sample()  # this process takes slot 0
    assert in_child(sampler.sample) == 0  # a child takes slot 1 and exits
    assert in_child(sampler.sample) == 0  # the next child gets slot 1 again: it was freed on exit
    got = samples(registry)
    workers = {dict(labels)["worker"] for name, labels in got if name == "process_resident_memory_bytes"}
    assert workers == {"0"}  # the children's gauges died with them
    slot_files = sorted(p.name for p in (tmp_path / "store").iterdir() if p.name.startswith("slot-"))
    assert slot_files == ["slot-0.lock", "slot-1.lock"]
    assert got[("process_cpu_seconds_total", ())] > 0


@pytest.mark.gunicorn
def test_worker_series_follow_live_workers_under_kill_9(tmp_path: Path) -> None:
    env = {
        "SOFTFACTORY_OBS_METRICS_DIR": str(tmp_path / "store"),
        "SOFTFACTORY_OBS_MAINTENANCE_INTERVAL_SECONDS": "0.2",
        "GUNICORN_CMD_ARGS": "--worker-class gthread --threads 4",
    }
    with Gunicorn(tmp_path, workers=3, **env) as server:

        def warm() -> set[str]:
            # gthread workers each take requests; poll until every worker has sampled itself.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                for n in range(30):
                    get(server.port, f"/api/users/{n + 1}")
                got = scrape(server.port)
                slots = {dict(lb)["worker"] for name, lb in got if name == "process_resident_memory_bytes"}
                if len(slots) == 3:
                    return slots
                time.sleep(0.3)
            return slots

        assert warm() == {"0", "1", "2"}
        got = scrape(server.port)
        total_rss = sum(v for (name, _), v in got.items() if name == "process_resident_memory_bytes")
        real = sum(psutil.Process(pid).memory_info().rss for pid in worker_pids(server))
        assert abs(total_rss - real) / real < 0.25
        cpu_before = got[("process_cpu_seconds_total", ())]
        victim = worker_pids(server)[0]
        os.kill(victim, signal.SIGKILL)
        time.sleep(1.0)
        assert warm() == {"0", "1", "2"}  # the successor took the free slot; no fourth series
        after = scrape(server.port)
        assert after[("process_cpu_seconds_total", ())] >= cpu_before
        assert len([k for k in after if k[0] == "process_resident_memory_bytes"]) == 3


def test_process_facts_are_never_read_on_the_request_path(monkeypatch: pytest.MonkeyPatch) -> None:
    callers: list[str] = []
    real = procfs.process_stats

    def spy(pid: int) -> procfs.ProcessStats:
        callers.append(threading.current_thread().name)
        return real(pid)

    monkeypatch.setattr(procfs, "process_stats", spy)
    registry = Registry()
    mw = ObservabilityMiddleware(
        hello, registry=registry, auto_configure_logging=False, access_log=False, maintenance_interval_seconds=0.05
    )
    for _ in range(200):
        call_wsgi(mw, make_environ(PATH_INFO="/x"))
    deadline = time.monotonic() + 5
    while not callers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert callers, "the sampler never ran"
    assert set(callers) == {"softfactory_obs-maintenance"}


def test_read_small_reads_a_file_whole_in_few_system_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * 1000)  # several reads' worth
    calls: list[str] = []
    for name in ("open", "read", "close", "fstat", "lseek"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    assert procfs.read_small(str(big)) == big.read_bytes()
    assert procfs.read_small("/proc/self/statm").split()[0].isdigit()
    # open(): open, fstat, lseek... per file; here an open, the reads until empty, a close.
    assert calls.count("open") == 2 and calls.count("close") == 2
    assert "fstat" not in calls and "lseek" not in calls and calls.count("read") >= 5
    with pytest.raises(FileNotFoundError):
        procfs.read_small(str(tmp_path / "missing"))


def test_the_memory_limit_is_read_once_a_minute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from softfactory_obs import cgroup  # noqa: PLC0415
    from softfactory_obs.metrics import process  # noqa: PLC0415

    reads: list[int] = []
    limit = 512 * 2**20
    monkeypatch.setattr(cgroup, "memory_limit_bytes", lambda: reads.append(1) or limit)
    sampler = ProcessSampler(Registry(str(tmp_path / "store")))
    sampler.sample()
    sampler.sample()
    assert len(reads) == 1
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + process.TOTAL_MEMORY_SECONDS + 1)  # a minute later
    sampler.sample()
    assert len(reads) == 2
    percent = samples(sampler.registry)[("softfactory_obs_worker_memory_percent", (("worker", "0"),))]
    assert percent == pytest.approx(procfs.process_stats(os.getpid()).rss / limit * 100, rel=0.2)


@pytest.mark.parametrize("from_proc", [True, False], ids=["/proc", "psutil-fallback"])
def test_procfs_agrees_with_psutil(monkeypatch: pytest.MonkeyPatch, from_proc: bool) -> None:
    monkeypatch.setattr(procfs, "_PROC", from_proc and procfs._PROC)
    me = psutil.Process()
    stats = procfs.process_stats(os.getpid())
    assert abs(stats.rss - me.memory_info().rss) / stats.rss < 0.2
    assert abs(stats.vms - me.memory_info().vms) / stats.vms < 0.2
    assert stats.threads == me.num_threads()
    assert abs(stats.fds - me.num_fds()) <= 2  # listing /proc/self/fd opens one itself
    cpu = me.cpu_times()
    assert abs(stats.cpu_seconds - (cpu.user + cpu.system)) < 0.5
    assert abs(stats.start_time - me.create_time()) < 1.0
    assert abs(procfs.start_time(os.getppid()) - psutil.Process(os.getppid()).create_time()) < 1.0
    assert procfs.command_line(os.getpid())[: len(me.cmdline())] == me.cmdline()
    total, used = procfs.memory()
    assert total == psutil.virtual_memory().total
    assert abs(used - psutil.virtual_memory().percent) < 5


def test_serving_and_scraping_never_import_psutil_or_prometheus_client(tmp_path: Path) -> None:
    """Each costs every worker about 1 and 2.3 MB of memory (issue 8's RSS budget)."""
    code = f"""
import sys, time
from softfactory_obs import ObservabilityMiddleware
from softfactory_obs.store.metrics import Registry
from wsgiref.util import setup_testing_defaults
def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hi"]
mw = ObservabilityMiddleware(hello, registry=Registry({str(tmp_path / "store")!r}), auto_configure_logging=False,
                             maintenance_interval_seconds=0.05)
for path in ("/x", "/metrics", "/health", "/ready", "/api/metrics/summary"):
    env = {{"PATH_INFO": path}}
    setup_testing_defaults(env)
    body = b"".join(mw(env, lambda *a: None))
time.sleep(0.3)  # a few maintenance rounds: process sampling, history
print(sorted(m for m in ("psutil", "prometheus_client", "hmac") if m in sys.modules))
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
    )
    assert out.stdout.strip() == "[]", out.stderr


def hello(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hi"]


def _cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.gunicorn
def test_worker_cpu_is_exact_under_recycling_and_kill_9(tmp_path: Path) -> None:
    """F4: with --max-requests 40 the sampled counter exposed a fifth to a third of the workers'
    CPU (0.9 with a final sample at exit: the interpreter's shutdown is never seen). Under a master
    the scrape reads it from the kernel: what the master reaped plus its living workers. The real
    CPU is what wait4 gives for the master once it exited, less the master's own."""
    store = tmp_path / "store"
    env = {"SOFTFACTORY_OBS_METRICS_DIR": str(store), "GUNICORN_CMD_ARGS": "--max-requests 40"}
    server = Gunicorn(tmp_path, app="tests.cpu_app:app", workers=4, **env)
    with server:
        assert server.proc is not None
        exposed_before = scrape(server.port)[("process_cpu_seconds_total", ())]
        for n in range(400):
            assert get(server.port, "/burn")[0] == 200
            if n in (100, 250):
                os.kill(worker_pids(server)[0], signal.SIGKILL)  # its CPU is not lost either
        exposed = scrape(server.port)[("process_cpu_seconds_total", ())]
        master = server.proc.pid
        master_own = _cpu_of(master)
        server.proc.send_signal(signal.SIGTERM)  # graceful: every worker exits normally
        _, status, usage = os.wait4(master, 0)
        server.proc.returncode = os.waitstatus_to_exitcode(status)
    workers_real = usage.ru_utime + usage.ru_stime - master_own
    assert workers_real > 8  # the control: 400 requests of 20 ms, and ten generations of workers
    assert exposed >= exposed_before
    # The rest is the workers' shutdown after the scrape (a few tens of ms each).
    assert 0.95 <= exposed / workers_real <= 1.0, (exposed, workers_real)
