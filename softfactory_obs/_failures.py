"""Our own failures: counted, reported once per component, never raised into the request.

The report goes to stderr rather than through ``logging`` because logging may be the very thing
that failed.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

_lock = threading.Lock()
_counts: dict[str, int] = {}
_in_hook = threading.local()


def _count_in_store(component: str) -> None:
    """``softfactory_obs_internal_errors_total{component}`` in the default registry: every worker's
    failures, summed, on ``/metrics``."""
    from .store.metrics import INTERNAL_ERRORS  # noqa: PLC0415 - the store itself reports through this module

    INTERNAL_ERRORS.labels(component).inc()


# Counts a failure across workers; replaceable (a test counts into a registry of its own).
on_failure: Callable[[str], None] | None = _count_in_store


def report_failure(component: str, exc: BaseException) -> None:
    """Count ``exc`` against ``component`` (here and in the store) and tell stderr the first time."""
    with _lock:
        count = _counts[component] = _counts.get(component, 0) + 1
    hook = on_failure
    if hook is not None and not getattr(_in_hook, "active", False):
        _in_hook.active = True  # the store itself may be what failed: no recursion
        try:
            hook(component)
        except Exception:  # noqa: S110 - counted above already
            pass
        finally:
            _in_hook.active = False
    if count == 1:
        try:
            sys.stderr.write(
                f"softfactory_obs: {component} failed ({type(exc).__name__}: {exc}); telemetry is degraded, "
                "requests are served as usual. Further failures of this component are counted, not printed.\n"
            )
            sys.stderr.flush()
        except Exception:  # noqa: S110 - stderr itself is gone; nothing left to tell
            pass


def failure_counts() -> dict[str, int]:
    """How often each component failed in this process (exported as a metric by the store)."""
    with _lock:
        return dict(_counts)


def reset_failure_counts() -> None:
    """Forget this process's failure counts (the next failure of each component is printed again)."""
    with _lock:
        _counts.clear()
