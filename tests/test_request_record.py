"""The request record: fully built at every moment, read alike by every recorder, whatever fills it."""

from __future__ import annotations

import time
from typing import Any

import pytest
from helpers import LogCapture, call_wsgi, make_environ, samples

from softfactory_obs import ObservabilityMiddleware
from softfactory_obs._failures import failure_counts
from softfactory_obs.logs.access import AccessLog
from softfactory_obs.metrics.http import HttpMetrics
from softfactory_obs.request.record import RequestRecord
from softfactory_obs.request.wsgi import ROUTE_KEY
from softfactory_obs.routes import UNMATCHED, Endpoints, RouteTable
from softfactory_obs.settings import Settings
from softfactory_obs.store.metrics import Registry

FIELDS = [name for name in RequestRecord.__slots__ if name != "__weakref__"]


@pytest.fixture
def registry() -> Registry:
    return Registry()


def test_every_field_is_set_at_every_moment(registry: Registry) -> None:
    seen: dict[str, dict[str, Any]] = {}

    def snapshot(moment: str) -> Any:
        def hook(record: RequestRecord) -> None:
            # getattr on an unset slot raises, the hook fails and failure_counts() says so.
            seen[moment] = {name: getattr(record, name) for name in FIELDS}
            seen[moment]["methods"] = (
                record.query_string(),
                record.header("user-agent"),
                record.remote_address(),
                record.remote_user(),
            )

        return hook

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ[ROUTE_KEY] = "/caf\u00e9/{id}"  # as a framework adapter sets it while the app runs
        start_response("201 Created", [("Content-Length", "7")])
        return [b"created"]

    mw = ObservabilityMiddleware(app, registry=registry, auto_configure_logging=False, access_log=False)
    for moment, add in (
        ("start", mw.add_start_hook),
        ("response", mw.add_response_hook),
        ("finish", mw.add_finish_hook),
    ):
        add(snapshot(moment))
    environ = make_environ(
        REQUEST_METHOD="POST",
        PATH_INFO="/caf\u00c3\u00a9/7",  # PEP 3333: the UTF-8 bytes of "/café/7" as latin-1 code points
        SCRIPT_NAME="/shop",
        QUERY_STRING="q=1",
        CONTENT_LENGTH="5",
        HTTP_USER_AGENT="probe/1.0",
        HTTP_X_REQUEST_ID="fixed-id",
        REMOTE_ADDR="10.1.2.3",
        REMOTE_USER="ann",
        **{"wsgi.multithread": False},
    )
    assert call_wsgi(mw, environ).body == b"created"
    assert failure_counts() == {}
    assert set(seen) == {"start", "response", "finish"}
    start, response, finish = seen["start"], seen["response"], seen["finish"]
    assert (start["method"], start["path"], start["script_name"]) == ("POST", "/café/7", "/shop")
    assert (start["request_id"], start["id_rejected"], start["trace_id"]) == ("fixed-id", False, None)
    assert (start["request_bytes"], start["threaded"], start["environ"]) == (5, False, environ)
    assert start["methods"] == ("q=1", "probe/1.0", "10.1.2.3", "ann")
    # Not known yet: set, to their "not yet" values.
    assert (start["status"], start["route"], start["exc"], start["duration"], start["response_bytes"]) == (
        None,
        None,
        None,
        0.0,
        0,
    )
    assert (response["status"], response["route"]) == (201, "/café/{id}")
    assert response["duration"] == 0.0
    assert finish["status"] == 201 and finish["response_bytes"] == 7 and finish["duration"] > 0
    assert finish["endpoint"] == "/shop/café/{id}"  # the metrics resolved it; the record keeps it


def test_the_status_is_an_int_and_500_when_the_app_never_answered(registry: Registry) -> None:
    statuses: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise RuntimeError("before start_response")

    mw = ObservabilityMiddleware(app, registry=registry, auto_configure_logging=False, access_log=False)
    mw.add_finish_hook(lambda record: statuses.append((record.status, type(record.exc).__name__)))
    assert call_wsgi(mw).status.startswith("500")
    assert statuses == [(500, "RuntimeError")]


