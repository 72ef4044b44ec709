"""Instructions per request under callgrind: the one measure here that does not move with the host's load.

The in-process runner of bench/peers.py runs twice under ``valgrind --tool=callgrind`` per
variant, with ``n`` and ``6 n`` requests; the difference divided by ``5 n`` is one request's
user-space instructions, start-up and warm-up cancelled out. The same binary, inputs and
environment give the same count whatever the machine is doing, so a change of a few percent
shows here when timings cannot tell it from noise. System calls (the access line's write) are
not counted: they run in the kernel.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from .apps import VARIANTS
from .peers import ROOT, RUNNER

ORDER = ["bare", "ours", "ours-metrics", "ours-log", "naive"]
_COLLECTED = re.compile(r"Collected : (\d+)")


def available() -> bool:
    return shutil.which("valgrind") is not None


def _count(variant: str, n: int, tmp: str) -> int:
    env = dict(os.environ, PYTHONHASHSEED="0")  # string hashing decides dict probe lengths: fix it
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
        cwd=ROOT,
        env=env,
    )
    found = _COLLECTED.search(out.stderr)
    if out.returncode != 0 or found is None:
        raise RuntimeError(f"{VARIANTS[variant]} under callgrind: {out.stderr.strip()[-500:]}")
    return int(found[1])


def run(n: int = 1000) -> dict[str, float]:
    """Instructions per request of each variant (two at a time: the counts do not mind sharing cores)."""
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
        jobs = {v: (pool.submit(_count, v, n, tmp), pool.submit(_count, v, 6 * n, tmp)) for v in ORDER}
        return {v: (more.result() - fewer.result()) / (5 * n) for v, (fewer, more) in jobs.items()}
