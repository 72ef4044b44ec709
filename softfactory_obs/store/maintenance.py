"""A daemon thread per worker that compacts dead shards off the request path.

Started by the middleware on the first request a process serves (so never in the gunicorn
master), woken early when a scrape saw dead shards, and otherwise every ``interval`` seconds.
One per registry, however many middlewares share it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from .._failures import report_failure
from ..process_state import on_new_process
from .metrics import Registry


class Maintenance:
    """A registry's background thread: compacts dead shards and runs periodic tasks, off the request
    path."""

    def __init__(self, registry: Registry, interval: float = 5.0) -> None:
        self.registry = registry
        self.interval = interval
        self.tasks: list[Callable[[], object]] = []  # more periodic work (process metrics, health checks)
        self._wake = threading.Event()
        self.started = False  # read on every request: a plain flag, reset in a forked child

    def forget_thread(self) -> None:
        """After fork: the parent's thread does not exist in the child."""
        self.started = False
        self._wake = threading.Event()

    def ensure_started(self) -> None:
        """Start this process's thread, once (a thread-starting failure is reported, not raised)."""
        with _start_lock:
            if self.started:
                return
            self.started = True
        try:
            threading.Thread(
                target=self._run, args=(self._wake, os.getpid()), name="softfactory_obs-maintenance", daemon=True
            ).start()
        except RuntimeError as exc:  # "can't start new thread": a container's pids limit. Not retried per request;
            report_failure("metrics maintenance", exc)  # the first request still compacts (the middleware's hook)

    def wake(self) -> None:
        """Run the next round now (a scrape saw dead shards)."""
        self._wake.set()

    def _run(self, wake: threading.Event, pid: int) -> None:
        while pid == os.getpid():
            self.run_once()
            wake.wait(self.interval)
            wake.clear()

    def run_once(self) -> None:
        """One round: compaction, then every task; each failure reported, none raised."""
        for task in [self.registry.compact, *self.tasks]:
            try:
                task()
            except Exception as exc:
                report_failure("metrics maintenance", exc)


_by_registry: dict[int, Maintenance] = {}
_start_lock = threading.Lock()


def maintenance_for(registry: Registry) -> Maintenance:
    """The maintenance of ``registry`` (one per registry)."""
    found = _by_registry.get(id(registry))
    if found is None or found.registry is not registry:
        found = _by_registry[id(registry)] = Maintenance(registry)
    return found


@on_new_process
def _forget_threads() -> None:
    global _start_lock  # noqa: PLW0603 - a lock held at fork time would stay held in the child
    _start_lock = threading.Lock()
    for maintenance in _by_registry.values():
        maintenance.forget_thread()
