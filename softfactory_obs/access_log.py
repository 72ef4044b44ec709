"""The one canonical access line per request, on logger ``softfactory_obs.access``.

Everything taken from the request is bounded (``log_max_field_length``), decoded safely (PATH_INFO
is latin-1 per PEP 3333; we show the UTF-8 it stood for) and stripped of secrets: sensitive
query parameters are redacted, and no request header beyond User-Agent is read at all, so
Authorization and Cookie can never appear.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as json_string
from typing import TYPE_CHECKING, Any

from ._failures import report_failure
from .log_files import LineHandler
from .logs import ACCESS_FIELDS, ACCESS_LOGGER, DirectRoute, JsonFormatter
from .settings import Settings

if TYPE_CHECKING:
    from ._request import RequestCycle

REDACTED = "[REDACTED]"
TRUNCATED = "...[truncated]"
# The access line's own fields, in the order the formatter writes them from a record (tests hold
# the two paths to the same bytes).
_TAIL = ('"request_id": "%s", "method": %s, "path": %s, "endpoint": %s, "status": %d, "latency_ms": %r, '
         '"content_length": %d, "remote_addr": %s, "user_agent": %s, "user_id": %s')
_FIELDS = ("request_id", "method", "path", "endpoint", "status", "latency_ms", "content_length", "remote_addr",
           "user_agent", "user_id")
_LEVEL_NAMES = {logging.INFO: "INFO", logging.ERROR: "ERROR"}


def wsgi_to_text(value: str) -> str:
    """PEP 3333 strings hold raw bytes as latin-1; show what UTF-8 they spelled, never surrogates."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a server that broke the latin-1 rule: already text
        return value.encode("utf-8", "replace").decode("utf-8")


def sensitive_matcher(words: tuple[str, ...]) -> Callable[[str], bool]:
    """"Contains any of these words, in any case". Substring tests on the lowered text: an
    IGNORECASE regex alternation costs ten times as much on a typical query string."""
    lowered = tuple(w.lower() for w in words if w)

    def search(text: str) -> bool:
        text = text.lower()
        for word in lowered:  # noqa: SIM110 - any() over a generator costs twice this loop
            if word in text:
                return True
        return False

    return search


def redact_query(query: str, sensitive: tuple[str, ...] | Callable[[str], bool]) -> str:
    """Replace the values of parameters whose name contains a sensitive word (case-insensitive)."""
    search = sensitive_matcher(sensitive) if isinstance(sensitive, tuple) else sensitive
    if not search(query):
        return query
    parts = []
    for pair in query.split("&"):
        name, eq, _ = pair.partition("=")
        if eq and search(name):
            parts.append(f"{name}={REDACTED}")
        else:
            parts.append(pair)
    return "&".join(parts)


def _status_code(status: str | None) -> int:
    if status is None:
        return 0
    try:
        return int(status[:3])
    except ValueError:
        return 0


