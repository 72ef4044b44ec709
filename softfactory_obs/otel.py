"""OpenTelemetry's active span, without depending on OpenTelemetry.

When an app runs OpenTelemetry (its WSGI middleware in front of ours, or a tracer of its own), its
server span is the request's trace: its trace id and span id go to the request record, the log
lines and the exemplars, in place of the ``traceparent`` header's (which the span continues when
there was one). Read only from a process that imported ``opentelemetry.trace`` itself: we never
import it, and an app without it pays nothing.
"""

from __future__ import annotations

import sys

from .request.record import RequestRecord
from .request_id import replace_trace


def active_span_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the span active here, as lowercase hex; None without a valid one."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def uses_opentelemetry() -> bool:
    """Whether this process imported OpenTelemetry's tracing API (checked once per process)."""
    return "opentelemetry.trace" in sys.modules


def take_span(record: RequestRecord) -> None:
    """Start hook: the active span's ids on the record and in the log context."""
    try:
        ids = active_span_ids()
    except Exception:  # a tracer that fails here must not fail the request
        return
    if ids is not None:
        record.trace_id, record.span_id = ids
        replace_trace(record.request_id, *ids)
