"""JSON log lines: schema, safety of every field, redaction, configure_logging, failure handling."""

from __future__ import annotations

import io
import json
import logging
import math
import re
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from wsgiref.validate import validator

import pytest
from helpers import LogCapture, call_wsgi, make_environ, wrap
from hypothesis import given, settings
from hypothesis import strategies as st

from softfactory_obs import ObservabilityMiddleware, RequestContextFilter, configure_logging
from softfactory_obs._failures import failure_counts
from softfactory_obs.json_text import iso_utc, iso_utc_ms
from softfactory_obs.logs import DIRECT_SINKS, JsonFormatter
from softfactory_obs.logs.access import AccessLog, redact_query, sensitive_matcher
from softfactory_obs.settings import DEFAULT_REDACT_QUERY

TEXT = [("Content-Type", "text/plain")]
ISO_UTC_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def ok(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [*TEXT, ("Content-Length", "2")])
    return [b"ok"]


def test_access_line_schema(logs: LogCapture) -> None:
    env = make_environ(
        REQUEST_METHOD="POST",
        PATH_INFO="/api/users/7",
        QUERY_STRING="page=2",
        REMOTE_ADDR="192.0.2.1",
        HTTP_USER_AGENT="curl/8",
        REMOTE_USER="alice",
        HTTP_X_REQUEST_ID="rid-1",
    )
    env["softfactory_obs.route"] = "/api/users/{id}"
    call_wsgi(wrap(ok, service_name="shop"), env)
    [line] = logs.access()
    assert ISO_UTC_MS.fullmatch(line["timestamp"])
    assert line["level"] == "INFO"
    assert line["logger"] == "softfactory_obs.access"
    assert line["message"] == "POST /api/users/7 200"
    assert line["service"] == "test-svc"  # the formatter's service, from configure_logging
    assert isinstance(line["pid"], int)
    assert line["request_id"] == "rid-1"
    assert line["method"] == "POST"
    assert line["path"] == "/api/users/7?page=2"
    assert line["endpoint"] == "/api/users/{id}"
    assert line["status"] == 200
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0
    assert line["content_length"] == 2
    assert line["remote_addr"] == "192.0.2.1"
    assert line["user_agent"] == "curl/8"
    assert line["user_id"] == "alice"
    assert "trace_id" not in line


def test_endpoint_falls_back_to_the_path_and_script_name_is_kept(logs: LogCapture) -> None:
    call_wsgi(wrap(ok), make_environ(SCRIPT_NAME="/shop", PATH_INFO="/cart", QUERY_STRING="x=1"))
    line = logs.access()[0]
    assert line["endpoint"] == "/shop/cart"
    assert line["path"] == "/shop/cart?x=1"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("q=shoes&page=2", "q=shoes&page=2"),
        ("password=hunter2&q=x", "password=[REDACTED]&q=x"),
        ("Access_Token=abc&API_KEY=k", "Access_Token=[REDACTED]&API_KEY=[REDACTED]"),
        (
            "user_password=1&session_id=2&X-Amz-Signature=3",
            "user_password=[REDACTED]&session_id=[REDACTED]&X-Amz-Signature=[REDACTED]",
        ),
        ("token", "token"),  # a bare flag has no value to hide
        ("auth=&q=1", "auth=[REDACTED]&q=1"),
        ("api%5Fkey=k&pass%77ord=p&q=%41", "api%5Fkey=[REDACTED]&pass%77ord=[REDACTED]&q=%41"),  # decoded names
        ("my+token=t&q=a+b", "my+token=[REDACTED]&q=a+b"),
    ],
)
def test_redact_query(query: str, expected: str) -> None:
    assert redact_query(query, DEFAULT_REDACT_QUERY) == expected


def test_secrets_and_credentials_never_reach_the_line(logs: LogCapture) -> None:
    env = make_environ(
        QUERY_STRING="token=s3cr3t-token&secret=s3cr3t-secret",
        HTTP_AUTHORIZATION="Bearer s3cr3t-bearer",
        HTTP_COOKIE="session=s3cr3t-cookie",
        HTTP_PROXY_AUTHORIZATION="Basic s3cr3t-proxy",
        HTTP_X_API_KEY="s3cr3t-key",
    )
    call_wsgi(wrap(ok), env)
    raw = logs.raw()
    assert "s3cr3t" not in raw
    assert logs.access()[0]["path"] == "/?token=[REDACTED]&secret=[REDACTED]"


