"""Our own failures: counted, reported once per component, never raised into the request.

The report goes to stderr rather than through ``logging`` because logging may be the very thing
that failed.
"""

from __future__ import annotations

import sys
import threading

_lock = threading.Lock()
_counts: dict[str, int] = {}


def report_failure(component: str, exc: BaseException) -> None:
    with _lock:
        count = _counts[component] = _counts.get(component, 0) + 1
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
    with _lock:
        _counts.clear()
