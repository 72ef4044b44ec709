"""The WSGI middleware: a host the components install into (``host.py``); routes telemetry paths
to their apps and hands every request to ``request.wsgi.serve``.

``__call__`` is the hot path and stays small: one marker check, one dict lookup, one object.
Everything else was decided in ``__init__``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .asgi import is_asgi_app
from .components import WSGIApp
from .host import InstrumentationHost
from .process_state import ensure_current
from .request.wsgi import serve
from .request.wsgi_environ import Driver
from .settings import Settings
from .store.metrics import Registry

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11; only type checkers read it

    from .options import Options

# Set in environ by the outermost instance; an inner instance seeing it passes the request through.
ENVIRON_MARK = "softfactory_obs.middleware"


class ObservabilityMiddleware(InstrumentationHost):
    """Wrap a WSGI app: request ids, JSON access logs, per-request metrics and the ``/metrics`` route."""

    app: WSGIApp

    def __init__(
        self,
        app: WSGIApp,
        settings: Settings | None = None,
        *,
        registry: Registry | None = None,
        **options: Unpack[Options],
    ) -> None:
        if is_asgi_app(app):
            raise TypeError(f"app: {app!r} is an ASGI application; wrap it with softfactory_obs.instrument_asgi(app)")
        if not callable(app):
            raise TypeError(f"app: expected a WSGI callable, got {app!r}")
        super().__init__(app, settings, registry=registry, **options)
        self.driver = Driver(
            self.request_ids, self.settings.request_id_header, propagate=self.settings.propagate_exceptions
        )

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if ENVIRON_MARK in environ:
            return self.app(environ, start_response)
        environ[ENVIRON_MARK] = self
        ensure_current()  # a new process resets what it inherited, on any server
        if not self._started_in_process:
            self._start_in_process()
        try:
            path = environ["PATH_INFO"]
        except KeyError:  # PEP 3333 lets a server leave out an empty one
            path = ""
        if path not in self.telemetry_routes:
            return serve(self.driver, self._hooks, environ, start_response, self.app, path)
        return serve(self.driver, self._telemetry_hooks, environ, start_response, self.telemetry_routes[path], path)


def instrument(app: WSGIApp, **options: Unpack[Options]) -> ObservabilityMiddleware:
    """Wrap ``app`` once; calling it on an already instrumented app returns that app unchanged."""
    if isinstance(app, ObservabilityMiddleware):
        return app.reused(options, "instrument()")
    return ObservabilityMiddleware(app, **options)
