"""Pyramid: ``config.include("softfactory_obs.contrib.pyramid")``, then wrap ``config.make_wsgi_app()``."""

from __future__ import annotations

from typing import Any

from pyramid.events import ContextFound, NewResponse
from pyramid.httpexceptions import HTTPException
from pyramid.interfaces import IRoutesMapper

from ..routes import EXCEPTION_KEY, ROUTE_KEY, UNMATCHED, to_template


def _store_route(event: Any) -> None:
    request = event.request
    route = getattr(request, "matched_route", None)
    if route is not None:
        request.environ[ROUTE_KEY] = to_template(route.pattern, "pyramid")
    else:  # an app with routes where none matched: a scanner's path takes no endpoint slot
        mapper = request.registry.queryUtility(IRoutesMapper)
        if mapper is not None and mapper.get_routes():
            request.environ[ROUTE_KEY] = UNMATCHED


def _store_exception(event: Any) -> None:
    # An exception view answered: the exception is on the request. HTTP exceptions (HTTPNotFound,
    # HTTPFound, ...) are Pyramid's way to answer, not failures.
    exc = getattr(event.request, "exception", None)
    if isinstance(exc, Exception) and not isinstance(exc, HTTPException):
        event.request.environ[EXCEPTION_KEY] = exc


def includeme(config: Any) -> None:
    """``config.include('softfactory_obs.contrib.pyramid')``: record each matched route's pattern as
    the ``endpoint`` template, and an exception an exception view turned into a response."""
    config.add_subscriber(_store_route, ContextFound)
    config.add_subscriber(_store_exception, NewResponse)
