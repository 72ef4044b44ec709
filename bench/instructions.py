"""Instructions per request under callgrind: the one measure here that does not move with the host's load.

The in-process runner of bench/peers.py runs twice under ``valgrind --tool=callgrind`` per
variant, with ``n`` and ``6 n`` requests; the difference divided by ``5 n`` is one request's
user-space instructions, start-up and warm-up cancelled out. The same binary, inputs and
environment give the same count whatever the machine is doing, so a change of a few percent
shows here when timings cannot tell it from noise. System calls (the access line's write) are
not counted: they run in the kernel.

Callgrind counts every thread. The maintenance thread wakes by the wall clock (every 5 s), which
runs some 50 times slower under callgrind, and its work (compaction, /proc samples) is not a
request's: counted, it moved the per-request figure by thousands between two runs of one
commit. The runs set its interval to an hour.

``baseline``: a checkout of an earlier commit (``git worktree add ../base db2d9f8``) whose
variants are counted in the same run, by this runner, for the change against it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .apps import VARIANTS
from .peers import ROOT, RUNNER

ORDER = ["bare", "ours", "ours-metrics", "ours-log", "naive"]
OURS = ["ours", "ours-metrics", "ours-log"]
_COLLECTED = re.compile(r"Collected : (\d+)")


def available() -> bool:
    return shutil.which("valgrind") is not None


def _count(variant: str, n: int, tmp: str, root: Path = ROOT) -> int:
    env = dict(os.environ, PYTHONHASHSEED="0")  # string hashing decides dict probe lengths: fix it
    env["SOFTFACTORY_OBS_MAINTENANCE_INTERVAL_SECONDS"] = "3600"  # see the module docstring
    env["PYTHONPATH"] = str(root)  # the tree measured, ahead of the installed package
    if variant == "naive":
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(dir=tmp)
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-c",
            RUNNER,
            variant,
            str(n),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
        env=env,
    )
    found = _COLLECTED.search(out.stderr)
    if out.returncode != 0 or found is None:
        raise RuntimeError(f"{VARIANTS[variant]} under callgrind: {out.stderr.strip()[-500:]}")
    return int(found[1])


def run(n: int = 1000, baseline: Path | None = None) -> dict[str, float]:
    """Instructions per request of each variant (two at a time: the counts do not mind sharing cores);
    with ``baseline``, also the baseline tree's ``bare`` and our variants, as ``"base:<variant>"``."""
    trees = [(ROOT, "", ORDER)] + ([(baseline, "base:", ["bare", *OURS])] if baseline is not None else [])
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
        jobs = {
            prefix + v: (pool.submit(_count, v, n, tmp, root), pool.submit(_count, v, 6 * n, tmp, root))
            for root, prefix, variants in trees
            for v in variants
        }
        return {v: (more.result() - fewer.result()) / (5 * n) for v, (fewer, more) in jobs.items()}
