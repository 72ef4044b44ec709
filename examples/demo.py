"""A small shop API on plain WSGI + WebOb, fully instrumented: what ``make run`` serves under gunicorn.

    gunicorn -c examples/gunicorn.conf.py examples.demo:app

Routes: /api/users/<id>, /api/products, /api/search?q=, /api/slow, /api/error, /api/stream,
/api/download. Every line the handlers log carries the request id of the request in flight.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from webob import Request, Response

from softfactory_obs import current_request_id, instrument
from softfactory_obs.health import disk_space_check, memory_check

log = logging.getLogger("demo")

USERS = {i: {"id": i, "name": f"user{i}", "email": f"user{i}@example.com"} for i in range(1, 101)}
PRODUCTS = [{"id": i, "name": f"product {i}", "price_cents": 199 * i} for i in range(1, 21)]


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, content_type="application/json", charset="utf-8")


def index(req: Request) -> Response:
    return json_response({"routes": [template for template, _, _ in ROUTES]})


def get_user(req: Request, user_id: str) -> Response:
    user = USERS.get(int(user_id))
    if user is None:
        log.info("user not found", extra={"user_lookup": user_id})
        return json_response({"error": "no such user"}, status=404)
    return json_response(user)


def load_products() -> list[dict[str, Any]]:
    time.sleep(0.02)  # stands in for a slow database query
    return PRODUCTS


def list_products(req: Request) -> Response:
    return json_response({"products": products_cached()})


def search(req: Request) -> Response:
    q = req.GET.get("q", "").lower()
    hits = [p for p in PRODUCTS if q in p["name"]]
    log.info("search", extra={"hits": len(hits)})
    return json_response({"query": q, "results": hits})


def slow(req: Request) -> Response:
    # Slower than the 1 s slow-request threshold the alerts use.
    seconds = min(float(req.GET.get("seconds", "1.2")), 10.0)
    time.sleep(seconds)
    return json_response({"slept_seconds": seconds})


def fail(req: Request) -> Response:
    log.warning("about to fail on purpose")
    raise RuntimeError("deliberate failure for the demo")


def stream(req: Request) -> Response:
    chunks = min(int(req.GET.get("chunks", "5")), 100)

    def body() -> Iterator[bytes]:
        for i in range(chunks):
            # Logged while the server is sending the body: the request id is still in context.
            log.info("streaming chunk", extra={"chunk": i})
            yield f"chunk {i} of request {current_request_id()}\n".encode()
            time.sleep(0.05)

    return Response(app_iter=body(), content_type="text/plain")


def download(req: Request) -> Any:
    # Handled as a raw WSGI app so the server's wsgi.file_wrapper (sendfile) is used.
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = os.path.abspath(__file__)
        size = os.path.getsize(path)
        start_response("200 OK", [("Content-Type", "text/x-python"), ("Content-Length", str(size))])
        f = open(path, "rb")  # noqa: SIM115 - closed by the file wrapper's close()
        wrapper = environ.get("wsgi.file_wrapper")
        return wrapper(f, 8192) if wrapper else iter(lambda: f.read(8192), b"")

    return app


ROUTES: list[tuple[str, re.Pattern[str], Callable[..., Any]]] = [
    (template, re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$"), handler)
    for template, handler in [
        ("/", index),
        ("/api/users/{user_id}", get_user),
        ("/api/products", list_products),
        ("/api/search", search),
        ("/api/slow", slow),
        ("/api/error", fail),
        ("/api/stream", stream),
        ("/api/download", download),
    ]
]


def shop(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    req = Request(environ)
    # The raw PEP 3333 path: WebOb's path_info would raise on bytes that are not UTF-8.
    path = environ.get("PATH_INFO", "")
    for template, pattern, handler in ROUTES:
        match = pattern.match(path)
        if match:
            if template == "/api/users/{user_id}" and not match["user_id"].isdigit():
                break
            # Tell the middleware the route template, as a framework adapter would.
            environ["softfactory_obs.route"] = template
            response = handler(req, **match.groupdict())
            return response(environ, start_response)
    return json_response({"error": "not found"}, status=404)(environ, start_response)


app = instrument(shop, service_name=os.environ.get("SOFTFACTORY_OBS_SERVICE_NAME", "demo-shop"))
app.add_health_check("disk", disk_space_check("/", min_free_percent=1.0))
app.add_health_check("memory", memory_check(max_used_percent=99.0), critical=False)

# With a Redis URL the product list is read through a cache, and the cache shows up in /metrics,
# /health and the summary; without one it is loaded every time.
products_cached: Callable[[], list[dict[str, Any]]] = load_products
if os.environ.get("SOFTFACTORY_OBS_REDIS_URL"):
    import redis

    from softfactory_obs.redis import cached

    cache_client = app.add_redis(
        redis.Redis.from_url(os.environ["SOFTFACTORY_OBS_REDIS_URL"], socket_timeout=0.5, socket_connect_timeout=0.5),
        cache="products",
    )
    products_cached = cached(cache_client, ttl=10, cache="products")(load_products)
