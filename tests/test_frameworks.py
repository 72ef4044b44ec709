"""Each framework adapter, with the real framework: the endpoint label is the route template."""

from __future__ import annotations

import warnings
from typing import Any

from helpers import LogCapture, call_wsgi, make_environ, require_module, samples

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


def exceptions_after(
    wsgi_app: Any, paths: list[str], logs: LogCapture
) -> tuple[dict[tuple[str, str], float], list[str]]:
    """The exception counts by (endpoint, type) after ``paths``, and the access lines' error types."""
    registry = Registry()
    mw = ObservabilityMiddleware(wsgi_app, registry=registry, auto_configure_logging=False)
    statuses = [
        call_wsgi(mw, make_environ(PATH_INFO=p, SERVER_NAME="localhost", HTTP_HOST="localhost")).status for p in paths
    ]
    assert statuses[0].startswith("500"), statuses  # the control: the framework answered its own 500
    counts = {
        (dict(labels)["endpoint"], dict(labels)["exception"]): value
        for (name, labels), value in samples(registry).items()
        if name == "http_request_exceptions_total"
    }
    return counts, [line.get("error_type", "-") for line in logs.access()]


def test_flask_counts_the_exception_behind_its_own_500(logs: LogCapture) -> None:
    flask = require_module("flask")
    from softfactory_obs.contrib.flask import init_app

    app = flask.Flask(__name__)

    @app.route("/orders/<int:n>")
    def order(n: int) -> str:
        raise ValueError(f"order {n} failed")

    @app.route("/gone")
    def gone() -> str:
        flask.abort(410)  # an HTTP answer, not a failure
        return ""

    init_app(app)
    counts, errors = exceptions_after(app.wsgi_app, ["/orders/1", "/gone"], logs)
    assert counts == {("/orders/{n}", "ValueError"): 1}
    assert errors == ["ValueError", "-"]


def test_django_counts_the_exception_behind_its_own_500(logs: LogCapture) -> None:
    test_django()  # configures Django with the adapter
    from django.core.wsgi import get_wsgi_application

    counts, errors = exceptions_after(get_wsgi_application(), ["/boom", "/nope"], logs)
    assert counts == {("/boom", "ValueError"): 1}
    assert errors == ["ValueError", "-"]


def test_pyramid_counts_the_exception_an_exception_view_answered(logs: LogCapture) -> None:
    require_module("pyramid")
    from pyramid.config import Configurator
    from pyramid.httpexceptions import HTTPNotFound
    from pyramid.response import Response

    def fail(request: Any) -> Response:
        raise ValueError("the view failed")

    def missing(request: Any) -> Response:
        raise HTTPNotFound()  # Pyramid's way to answer 404, not a failure

    with Configurator() as config:
        config.include("softfactory_obs.contrib.pyramid")
        config.add_route("fail", "/fail/{n}")
        config.add_view(fail, route_name="fail")
        config.add_route("missing", "/missing")
        config.add_view(missing, route_name="missing")
        config.add_view(
            lambda exc, request: Response("sorry", status=500), context=ValueError
        )  # the app's own exception view
        app = config.make_wsgi_app()
    counts, errors = exceptions_after(app, ["/fail/1", "/missing"], logs)
    assert counts == {("/fail/{n}", "ValueError"): 1}
    assert errors == ["ValueError", "-"]


def test_bottle_counts_the_exception_behind_its_own_500(logs: LogCapture) -> None:
    bottle = require_module("bottle")
    from softfactory_obs.contrib.bottle import RoutePlugin

    app = bottle.Bottle()

    @app.route("/orders/<n:int>")
    def order(n: int) -> str:
        raise ValueError(f"order {n} failed")

    @app.route("/gone")
    def gone() -> str:
        bottle.abort(410)

    app.install(RoutePlugin())
    counts, errors = exceptions_after(app, ["/orders/1", "/gone"], logs)
    assert counts == {("/orders/{n}", "ValueError"): 1}
    assert errors == ["ValueError", "-"]


def test_falcon_counts_the_exception_behind_its_own_500(logs: LogCapture) -> None:
    falcon = require_module("falcon")
    from softfactory_obs.contrib.falcon import RouteMiddleware, record_exceptions

    class Order:
        def on_get(self, req: Any, resp: Any, n: int) -> None:
            raise ValueError(f"order {n} failed")

    class Gone:
        def on_get(self, req: Any, resp: Any) -> None:
            raise falcon.HTTPGone()  # an HTTP answer, not a failure

    app = falcon.App(middleware=[RouteMiddleware()])
    record_exceptions(app)
    app.add_route("/orders/{n:int}", Order())
    app.add_route("/gone", Gone())
    counts, errors = exceptions_after(app, ["/orders/1", "/gone"], logs)
    assert counts == {("/orders/{n}", "ValueError"): 1}
    assert errors == ["ValueError", "-"]