def test_non_utf8_path_is_decoded_safely(logs: LogCapture) -> None:
    # PEP 3333: PATH_INFO holds the raw bytes decoded as latin-1. b"/caf\xc3\xa9" is UTF-8 for /café.
    call_wsgi(wrap(ok), make_environ(PATH_INFO="/caf\xc3\xa9/\xff\xfe"))
    line = logs.access()[0]
    assert line["path"] == "/café/\ufffd\ufffd"
    assert "\\ud" not in logs.raw()  # no lone surrogates


def test_control_characters_and_line_breaks_cannot_split_a_line(logs: LogCapture) -> None:
    hostile = '/x\r\n{"level": "CRITICAL"}\u2028\x1b[31m\x00'
    call_wsgi(
        wrap(ok),
        make_environ(PATH_INFO=hostile.encode("utf-8").decode("latin-1"), HTTP_USER_AGENT="agent\nwith\nnewlines"),
    )
    raw = logs.raw()
    assert raw.count("\n") == 1
    assert raw.isascii()
    assert logs.access()[0]["path"] == hostile


def test_long_fields_are_truncated_and_marked(logs: LogCapture) -> None:
    call_wsgi(
        wrap(ok),
        make_environ(PATH_INFO="/" + "p" * 9000, HTTP_USER_AGENT="u" * 10_000, QUERY_STRING="q=" + "v" * 70_000),
    )
    line = logs.access()[0]
    assert line["user_agent"] == "u" * 512 + "...[truncated]"
    assert line["path"].endswith("...[truncated]") and len(line["path"]) < 600
    assert len(logs.raw()) < 4096  # one write below PIPE_BUF: atomic on a shared pipe


def test_user_id_getter_and_its_failure(logs: LogCapture) -> None:
    call_wsgi(wrap(ok, user_id_getter=lambda env: env.get("HTTP_X_USER")), make_environ(HTTP_X_USER="u-9"))
    assert logs.access()[0]["user_id"] == "u-9"

    def broken(env: dict[str, Any]) -> str:
        raise KeyError("no user")

    resp = call_wsgi(wrap(ok, user_id_getter=broken), make_environ(REMOTE_USER="fallback"))
    assert resp.body == b"ok"
    assert logs.access()[1]["user_id"] == "fallback"
    assert failure_counts() == {"user_id_getter": 1}


def test_exception_traceback_is_a_field_of_the_same_line(logs: LogCapture) -> None:
    log = logging.getLogger("app.errors")
    try:
        {}["missing"]
    except KeyError:
        log.exception("lookup failed")
    raw = logs.raw()
    assert raw.count("\n") == 1
    [line] = logs.lines()
    assert line["error_type"] == "KeyError"
    assert line["traceback"].startswith("Traceback (most recent call last)")
    assert "KeyError: 'missing'" in line["traceback"]


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    __repr__ = __str__


def test_extras_of_any_type_always_give_valid_json(logs: LogCapture) -> None:
    log = logging.getLogger("app.extras")
    log.info(
        "values",
        extra={
            "nan": math.nan,
            "inf": math.inf,
            "raw": b"\xff\x00bytes",
            "dec": Decimal("1.5"),
            "nested": {"x": [math.nan, {1, 2}]},
            "obj": object(),
            "surrogate": "a\udcffb",
            "bad": Unprintable(),
        },
    )
    [line] = logs.lines()
    assert line["nan"] == "nan" and line["inf"] == "inf"
    assert line["nested"]["x"][0] == "nan"
    assert line["dec"] == "1.5"
    assert line["bad"] == "<unprintable Unprintable>"
    assert logs.raw().isascii()


