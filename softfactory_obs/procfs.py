"""The few process and machine facts we report, read from /proc on Linux; psutil elsewhere.

We need six numbers about a process and two about the machine. On Linux they are a couple of
small reads away; importing psutil for them costs every worker about 1 MB of resident memory, so
psutil is imported only where /proc is missing (macOS and other development machines).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from .extras import require

_PROC = os.path.isdir("/proc/self/fd") and os.path.exists("/proc/self/statm")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcessStats:
    """What /proc says of one process: memory, CPU seconds, fds, threads, start time."""

    rss: int  # bytes
    vms: int  # bytes
    cpu_seconds: float  # user + system, all threads
    fds: int
    threads: int
    start_time: float  # Unix time


def read_small(path: str) -> bytes:
    """A small /proc or /sys file, whole. The maintenance thread reads these while requests run:
    each system call lets go of the GIL, and under load getting it back means waiting for a busy
    request thread (which pays for the handover too). open() makes nine calls of a read like this
    (fstat twice, ioctl, lseek twice); this makes four."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 65536)
        while chunk := os.read(fd, 65536):  # a file read in parts (proc files return what they have)
            data += chunk
    finally:
        os.close(fd)
    return data


def _stat_fields(pid: int) -> list[str]:
    raw = read_small(f"/proc/{pid}/stat").decode("ascii", "replace")
    return raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ": comm may hold spaces and parentheses


_boot_time: float | None = None


def boot_time() -> float:
    """When the machine booted, in seconds since the epoch."""
    global _boot_time  # noqa: PLW0603 - read once per process
    if _boot_time is None:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    _boot_time = float(line.split()[1])
                    break
            else:
                _boot_time = 0.0
    return _boot_time


def process_stats(pid: int) -> ProcessStats:
    """``ProcessStats`` of ``pid`` (psutil where /proc is missing)."""
    if not _PROC:
        return _psutil_stats(pid)
    fields = _stat_fields(pid)  # field n of proc(5) is fields[n - 3]
    size, resident = read_small(f"/proc/{pid}/statm").split()[:2]
    return ProcessStats(
        rss=int(resident) * _PAGE,
        vms=int(size) * _PAGE,
        cpu_seconds=(int(fields[11]) + int(fields[12])) / _TICKS,
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        threads=int(fields[17]),
        start_time=boot_time() + int(fields[19]) / _TICKS,
    )


def start_time(pid: int) -> float:
    """When process ``pid`` started, in seconds since the epoch."""
    if not _PROC:
        return float(_psutil().Process(pid).create_time())
    return boot_time() + int(_stat_fields(pid)[19]) / _TICKS


