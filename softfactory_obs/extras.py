"""Optional dependencies: each an extra of the package, asked for by name when it is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {"redis": "redis", "psutil": "psutil", "prometheus_client": "prometheus"}


def missing(module: str, needed_by: str) -> ImportError:
    """The error for ``module`` missing where ``needed_by`` needs it: it names the extra to install."""
    extra = EXTRAS[module.partition(".")[0]]
    return ImportError(
        f"{needed_by} needs the {module.partition('.')[0]} package, which is not installed: "
        f"pip install 'softfactory-obs[{extra}]'"
    )


def require(module: str, needed_by: str) -> ModuleType:
    """Import ``module`` (one of an extra's), or raise ``missing``'s error."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing(module, needed_by) from exc