def test_extras_json_cannot_write_as_they_are_keep_the_line_whole(logs: LogCapture) -> None:
    """A tuple key, a container inside itself, NaN in a set: each value is spelled safely, and the
    record keeps its message and every other field (the fallback line kept neither)."""
    loop: list[Any] = [1]
    loop.append(loop)
    logging.getLogger("app.extras").warning(
        "hello %s",
        "w",
        extra={"by_pair": {(1, 2): "a", b"raw": "b"}, "loop": loop, "odd": frozenset([math.nan]), "plain": 7},
    )
    [line] = logs.lines()
    assert line["message"] == "hello w" and line["plain"] == 7 and "format_error" not in line
    assert line["by_pair"] == {"(1, 2)": "a", "raw": "b"}
    assert line["loop"] == [1, "<cycle>"]
    assert line["odd"] == ["nan"]
    assert failure_counts() == {}


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), st.binary(max_size=8))
_KEYS = st.one_of(st.text(max_size=5), st.integers(), st.tuples(st.integers()), st.none(), st.floats(), st.binary())
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(_KEYS, inner, max_size=3),
        st.tuples(inner, inner),
        st.frozensets(st.one_of(st.integers(), st.floats(), st.text(max_size=3)), max_size=3),
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    extra=st.dictionaries(st.from_regex(r"x_[a-z]{1,5}", fullmatch=True), _VALUES, max_size=4),
    schema=st.sampled_from(["default", "ecs"]),
)
def test_any_extras_give_one_json_line_with_every_field(extra: dict[str, Any], schema: str) -> None:
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "hello %s", ("w",), None)
    record.__dict__.update(extra)
    line = JsonFormatter(schema=schema).format(record)
    assert "\n" not in line and line.isascii()
    data = json.loads(line)
    assert data["message"] == "hello w" and "format_error" not in data
    assert set(extra) <= set(data)


def test_broken_message_format_falls_back_to_a_minimal_line(logs: LogCapture) -> None:
    # Straight to our handler: pytest's own capture handler would raise on this record.
    [ours] = [h for h in logging.getLogger().handlers if getattr(h, "_softfactory_obs_handler", False)]
    ours.handle(logging.LogRecord("app.bad", logging.WARNING, __file__, 1, "%d items", ("not a number",), None))
    [line] = logs.lines()
    assert line["message"] == "%d items"
    assert "format_error" in line
    assert failure_counts() == {"log formatter": 1}


def test_configure_logging_twice_does_not_duplicate_handlers() -> None:
    first, second = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    before = len(root.handlers)
    configure_logging(stream=first)
    configure_logging("WARNING", stream=second)
    assert len(root.handlers) == before + 1
    logging.getLogger("x").warning("once")
    logging.getLogger("x").info("filtered by level")
    assert first.getvalue() == ""
    assert [json.loads(x)["message"] for x in second.getvalue().splitlines()] == ["once"]


def test_configure_logging_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="level: expected one of DEBUG"):
        configure_logging("LOUD")
    with pytest.raises(ValueError, match="file_mode: expected 'dated' or 'watched'"):
        configure_logging(log_file="x.log", file_mode="rotating")


def test_middleware_configures_json_logging_when_nothing_else_did(capfd: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()  # as under gunicorn: no handlers on the root logger
    try:
        mw = ObservabilityMiddleware(ok, service_name="auto")
        call_wsgi(mw, make_environ(HTTP_X_REQUEST_ID="auto-1"))
    finally:
        for h in root.handlers[:]:
            root.removeHandler(h)
            h.close()
        root.handlers.extend(saved)
    out = capfd.readouterr().out
    [line] = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert line["request_id"] == "auto-1" and line["service"] == "auto"


def test_request_context_filter_for_other_formatters(logs: LogCapture) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(request_id)s %(message)s"))
    handler.addFilter(RequestContextFilter())
    logger = logging.getLogger("app.plain")
    logger.addHandler(handler)
    try:

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            logger.info("inside")
            return ok(environ, start_response)

        call_wsgi(wrap(app), make_environ(HTTP_X_REQUEST_ID="plain-1"))
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "plain-1 inside\n"


def test_access_log_can_be_disabled_or_silenced_by_level(logs: LogCapture) -> None:
    call_wsgi(wrap(ok, access_log=False))
    logging.getLogger("softfactory_obs.access").setLevel(logging.WARNING)
    call_wsgi(wrap(ok))
    assert logs.access() == []


def test_telemetry_routes_are_not_logged_by_default(logs: LogCapture) -> None:
    mw = ObservabilityMiddleware(ok, auto_configure_logging=False)
    mw.mount("/metrics", ok)
    resp = call_wsgi(mw, make_environ(PATH_INFO="/metrics"))
    assert resp.header("X-Request-Id")  # still carries an id
    assert logs.access() == []
    logged = ObservabilityMiddleware(ok, auto_configure_logging=False, log_telemetry_routes=True)
    logged.mount("/metrics", ok)
    call_wsgi(logged, make_environ(PATH_INFO="/metrics"))
    assert [r["path"] for r in logs.access()] == ["/metrics"]
    with pytest.raises(ValueError, match="expected an absolute path"):
        mw.mount("metrics", ok)


def _schema_table() -> dict[str, tuple[str, str]]:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "LOG_SCHEMA.md").read_text()
    rows = [line.split("|")[1:4] for line in doc.splitlines() if line.startswith("| `")]
    return {name.strip(" `"): (kind.strip(), ecs.strip(" `")) for name, kind, ecs in rows}