def test_flask_labels_spell_every_parameter_as_its_name_and_a_405_keeps_its_route() -> None:
    flask = require_module("flask")
    from werkzeug.routing import BaseConverter

    from softfactory_obs.contrib.flask import init_app

    class YearConverter(BaseConverter):
        regex = r"\d{4}"

    app = flask.Flask(__name__)
    app.url_map.converters["year"] = YearConverter

    @app.route("/t/<int(signed=True):n>")
    def signed(n: int) -> str:
        return "ok"

    @app.route("/k/<any(a,b):kind>")
    def kinds(kind: str) -> str:
        return "ok"

    @app.route("/y/<year:y>")
    def year(y: str) -> str:
        return "ok"

    @app.route("/only-get/<name>", methods=["GET"])
    def only_get(name: str) -> str:
        return "ok"

    @app.before_request
    def auth() -> Any:
        if flask.request.path.startswith("/private"):
            return "no", 401  # answers before any route could match
        return None

    init_app(app)
    got = endpoints_after(app.wsgi_app, ["/t/-3", "/k/a", "/y/2024", "/private/x1", "/private/x2"])
    assert set(got) == {"200 /t/{n}", "200 /k/{kind}", "200 /y/{y}", f"401 {UNMATCHED}"}
    registry = Registry()
    mw = ObservabilityMiddleware(app.wsgi_app, registry=registry, auto_configure_logging=False, access_log=False)
    response = call_wsgi(mw, make_environ(PATH_INFO="/only-get/x", REQUEST_METHOD="POST", HTTP_HOST="localhost"))
    assert response.status.startswith("405")
    labels = {dict(lb)["endpoint"] for (name, lb) in samples(registry) if name == "http_requests_total"}
    assert labels == {"/only-get/{name}"}  # spelled as its GET is


def test_django_custom_converters_and_redirects_of_unknown_paths() -> None:
    test_django()  # configures Django (DEBUG off, APPEND_SLASH on by default) with the adapter
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application

    settings.MIDDLEWARE = [
        "softfactory_obs.contrib.django.RouteMiddleware",
        "django.middleware.common.CommonMiddleware",
    ]
    got = endpoints_after(get_wsgi_application(), ["/reports/2024/", "/reports/2024", "/wp-admin"])
    # /reports/2024 is redirected to its slash form (301) without resolving a view: unmatched.
    assert set(got) == {"200 /reports/{year}/", f"301 {UNMATCHED}", f"404 {UNMATCHED}"}


def test_pyramid_patterns_subpaths_and_route_prefixes() -> None:
    require_module("pyramid")
    from pyramid.config import Configurator
    from pyramid.response import Response

    def ok(request: Any) -> Response:
        return Response("ok")

    def api(config: Any) -> None:
        config.add_route("item", "items/{x:\\d{4}}")  # a regex with braces of its own
        config.add_view(ok, route_name="item")

    with Configurator() as config:
        config.include("softfactory_obs.contrib.pyramid")
        config.add_route("static", "/static/*subpath")
        config.add_view(ok, route_name="static")
        config.include(api, route_prefix="api")
        app = config.make_wsgi_app()
    got = endpoints_after(app, ["/static/css/a.css", "/api/items/2024", "/api/items/x", "/nope"])
    assert set(got) == {"200 /static/{subpath}", "200 /api/items/{x}", f"404 {UNMATCHED}"}


def test_bottle_old_syntax_405s_and_a_vendored_copy(tmp_path: Any) -> None:
    bottle = require_module("bottle")
    import importlib.util
    import sys

    from softfactory_obs.contrib.bottle import RoutePlugin

    # pypiserver ships its own copy of bottle.py: the same file under another module name.
    spec = importlib.util.spec_from_file_location("vendored_bottle", bottle.__file__)
    assert spec is not None and spec.loader is not None
    vendored = importlib.util.module_from_spec(spec)
    sys.modules["vendored_bottle"] = vendored
    try:
        spec.loader.exec_module(vendored)
        for module in (bottle, vendored):
            app = module.Bottle()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # Bottle 0.13 warns of the old syntax

                @app.route("/old/:name")
                def old(name: str) -> str:
                    return "ok"

                @app.route("/new/<name:re:[a-z]+>", method="GET")
                def new(name: str) -> str:
                    return "ok"

                app.install(RoutePlugin())
                got = endpoints_after(app, ["/old/x", "/new/abc", "/nope"])
            assert set(got) == {"200 /old/{name}", "200 /new/{name}", f"404 {UNMATCHED}"}, module
    finally:
        del sys.modules["vendored_bottle"]


