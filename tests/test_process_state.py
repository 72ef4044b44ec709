"""Per-process state in a child forked from C, as uWSGI and mod_wsgi fork their workers: Python's
at-fork hooks do not run there, so only the pid check can notice the new process. Each scenario
runs in a fresh interpreter (c_fork_scenarios.py says why)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from servers import ROOT

TESTS = ROOT / "tests"


def scenario(name: str) -> Any:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}"}
    out = subprocess.run(
        [sys.executable, str(TESTS / "c_fork_scenarios.py"), name],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_a_c_forked_worker_hands_out_ids_of_its_own() -> None:
    seen = scenario("ids")
    assert seen["inherited"] == seen["parent_next"][0]  # the control: this fork really copied the parent's ids
    assert len(set(seen["ids"])) == 50
    assert not set(seen["ids"]) & set(seen["parent_next"]), "the child repeated ids its parent hands out"
    # The child's capture holds the parent's one line (written before the fork) and its own fifty.
    assert seen["line_pids"] == sorted([seen["parent_pid"], seen["pid"]])


def test_a_c_forked_worker_writes_a_shard_of_its_own() -> None:
    seen = scenario("shards")
    shards = [name for name in seen["files"] if name.endswith(".shard")]
    assert any(f"w-{seen['child_pid']}-" in name for name in shards), seen["files"]  # the child's own shard
    assert any(f"w-{seen['parent_pid']}-" in name for name in shards), seen["files"]  # and the parent's, apart
    assert (seen["imported"], seen["child_total"], seen["shards"]) == (2, 1, 2)


def test_resets_run_once_in_order_each_whatever_another_raised_and_hold_owners_weakly() -> None:
    seen = scenario("resets")
    assert seen["log"] == ["first", "broken", "last"]  # "dropped" was collected: never called
    assert seen["failures"].get("test reset broken") == 1
    assert seen["dropped_collected"] and seen["owners"] == 3
    assert seen["parent_log"] == []  # nothing ran in the parent
