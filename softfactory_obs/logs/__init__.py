"""JSON logs: the formatter, the request-context filter, ``configure_logging`` and the access line.

One JSON object per line, always valid JSON (NaN, bytes, arbitrary objects and lone surrogates
included), ASCII-only so that CR, LF, U+2028 and terminal escapes in request data can never split
or colour a line. The request id of the request in flight is added to every record, whatever
logger emitted it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable
from json.encoder import encode_basestring_ascii as json_string
from typing import IO, Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _BaseJsonFormatter

from .._failures import report_failure
from ..json_text import iso_utc, json_fallback, json_safe
from ..process_state import on_new_process
from ..request_id import request_context
from .access_line import ACCESS_LOGGER as ACCESS_LOGGER
from .access_line import access_line, from_fields
from .files import DatedFileHandler, LineHandler, StreamLineHandler, WatchedLineHandler

# Record attribute holding the access line's fields as one dict (they are also set one by one, for
# other formatters); our formatter serialises it directly.
ACCESS_FIELDS = "softfactory_obs_fields"

# Record attributes that become fields under another name; the rest of the standard ones are dropped.
_RENAMES = {"levelname": "level", "name": "logger", "exc_info": "traceback"}
# What structlog's stdlib integration (ProcessorFormatter.wrap_for_formatter) puts on a record
# beside the event dict it passes as ``msg``: never fields of the line.
_STRUCTLOG_ATTRS = ("_logger", "_name", "_from_structlog")
# Event keys structlog's processors add that the line already has, from the record.
_STRUCTLOG_OWN_KEYS = ("level", "logger", "logger_name", "timestamp")


_pid = os.getpid()  # the pid of lines rendered without a LogRecord (the direct access line)


@on_new_process
def _renew_pid() -> None:
    global _pid  # noqa: PLW0603
    _pid = os.getpid()


# Built once: json.dumps with any option builds a new encoder per call.
_encode = json.JSONEncoder(ensure_ascii=True, allow_nan=False, default=json_fallback).encode


# Our field names -> Elastic Common Schema (ECS 8) names, for log_schema="ecs". Dotted keys are
# what Elasticsearch maps to the nested ECS objects.
ECS_FIELDS = {
    "timestamp": "@timestamp",
    "level": "log.level",
    "logger": "log.logger",
    "service": "service.name",
    "pid": "process.pid",
    "request_id": "http.request.id",
    "trace_id": "trace.id",
    "span_id": "span.id",
    "method": "http.request.method",
    "path": "url.original",
    "endpoint": "labels.endpoint",  # url.path is the real path in ECS; ECS has no route field
    "status": "http.response.status_code",
    "content_length": "http.response.body.bytes",
    "remote_addr": "client.address",
    "user_agent": "user_agent.original",
    "user_id": "user.id",
    "traceback": "error.stack_trace",
    "error_type": "error.type",
    "latency_ms": "event.duration",  # in nanoseconds: _ecs_values
}


def _ecs_values(out: dict[str, Any]) -> None:
    """The values ECS spells differently from us: a lower-case level, the duration as an integer of
    nanoseconds, and ``url.path`` (the path without its query) beside ``url.original``."""
    if "log.level" in out:
        out["log.level"] = str(out["log.level"]).lower()
    duration = out.get("event.duration")
    if isinstance(duration, (int, float)) and not isinstance(duration, bool):
        out["event.duration"] = round(duration * 1_000_000)
    original = out.get("url.original")
    if isinstance(original, str):
        out["url.path"] = original.partition("?")[0]


class JsonFormatter(_BaseJsonFormatter):
    """python-json-logger's formatter with our field names, UTC timestamps and fail-safe encoding.

    Fields, in order: ``timestamp``, ``level``, ``logger``, ``message``, ``service``, ``pid``,
    ``request_id`` and ``trace_id`` (when a request is in flight), then any ``extra`` fields,
    then ``traceback`` when an exception is attached.
    """

    def __init__(
        self, *, service: str = "app", static_fields: dict[str, Any] | None = None, schema: str = "default"
    ) -> None:
        if schema not in ("default", "ecs"):
            raise ValueError(f"schema: expected 'default' or 'ecs', got {schema!r}")
        super().__init__(
            static_fields=static_fields,
            json_ensure_ascii=True,
            reserved_attrs=[*RESERVED_ATTRS, "taskName", ACCESS_FIELDS, *_STRUCTLOG_ATTRS],
        )
        self.service = service
        self.renames = ECS_FIELDS if schema == "ecs" else None

    def service_fields(self, pid: int | None = None) -> str:
        """``"service": ..., "pid": ..., `` as ``format`` writes them (the access line's middle)."""
        return f'"service": {json_string(self.service)}, "pid": {_pid if pid is None else pid}, '

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        """The line's fields in order: ours, the request context, extras, the traceback."""
        log_data["timestamp"] = iso_utc(record.created)
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["message"] = record.message
        if message_dict and hasattr(record, "_logger"):  # a structlog event: its keys become the line's fields
            message_dict = self._structlog_fields(message_dict, log_data)
        log_data["service"] = self.service
        log_data["pid"] = record.process
        ctx = request_context.get()
        if ctx is not None:
            log_data["request_id"] = ctx[0]
            if ctx[1] is not None:
                log_data["trace_id"] = ctx[1]
                if ctx[2] is not None:
                    log_data["span_id"] = ctx[2]
        log_data.update(self.static_fields)
        for key, value in message_dict.items():
            log_data[_RENAMES.get(key, key)] = value
        reserved = self.reserved_attrs
        for key, value in record.__dict__.items():
            if key not in reserved:
                log_data[key] = value
        if record.exc_info and record.exc_info[0] is not None and "error_type" not in log_data:
            log_data["error_type"] = record.exc_info[0].__name__

    def _structlog_fields(self, event: dict[str, Any], log_data: dict[str, Any]) -> dict[str, Any]:
        """An event dict from structlog's stdlib integration as top-level fields: ``event`` is the
        message, the level, logger and time are the record's (the same, in this schema's spelling),
        and ``exc_info=True`` (``log.exception``) becomes the traceback of the exception being handled."""
        fields = {k: v for k, v in event.items() if k not in _STRUCTLOG_OWN_KEYS}
        log_data["message"] = str(fields.pop("event", ""))
        exc_info = fields.pop("exc_info", None)
        if exc_info is True:
            exc_info = sys.exc_info()  # formatting runs inside the log call, inside the except block
        elif isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        if isinstance(exc_info, tuple) and exc_info[0] is not None:
            fields["exc_info"] = self.formatException(exc_info)  # renamed to traceback with the rest
            fields.setdefault("error_type", exc_info[0].__name__)
        return fields

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        """Rename the fields to the configured schema (ECS) when one is set."""
        renames = self.renames
        if renames is None:
            return log_data
        out = {renames.get(key, key): value for key, value in log_data.items()}
        _ecs_values(out)
        out["ecs.version"] = "8.11.0"
        return out

    def render_access(
        self,
        fields: dict[str, Any],
        message: str,
        created: float,
        *,
        level: str = "INFO",
        pid: int | None = None,
        exc_info: Any = None,
    ) -> str:
        """An access line with more than ``access_line`` writes (an exception, static fields, the
        ECS schema, an ERROR level), in this formatter's schema, through the general encoder."""
        data: dict[str, Any] = {
            "timestamp": iso_utc(created),
            "level": level,
            "logger": ACCESS_LOGGER,
            "message": message,
            "service": self.service,
            "pid": _pid if pid is None else pid,
        }
        if self.static_fields:
            data.update(self.static_fields)
        data.update(fields)
        if exc_info:
            data["traceback"] = self.formatException(exc_info)
        return self.jsonify_log_record(self.process_log_record(data))

    def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
        """Encode the fields as one ASCII JSON object, spelling what json cannot write safely."""
        try:
            return _encode(log_data)
        except (ValueError, TypeError):  # NaN or an infinity, a key json cannot write, a cycle
            return _encode(json_safe(log_data))

    def format(self, record: logging.LogRecord) -> str:
        """One JSON line for ``record``; a record that cannot be formatted still gives a line."""
        try:
            fields = record.__dict__.get(ACCESS_FIELDS)
            if fields is not None:  # known, plain fields: no generic scan of the record
                plain = self.renames is None and not self.static_fields and not record.exc_info
                parts = from_fields(fields) if plain and record.levelno == logging.INFO else None
                if parts is not None:  # the bytes the direct route writes (logs.access_line)
                    stamp, message = iso_utc(record.created), json_string(record.getMessage())
                    return access_line(stamp, message, self.service_fields(record.process), *parts)[:-1]
                return self.render_access(
                    fields,
                    record.getMessage(),
                    record.created,
                    level=record.levelname,
                    pid=record.process,
                    exc_info=record.exc_info,
                )
            return super().format(record)
        except Exception as exc:  # a broken __str__ or a bad %-format must not lose the record
            report_failure("log formatter", exc)
            try:
                message = record.getMessage()
            except Exception:  # the bad %-format itself: the template, unformatted
                message = json_fallback(record.msg)
            return json.dumps(
                {
                    "timestamp": iso_utc(record.created),
                    "level": record.levelname,
                    "logger": record.name,
                    "message": message,
                    "service": self.service,
                    "pid": record.process,
                    "format_error": f"{type(exc).__name__}: {exc}",
                },
                default=json_fallback,
                ensure_ascii=True,
            )


def request_context_processor(logger: object, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A structlog processor: ``request_id`` (and ``trace_id``) of the request in flight, for
    structlog loggers that do not go through ``logging`` (whose lines our formatter completes itself).
    A value the event already has is kept."""
    ctx = request_context.get()
    if ctx is not None:
        event_dict.setdefault("request_id", ctx[0])
        if ctx[1] is not None:
            event_dict.setdefault("trace_id", ctx[1])
            if ctx[2] is not None:
                event_dict.setdefault("span_id", ctx[2])
    return event_dict


class RequestContextFilter(logging.Filter):
    """Adds ``request_id`` (and ``trace_id``) to records; attach it to handlers that use other formatters."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the request id (and trace id) in flight; never drops a record."""
        ctx = request_context.get()
        if ctx is not None:
            if not hasattr(record, "request_id"):
                record.request_id = ctx[0]
            if ctx[1] is not None and not hasattr(record, "trace_id"):
                record.trace_id = ctx[1]
                if ctx[2] is not None:
                    record.span_id = ctx[2]
        return True


Sink = tuple[LineHandler, "JsonFormatter", str]  # (handler, its formatter, the line's service fields)
INFO = logging.INFO  # read on every request: a constant, not the module's attribute


class DirectSinks:
    """Where an INFO access line may be written straight, skipping ``logging``'s records and call
    chain (most of what a log call costs): the handlers ``configure_logging`` installed with our
    default schema, with the formatter it gave them, for as long as they are on the root logger.

    Explicit, never inferred from logging's state: the middleware's ``access_log_route="direct"``
    (the default) asks for it, and then a handler, filter or record factory someone else adds to
    the root does not see INFO access lines (ERROR lines always go through ``logging``). A handler
    or filter on the access logger itself, or its propagation turned off, sends its lines through
    ``logging`` as usual; so does ``access_log_route="logging"``, for every line, and the ECS schema.
    """

    def __init__(self) -> None:
        self._pairs: tuple[tuple[LineHandler, JsonFormatter], ...] = ()
        self.sinks: tuple[Sink, ...] = ()
        on_new_process(self._render_service_fields, component="direct log sinks after fork")

    def replace(self, pairs: Iterable[tuple[LineHandler, JsonFormatter]]) -> None:
        """Make these (handler, formatter) pairs the sinks (``configure_logging`` does, each time)."""
        self._pairs = tuple((h, f) for h, f in pairs if f.renames is None and not f.static_fields)
        self._render_service_fields()

    def _render_service_fields(self) -> None:
        # The pid is part of the line: rendered again in a new process.
        self.sinks = tuple((h, f, f.service_fields()) for h, f in self._pairs)

    def targets(self, logger: logging.Logger) -> tuple[Sink, ...] | None:
        """The sinks for an INFO line of ``logger`` now; empty when INFO is off for it; None when the
        line must go through ``logging``."""
        sinks = self.sinks
        if not sinks or logger.handlers or logger.filters or not logger.propagate:
            return None
        root = logging.root.handlers
        for handler, formatter, _ in sinks:
            if handler not in root or handler.formatter is not formatter or handler.level > INFO:
                return None
        return sinks if logger.isEnabledFor(INFO) else ()


DIRECT_SINKS = DirectSinks()


_OURS = "_softfactory_obs_handler"  # installed by configure_logging: a later call replaces it
# Installed before the app's own settings are known (the gunicorn config's logconfig_dict, read in
# the master before any app is loaded): instrument() replaces it with the handlers its settings ask for.
_PROVISIONAL = "_softfactory_obs_provisional"


def provisional_handler() -> logging.Handler:
    """A JSON line handler on stdout that stands in until ``instrument()`` configures logging with
    the app's settings (service name, schema, log file), which then win. For configs read before
    the app is loaded, such as gunicorn's ``logconfig_dict`` (``json_logconfig`` uses it)."""
    handler = StreamLineHandler(None)
    setattr(handler, _OURS, True)
    setattr(handler, _PROVISIONAL, True)
    handler.addFilter(RequestContextFilter())
    return handler


def configure_logging(
    level: str | int = "INFO",
    *,
    stream: IO[str] | None = None,
    log_file: str | None = None,
    file_mode: str = "dated",
    rotation: str = "midnight",
    backup_count: int = 30,
    service: str = "app",
    quiet_loggers: Iterable[str] = (),
    schema: str = "default",
) -> None:
    """Send every log record of the process, as one JSON line, to stdout (default) and/or a file.

    ``file_mode="dated"`` appends to ``<name>-<date>.log`` files and prunes all but the newest
    ``backup_count`` old ones: safe with many worker processes. ``file_mode="watched"`` writes to
    ``log_file`` itself and reopens it when an external tool (logrotate) moves it.
    Calling it again replaces the handlers it installed before; handlers of others are left alone.
    """
    if isinstance(level, str):
        if not isinstance(logging.getLevelName(level.upper()), int):
            raise ValueError(f"level: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {level!r}")
        level = level.upper()
    if file_mode not in ("dated", "watched"):
        raise ValueError(f"file_mode: expected 'dated' or 'watched', got {file_mode!r}")
    handlers: list[logging.Handler] = []
    if log_file:
        if file_mode == "dated":
            handlers.append(DatedFileHandler(log_file, rotation, backup_count))
        else:
            handlers.append(WatchedLineHandler(log_file, encoding="utf-8"))
    if stream is not None or not log_file:
        handlers.append(StreamLineHandler(stream))
    formatter = JsonFormatter(service=service, schema=schema)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        setattr(handler, _OURS, True)
        handler.setFormatter(formatter)
        handler.addFilter(RequestContextFilter())
        root.addHandler(handler)
    # The direct access line needs a handler that writes whole pre-rendered lines (not "watched").
    DIRECT_SINKS.replace((handler, formatter) for handler in handlers if isinstance(handler, LineHandler))
    root.setLevel(level)
    for name in quiet_loggers:
        logging.getLogger(name).setLevel(logging.WARNING)


def logging_configured() -> bool:
    """True when the root logger has handlers other than a provisional one (someone, maybe
    ``configure_logging``, configured logging on purpose)."""
    return any(not getattr(h, _PROVISIONAL, False) for h in logging.getLogger().handlers)
