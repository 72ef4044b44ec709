"""Per-process state in a child forked from C, as uWSGI and mod_wsgi fork their workers: Python's
at-fork hooks do not run there, so only the pid check can notice the new process."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import LogCapture, call_wsgi, in_c_forked_child, samples

from softfactory_obs import ObservabilityMiddleware
from softfactory_obs._failures import failure_counts
from softfactory_obs.process_state import ensure_current, on_new_process
from softfactory_obs.request_id import new_request_id
from softfactory_obs.store.directory import StoreDirectory
from softfactory_obs.store.metrics import Counter, Registry


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hi"]


def in_child_reporting(body: Callable[[], Any]) -> Any:
    """Run ``body`` in a C-forked child and return what it returned (JSON through a pipe)."""
    read_end, write_end = os.pipe()

    def child() -> None:
        os.close(read_end)
        os.write(write_end, json.dumps(body()).encode())

    code = in_c_forked_child(child)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    assert code == 0, "the child failed (its traceback is on stderr)"
    return json.loads(data)


def test_a_c_forked_worker_hands_out_ids_of_its_own(logs: LogCapture) -> None:
    # metrics=False: no maintenance thread to start in the child (see the next test).
    mw = ObservabilityMiddleware(hello, registry=Registry(), auto_configure_logging=False, metrics=False)
    call_wsgi(mw)  # the parent is in the middle of a batch of ids when it forks

    def child() -> dict[str, Any]:
        inherited = new_request_id()  # before any request: the parent's next id, nothing has reset yet
        ids = [call_wsgi(mw).header("X-Request-Id")[0] for _ in range(50)]
        pids = {line["pid"] for line in logs.access()}
        return {"inherited": inherited, "ids": ids, "pid": os.getpid(), "line_pids": sorted(pids)}

    seen = in_child_reporting(child)
    parent_next = [new_request_id() for _ in range(51)]
    assert seen["inherited"] == parent_next[0]  # the control: this fork really copied the parent's ids
    assert len(set(seen["ids"])) == 50
    assert not set(seen["ids"]) & set(parent_next), "the child repeated ids its parent hands out"
    # The access lines written in the child carry the child's pid (the parent's line is not in its capture).
    assert seen["line_pids"] == [os.getpid(), seen["pid"]]


def test_a_c_forked_worker_writes_a_shard_of_its_own(tmp_path: Path) -> None:
    # (No middleware here: its first request starts the maintenance thread, and starting a thread in
    # a child forked from C can hang on a threading lock another thread of this test process held at
    # the fork; the real uWSGI test covers the request path.)
    registry = Registry(str(tmp_path))
    imported = Counter("imported_total", "written before the fork", registry=registry)
    imported.inc()  # binds the parent's shard

    def child() -> int:
        ensure_current()  # what every request does first
        imported.inc()
        Counter("child_total", "written in the child only", registry=registry).inc()
        return os.getpid()

    child_pid = in_child_reporting(child)
    names = sorted(os.listdir(tmp_path))
    shards = [n for n in names if n.endswith(".shard")]
    assert any(f"w-{child_pid}-" in n for n in shards), names  # the child's own shard
    assert any(f"w-{os.getpid()}-" in n for n in shards), names  # and the parent's, apart
    values = samples(registry)
    assert values[("imported_total", ())] == 2
    assert values[("child_total", ())] == 1
    snap = StoreDirectory(str(tmp_path)).snapshot()  # raises on a shard two processes wrote at once
    assert snap.live_shards + snap.dead_shards == 2


class Owner:
    """A reset owner; resets are held weakly, so the test keeps it alive itself."""

    def __init__(self, log: list[str], name: str, fail: bool = False) -> None:
        self.log, self.name, self.fail = log, name, fail
        on_new_process(self.reset, component=f"test reset {name}")

    def reset(self) -> None:
        self.log.append(self.name)
        ensure_current()  # a reset that calls back (as the store's does, through a failure count)
        if self.fail:
            raise RuntimeError(f"{self.name} failed")


def test_resets_run_once_in_order_each_whatever_another_raised() -> None:
    log: list[str] = []
    owners = [Owner(log, "first"), Owner(log, "broken", fail=True), Owner(log, "last")]

    def child() -> dict[str, Any]:
        ensure_current()
        ensure_current()  # once per process, however often it is asked
        return {"log": log, "failures": failure_counts()}

    seen = in_child_reporting(child)
    assert seen["log"] == ["first", "broken", "last"]
    assert seen["failures"].get("test reset broken") == 1
    assert log == [] and len(owners) == 3  # nothing ran in the parent


def test_a_reset_does_not_keep_its_owner_alive() -> None:
    import gc  # noqa: PLC0415
    import weakref  # noqa: PLC0415

    log: list[str] = []
    kept, dropped = Owner(log, "kept"), Owner(log, "dropped")
    gone = weakref.ref(dropped)
    del dropped
    gc.collect()
    assert gone() is None
    assert in_child_reporting(lambda: (ensure_current(), log)[1]) == ["kept"]
    assert kept.log is log
