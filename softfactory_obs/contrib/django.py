"""Django: add ``"softfactory_obs.contrib.django.RouteMiddleware"`` to ``MIDDLEWARE``; wrap the WSGI app.

# wsgi.py
application = instrument(get_wsgi_application())
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..routes import ROUTE_KEY, to_template


class RouteMiddleware:
    """Django middleware that records the resolved URL pattern as the ``endpoint`` template."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        return self.get_response(request)

    def process_view(self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any) -> None:
        """Record the matched route before the view runs; returns None so Django goes on."""
        match = request.resolver_match
        route = getattr(match, "route", None)
        if route:  # request.META is the WSGI environ itself
            request.META[ROUTE_KEY] = to_template("/" + route.lstrip("^"))
