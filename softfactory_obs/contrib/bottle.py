"""Bottle: ``app.install(RoutePlugin())``, then wrap the app. The template is worked out once per route.

The plugin works with the Bottle module the app comes from, so a copy vendored inside another
package (pypiserver ships one) is served as well as the installed ``bottle``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ..routes import EXCEPTION_KEY, ROUTE_KEY, UNMATCHED, to_template
from . import warn_if_shadowed


def _bottle_of(app: Any) -> ModuleType:
    """The module ``app``'s class comes from: the installed ``bottle``, or a vendored copy."""
    return sys.modules[type(app).__module__]


class RoutePlugin:
    """A Bottle plugin that records each matched route's template for the ``endpoint`` label (an
    unmatched path is ``__unmatched__`` whatever Bottle answers), and an exception of its callback
    that Bottle turns into its own 500."""

    name = "softfactory_obs"
    api = 2

    def setup(self, app: Any) -> None:
        """On install: mark the requests no route matched (404, 405), after Bottle answered them."""
        bottle = _bottle_of(app)

        first = [True]

        def mark_unmatched() -> None:
            environ = bottle.request.environ
            if ROUTE_KEY not in environ:
                environ[ROUTE_KEY] = UNMATCHED
            if first[0]:
                first[0] = False
                warn_if_shadowed(environ, (route.rule for route in app.routes), "Bottle")

        app.add_hook("after_request", mark_unmatched)

    def apply(self, callback: Callable[..., Any], route: Any) -> Callable[..., Any]:
        """Wrap a route's callback so the request carries its template."""
        template = to_template(route.rule, "bottle")
        bottle = _bottle_of(route.app)
        request, answer = bottle.request, bottle.HTTPResponse

        @functools.wraps(callback)
        def with_route(*args: Any, **kwargs: Any) -> Any:
            environ = request.environ
            environ[ROUTE_KEY] = template
            try:
                return callback(*args, **kwargs)
            except answer:
                raise  # abort() and redirect(): Bottle's way to answer, not failures
            except Exception as exc:  # Bottle answers its own 500: count it by type
                environ[EXCEPTION_KEY] = exc
                raise

        return with_route
