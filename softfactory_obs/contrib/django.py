"""Django: add ``"softfactory_obs.contrib.django.RouteMiddleware"`` first in ``MIDDLEWARE``; wrap the app.

# wsgi.py
application = instrument(get_wsgi_application())
# asgi.py
application = instrument_asgi(get_asgi_application())
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.urls import Resolver404, resolve

from ..routes import EXCEPTION_KEY, ROUTE_KEY, UNMATCHED, to_template
from . import telemetry_paths, warn_shadowed


class RouteMiddleware:
    """Django middleware that records the resolved URL pattern as the ``endpoint`` template, and an
    exception a view raised that Django turns into its own 500."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self._checked = False

    def __call__(self, request: Any) -> Any:
        if not self._checked:  # the first request: the URLconf is loaded, the middleware known
            self._checked = True
            warn_shadowed((path for path in telemetry_paths(request.META) if _routed(path)), "Django")
        response = self.get_response(request)
        # No view resolved (a 404, an APPEND_SLASH redirect, a 401 from middleware): the path
        # matched no route, and takes no endpoint slot. First in MIDDLEWARE, this sees them all.
        if ROUTE_KEY not in request.META:
            _tell(request, ROUTE_KEY, UNMATCHED)
        return response

    def process_view(self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any) -> None:
        """Record the matched route before the view runs; returns None so Django goes on."""
        match = request.resolver_match
        route = getattr(match, "route", None)
        if route:
            _tell(request, ROUTE_KEY, to_template(route, "django"))

    def process_exception(self, request: Any, exception: Exception) -> None:
        """Record the view's exception (counted by type, named on the access line); returns None so
        Django answers as it would without us."""
        _tell(request, EXCEPTION_KEY, exception)


def _tell(request: Any, key: str, value: object) -> None:
    # Under WSGI request.META is the environ the middleware reads; under ASGI it is a copy, and the
    # front reads the scope.
    request.META[key] = value
    scope = getattr(request, "scope", None)
    if scope is not None:
        scope[key] = value


def _routed(path: str) -> bool:
    """Whether the app's URLconf has a view for ``path``."""
    try:
        resolve(path)
    except Resolver404:
        return False
    return True
