"""An app with metrics of its own in prometheus_client's default registry (no multiprocess
directory), counted at import and per request, served instrumented."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, Info, Summary

import softfactory_obs

IMPORTS = Counter("shop_module_imports", "Times this module was imported")
ORDERS = Counter("shop_orders_placed", "Orders placed", ["kind"])
BASKET = Histogram("shop_basket_value_euros", "Value of each basket", buckets=(1, 10, 100))
ALIVE = Gauge("shop_worker_alive", "1 in each worker that imported the app")
LATENCY = Summary("shop_checkout_seconds", "A summary: not copied across workers")
BUILD = Info("shop_build", "An info: not copied across workers")

IMPORTS.inc()
ALIVE.set(1)
BUILD.info({"version": "1.2.3"})


def bare(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    n = int(environ["PATH_INFO"].rsplit("/", 1)[-1] or 0)
    ORDERS.labels(kind="gift" if n % 2 else "plain").inc()
    BASKET.observe(n % 150 + 0.5)
    LATENCY.observe(0.01)
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Pid", str(os.getpid()))])
    return [b"ok"]


app = softfactory_obs.instrument(bare, routes=["/order/{n}"])
