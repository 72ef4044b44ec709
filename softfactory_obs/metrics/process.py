"""Per-worker process metrics, sampled by each worker about itself off the request path.

Reading them (procfs.py) costs tens of µs, so it runs in the maintenance thread every few
seconds, never in a request. Each worker claims the lowest free slot number (a ``flock`` on
``slot-<n>.lock`` held for life, so a killed worker's slot frees itself) and labels its series
``worker="<n>"``: the label set stays as small as the number of workers, and a successor takes
over its predecessor's series.
Gauges are live-only, so a dead worker's memory disappears from the next scrape, kill -9 included.
CPU is a single counter over all workers. Under a master that forks and reaps the workers
(gunicorn, uWSGI) it is read at scrape time from the kernel: what the master reaped plus what its
living workers used, exact through any churn and kill -9, and never smaller than before. Without
one (mod_wsgi daemons, a single process) each incarnation adds what it used since its last sample
and once more at a normal exit, so the total only grows.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterable

from .. import cgroup, procfs
from .._failures import report_failure
from ..process_state import ensure_current, on_new_process
from ..store.metrics import Counter, Gauge, Registry
from .families import Family, gauge

MAX_SLOTS = 1024
TOTAL_MEMORY_SECONDS = 60.0  # how often the memory percent's denominator is read again
CPU_HELP = "CPU time (user + system) used by all worker processes, living and dead"


class ProcessSampler:
    """Samples this worker's memory, CPU, fds and threads into the store, labelled by a reusable
    worker slot."""

    def __init__(self, registry: Registry, service: str = "app", version: str = "") -> None:
        self.registry = registry
        self.service = service
        self.version = version
        labels = ["worker"]
        self.rss = Gauge(
            "process_resident_memory_bytes", "Resident memory of each worker process", labels, registry=registry
        )
        self.vms = Gauge(
            "process_virtual_memory_bytes", "Virtual memory of each worker process", labels, registry=registry
        )
        self.fds = Gauge("process_open_fds", "Open file descriptors of each worker process", labels, registry=registry)
        self.threads = Gauge("process_threads", "Threads of each worker process", labels, registry=registry)
        self.start = Gauge(
            "process_start_time_seconds", "Start time of each worker process (Unix time)", labels, registry=registry
        )
        self.cpu_percent = Gauge(
            "softfactory_obs_worker_cpu_percent",
            "CPU use of each worker since its previous sample, percent of one core",
            labels,
            registry=registry,
        )
        self.memory_percent = Gauge(
            "softfactory_obs_worker_memory_percent",
            "Resident memory of each worker, percent of the container's memory limit (of the machine without one)",
            labels,
            registry=registry,
        )
        self.pid = Gauge("softfactory_obs_worker_pid", "Process id behind each worker slot", labels, registry=registry)
        self._cpu: Counter | None = None  # only where no master counts for us (see _add_cpu)
        self._master: int | None = None
        self._slot_fd: int | None = None
        self._slot: str | None = None  # claimed by the first sample in each process
        self._cpu_seen = 0.0
        self._sampled_at = 0.0
        self._total_memory = 0  # the container's memory limit, else the machine's memory
        self._total_memory_due = 0.0  # when to read it again (time.monotonic())
        self._cpu_lock = threading.Lock()  # the maintenance thread and the exit sample may meet
        self._exit_hooked = False
        registry.callbacks.append(self.collect_at_scrape)
        on_new_process(self._forget_slot, component="process metrics after fork")

    def _forget_slot(self) -> None:
        if self._slot_fd is not None:  # inherited through fork: the slot is our parent's
            with contextlib.suppress(OSError):
                os.close(self._slot_fd)
            self._slot_fd = None
        self._slot = None
        self._cpu_seen = 0.0
        self._sampled_at = 0.0
        self._cpu_lock = threading.Lock()
        self._exit_hooked = False
        self._master = None

    def _claim_slot(self) -> str:
        directory = self.registry.directory
        if directory is None:
            return "0"
        for n in range(MAX_SLOTS):
            fd = os.open(os.path.join(directory.path, f"slot-{n}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    continue
                raise
            self._slot_fd = fd  # held for life; the kernel frees it when we die
            return str(n)
        return "overflow"

    def sample(self) -> None:
        """Called in the maintenance thread: the first call in a process claims its slot."""
        pid = ensure_current()
        if self._slot is None:
            self._slot = self._claim_slot()
            self._master = procfs.workers_master()
        stats = procfs.process_stats(pid)
        now = time.monotonic()
        used = stats.cpu_seconds
        # Since the previous sample (0 on the first, as psutil's cpu_percent(interval=None)).
        cpu_percent = (used - self._cpu_seen) / (now - self._sampled_at) * 100 if self._sampled_at else 0.0
        self._sampled_at = now
        if now >= self._total_memory_due:  # a limit seldom changes; each read is system calls (procfs.read_small)
            self._total_memory = cgroup.memory_limit_bytes() or procfs.memory()[0]
            self._total_memory_due = now + TOTAL_MEMORY_SECONDS
        total_memory = self._total_memory
        slot = self._slot
        self.rss.labels(slot).set(stats.rss)
        self.vms.labels(slot).set(stats.vms)
        self.fds.labels(slot).set(stats.fds)
        self.threads.labels(slot).set(stats.threads)
        self.start.labels(slot).set(stats.start_time)
        self.cpu_percent.labels(slot).set(max(0.0, cpu_percent))
        self.memory_percent.labels(slot).set(stats.rss / total_memory * 100 if total_memory else 0.0)
        self.pid.labels(slot).set(pid)
        self._add_cpu(used)

    def _add_cpu(self, used: float) -> None:
        if self._master is not None:
            return  # read from the kernel at scrape time (collect_at_scrape), exactly
        with self._cpu_lock:
            if self._cpu is None:
                self._cpu = Counter("process_cpu_seconds_total", CPU_HELP, registry=self.registry)
            if used > self._cpu_seen:  # cumulative per process: add the growth, never anything negative
                self._cpu.inc(used - self._cpu_seen)
                self._cpu_seen = used

    def watch_exit(self) -> None:
        """In a worker: add its last CPU when it exits normally (max_requests recycling, SIGTERM,
        SIGQUIT: the interpreter's exit runs ``atexit``), not only what the last sample saw, up to
        an interval earlier. A SIGKILL (or ``os._exit``) loses the time since the last sample."""
        if not self._exit_hooked and procfs.workers_master() is None:
            self._exit_hooked = True
            atexit.register(self.sample_cpu_at_exit, os.getpid())

    def sample_cpu_at_exit(self, pid: int) -> None:
        """The worker's final CPU (only in the process that registered it: a fork inherits the hook)."""
        if pid != os.getpid():
            return
        try:
            self._add_cpu(procfs.process_stats(pid).cpu_seconds)
        except Exception as exc:  # at exit: nothing to serve any more, but say so
            report_failure("process metrics at exit", exc)

    def collect_at_scrape(self) -> Iterable[Family]:
        """Service-level facts computed in the scraping process: uptime, master memory, info."""
        service = procfs.service_pid()
        yield gauge(
            "app_uptime_seconds",
            "Seconds since the service (the gunicorn master, or this process) started",
            max(0.0, time.time() - procfs.start_time(service)),
        )
        info = Family("app_info", "Service name and version", "gauge", ["service", "version"])
        info.add([self.service, self.version], 1)
        yield info
        if service != os.getpid() and procfs.parent_is_gunicorn():
            yield gauge(
                "gunicorn_master_resident_memory_bytes", "Resident memory of the master", procfs.resident_bytes(service)
            )
        master = procfs.workers_master()
        if master is not None:
            cpu = Family("process_cpu_seconds_total", CPU_HELP, "counter")
            cpu.add((), procfs.workers_cpu_seconds(master))
            yield cpu
        yield from container_families()


def container_families() -> Iterable[Family]:
    """The container's limits and its memory in use, from the cgroup every worker shares (only
    those it has: no limit, no limit gauge)."""
    for name, documentation, value in (
        (
            "softfactory_obs_container_memory_limit_bytes",
            "Memory limit of the container (its cgroup) the service runs in",
            cgroup.memory_limit_bytes(),
        ),
        (
            "softfactory_obs_container_memory_usage_bytes",
            "Memory the container (its cgroup: every worker and the master) uses, as its limit counts it",
            cgroup.memory_usage_bytes(),
        ),
        (
            "softfactory_obs_container_cpu_limit_cores",
            "CPU quota of the container in cores (cpu.max, or cfs_quota_us / cfs_period_us)",
            cgroup.cpu_limit_cores(),
        ),
    ):
        if value is not None:
            yield gauge(name, documentation, value)
