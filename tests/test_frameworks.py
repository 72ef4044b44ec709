"""Each framework adapter, with the real framework: the endpoint label is the route template."""

from __future__ import annotations

from typing import Any

from helpers import call_wsgi, make_environ, require_module, samples

from softfactory_obs import ObservabilityMiddleware
from softfactory_obs.routes import UNMATCHED
from softfactory_obs.store.metrics import Registry


def endpoints_after(wsgi_app: Any, paths: list[str]) -> dict[str, str]:
    registry = Registry()
    mw = ObservabilityMiddleware(wsgi_app, registry=registry, auto_configure_logging=False, access_log=False)
    statuses = {
        p: call_wsgi(mw, make_environ(PATH_INFO=p, SERVER_NAME="localhost", HTTP_HOST="localhost")).status
        for p in paths
    }
    found = {}
    for (name, labels), _ in samples(registry).items():
        if name == "http_requests_total":
            label = dict(labels)
            found[label["status"] + " " + label["endpoint"]] = label["method"]
    assert all(s for s in statuses.values())
    return found


def test_flask() -> None:
    flask = require_module("flask")
    from softfactory_obs.contrib.flask import init_app

    app = flask.Flask(__name__)

    @app.route("/users/<int:user_id>")
    def user(user_id: int) -> str:
        return f"user {user_id}"

    init_app(app)
    got = endpoints_after(app.wsgi_app, ["/users/7", "/users/8", "/nope"])
    assert set(got) == {"200 /users/{user_id}", f"404 {UNMATCHED}"}


def test_django() -> None:
    require_module("django")
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            ROOT_URLCONF="django_urls",
            ALLOWED_HOSTS=["*"],
            SECRET_KEY="test",
            DEBUG=False,
            MIDDLEWARE=["softfactory_obs.contrib.django.RouteMiddleware"],
        )
        django.setup()
    from django.core.wsgi import get_wsgi_application

    got = endpoints_after(get_wsgi_application(), ["/users/7", "/archive/2024/", "/nope"])
    assert set(got) == {"200 /users/{user_id}", "200 /archive/{year}/", f"404 {UNMATCHED}"}


def test_falcon() -> None:
    falcon = require_module("falcon")
    from softfactory_obs.contrib.falcon import RouteMiddleware

    class User:
        def on_get(self, req: Any, resp: Any, user_id: int) -> None:
            resp.text = f"user {user_id}"

    app = falcon.App(middleware=[RouteMiddleware()])
    app.add_route("/users/{user_id:int}", User())
    got = endpoints_after(app, ["/users/7", "/nope"])
    assert set(got) == {"200 /users/{user_id}", f"404 {UNMATCHED}"}


def test_pyramid() -> None:
    require_module("pyramid")
    from pyramid.config import Configurator
    from pyramid.response import Response

    with Configurator() as config:
        config.include("softfactory_obs.contrib.pyramid")
        config.add_route("user", "/users/{user_id}")
        config.add_view(lambda request: Response(f"user {request.matchdict['user_id']}"), route_name="user")
        app = config.make_wsgi_app()
    got = endpoints_after(app, ["/users/7", "/nope"])
    assert set(got) == {"200 /users/{user_id}", f"404 {UNMATCHED}"}


def test_bottle() -> None:
    bottle = require_module("bottle")
    from softfactory_obs.contrib.bottle import RoutePlugin

    app = bottle.Bottle()

    @app.route("/users/<user_id:int>")
    def user(user_id: int) -> str:
        return f"user {user_id}"

    app.install(RoutePlugin())
    got = endpoints_after(app, ["/users/7", "/nope"])
    assert set(got) == {"200 /users/{user_id}", f"404 {UNMATCHED}"}