def test_access_lines_follow_the_documented_schema(logs: LogCapture) -> None:
    call_wsgi(
        wrap(ok),
        make_environ(
            HTTP_X_REQUEST_ID="bad id", HTTP_TRACEPARENT=("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        ),
    )
    [line] = logs.access()
    table = _schema_table()
    types = {"string": str, "integer": int, "number": (int, float), "boolean": bool}
    for field, value in line.items():
        assert field in table, f"{field} is not in docs/LOG_SCHEMA.md"
        kind = table[field][0]
        if kind == "string or null":
            assert value is None or isinstance(value, str), field
        else:
            assert isinstance(value, types[kind]), (field, value)


def test_ecs_schema_renames_every_field() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, schema="ecs", service="shop")
    call_wsgi(
        wrap(ok, routes=["/users/{id}"]),
        make_environ(HTTP_X_REQUEST_ID="ecs-1", REMOTE_USER="ann", PATH_INFO="/users/7", QUERY_STRING="q=1"),
    )
    line = json.loads(stream.getvalue().splitlines()[-1])
    table = _schema_table()
    expected = {
        table[f][1]
        for f in (
            "timestamp",
            "level",
            "logger",
            "message",
            "service",
            "pid",
            "request_id",
            "method",
            "path",
            "endpoint",
            "status",
            "latency_ms",
            "content_length",
            "remote_addr",
            "user_agent",
            "user_id",
        )
    }
    assert expected <= set(line)
    assert line["http.request.id"] == "ecs-1" and line["user.id"] == "ann" and line["log.level"] == "info"
    assert line["ecs.version"].startswith("8.")
    # ECS meanings: url.path is the path alone, the route is a label, the duration integer nanoseconds.
    urls = (line["url.original"], line["url.path"], line["labels.endpoint"])
    assert urls == ("/users/7?q=1", "/users/7", "/users/{id}")
    assert isinstance(line["event.duration"], int) and 0 < line["event.duration"] < 10**10
    with pytest.raises(ValueError, match="log_schema: expected one of 'default', 'ecs'"):
        ObservabilityMiddleware(ok, log_schema="gelf", auto_configure_logging=False)


# -- the direct access line (written to our handlers without a LogRecord) --------------------------

# What differs between two requests; a rejected id is replaced by a fresh one each time.
_VOLATILE = re.compile(r'"(timestamp|latency_ms|request_id)": ("[^"]*"|[0-9.e-]+)')


def _stable(line: str) -> str:
    return _VOLATILE.sub(r'"\1": X', line)


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({}, id="plain"),
        pytest.param(
            {
                "PATH_INFO": '/caf\xc3\xa9/"q"\\\x00',
                "QUERY_STRING": "token=s3cret&q=\u00e9",
                "HTTP_USER_AGENT": 'agent "x"\n\u2028\x1b[31m',
                "REMOTE_USER": 'bob\t"o"',
            },
            id="hostile",
        ),
        pytest.param(
            {
                "HTTP_TRACEPARENT": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "HTTP_X_REQUEST_ID": "bad id!",
            },
            id="trace-and-rejected-id",
        ),
        pytest.param({"PATH_INFO": "/missing", "REQUEST_METHOD": "DELETE"}, id="error-status"),
    ],
)
def test_direct_line_is_byte_identical_to_the_formatted_record(logs: LogCapture, environ: dict[str, Any]) -> None:
    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        status = "503 Service Unavailable" if env["PATH_INFO"] == "/missing" else "200 OK"
        start_response(status, TEXT)
        return [b"body"]

    direct = ObservabilityMiddleware(validator(app), auto_configure_logging=False)
    through_logging = ObservabilityMiddleware(validator(app), auto_configure_logging=False, access_log_route="logging")
    [access] = [h for h in direct.finish_hooks if isinstance(h, AccessLog)]
    environ = {"HTTP_X_REQUEST_ID": "same-id", **environ}
    assert DIRECT_SINKS.targets(access.logger)  # our handler, our formatter: the direct line
    made: list[str] = []
    default_factory = logging.getLogRecordFactory()

    def counting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        made.append(args[0])
        return default_factory(*args, **kwargs)

    logging.setLogRecordFactory(counting_factory)
    try:  # the direct line makes no LogRecord (an error line does); the logging route makes one
        call_wsgi(validator(direct), make_environ(**environ))
        records_for_direct = len(made)
        call_wsgi(validator(through_logging), make_environ(**environ))
    finally:
        logging.setLogRecordFactory(default_factory)
    assert (records_for_direct, len(made)) == ((1, 2) if environ.get("REQUEST_METHOD") == "DELETE" else (0, 1))
    direct_line, formatted = logs.raw().splitlines()
    assert _stable(direct_line) == _stable(formatted)


