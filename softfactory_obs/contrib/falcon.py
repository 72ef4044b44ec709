"""Falcon: ``falcon.App(middleware=[RouteMiddleware()])``, then wrap the app.

app = instrument(falcon.App(middleware=[RouteMiddleware()]))
"""

from __future__ import annotations

from typing import Any

from ..routes import ROUTE_KEY, to_template


class RouteMiddleware:
    """Falcon middleware that records the matched URI template as the ``endpoint`` template."""

    def process_resource(self, req: Any, resp: Any, resource: Any, params: Any) -> None:
        """Record the route template Falcon matched for this request."""
        template = req.uri_template
        if template:
            req.env[ROUTE_KEY] = to_template(template)