@pytest.mark.parametrize("metrics", [True, False])
def test_the_access_line_and_the_metrics_show_one_endpoint(registry: Registry, logs: LogCapture, metrics: bool) -> None:
    """With or without the HTTP metrics (which resolve it first when they run), the access line
    shows the endpoint from the route table; a 404 off the table is __unmatched__ in both."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("404 Not Found" if environ["PATH_INFO"].startswith("/nope") else "200 OK", [])
        return [b""]

    mw = ObservabilityMiddleware(
        app, registry=registry, auto_configure_logging=False, metrics=metrics, routes=["/users/{id}"]
    )
    for path in ("/users/7", "/nope/x"):
        call_wsgi(mw, make_environ(PATH_INFO=path))
    assert [line["endpoint"] for line in logs.access()] == ["/users/{id}", UNMATCHED]
    labelled = sorted(
        dict(labels)["endpoint"] for (name, labels), _ in samples(registry).items() if name == "http_requests_total"
    )
    assert labelled == (sorted(["/users/{id}", UNMATCHED]) if metrics else [])


def test_queue_time_does_not_depend_on_running_after_the_http_metrics(registry: Registry) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b""]

    mw = ObservabilityMiddleware(
        app, registry=registry, auto_configure_logging=False, queue_time_header="X-Request-Start", access_log=False
    )
    assert len(mw.start_hooks) == 2  # the HTTP metrics' and the queue time's
    mw.start_hooks.reverse()
    mw.add_start_hook(lambda record: None)  # rebuilds the hooks in the new order
    call_wsgi(mw, make_environ(HTTP_X_REQUEST_START=f"t={time.time() - 0.25:.3f}"))
    waited = samples(registry)[("http_request_queue_seconds_sum", ())]
    assert 0.2 < waited < 60


class OtherProtocolRecord(RequestRecord):
    """A record as a front for another protocol (ASGI) fills it: no WSGI environ behind it."""

    __slots__ = ("_headers",)

    def __init__(self, state: list[Any]) -> None:
        self.environ = {"type": "http"}
        self.method, self.path, self.script_name = "GET", "/orders/42", ""
        self.request_id, self.id_rejected, self.trace_id, self.span_id = "rec-1", False, None, None
        self.request_bytes, self.started, self.threaded = None, time.perf_counter(), True
        self.status = self.route = self.endpoint = self.exc = None
        self.duration, self.response_bytes, self.state = 0.0, 0, state
        self._headers = {"user-agent": "asgi-client"}

    def query_string(self) -> str:
        return ""

    def header(self, name: str) -> str | None:
        return self._headers.get(name.lower())

    def remote_address(self) -> str:
        return "10.9.8.7"

    def remote_user(self) -> str | None:
        return None


def test_a_record_from_another_protocol_feeds_the_same_recorders(registry: Registry, logs: LogCapture) -> None:
    settings = Settings.from_env(routes=["/orders/{id}"], access_log_route="logging", auto_configure_logging=False)
    endpoints = Endpoints(RouteTable(settings.routes))
    http = HttpMetrics(registry, settings, endpoints)  # not installed: state positions 0 and 1
    access = AccessLog(settings, endpoints)
    record = OtherProtocolRecord([None] * HttpMetrics.STATE_SIZE)
    http.start(record)
    assert samples(registry)[("http_requests_in_progress", (("method", "GET"),))] == 1
    record.status, record.route = 200, "/orders/{id}"
    http.count(record)
    record.duration, record.response_bytes = 0.0125, 12
    http.observe(record)
    access(record)
    assert failure_counts() == {}
    found = samples(registry)
    labels = (("endpoint", "/orders/{id}"), ("method", "GET"))
    assert found[("http_requests_total", (*labels, ("status", "200")))] == 1
    assert found[("http_request_duration_seconds_sum", labels)] == pytest.approx(0.0125)
    assert found[("http_response_size_bytes_sum", labels)] == 12
    assert found[("http_requests_in_progress", (("method", "GET"),))] == 0
    (line,) = logs.access()
    assert (line["request_id"], line["endpoint"], line["status"], line["content_length"]) == (
        "rec-1",
        "/orders/{id}",
        200,
        12,
    )
    assert (line["user_agent"], line["remote_addr"]) == ("asgi-client", "10.9.8.7")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, ("", None, "", None)),
        (
            {"QUERY_STRING": "q=1", "HTTP_USER_AGENT": "probe/1.0", "REMOTE_ADDR": "10.1.2.3", "REMOTE_USER": "ann"},
            ("q=1", "probe/1.0", "10.1.2.3", "ann"),
        ),
        # PEP 3333's latin-1 strings carrying UTF-8: shown as the text they carry.
        (
            {
                "QUERY_STRING": "q=caf\u00c3\u00a9",
                "HTTP_USER_AGENT": "caf\u00c3\u00a9/1",
                "REMOTE_USER": "\u00c3\u00a9",
            },
            ("q=café", "café/1", "", "é"),
        ),
    ],
)
def test_access_details_are_the_four_methods_in_one_call(
    registry: Registry, extra: dict[str, str], expected: tuple[Any, ...]
) -> None:
    seen: list[tuple[Any, Any]] = []

    def hook(record: RequestRecord) -> None:
        methods = (record.query_string(), record.user_agent(), record.remote_address(), record.remote_user())
        seen.append((record.access_details(), methods))

    mw = ObservabilityMiddleware(
        lambda environ, start_response: start_response("200 OK", []) or [b""],
        registry=registry,
        auto_configure_logging=False,
        access_log=False,
    )
    mw.add_finish_hook(hook)
    call_wsgi(mw, make_environ(**extra))
    assert failure_counts() == {}
    ((details, methods),) = seen
    assert details == methods == expected


def test_a_record_without_its_own_access_details_composes_them() -> None:
    record = OtherProtocolRecord([])
    assert record.access_details() == ("", "asgi-client", "10.9.8.7", None)