@pytest.mark.parametrize("seconds", [0.0, 4e-7, 6e-7, 0.0000123, 0.0015, 0.0125, 0.999999, 1.0, 3.0004999, 86.4])
def test_direct_line_spells_latency_as_the_formatted_record_does(logs: LogCapture, seconds: float) -> None:
    """The direct line builds latency_ms from whole microseconds; the record holds round(ms, 3). (They
    may end one digit apart for a duration within float error of half a microsecond.)"""
    mw = ObservabilityMiddleware(ok, auto_configure_logging=False)

    def fixed_duration(cycle: Any) -> None:
        cycle.duration = seconds

    mw.finish_hooks.insert(0, fixed_duration)  # before the access line reads it
    mw.add_start_hook(lambda record: None)  # (adding a hook rebuilds them all, in the lists' order)
    [access] = [h for h in mw.finish_hooks if isinstance(h, AccessLog)]
    assert DIRECT_SINKS.targets(access.logger)  # the direct line
    call_wsgi(mw)
    [spelled] = re.findall(r'"latency_ms": ([^,]+),', logs.raw())
    assert spelled == repr(round(seconds * 1000.0, 3))


def test_direct_line_follows_logging_reconfigured_between_requests(logs: LogCapture) -> None:
    wsgi = wrap(ok)
    call_wsgi(wsgi, make_environ(PATH_INFO="/one"))
    extra = io.StringIO()
    handler = logging.StreamHandler(extra)
    logging.getLogger("softfactory_obs.access").addHandler(handler)  # someone else's handler, added late
    try:
        call_wsgi(wsgi, make_environ(PATH_INFO="/two"))
    finally:
        logging.getLogger("softfactory_obs.access").removeHandler(handler)
    call_wsgi(wsgi, make_environ(PATH_INFO="/three"))
    assert [line["path"] for line in logs.access()] == ["/one", "/two", "/three"]
    assert extra.getvalue() == "GET /two 200\n"
    logs.stream.truncate(0)
    logging.getLogger().setLevel(logging.ERROR)  # the access logger inherits it: silenced at once
    call_wsgi(wsgi, make_environ(PATH_INFO="/four"))
    assert logs.raw().strip("\x00") == ""


def test_direct_line_write_failure_is_counted_and_the_response_still_goes_out(logs: LogCapture) -> None:
    logs.stream.close()  # the handler's stream is gone: writing raises
    resp = call_wsgi(wrap(ok), make_environ())
    assert resp.status.startswith("200") and resp.body == b"ok"
    assert failure_counts().get("log stream") == 1
    logs.stream = io.StringIO()  # the fixture's final parse


