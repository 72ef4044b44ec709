"""Container limits from the cgroup: file layouts of cgroup v1 and v2, and a real child cgroup."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import skip_or_fail
from servers import ROOT

from softfactory_obs import cgroup


def layout(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[str, str]:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    (tmp_path / "membership").write_text(membership)
    return str(tmp_path), str(tmp_path / "membership")


def test_cgroup_v2_limits_and_their_absence(tmp_path: Path) -> None:
    root, membership = layout(
        tmp_path,
        "0::/kubepods/pod1\n",
        {
            "kubepods/pod1/memory.max": "536870912",
            "kubepods/pod1/memory.current": "1234",
            "kubepods/pod1/cpu.max": "50000 100000",
        },
    )
    assert cgroup.memory_limit_bytes(root, membership) == 536870912
    assert cgroup.memory_usage_bytes(root, membership) == 1234
    assert cgroup.cpu_limit_cores(root, membership) == 0.5
    (tmp_path / "kubepods/pod1/memory.max").write_text("max\n")
    (tmp_path / "kubepods/pod1/cpu.max").write_text("max 100000\n")
    assert cgroup.memory_limit_bytes(root, membership) is None
    assert cgroup.cpu_limit_cores(root, membership) is None


def test_cgroup_v1_in_a_namespace_sees_its_own_cgroup_at_the_root(tmp_path: Path) -> None:
    root, membership = layout(
        tmp_path,
        "12:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n",  # the paths do not exist in here
        {
            "memory/memory.limit_in_bytes": "1073741824",
            "memory/memory.usage_in_bytes": "5000",
            "cpu/cpu.cfs_quota_us": "150000",
            "cpu/cpu.cfs_period_us": "100000",
        },
    )
    assert cgroup.memory_limit_bytes(root, membership) == 1073741824
    assert cgroup.memory_usage_bytes(root, membership) == 5000
    assert cgroup.cpu_limit_cores(root, membership) == 1.5
    (tmp_path / "memory/memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    (tmp_path / "cpu/cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup.memory_limit_bytes(root, membership) is None
    assert cgroup.cpu_limit_cores(root, membership) is None


@contextlib.contextmanager
def child_cgroup(memory_limit: int, cpu_quota_us: int) -> Iterator[list[Path]]:
    """A real child cgroup of this process's own, with a memory limit and a CPU quota (root only,
    cgroup v1 controllers or v2 with both controllers delegated); removed afterwards."""
    paths = {}
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(","):
                paths[controller] = path
    name = f"softfactory-obs-test-{os.getpid()}"
    made: list[Path] = []
    try:
        if "memory" in paths and "cpu" in paths:  # v1
            memory = Path(cgroup.ROOT, "memory", paths["memory"].lstrip("/"), name)
            cpu = Path(cgroup.ROOT, "cpu", paths["cpu"].lstrip("/"), name)
            for directory in (memory, cpu):
                directory.mkdir()
                made.append(directory)
            (memory / "memory.limit_in_bytes").write_text(str(memory_limit))
            (cpu / "cpu.cfs_period_us").write_text("100000")
            (cpu / "cpu.cfs_quota_us").write_text(str(cpu_quota_us))
        else:  # v2
            unified = Path(cgroup.ROOT, paths.get("", "/").lstrip("/"), name)
            unified.mkdir()
            made.append(unified)
            (unified / "memory.max").write_text(str(memory_limit))
            (unified / "cpu.max").write_text(f"{cpu_quota_us} 100000")
    except OSError as exc:
        for directory in reversed(made):
            with contextlib.suppress(OSError):
                directory.rmdir()
        skip_or_fail(f"cannot make a child cgroup with limits here (needs root and writable cgroups): {exc}")
    try:
        yield made
    finally:
        for directory in reversed(made):
            with contextlib.suppress(OSError):
                directory.rmdir()


SCRIPT = """
import json
from softfactory_obs import cgroup, procfs
from softfactory_obs.metrics.process import ProcessSampler, container_families
from softfactory_obs.store.metrics import Registry
from helpers import samples

registry = Registry()
ProcessSampler(registry).sample()
rss = procfs.process_stats(procfs.os.getpid()).rss
percent = [v for (name, _), v in samples(registry).items() if name == "softfactory_obs_worker_memory_percent"][0]
families = {f.name: f.samples[0].value for f in container_families()}
print(json.dumps({"limit": cgroup.memory_limit_bytes(), "cores": cgroup.cpu_limit_cores(), "rss": rss,
                  "percent": percent, "families": families}))
"""


def test_a_worker_in_a_limited_cgroup_reports_against_the_limit() -> None:
    """The memory percentage is of the container's 256 MiB, not of the machine's memory, and the
    limits are on /metrics; measured in a process moved into a real child cgroup."""
    if os.geteuid() != 0:
        skip_or_fail("making a child cgroup needs root")
    limit = 256 * 1024 * 1024
    with child_cgroup(limit, 50_000) as made:
        joins = " && ".join(f"echo $$ > {d / 'cgroup.procs'}" for d in made)
        out = subprocess.run(
            ["sh", "-c", f'{joins} && exec "$0" -c "$1"', sys.executable, SCRIPT],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
        )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert got["limit"] == limit and got["cores"] == 0.5
    assert got["percent"] == pytest.approx(got["rss"] / limit * 100, rel=0.2)  # not of the machine's memory
    assert got["percent"] > 3  # the control: a Python process is over 8 MiB, 3 % of 256 MiB
    assert got["families"]["softfactory_obs_container_memory_limit_bytes"] == limit
    assert got["families"]["softfactory_obs_container_cpu_limit_cores"] == 0.5
