"""The container's limits, from this process's cgroup (v2 unified, or v1 controllers).

In a pod limited to 512 MiB on a 64 GiB node, the machine's memory says nothing about the OOM
kill to come: the cgroup's limit does. Every worker of a pod shares one cgroup, so its usage is
the pod's (all workers, the master, anything else in the container) and any worker can report
it. ``root`` is where cgroup file systems are mounted and ``membership`` the process's
``/proc/<pid>/cgroup`` (tests point both elsewhere).
"""

from __future__ import annotations

import os

from .procfs import read_small

ROOT = "/sys/fs/cgroup"
# v1 reports "no limit" as the largest page-aligned int64 (9223372036854771712), v2 as "max".
_UNLIMITED = 2**62


SELF = "/proc/self/cgroup"


def _paths(membership: str) -> dict[str, str]:
    """Controller -> the cgroup path ``membership`` (a /proc/<pid>/cgroup file) names; ``""`` is
    the v2 unified hierarchy."""
    found: dict[str, str] = {}
    try:
        for line in read_small(membership).decode().split("\n"):
            if not line:
                continue
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(","):
                found[controller] = path
    except (OSError, ValueError):
        pass
    return found


def _read(relative: str, name: str, controller: str, root: str) -> str | None:
    """A cgroup file of ours: under the controller's mount at our path, or at its root (a cgroup
    namespace shows our own cgroup as the root)."""
    base = os.path.join(root, controller) if controller else root
    for directory in (os.path.join(base, relative.lstrip("/")), base):
        try:
            return read_small(os.path.join(directory, name)).decode("ascii").strip()
        except OSError:
            continue
    return None


def _memory_number(v1: str, v2: str, root: str, membership: str) -> int | None:
    """A number of the memory controller: file ``v1`` under cgroup v1, ``v2`` under v2; None for
    v2's "max" or nothing readable."""
    paths = _paths(membership)
    if "memory" in paths:
        raw = _read(paths["memory"], v1, "memory", root)
    elif "" in paths:
        raw = _read(paths[""], v2, "", root)
    else:
        return None
    return int(raw) if raw is not None and raw.isdigit() else None


def memory_limit_bytes(root: str = ROOT, membership: str = SELF) -> int | None:
    """The container's memory limit in bytes, or None without one."""
    limit = _memory_number("memory.limit_in_bytes", "memory.max", root, membership)
    return limit if limit is not None and limit < _UNLIMITED else None


def memory_usage_bytes(root: str = ROOT, membership: str = SELF) -> int | None:
    """Memory the whole cgroup uses now (what its limit is compared with), or None."""
    return _memory_number("memory.usage_in_bytes", "memory.current", root, membership)


def cpu_limit_cores(root: str = ROOT, membership: str = SELF) -> float | None:
    """The container's CPU quota in cores (``cpu.max`` 50000/100000 is 0.5), or None without one."""
    paths = _paths(membership)
    if "cpu" in paths:
        quota = _read(paths["cpu"], "cpu.cfs_quota_us", "cpu", root)
        period = _read(paths["cpu"], "cpu.cfs_period_us", "cpu", root)
    elif "" in paths:
        both = (_read(paths[""], "cpu.max", "", root) or "").split()
        quota, period = (both[0], both[1]) if len(both) == 2 else (None, None)
    else:
        return None
    if quota is None or period is None or not quota.isdigit() or not period.isdigit() or not int(period):
        return None  # "max" or -1: no quota
    return int(quota) / int(period)