class AccessLog:
    """Finish hook: builds the access line's fields from a finished request and logs them.

    This runs once per request, so it is written for speed: the common cases (ASCII text, short
    fields, no query, no exception) take the fewest steps, and the line goes straight to our own
    handlers when logging is configured only with them (``DirectRoute``).
    """

    component = "access log"

    def __init__(self, settings: Settings) -> None:
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self.limit = settings.log_max_field_length
        self.sensitive = sensitive_matcher(settings.redact_query_params)
        self.make_record = logging.getLogRecordFactory()
        self.user_id_getter = settings.user_id_getter
        self.route = DirectRoute(self.logger)
        self._statuses: dict[str, int] = {}
        self._agents: dict[str, str] = {}  # user agent -> its JSON string

    def _cap(self, value: str) -> str:
        return value if len(value) <= self.limit else value[: self.limit] + TRUNCATED

    def _text(self, value: object) -> str:
        """A request value as bounded, printable-safe text (the JSON encoder escapes the rest)."""
        text = value if type(value) is str else str(value)
        if not text.isascii():
            text = wsgi_to_text(text)
        return text if len(text) <= self.limit else text[: self.limit] + TRUNCATED

    def __call__(self, cycle: RequestCycle) -> None:
        status_line = cycle.status
        status = self._statuses.get(status_line) if status_line is not None else 0
        if status is None:
            status = _status_code(status_line)
            if len(self._statuses) < 256:  # apps answer a handful of status lines; never grow unbounded
                self._statuses[status_line] = status  # type: ignore[index]
        exc = cycle.exc
        level = logging.ERROR if status >= 500 or (exc is not None and isinstance(exc, Exception)) else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        environ = cycle.environ
        text = self._text
        method = text(environ.get("REQUEST_METHOD", ""))[:32]
        script = environ.get("SCRIPT_NAME")
        path = text(script + environ.get("PATH_INFO", "") if script else environ.get("PATH_INFO", ""))
        query = environ.get("QUERY_STRING")
        # Redact before cutting, so a cut can never leave half a secret behind.
        full_path = text(f"{path}?{redact_query(query, self.sensitive)}") if query else path
        endpoint = cycle.endpoint or environ.get("softfactory_obs.route")
        endpoint = text(endpoint) if endpoint else path
        length = cycle.size
        user_id = self._user_id(environ) if self.user_id_getter is not None or "REMOTE_USER" in environ else None
        values = (cycle.request_id, method, full_path, endpoint, status, round(cycle.duration * 1000.0, 3), length,
                  str(environ.get("REMOTE_ADDR", "")), text(environ.get("HTTP_USER_AGENT", "")), user_id)
        if exc is None:
            targets = self.route.targets()
            if targets is not None:
                self._write_direct(targets, cycle, level, f"{method} {path} {status}", values)
                return
        fields: dict[str, Any] = dict(zip(_FIELDS, values, strict=True))
        if cycle.trace_id is not None:
            fields["trace_id"] = cycle.trace_id
        if cycle.id_rejected:
            fields["request_id_rejected"] = True
        exc_info = None
        if exc is not None:
            fields["error_type"] = type(exc).__name__
            exc_info = (type(exc), exc, exc.__traceback__)
        # Built directly and handed to handle(): Logger.log would walk the stack for a caller we know.
        record = self.make_record(ACCESS_LOGGER, level, __file__, 0, "%s %s %s", (method, path, status), exc_info)
        record.__dict__.update(fields)
        record.__dict__[ACCESS_FIELDS] = fields
        self.logger.handle(record)

    def _write_direct(self, targets: list[tuple[LineHandler, JsonFormatter]], cycle: RequestCycle, level: int,
                      message: str, values: tuple[Any, ...]) -> None:
        """Write the line straight to our own handlers (see ``DirectRoute``)."""
        request_id, method, path, endpoint, status, latency_ms, length, remote_addr, user_agent, user_id = values
        # Request ids are validated to [A-Za-z0-9_.:-] (request_id.py): nothing in them to escape.
        agent = self._agents.get(user_agent)
        if agent is None:  # a browser's 100-odd characters cost 0.25 µs to escape; clients repeat them
            agent = json_string(user_agent)
            if len(self._agents) < 512:
                self._agents[user_agent] = agent
        tail = _TAIL % (request_id, json_string(method), json_string(path), json_string(endpoint),
                        status, latency_ms, length, json_string(remote_addr), agent,
                        "null" if user_id is None else json_string(user_id))
        if cycle.trace_id is not None:
            tail += f', "trace_id": {json_string(cycle.trace_id)}'
        if cycle.id_rejected:
            tail += ', "request_id_rejected": true'
        created = time.time()
        level_name = _LEVEL_NAMES[level]
        for handler, formatter in targets:
            if level >= handler.level:
                line = f"{formatter.line_head(created, level_name, ACCESS_LOGGER, message)}, {tail}}}\n"
                handler.write_text_line(line.encode("ascii"), created)

    def _user_id(self, environ: dict[str, Any]) -> str | None:
        if self.user_id_getter is not None:
            try:
                value = self.user_id_getter(environ)
            except Exception as exc:
                report_failure("user_id_getter", exc)
                value = None
            if value is not None:
                return self._cap(str(value))
        user = environ.get("REMOTE_USER")
        return self._text(user) if user else None