@pytest.mark.parametrize(
    "ms", [0, 999, 1000, 1_795_366_296_123, 1_795_366_296_999, 1_795_366_297_000, 4_102_444_800_001]
)
def test_timestamps_from_milliseconds_and_from_seconds(ms: int) -> None:
    """The access line's stamp (whole milliseconds) and the records' (float seconds) spell one
    instant alike; the second's text is cached, so neighbours across a second boundary are checked too."""
    for value in (ms - 1, ms, ms + 1):
        if value < 0:
            continue
        expected = (datetime(1970, 1, 1) + timedelta(milliseconds=value)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        assert iso_utc_ms(value) == expected
        assert iso_utc(value / 1000 + 0.0004) == expected  # +0.4 ms: clear of float rounding at the edge


def test_direct_lines_carry_each_requests_client_address(logs: LogCapture) -> None:
    """Addresses are cached as JSON: each line still has its own, escaped as the formatted line
    would, and a lax server's non-str address is written as text, never cached."""
    mw = ObservabilityMiddleware(ok, auto_configure_logging=False)
    [access] = [h for h in mw.finish_hooks if isinstance(h, AccessLog)]
    assert DIRECT_SINKS.targets(access.logger)
    sent: list[Any] = ["10.0.0.1", "10.0.0.2", "10.0.0.1", 'fe80::1%"eth0"', 1234, "", "10.0.0.2"]
    for address in sent:
        call_wsgi(mw, make_environ(REMOTE_ADDR=address))
    assert [line["remote_addr"] for line in logs.access()] == [str(a) for a in sent]


def test_integrations_that_hook_logging_see_every_access_line_on_the_logging_route(
    logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tracing and error reporters install a record factory or patch Logger methods (Sentry patches
    callHandlers). On the direct route (the default) they see ERROR access lines only, by design and
    as documented; access_log_route="logging" hands them every line."""
    seen: list[str] = []
    default_factory = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = default_factory(*args, **kwargs)
        seen.append(f"factory {record.getMessage()}")
        return record

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("503 Busy" if environ["PATH_INFO"] == "/busy" else "200 OK", TEXT)
        return [b"x"]

    direct = validator(ObservabilityMiddleware(validator(app), auto_configure_logging=False))
    through_logging = validator(
        ObservabilityMiddleware(validator(app), auto_configure_logging=False, access_log_route="logging")
    )
    logging.setLogRecordFactory(factory)
    try:
        call_wsgi(direct, make_environ(PATH_INFO="/direct"))
        call_wsgi(direct, make_environ(PATH_INFO="/busy"))  # an ERROR line goes through logging whatever the route
        call_wsgi(through_logging, make_environ(PATH_INFO="/factory"))
    finally:
        logging.setLogRecordFactory(default_factory)
    original = logging.Logger.callHandlers

    def call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
        seen.append(f"patched {record.getMessage()}")
        original(self, record)

    monkeypatch.setattr(logging.Logger, "callHandlers", call_handlers)
    call_wsgi(through_logging, make_environ(PATH_INFO="/patched"))
    monkeypatch.undo()
    assert seen == ["factory GET /busy 503", "factory GET /factory 200", "patched GET /patched 200"]
    assert [line["path"] for line in logs.access()] == ["/direct", "/busy", "/factory", "/patched"]


@pytest.mark.parametrize(
    ("words", "matching", "not_matching"),
    [
        (
            ("access_token", "token", "API_KEY", "key", ""),
            ("x_ToKeN_y", "apikey", "ACCESS_TOKEN"),
            ("page", "tok", "ke"),
        ),
        (("api_key", "access_token"), ("my_API_KEY", "access_token"), ("token", "apikey", "key")),
    ],
)
def test_redaction_words_that_contain_others_match_the_same(
    words: tuple[str, ...], matching: tuple[str, ...], not_matching: tuple[str, ...]
) -> None:
    search = sensitive_matcher(words)  # scans only the words no other word is part of
    assert all(search(text) for text in matching)
    assert not any(search(text) for text in not_matching)


def test_rendered_request_lines_are_reused_and_bounded(logs: LogCapture) -> None:
    mw = ObservabilityMiddleware(validator(ok), auto_configure_logging=False, metrics=False)
    [access] = [h for h in mw.finish_hooks if isinstance(h, AccessLog)]
    wsgi = validator(mw)
    for n in range(1100):  # more distinct request lines than the cache keeps
        call_wsgi(wsgi, make_environ(PATH_INFO=f"/items/{n}", QUERY_STRING="token=s3cret&page=2"))
    call_wsgi(wsgi, make_environ(PATH_INFO="/items/7", QUERY_STRING="token=s3cret&page=2"))
    call_wsgi(wsgi, make_environ(PATH_INFO="/items/7", QUERY_STRING="page=3", REQUEST_METHOD="POST"))
    assert 0 < len(access._rendered) <= 1024
    lines = logs.access()
    assert [x["path"] for x in lines[:2]] == ["/items/0?token=[REDACTED]&page=2", "/items/1?token=[REDACTED]&page=2"]
    assert lines[-2]["path"] == lines[7]["path"] and lines[-2]["message"] == lines[7]["message"] == "GET /items/7 200"
    assert (lines[-1]["method"], lines[-1]["path"], lines[-1]["message"]) == (
        "POST",
        "/items/7?page=3",
        "POST /items/7 200",
    )
    assert "s3cret" not in logs.raw()
