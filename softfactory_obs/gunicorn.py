"""gunicorn integration: point gunicorn at ``configs/gunicorn.conf.py``, or import these in your own.

Nothing here is needed for correct metrics (workers agree on the store without hooks); the hooks
make the set-up explicit and tidy:

- ``on_starting``: the master picks the metrics directory once and exports it to every worker it
  will ever fork, instead of each worker inferring it from its parent;
- ``on_exit``: the master removes the directory it created, so tmpfs does not fill across restarts;
- ``post_worker_init``: hooks SIGTERM on the worker's main thread, so /ready turns 503 as soon as a
  worker starts draining, gthread workers included;
- ``logconfig_dict``: gunicorn's own log lines as the same JSON as the app's, on stdout, until
  ``instrument()`` applies the app's log settings (which then win, for gunicorn's lines too).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from .health import watch_sigterm_everywhere
from .store.location import ENV, auto_path, create_auto_directory

_created_here: list[str] = []


def on_starting(server: Any) -> None:
    """gunicorn hook, in the master before any worker: choose the store directory once and export it
    to every worker."""
    path = os.environ.get(ENV)
    if not path:
        path = os.environ[ENV] = create_auto_directory(os.getpid())
    # Ours whether made just now or, under --preload, by the app's first metric in this master
    # (gunicorn loads a preloaded app before on_starting): the workers' to use, ours to remove.
    if path == auto_path(os.getpid()):
        _give_to_workers(path, server)
        _created_here.append(path)


def _give_to_workers(path: str, server: Any) -> None:
    """A master started as root runs its workers as ``--user``/``--group``: the private directory
    (and what a preloaded app wrote there: the master's shard, the lock files) must be theirs, or no
    worker could use the store (each would count alone, in memory, and every scrape fail)."""
    uid, gid = getattr(server.cfg, "uid", 0), getattr(server.cfg, "gid", 0)
    if os.getuid() == 0 and (uid, gid) != (0, 0):
        for name in (".", *os.listdir(path)):
            os.chown(os.path.join(path, name), uid, gid)


def post_worker_init(worker: Any) -> None:
    # The worker's main thread, with the app loaded: the one place a gthread worker can hook SIGTERM
    # so /ready turns 503 the moment it starts draining.
    """gunicorn hook, in each worker's main thread: hook SIGTERM so /ready turns 503 while it
    drains."""
    watch_sigterm_everywhere()


def on_exit(server: Any) -> None:
    """gunicorn hook, in the master at exit: remove the store directory it created."""
    for path in _created_here:
        shutil.rmtree(path, ignore_errors=True)


def json_logconfig(service: str | None = None, level: str = "INFO") -> dict[str, Any]:
    """A ``logconfig_dict`` that renders gunicorn's and the app's records with our JSON formatter.

    gunicorn applies it in the master, before any app is loaded, so its handler is provisional:
    ``instrument()`` (with ``auto_configure_logging``, the default) replaces it in each process
    that loads the app, and the service name, schema and log file given there (or in the
    environment) win, for gunicorn's own lines too. A handler configured any other way is left alone.
    """
    service = service or os.environ.get("SOFTFACTORY_OBS_SERVICE_NAME", "app")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "root": {"level": level, "handlers": ["json"]},
        "loggers": {
            # Records propagate to the root's JSON handler; gunicorn's access log stays off (ours is richer).
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True, "qualname": "gunicorn.error"},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": True, "qualname": "gunicorn.access"},
        },
        # Provisional: in a worker, instrument() replaces it with what the app's settings ask for.
        "handlers": {"json": {"()": "softfactory_obs.logs.provisional_handler", "formatter": "json"}},
        "formatters": {"json": {"()": "softfactory_obs.logs.JsonFormatter", "service": service}},
    }


def __getattr__(name: str) -> Any:
    # ``from softfactory_obs.gunicorn import logconfig_dict`` (configs/gunicorn.conf.py): built when a
    # config asks for it, reading the environment then, not at import.
    if name == "logconfig_dict":
        return json_logconfig()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
