"""Falcon: ``falcon.App(middleware=[RouteMiddleware()])`` and ``record_exceptions(app)``, then wrap the app.

app = falcon.App(middleware=[RouteMiddleware()])
record_exceptions(app)
application = instrument(app)
"""

from __future__ import annotations

from typing import Any

import falcon

from ..routes import EXCEPTION_KEY, ROUTE_KEY, UNMATCHED, to_template


class RouteMiddleware:
    """Falcon middleware that records the matched URI template as the ``endpoint`` template."""

    def process_resource(self, req: Any, resp: Any, resource: Any, params: Any) -> None:
        """Record the route template Falcon matched for this request."""
        template = req.uri_template
        if template:
            req.env[ROUTE_KEY] = to_template(template, "falcon")

    def process_response(self, req: Any, resp: Any, resource: Any, req_succeeded: bool) -> None:
        """No resource matched: the path takes no endpoint slot, whatever the status."""
        if resource is None and ROUTE_KEY not in req.env:
            req.env[ROUTE_KEY] = UNMATCHED


def record_exceptions(app: Any) -> None:
    """Count the exceptions Falcon turns into its own 500 by type, and name them on the access line:
    an error handler for ``Exception`` that records the exception and answers Falcon's 500. It
    takes the place of Falcon's default one (whose traceback line our access line replaces); call
    it before adding an ``Exception`` handler of your own, which then takes its place."""
    app.add_error_handler(Exception, _record_and_answer_500)


def _record_and_answer_500(req: Any, resp: Any, error: Exception, params: Any) -> None:
    req.env[EXCEPTION_KEY] = error
    raise falcon.HTTPInternalServerError() from error
