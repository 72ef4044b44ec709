"""Flask: ``softfactory_obs.contrib.flask.init_app(app)`` after creating the app, then wrap ``app.wsgi_app``.

app = Flask(__name__)
init_app(app)
app.wsgi_app = instrument(app.wsgi_app)
"""

from __future__ import annotations

from typing import Any

from flask import Flask, got_request_exception, request

from ..routes import EXCEPTION_KEY, ROUTE_KEY, UNMATCHED, to_template
from . import warn_if_shadowed
from .werkzeug_rules import rule_of_other_methods


def init_app(app: Flask) -> None:
    """Record each request's Flask URL rule as the ``endpoint`` template, before the app's own
    before_request functions (a 405 gets the template of the route it did not allow; no rule,
    ``__unmatched__``), and an exception Flask turns into its own 500 (its
    ``got_request_exception`` signal), so it is counted by type and named on the access line."""

    first = [True]

    def store_route() -> None:
        if first[0]:
            first[0] = False
            warn_if_shadowed(request.environ, (r.rule for r in app.url_map.iter_rules()), "Flask")
        rule = request.url_rule or rule_of_other_methods(app, request)
        # No rule: no route matched, whatever the app answers (404, or a 401 from an auth hook):
        # a scanner's paths take no endpoint slot.
        request.environ[ROUTE_KEY] = to_template(rule.rule, "flask") if rule is not None else UNMATCHED

    # First, so another before_request that answers early cannot skip it.
    app.before_request_funcs.setdefault(None, []).insert(0, store_route)
    got_request_exception.connect(_store_exception, app, weak=False)


def _store_exception(sender: Any, exception: BaseException, **extra: Any) -> None:
    request.environ[EXCEPTION_KEY] = exception