def test_falcon_converter_arguments() -> None:
    falcon = require_module("falcon")
    from softfactory_obs.contrib.falcon import RouteMiddleware

    class Thing:
        def on_get(self, req: Any, resp: Any, n: int) -> None:
            resp.text = "ok"

    app = falcon.App(middleware=[RouteMiddleware()])
    app.add_route("/things/{n:int(min=1)}", Thing())
    got = endpoints_after(app, ["/things/3", "/things/0", "/nope"])
    assert set(got) == {"200 /things/{n}", f"404 {UNMATCHED}"}


def test_scanners_cannot_fill_the_endpoint_cap_through_non_404_answers() -> None:
    """F9: 300 random paths answered 401 by an auth hook (or 405) took the 200 endpoint slots, and
    real routes first seen afterwards were counted as __overflow__."""
    flask = require_module("flask")
    from softfactory_obs.contrib.flask import init_app

    app = flask.Flask(__name__)

    @app.route("/orders/<int:n>")
    def order(n: int) -> str:
        return "ok"

    @app.before_request
    def auth() -> Any:
        return None if flask.request.headers.get("Authorization") else ("login first", 401)

    init_app(app)
    registry = Registry()
    mw = ObservabilityMiddleware(
        app.wsgi_app, registry=registry, auto_configure_logging=False, access_log=False, max_endpoints=10
    )
    for n in range(50):
        assert call_wsgi(mw, make_environ(PATH_INFO=f"/wp-{n}/admin.php", HTTP_HOST="x")).status.startswith("401")
    ok = call_wsgi(mw, make_environ(PATH_INFO="/orders/7", HTTP_HOST="x", HTTP_AUTHORIZATION="Bearer t"))
    assert ok.status.startswith("200")
    labels = {dict(lb)["endpoint"] for (name, lb) in samples(registry) if name == "http_requests_total"}
    assert labels == {UNMATCHED, "/orders/{n}"}  # the real route has its own series, not __overflow__


def _flask_app_with_its_own_health() -> Any:
    flask = require_module("flask")
    from softfactory_obs.contrib.flask import init_app

    app = flask.Flask(__name__)

    @app.route("/health")
    def health() -> str:
        return "the app's own health"

    init_app(app)
    return app


def test_an_app_route_our_telemetry_shadows_is_named_and_a_prefix_moves_ours(logs: LogCapture) -> None:
    """pypiserver's /health was replaced by ours without a word. Now the adapter says so at the first
    request, and telemetry_prefix moves our routes out of the app's way."""
    app = _flask_app_with_its_own_health()
    shadowing = ObservabilityMiddleware(app.wsgi_app, registry=Registry(), auto_configure_logging=False)
    assert b"the app's own health" not in call_wsgi(shadowing, make_environ(PATH_INFO="/health")).body
    call_wsgi(shadowing, make_environ(PATH_INFO="/health"))
    warnings_seen = [line["message"] for line in logs.lines() if line["level"] == "WARNING"]
    assert len(warnings_seen) == 0  # telemetry routes never reach the app: the first app request tells
    call_wsgi(shadowing, make_environ(PATH_INFO="/other"))
    call_wsgi(shadowing, make_environ(PATH_INFO="/other"))
    warnings_seen = [line["message"] for line in logs.lines() if line["level"] == "WARNING"]
    assert len(warnings_seen) == 1 and "/health" in warnings_seen[0] and "telemetry_prefix" in warnings_seen[0]

    app = _flask_app_with_its_own_health()
    moved = ObservabilityMiddleware(
        app.wsgi_app, registry=Registry(), auto_configure_logging=False, telemetry_prefix="/_obs"
    )
    assert call_wsgi(moved, make_environ(PATH_INFO="/health")).body == b"the app's own health"
    ours = call_wsgi(moved, make_environ(PATH_INFO="/_obs/health", REMOTE_ADDR="127.0.0.1"))
    assert ours.status.startswith("200") and b'"status"' in ours.body
    assert call_wsgi(moved, make_environ(PATH_INFO="/_obs/ready")).status.startswith("200")
    assert len([line for line in logs.lines() if line["level"] == "WARNING"]) == 1  # no new warning


def test_the_django_adapter_names_a_route_our_telemetry_shadows(logs: LogCapture) -> None:
    test_django()  # configures Django with the adapter; its URLconf has a /healthz of its own
    from django.core.wsgi import get_wsgi_application

    def warned() -> list[str]:
        return [line["message"] for line in logs.lines() if line["level"] == "WARNING"]

    mw = ObservabilityMiddleware(get_wsgi_application(), registry=Registry(), auto_configure_logging=False)
    before = len(warned())  # test_django's own app warned already: each adapter instance says it once
    call_wsgi(mw, make_environ(PATH_INFO="/users/7", SERVER_NAME="localhost", HTTP_HOST="localhost"))
    assert len(warned()) == before + 1 and "the Django app routes /healthz" in warned()[-1]
    call_wsgi(mw, make_environ(PATH_INFO="/users/7", SERVER_NAME="localhost", HTTP_HOST="localhost"))
    assert len(warned()) == before + 1  # once
