"""Per-worker process metrics, sampled by each worker about itself off the request path.

psutil costs 10-40 µs a call, so it runs in the maintenance thread every few seconds, never in a
request. Each worker claims the lowest free slot number (a ``flock`` on ``slot-<n>.lock`` held for
life, so a killed worker's slot frees itself) and labels its series ``worker="<n>"``: the label
set stays as small as the number of workers, and a successor takes over its predecessor's series.
Gauges are live-only, so a dead worker's memory disappears from the next scrape, kill -9 included.
CPU is a single counter over all workers: each incarnation adds what it used since its last
sample, so the total only grows across any churn.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterable

import psutil

from .families import Family, gauge
from .store.metrics import Counter, Gauge, Registry

MAX_SLOTS = 1024


class ProcessSampler:
    def __init__(self, registry: Registry, service: str = "app", version: str = "") -> None:
        self.registry = registry
        self.service = service
        self.version = version
        labels = ["worker"]
        self.rss = Gauge("process_resident_memory_bytes", "Resident memory of each worker process", labels,
                         registry=registry)
        self.vms = Gauge("process_virtual_memory_bytes", "Virtual memory of each worker process", labels,
                         registry=registry)
        self.fds = Gauge("process_open_fds", "Open file descriptors of each worker process", labels,
                         registry=registry)
        self.threads = Gauge("process_threads", "Threads of each worker process", labels, registry=registry)
        self.start = Gauge("process_start_time_seconds", "Start time of each worker process (Unix time)", labels,
                           registry=registry)
        self.cpu_percent = Gauge("softfactory_obs_worker_cpu_percent", "CPU use of each worker since its previous "
                                 "sample, percent of one core", labels, registry=registry)
        self.memory_percent = Gauge("softfactory_obs_worker_memory_percent", "Resident memory of each worker, "
                                    "percent of the machine", labels, registry=registry)
        self.pid = Gauge("softfactory_obs_worker_pid", "Process id behind each worker slot", labels, registry=registry)
        self.cpu = Counter("process_cpu_seconds_total", "CPU time (user + system) used by all worker processes, "
                           "living and dead", registry=registry)
        self._pid = 0
        self._slot_fd: int | None = None
        self._slot = "0"
        self._cpu_seen = 0.0
        self._process: psutil.Process | None = None
        registry.callbacks.append(self.collect_at_scrape)

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
        pid = os.getpid()
        if pid != self._pid:
            if self._slot_fd is not None:  # inherited through fork: the slot is our parent's
                with contextlib.suppress(OSError):
                    os.close(self._slot_fd)
                self._slot_fd = None
            self._pid = pid
            self._process = psutil.Process(pid)
            self._slot = self._claim_slot()
            self._cpu_seen = 0.0
        process = self._process
        assert process is not None
        with process.oneshot():
            memory = process.memory_info()
            cpu = process.cpu_times()
            fds = process.num_fds()
            threads = process.num_threads()
            started = process.create_time()
            cpu_percent = process.cpu_percent(interval=None)  # since the previous sample
            memory_percent = process.memory_percent()
        slot = self._slot
        self.rss.labels(slot).set(memory.rss)
        self.vms.labels(slot).set(memory.vms)
        self.fds.labels(slot).set(fds)
        self.threads.labels(slot).set(threads)
        self.start.labels(slot).set(started)
        self.cpu_percent.labels(slot).set(cpu_percent)
        self.memory_percent.labels(slot).set(memory_percent)
        self.pid.labels(slot).set(pid)
        used = cpu.user + cpu.system
        if used > self._cpu_seen:  # cumulative per process: add the growth, never anything negative
            self.cpu.inc(used - self._cpu_seen)
            self._cpu_seen = used

    def collect_at_scrape(self) -> Iterable[Family]:
        """Service-level facts computed in the scraping process: uptime, master memory, info."""
        service_start = service_process()
        yield gauge("app_uptime_seconds", "Seconds since the service (the gunicorn master, or this process) started",
                    max(0.0, time.time() - service_start.create_time()))
        info = Family("app_info", "Service name and version", "gauge", ["service", "version"])
        info.add([self.service, self.version], 1)
        yield info
        if service_start.pid != os.getpid():
            yield gauge("gunicorn_master_resident_memory_bytes", "Resident memory of the master",
                        service_start.memory_info().rss)


def service_process() -> psutil.Process:
    me = psutil.Process()
    try:
        parent = me.parent()
        if parent is not None and any("gunicorn" in part for part in parent.cmdline()):
            return parent
    except psutil.Error:
        pass
    return me