def resident_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes."""
    if not _PROC:
        return int(_psutil().Process(pid).memory_info().rss)
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def command_line(pid: int) -> list[str]:
    """The command line of process ``pid`` as a list of arguments (empty when unreadable)."""
    if not _PROC:
        return list(_psutil().Process(pid).cmdline())
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().decode("utf-8", "replace").split("\0")


def parent_is_gunicorn() -> bool:
    """True in a gunicorn worker: a fork of its master, so the two share a command line (or, with
    setproctitle, the parent calls itself ``gunicorn: master``). A parent that merely mentions
    gunicorn (``sh -c "cd /app && gunicorn ..."``, a test runner) is not one: its child is a master."""
    try:
        parent = command_line(os.getppid())
        if parent[:1] and parent[0].startswith("gunicorn: master"):
            return True
        return "gunicorn" in " ".join(parent) and parent == command_line(os.getpid())
    except (OSError, ValueError):  # gone already, or not ours to read
        return False


def service_pid() -> int:
    """The service's master (gunicorn's, uWSGI's, Apache's, or the uvicorn or hypercorn supervisor)
    when there is one, else this process."""
    if parent_is_gunicorn():
        return os.getppid()
    supervisor = spawning_supervisor()
    if supervisor is not None:
        return supervisor
    if mod_wsgi_interpreter() is not None and os.getppid() != 1:
        # Apache's parent forks mod_wsgi's daemon processes and its embedded-mode children alike,
        # and keeps its pid through graceful restarts. (Reparented to init: ``apache2 -X``.)
        return os.getppid()
    return uwsgi_master() or os.getpid()


def spawning_supervisor() -> int | None:
    """The pid of the uvicorn or hypercorn process that started this worker (``--workers N``:
    multiprocessing's spawn, so no fork and no shared parent memory); None elsewhere."""
    if "uvicorn" not in sys.modules and "hypercorn" not in sys.modules:
        return None
    multiprocessing = sys.modules.get("multiprocessing")
    parent = multiprocessing.parent_process() if multiprocessing is not None else None
    return parent.pid if parent is not None and parent.pid is not None else None


def mod_wsgi_interpreter() -> str | None:
    """Under Apache mod_wsgi, which of its interpreters this is: ``"<process group>|<application
    group>"`` (the process group is empty in embedded mode); None elsewhere."""
    mod_wsgi = sys.modules.get("mod_wsgi")  # mod_wsgi's embedded module, there from the start
    if mod_wsgi is None or not hasattr(mod_wsgi, "process_group"):
        return None
    return f"{mod_wsgi.process_group}|{mod_wsgi.application_group}"


def server_owns_signals() -> bool:
    """True under uWSGI and mod_wsgi, whose workers' signals belong to C handlers of the server's.

    A Python handler there would replace uWSGI's (which reloads or stops the worker) and would
    only run once Python runs again, after the next request: a worker told to stop waited for the
    master's reload mercy. mod_wsgi ignores Python's handlers and logs a warning for each."""
    return "uwsgi" in sys.modules or "mod_wsgi" in sys.modules


def uwsgi_master() -> int | None:
    """The uWSGI master's pid, in the master itself or in any of its workers; None outside uWSGI
    or without ``--master``."""
    uwsgi = sys.modules.get("uwsgi")  # uWSGI's embedded module, there from its start
    if uwsgi is None or not hasattr(uwsgi, "masterpid"):
        return None
    return int(uwsgi.masterpid()) or None  # 0 without --master


def workers_master() -> int | None:
    """The process that forked this worker and reaps it (a gunicorn or uWSGI master), if any."""
    if parent_is_gunicorn():
        return os.getppid()
    master = uwsgi_master()
    return master if master != os.getpid() else None


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        found: list[int] = []
        for task in tasks:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as f:
                found += [int(child) for child in f.read().split()]
        return found
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN: look for them
        children = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if int(_stat_fields(int(entry))[1]) == pid:
                        children.append(int(entry))
                except (OSError, IndexError, ValueError):
                    continue
        return children


def workers_cpu_seconds(master: int, attempts: int = 10) -> float:
    """User + system CPU of every process ``master`` forked, living or dead: what it reaped (its
    children's times, which the kernel adds at each wait) plus what its living (or exited, not yet
    reaped) children used so far, their own reaped children included. Exact, and never smaller
    than an earlier answer: a read during which the master reaped someone is read again."""
    total = 0.0
    for _ in range(attempts):
        reaped = _children_ticks(master)
        total = 0.0
        try:
            for child in _children(master):
                fields = _stat_fields(child)
                total += sum(int(n) for n in fields[11:15])  # utime, stime, cutime, cstime
        except FileNotFoundError:  # reaped while we read: read everything again
            continue
        if _children_ticks(master) == reaped:
            return (reaped + total) / _TICKS
    raise RuntimeError(f"process {master} reaped a worker during each of {attempts} reads of its workers' CPU")


def _children_ticks(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[13]) + int(fields[14])  # cutime, cstime


def pid_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists (a zombie counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def memory() -> tuple[int, float]:
    """(total bytes, percent in use) of the machine, as psutil.virtual_memory() counts them."""
    if not _PROC:
        vm = _psutil().virtual_memory()
        return int(vm.total), float(vm.percent)
    info: dict[str, int] = {}
    for line in read_small("/proc/meminfo").splitlines():
        key, _, rest = line.partition(b":")
        info[key.decode()] = int(rest.split()[0]) * 1024
    total = info["MemTotal"]
    available = info.get("MemAvailable", info.get("MemFree", 0))
    return total, round((total - available) / total * 100, 1) if total else 0.0


def _psutil() -> Any:
    return require("psutil", "process metrics without /proc")  # only where /proc is missing


def _psutil_stats(pid: int) -> ProcessStats:
    process = _psutil().Process(pid)
    with process.oneshot():
        memory_info, cpu = process.memory_info(), process.cpu_times()
        return ProcessStats(
            int(memory_info.rss),
            int(memory_info.vms),
            cpu.user + cpu.system,
            process.num_fds(),
            process.num_threads(),
            process.create_time(),
        )
