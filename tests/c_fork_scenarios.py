"""Scenarios for test_process_state.py, each run in a fresh interpreter: ``python c_fork_scenarios.py NAME``
prints the scenario's result as JSON.

Why a fresh interpreter: a process that forks from C (as uWSGI does) must have no other thread at
that moment. A thread waiting for the GIL at the fork leaves the child waiting for ever to hand it
over (PyOS_AfterFork_Child is what resets that, and it is exactly what does not run here); a
pytest process is full of earlier tests' threads.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from helpers import LogCapture, call_wsgi, in_c_forked_child, samples

from softfactory_obs import ObservabilityMiddleware, configure_logging
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
    if code != 0:
        raise RuntimeError("the child failed (its traceback is on stderr)")
    return json.loads(data)


def ids() -> dict[str, Any]:
    """A request in the parent, 50 in a C-forked child through the middleware."""
    logs = LogCapture()
    configure_logging("DEBUG", stream=logs.stream, service="test-svc")
    # metrics=False: a new worker's first request would start the maintenance thread.
    mw = ObservabilityMiddleware(hello, registry=Registry(), auto_configure_logging=False, metrics=False)
    call_wsgi(mw)  # the parent is in the middle of a batch of ids when it forks

    def child() -> dict[str, Any]:
        inherited = new_request_id()  # before any request: the parent's next id, nothing has reset yet
        ids = [call_wsgi(mw).header("X-Request-Id")[0] for _ in range(50)]
        pids = {line["pid"] for line in logs.access()}
        return {"inherited": inherited, "ids": ids, "pid": os.getpid(), "line_pids": sorted(pids)}

    seen = in_child_reporting(child)
    return {**seen, "parent_pid": os.getpid(), "parent_next": [new_request_id() for _ in range(51)]}


def shards() -> dict[str, Any]:
    """A counter bound in the parent, written again in a C-forked child after ensure_current()."""
    directory = tempfile.mkdtemp()
    registry = Registry(directory)
    imported = Counter("imported_total", "written before the fork", registry=registry)
    imported.inc()  # binds the parent's shard

    def child() -> int:
        ensure_current()  # what every request does first
        imported.inc()
        Counter("child_total", "written in the child only", registry=registry).inc()
        return os.getpid()

    child_pid = in_child_reporting(child)
    values = samples(registry)
    snap = StoreDirectory(directory).snapshot()  # raises on a shard two processes wrote at once
    return {
        "child_pid": child_pid,
        "parent_pid": os.getpid(),
        "files": sorted(os.listdir(directory)),
        "imported": values[("imported_total", ())],
        "child_total": values[("child_total", ())],
        "shards": snap.live_shards + snap.dead_shards,
    }


class Owner:
    """A reset owner; resets are held weakly, so the scenario keeps it alive itself."""

    def __init__(self, log: list[str], name: str, fail: bool = False) -> None:
        self.log, self.name, self.fail = log, name, fail
        on_new_process(self.reset, component=f"test reset {name}")

    def reset(self) -> None:
        self.log.append(self.name)
        ensure_current()  # a reset that calls back (as the store's does, through a failure count)
        if self.fail:
            raise RuntimeError(f"{self.name} failed")


def resets() -> dict[str, Any]:
    """Three resets, the middle one failing; one dropped owner."""
    import gc  # noqa: PLC0415
    import weakref  # noqa: PLC0415

    log: list[str] = []
    owners = [Owner(log, "first"), Owner(log, "broken", fail=True), Owner(log, "last")]
    dropped = Owner(log, "dropped")
    gone = weakref.ref(dropped)
    del dropped
    gc.collect()

    def child() -> dict[str, Any]:
        ensure_current()
        ensure_current()  # once per process, however often it is asked
        return {"log": log, "failures": failure_counts()}

    seen = in_child_reporting(child)
    return {**seen, "parent_log": log, "owners": len(owners), "dropped_collected": gone() is None}


if __name__ == "__main__":
    print(json.dumps(globals()[sys.argv[1]]()))
