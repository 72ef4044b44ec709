"""Quart: ``softfactory_obs.contrib.quart.init_app(app)`` after creating the app, then wrap ``app.asgi_app``.

app = Quart(__name__)
init_app(app)
app.asgi_app = instrument_asgi(app.asgi_app)
"""

from __future__ import annotations

from typing import Any, cast

from quart import Quart, request
from quart.signals import got_request_exception

from ..request.asgi import EXCEPTION_KEY, ROUTE_KEY
from ..routes import UNMATCHED, to_template
from . import warn_if_shadowed
from .werkzeug_rules import rule_of_other_methods


def init_app(app: Quart) -> None:
    """Record each request's Quart URL rule as the ``endpoint`` template in the ASGI scope, before
    the app's own before_request functions (a 405 gets the template of the route it did not allow;
    no rule, ``__unmatched__``), and an exception Quart turns into its own 500 (its
    ``got_request_exception`` signal), so it is counted by type and named on the access line."""

    first = [True]

    async def store_route() -> None:
        scope = _scope()
        if first[0]:
            first[0] = False
            warn_if_shadowed(scope, (r.rule for r in app.url_map.iter_rules()), "Quart")
        rule = request.url_rule or rule_of_other_methods(app, request)
        # No rule: no route matched, whatever the app answers: a scanner's paths take no endpoint slot.
        scope[ROUTE_KEY] = to_template(rule.rule, "flask") if rule is not None else UNMATCHED

    # First, so another before_request that answers early cannot skip it.
    app.before_request_funcs.setdefault(None, []).insert(0, store_route)
    # A coroutine receiver: Quart would run a plain function in a thread.
    got_request_exception.connect(_store_exception, app, weak=False)


async def _store_exception(sender: Any, exception: BaseException, **extra: Any) -> None:
    _scope()[EXCEPTION_KEY] = exception


def _scope() -> dict[str, Any]:
    """The request's ASGI scope, the very mapping our front reads (Quart types it as the spec's keys only)."""
    return cast("dict[str, Any]", request.scope)
