"""Per-request HTTP metrics, recorded in the finish hook from the finished ``RequestCycle``.

Label values are bounded: the method falls into a fixed set, the endpoint is the route template a
framework adapter stored in the environ (never the raw path), the status is a 3-digit code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .store.metrics import DEFAULT_BUCKETS, Counter, Histogram, Registry

if TYPE_CHECKING:
    from ._request import RequestCycle

METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
UNMATCHED = "__unmatched__"


class HttpMetrics:
    component = "http metrics"

    def __init__(self, registry: Registry, namespace: str = "") -> None:
        prefix = f"{namespace}_" if namespace else ""
        self.requests = Counter(f"{prefix}http_requests_total", "HTTP requests served",
                                ["method", "endpoint", "status"], registry=registry)
        self.duration = Histogram(f"{prefix}http_request_duration_seconds",
                                  "Time from the request's arrival until its body was sent and closed",
                                  ["method", "endpoint"], buckets=DEFAULT_BUCKETS, registry=registry)
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def _children_for(self, cycle: RequestCycle) -> tuple[Any, Any]:
        environ = cycle.environ
        method = environ.get("REQUEST_METHOD", "")
        if method not in METHODS:
            method = "_OTHER"
        endpoint = environ.get("softfactory_obs.route") or UNMATCHED
        status = cycle.status[:3] if cycle.status else "500"  # no status at all: the app raised first
        key = (method, endpoint, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(method, endpoint, status), self.duration.labels(method, endpoint))
            self._children[key] = children
        return children

    def count(self, cycle: RequestCycle) -> None:
        """Response hook: the request is counted before its body goes out (exact under kill -9)."""
        children = cycle.http_children = self._children_for(cycle)
        children[0].inc()

    def observe(self, cycle: RequestCycle) -> None:
        """Finish hook: the duration is known only once the body was sent and closed."""
        (cycle.http_children or self._children_for(cycle))[1].observe(cycle.duration)
