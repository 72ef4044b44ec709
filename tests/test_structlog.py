"""structlog through its recommended stdlib integration (ProcessorFormatter.wrap_for_formatter as the
last processor, stdlib loggers), rendered by our formatter: one JSON object per event, its keys as
top-level fields, the request id of the request in flight; and structlog's own loggers with our
processor."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import LogCapture, call_wsgi, make_environ, require_module, wrap

from softfactory_obs import configure_logging, request_context_processor

structlog = require_module("structlog")


@pytest.fixture
def stdlib_structlog() -> Iterator[Any]:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    yield structlog.get_logger("shop.orders")
    structlog.reset_defaults()


def order_app(log: Any) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        log.info("order placed", order_id=42, total=9.5, items=["a", "b"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return app


def test_a_structlog_event_is_one_json_object_with_top_level_fields(logs: LogCapture, stdlib_structlog: Any) -> None:
    response = call_wsgi(wrap(order_app(stdlib_structlog)), make_environ(PATH_INFO="/orders"))
    [event] = [line for line in logs.lines() if line["logger"] == "shop.orders"]
    assert event["message"] == "order placed"
    assert (event["order_id"], event["total"], event["items"]) == (42, 9.5, ["a", "b"])
    assert event["request_id"] == response.header("X-Request-Id")[0]
    assert event["level"] == "INFO" and event["service"] == "test-svc"
    # Nothing of structlog's plumbing or a second rendering inside the line:
    assert {"event", "_logger", "_name"}.isdisjoint(event), event
    assert set(event) == {
        "timestamp", "level", "logger", "message", "service", "pid", "request_id",
        "order_id", "total", "items",
    }  # fmt: skip


def test_structlog_exception_gives_the_traceback_in_the_same_line(logs: LogCapture, stdlib_structlog: Any) -> None:
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        stdlib_structlog.exception("charge failed", order_id=43)
    [event] = [line for line in logs.lines() if line["logger"] == "shop.orders"]
    assert event["message"] == "charge failed" and event["level"] == "ERROR" and event["order_id"] == 43
    assert event["error_type"] == "ZeroDivisionError"
    assert event["traceback"].startswith("Traceback") and "ZeroDivisionError: division by zero" in event["traceback"]


def test_structlog_events_in_the_ecs_schema(stdlib_structlog: Any) -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream, service="shop", schema="ecs")
    stdlib_structlog.warning("stock low", sku="A-1")
    [event] = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert event["message"] == "stock low" and event["sku"] == "A-1"
    assert event["log.level"] == "warning" and event["log.logger"] == "shop.orders"
    assert event["service.name"] == "shop" and "event" not in event


def test_structlog_own_loggers_get_the_request_id_from_our_processor() -> None:
    out = io.StringIO()
    structlog.configure(
        processors=[request_context_processor, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    try:
        log = structlog.get_logger()
        log.info("outside")
        app = wrap(order_app(log), access_log=False)
        response = call_wsgi(app, make_environ(PATH_INFO="/orders", HTTP_TRACEPARENT=f"00-{'a' * 32}-{'b' * 16}-01"))
    finally:
        structlog.reset_defaults()
    outside, inside = (json.loads(x) for x in out.getvalue().splitlines())
    assert inside["request_id"] == response.header("X-Request-Id")[0] and inside["trace_id"] == "a" * 32
    assert "request_id" not in outside and outside["event"] == "outside"  # the control: same logger, no request


def test_a_dict_message_without_structlog_keeps_the_old_meaning(logs: LogCapture) -> None:
    # python-json-logger's convention: a dict msg is merged as fields (no "event" mapping).
    logging.getLogger("plain").info({"event": "kept as a field", "n": 1})
    [line] = [x for x in logs.lines() if x["logger"] == "plain"]
    assert line["event"] == "kept as a field" and line["n"] == 1 and line["message"] == ""
