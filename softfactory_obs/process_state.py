"""Per-process state: the one place that notices the code now runs in a new process.

A forked child inherits a copy of everything its parent held: the request-id pool (siblings would
hand out the same ids), the store's bindings into the parent's shard (siblings would write one file
at once and corrupt it), the maintenance thread's "started" flag (the thread itself is not copied),
the health checks' running threads, the pid written on every log line. Each owner of such state
registers a reset with ``on_new_process``; ``ensure_current()`` compares ``os.getpid()`` with the
pid the resets last ran for and, when it changed, runs every reset once before it returns.

Why a pid check and not only ``os.register_at_fork``: uWSGI's default prefork mode, mod_wsgi and any
``fork()`` made from C never run Python's at-fork hooks. So the request path calls
``ensure_current()`` first thing in every request (one ``getpid`` system call), and the store at
every bind, scrape and compaction. The at-fork hook (``install_fork_hook``, called by the middleware
and by the store when they start, never at import) only makes the reset earlier where it runs.

Contracts and hazards:
- A reset takes no arguments, must be cheap, and must leave its owner usable in the new process
  (drop what was inherited; build anew lazily). Bound methods are held weakly: registering one does
  not keep its object alive.
- Resets run in registration order, each whatever an earlier one raised; failures are reported
  after all of them ran (reporting a failure writes a metric, which needs the store reset first).
- A reset may call ``ensure_current()`` itself (a store reset reports a failure, which binds a
  counter): the nested call returns at once instead of deadlocking or resetting twice.
- Other threads of the new process that call ``ensure_current()`` meanwhile wait until every reset
  has run, so none of them writes through inherited state.
- Code that writes a metric in a process forked without at-fork hooks, before that process served a
  request or called ``ensure_current()``, still writes through its parent's bindings.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable

__all__ = ["ensure_current", "install_fork_hook", "on_new_process"]

Reset = Callable[[], object]

# (reset, or a weak reference to a bound one; the component named when it fails)
_resets: list[tuple[Reset | weakref.WeakMethod[Reset], str]] = []
_pid = os.getpid()  # the process whose state is current; changed only after every reset ran
_lock = threading.RLock()
_resetting = False
_fork_hook_installed = False


def on_new_process(reset: Reset, *, component: str | None = None) -> Reset:
    """Run ``reset()`` in every new process before its state is used; usable as a decorator.

    ``component`` names it in ``softfactory_obs_internal_errors_total`` when it raises.
    """
    held = getattr(reset, "__self__", None) is not None  # a bound method: hold it weakly
    entry = weakref.WeakMethod(reset) if held else reset
    with _lock:
        _resets.append((entry, component or f"per-process reset {getattr(reset, '__qualname__', reset)}"))
    return reset


def ensure_current() -> int:
    """Reset inherited state if this is a new process; returns the current pid."""
    pid = os.getpid()
    if pid != _pid:
        _start_new_process(pid)
    return pid


def _start_new_process(pid: int) -> None:
    global _pid, _resetting  # noqa: PLW0603 - the module is the per-process singleton
    with _lock:
        if pid == _pid or _resetting:  # another thread finished it, or a reset calls us back
            return
        _resetting = True
        try:
            failures = _run_resets()
        finally:
            _resetting = False
            _pid = pid
    for component, exc in failures:
        from ._failures import report_failure  # noqa: PLC0415 - _failures may count through the store

        report_failure(component, exc)


def _run_resets() -> list[tuple[str, Exception]]:
    failures = []
    live = []
    for entry, component in _resets:
        reset = entry() if isinstance(entry, weakref.WeakMethod) else entry
        if reset is None:  # its object is gone
            continue
        live.append((entry, component))
        try:
            reset()
        except Exception as exc:
            failures.append((component, exc))
    _resets[:] = live
    return failures


def install_fork_hook() -> None:
    """Reset in a forked child as soon as ``os.fork()`` returns, where Python's at-fork hooks run.

    Idempotent. Without it the pid check still resets, only later (at the child's first request
    or store access).
    """
    global _fork_hook_installed  # noqa: PLW0603
    with _lock:
        if _fork_hook_installed:
            return
        _fork_hook_installed = True
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _after_fork_in_child() -> None:
    global _lock  # noqa: PLW0603 - a lock held by another parent thread at fork time stays held here
    _lock = threading.RLock()
    ensure_current()
