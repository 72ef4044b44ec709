"""Flask: ``softfactory_obs.contrib.flask.init_app(app)`` after creating the app, then wrap ``app.wsgi_app``.

app = Flask(__name__)
init_app(app)
app.wsgi_app = instrument(app.wsgi_app)
"""

from __future__ import annotations

from flask import Flask, request

from ..routes import ROUTE_KEY, to_template


def init_app(app: Flask) -> None:
    """Record each request's Flask URL rule as the ``endpoint`` template (runs before the app's own
    before_request functions)."""

    def store_route() -> None:
        rule = request.url_rule
        if rule is not None:  # None: no route matched (404/405), the middleware decides
            request.environ[ROUTE_KEY] = to_template(rule.rule)

    # First, so another before_request that answers early cannot skip it.
    app.before_request_funcs.setdefault(None, []).insert(0, store_route)
