"""Framework adapters: each tells the middleware the matched route template, in one environ key.

Import only the one you use; none is imported by ``softfactory_obs`` itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from ..asgi import SCOPE_MARK
from ..middleware import ENVIRON_MARK


def telemetry_paths(environ: dict[str, Any]) -> set[str]:
    """The paths the middleware in front of this request answers itself (none without one)."""
    front = environ.get(ENVIRON_MARK) or environ.get(SCOPE_MARK)  # a WSGI environ or an ASGI scope
    return set(getattr(front, "telemetry_routes", ()))


def warn_if_shadowed(environ: dict[str, Any], app_paths: Iterable[str], framework: str) -> None:
    """Warn (once, from the adapter's first request) when the app routes a path that the
    middleware in front serves itself (``/health``, ``/metrics``, ...): the app never sees those
    requests. ``app_paths``: the app's route rules, as its framework spells them."""
    warn_shadowed(telemetry_paths(environ).intersection(app_paths), framework)


def warn_shadowed(shadowed: Iterable[str], framework: str) -> None:
    """The warning of ``warn_if_shadowed``, for paths an adapter found shadowed its own way."""
    shadowed = sorted(shadowed)
    if shadowed:
        logging.getLogger("softfactory_obs").warning(
            "the %s app routes %s, which softfactory_obs answers itself before the app sees the request; "
            "set telemetry_prefix (for example '/_obs') to move ours (and metrics_path for /metrics)",
            framework,
            ", ".join(shadowed),
        )
