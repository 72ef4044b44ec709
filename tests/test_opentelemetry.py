"""OpenTelemetry in front: its real SDK and WSGI middleware, our middleware behind them."""

from __future__ import annotations

import logging
from typing import Any

from helpers import LogCapture, call_wsgi, make_environ, require_module

from softfactory_obs import ObservabilityMiddleware
from softfactory_obs.metrics.exposition import MetricsApp
from softfactory_obs.store.metrics import Registry


def test_the_opentelemetry_span_is_the_request_trace_in_logs_and_exemplars(logs: LogCapture) -> None:
    require_module("opentelemetry.sdk.trace")
    require_module("opentelemetry.instrumentation.wsgi")
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        logging.getLogger("shop").info("inside the view")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    registry = Registry()
    front = OpenTelemetryMiddleware(
        ObservabilityMiddleware(app, registry=registry, auto_configure_logging=False), tracer_provider=provider
    )
    caller = "ab" * 16
    call_wsgi(front, make_environ(PATH_INFO="/orders"))  # no traceparent: the span starts a trace
    call_wsgi(front, make_environ(PATH_INFO="/orders", HTTP_TRACEPARENT=f"00-{caller}-{'cd' * 8}-01"))
    spans = exporter.get_finished_spans()
    assert len(spans) == 2  # the control: OpenTelemetry traced both requests
    ids = [(format(s.context.trace_id, "032x"), format(s.context.span_id, "016x")) for s in spans]
    assert ids[1][0] == caller  # the span continued the caller's trace
    access = logs.access()
    own = [line for line in logs.lines() if line["logger"] == "shop"]
    assert [(line.get("trace_id"), line.get("span_id")) for line in access] == ids
    assert [(line.get("trace_id"), line.get("span_id")) for line in own] == ids  # the app's lines too
    body, _ = MetricsApp(registry).render("application/openmetrics-text; version=1.0.0")
    exemplar = f'# {{span_id="{ids[0][1]}",trace_id="{ids[0][0]}"}}'
    assert any(line.startswith("http_requests_total") and exemplar in line for line in body.decode().splitlines()), (
        body.decode()
    )


def test_with_no_span_active_the_header_trace_stands(logs: LogCapture) -> None:
    """No span active (no tracer in front): the traceparent header's trace id, and no span id."""
    mw = ObservabilityMiddleware(lambda e, s: (s("200 OK", []), [b""])[1], auto_configure_logging=False)
    call_wsgi(mw, make_environ(HTTP_TRACEPARENT=f"00-{'12' * 16}-{'34' * 8}-01"))
    (line,) = logs.access()
    assert line["trace_id"] == "12" * 16 and "span_id" not in line
