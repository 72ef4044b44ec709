"""The ASGI front: a host the components install into (``host.py``), like the WSGI middleware, so
the same recorders, store, log pipeline and health state serve Starlette, FastAPI, Django ASGI and
any ASGI 3 app. A pure ASGI middleware: it wraps ``send``, never the request in a task or a
``BaseHTTPMiddleware``.

- ``http``: recorded by ``request.asgi.AsgiFront``, which asks ``serving`` what serves each request:
  telemetry paths their WSGI apps, served in a worker thread (``request/wsgi_in_thread.py``);
  everything else the app.
- ``websocket``: the request id in the context and the accept's headers, and the connection
  counted by ``metrics.websocket`` (``request/asgi_websocket.py``), when metrics are on.
- ``lifespan``: handed to the app untouched.
- The route template: what an adapter put in the scope (``softfactory_obs.route``), else
  Starlette's (and so FastAPI's) matched route, ``starlette_route``; a policy (``route_of``).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from .host import InstrumentationHost
from .metrics.websocket import WebsocketMetrics
from .process_state import ensure_current
from .request.asgi import ASGIApp, AsgiDriver, AsgiFront, Receive, Scope, Send
from .request.asgi_websocket import WebsocketConnection
from .request.record import Hooks
from .request.wsgi_in_thread import in_thread
from .route_templates import framework_template
from .routes import UNMATCHED
from .settings import Settings
from .store.metrics import Registry

if TYPE_CHECKING:
    from collections.abc import Callable

    from typing_extensions import Unpack

    from .options import Options

# Set in the scope by the outermost instance; an inner instance seeing it passes the request on.
SCOPE_MARK = "softfactory_obs.asgi"


def is_asgi_app(app: object) -> bool:
    """An ASGI 3 application: a coroutine function, or an object whose ``__call__`` is one."""
    call = type(app).__call__ if not inspect.isfunction(app) and callable(app) else None
    return inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(call)


def starlette_route(scope: Scope) -> str | None:
    """The template of the route Starlette's router (FastAPI's too) matched, in the ``{name}``
    form, behind the mounts it passed; ``__unmatched__`` when its router matched nothing (404, a
    slash redirect); None for an app without Starlette's router.

    A mount's part comes from the path it matched (``root_path``): parameters in a mount's own
    path show as their values."""
    route = scope.get("route")
    if route is None:
        return UNMATCHED if "router" in scope else None
    root = scope.get("root_path", "")
    entered = scope.get(_ENTRY_ROOT, "")
    if root == entered:  # no mount before the route (most apps): known by the route itself
        known = _UNMOUNTED.get(id(route))
        if known is not None and known[0] is route:
            return known[1]
    try:
        path = route.path
    except AttributeError:  # a Host route
        return None
    if not isinstance(path, str):
        return None
    key = (path, root, entered, type(route))
    template = _TEMPLATES.get(key)
    if template is None:
        mounts = root[len(entered) :] if root != entered and root.startswith(entered) else ""
        if hasattr(route, "routes"):  # a mount answered itself (static files): the rest is its path
            template = (mounts or framework_template(path, "starlette")) + "/{path}"
        else:
            template = mounts + framework_template(path, "starlette")
        if len(_TEMPLATES) < 4096:  # an app's routes, behind its mounts' matched paths
            _TEMPLATES[key] = template
    if root == entered and len(_UNMOUNTED) < 4096:  # the route kept with it: its id is never reused
        _UNMOUNTED[id(route)] = (route, template)
    return template


_ENTRY_ROOT = "softfactory_obs.root_path"  # root_path as the server gave it, before any mount
# (route path, root_path, root_path on entry, route class) -> template
_TEMPLATES: dict[tuple[str, str, str, type], str] = {}
# id(route) -> (route, template), for routes with no mount before them: one lookup by an int, no
# attribute read (Starlette's routes define __eq__, so they cannot be keys themselves).
_UNMOUNTED: dict[int, tuple[Any, str]] = {}


class AsgiMiddleware(InstrumentationHost, AsgiFront):
    """Wrap an ASGI 3 app: request ids, JSON access logs, per-request metrics and the telemetry routes."""

    app: ASGIApp

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings | None = None,
        *,
        registry: Registry | None = None,
        route_of: Callable[[Scope], str | None] = starlette_route,
        **options: Unpack[Options],
    ) -> None:
        if not is_asgi_app(app):
            raise TypeError(f"app: expected an ASGI 3 application (async def app(scope, receive, send)), got {app!r}")
        super().__init__(app, settings, registry=registry, **options)
        settings = self.settings
        self.driver = AsgiDriver(
            self.request_ids, settings.request_id_header, propagate=settings.propagate_exceptions, route_of=route_of
        )
        self._telemetry_apps: dict[str, Any] = {}
        self.websockets = WebsocketMetrics(self.registry, settings) if settings.metrics else None

    async def passing(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A ``websocket`` scope is recorded (once: by the outermost instance) when metrics are on;
        anything else goes to the app untouched."""
        metrics = self.websockets
        if scope["type"] != "websocket" or metrics is None or SCOPE_MARK in scope:
            await self.app(scope, receive, send)
            return
        scope[SCOPE_MARK] = self
        ensure_current()  # as for a request (serving)
        if not self._started_in_process:
            self._start_in_process()
        connection = WebsocketConnection(
            scope, receive, send, driver=self.driver, endpoints=self.endpoints, metrics=metrics
        )
        await connection.serve(self.app)

    def serving(self, scope: Scope) -> tuple[Hooks, ASGIApp] | None:
        """The hooks and app for an ``http`` request: the telemetry route's, or the app's; None
        when an outer instance serves it already."""
        if SCOPE_MARK in scope:
            return None
        scope[SCOPE_MARK] = self
        root = scope.get("root_path")
        if root:  # kept for starlette_route, which reads an absent one as ""
            scope[_ENTRY_ROOT] = root
        ensure_current()  # a new process resets what it inherited, on any server
        if not self._started_in_process:
            self._start_in_process()
        path = scope["path"]
        if path not in self.telemetry_routes:
            return self._hooks, self.app
        app = self._telemetry_apps.get(path)
        if app is None:
            app = self._telemetry_apps[path] = in_thread(self.telemetry_routes[path])
        return self._telemetry_hooks, app


def instrument_asgi(app: Any, **options: Unpack[Options]) -> AsgiMiddleware:
    """Wrap an ASGI app once; calling it on an already instrumented app returns that app unchanged."""
    if isinstance(app, AsgiMiddleware):
        return app.reused(options, "instrument_asgi()")
    return AsgiMiddleware(app, **options)
