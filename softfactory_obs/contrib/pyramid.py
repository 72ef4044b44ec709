"""Pyramid: ``config.include("softfactory_obs.contrib.pyramid")``, then wrap ``config.make_wsgi_app()``."""

from __future__ import annotations

from typing import Any

from pyramid.events import ContextFound

from ..routes import ROUTE_KEY, to_template


def _store_route(event: Any) -> None:
    route = getattr(event.request, "matched_route", None)
    if route is not None:
        event.request.environ[ROUTE_KEY] = to_template(route.pattern)


def includeme(config: Any) -> None:
    """``config.include('softfactory_obs.contrib.pyramid')``: record each matched route's pattern as
    the ``endpoint`` template."""
    config.add_subscriber(_store_route, ContextFound)
