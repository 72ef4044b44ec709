"""Bottle: ``app.install(RoutePlugin())``, then wrap the app. The template is worked out once per route."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import bottle

from ..routes import ROUTE_KEY, to_template


class RoutePlugin:
    """A Bottle plugin that records each matched route's template for the ``endpoint`` label."""

    name = "softfactory_obs"
    api = 2

    def apply(self, callback: Callable[..., Any], route: Any) -> Callable[..., Any]:
        """Wrap a route's callback so the request carries its template."""
        template = to_template(route.rule)

        @functools.wraps(callback)
        def with_route(*args: Any, **kwargs: Any) -> Any:
            bottle.request.environ[ROUTE_KEY] = template
            return callback(*args, **kwargs)

        return with_route
