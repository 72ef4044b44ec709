"""The one canonical access line per request, on logger ``softfactory_obs.access``.

Everything taken from the request is bounded (``log_max_field_length``), decoded safely (PATH_INFO
is latin-1 per PEP 3333; we show the UTF-8 it stood for) and stripped of secrets: sensitive
query parameters are redacted, and no request header beyond User-Agent is read at all, so
Authorization and Cookie can never appear.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as json_string
from math import floor
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from .._failures import report_failure
from ..json_text import iso_utc_ms
from ..request.record import MAX_CACHED_TEXT, RequestRecord, without_userinfo
from ..routes import Endpoints
from ..settings import Settings
from . import ACCESS_FIELDS, ACCESS_LOGGER, DIRECT_SINKS
from .access_line import FIELDS, access_line, latency_ms, optional_part, request_part

if TYPE_CHECKING:
    from ..components import Host

REDACTED = "[REDACTED]"
TRUNCATED = "...[truncated]"


def sensitive_matcher(words: tuple[str, ...]) -> Callable[[str], bool]:
    """ "Contains any of these words, in any case". Substring tests on the lowered text: an
    IGNORECASE regex alternation costs ten times as much on a typical query string."""
    distinct = {w.lower() for w in words if w}
    # A word that contains another adds nothing ("access_token" after "token"): each costs a scan.
    lowered = tuple(sorted(w for w in distinct if not any(o != w and o in w for o in distinct)))

    def search(text: str) -> bool:
        text = text.lower()
        for word in lowered:  # noqa: SIM110 - any() over a generator costs twice this loop
            if word in text:
                return True
        return False

    return search


def redact_query(query: str, sensitive: tuple[str, ...] | Callable[[str], bool]) -> str:
    """Replace the values of parameters whose name contains a sensitive word (case-insensitive),
    also when the name is percent-encoded (``api%5Fkey``: frameworks decode it to ``api_key``)."""
    search = sensitive_matcher(sensitive) if isinstance(sensitive, tuple) else sensitive
    encoded = "%" in query or "+" in query
    if not search(query) and not (encoded and search(unquote_plus(query))):
        return query
    # Pairs end at & or ; (the older HTML form separator some frameworks still split on): a secret
    # behind either is redacted; the separators are kept as they came.
    parts = _PAIRS.split(query)
    for i in range(0, len(parts), 2):
        name, eq, _ = parts[i].partition("=")
        if eq and (search(name) or (encoded and search(unquote_plus(name)))):
            parts[i] = f"{name}={REDACTED}"
    return "".join(parts)


_PAIRS = re.compile(r"([&;])")


class AccessLog:
    """Finish hook: builds the access line's fields from a finished request and logs them.

    This runs once per request, so it is written for speed: the common cases (ASCII text, short
    fields, no query, no exception) take the fewest steps. With ``access_log_route="direct"`` (the
    default) an INFO line goes straight to the handlers ``configure_logging`` installed
    (``DirectSinks``), without a LogRecord; otherwise, and for every ERROR line, it is a record
    handed to the access logger. Both give the same bytes (a test holds them equal).
    """

    component = "access log"

    def __init__(self, settings: Settings, endpoints: Endpoints) -> None:
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self.endpoints = endpoints
        self.limit = settings.log_max_field_length
        self.sensitive = sensitive_matcher(settings.redact_query_params)
        self.user_id_getter = settings.user_id_getter
        self.direct = settings.access_log_route == "direct"
        self.log_telemetry = settings.log_telemetry_routes
        self._agents: dict[str, str] = {}  # user agent -> its JSON string
        self._addresses: dict[str, str] = {}  # REMOTE_ADDR -> its JSON string
        self._rendered: dict[tuple[Any, ...], tuple[str, str]] = {}  # see __call__

    def install(self, host: Host) -> None:
        """A finish hook; on the telemetry routes too when ``log_telemetry_routes`` asks."""
        host.add_finish_hook(self, telemetry=self.log_telemetry)

    def _cap(self, value: str) -> str:
        return value if len(value) <= self.limit else value[: self.limit] + TRUNCATED

    def _text(self, value: object) -> str:
        """A request value as bounded text (the JSON encoder escapes what is not printable)."""
        text = value if type(value) is str else str(value)
        return text if len(text) <= self.limit else text[: self.limit] + TRUNCATED

    def __call__(self, record: RequestRecord) -> None:
        status = record.status or 0
        exc = record.exc
        # ERROR lines always go through logging; an INFO line straight to the direct sinks, when
        # they are still what configure_logging installed (else through logging too).
        targets = DIRECT_SINKS.targets(self.logger) if exc is None and status < 500 and self.direct else None
        if targets is None:
            self._log(record, status, exc)
            return
        if not targets:  # INFO is off for this logger
            return
        # The bytes the sinks' formatter writes for the record, from parts that repeat (cached).
        endpoint = record.endpoint or self.endpoints.of(record)
        # What the request line renders to repeats (health checks, hot routes): rendered once.
        query, agent, remote, user = record.access_details()
        key = (record.method, record.script_name, record.path, query, endpoint, status)
        try:
            rendered = self._rendered.get(key)
        except TypeError:  # a server that put something unhashable in the environ: render, never keep
            rendered = self._render(record, status, None)
        if rendered is None:
            rendered = self._render(record, status, key)
        message, request = rendered
        if agent is None:
            agent = ""
        agent_json = self._agents.get(agent)
        if agent_json is None:  # a browser's 100-odd characters cost 0.25 µs to escape; clients repeat them
            agent_json = self._remember(self._text(agent))
        now = time.time()
        stamp = iso_utc_ms(floor(now * 1000))  # floor() of a float: cheaper than int() or time_ns() // 10**6
        remote_json = self._addresses.get(remote)
        if remote_json is None:  # clients, or the one proxy in front, repeat their addresses
            remote_json = self._remember_address(remote)
        if self.user_id_getter is None:  # the user the server authenticated, if any (see _user_id)
            user_json = json_string(self._text(user)) if user else "null"
        else:
            user_id = self._user_id(record)
            user_json = "null" if user_id is None else json_string(user_id)
        latency = latency_ms(record.duration)
        trace_id, rejected = record.trace_id, record.id_rejected
        optional = optional_part(trace_id, record.span_id, rejected) if trace_id is not None or rejected else ""
        for handler, _, service_fields in targets:
            line = access_line(
                stamp,
                message,
                service_fields,
                record.request_id,
                request,
                latency,
                record.response_bytes,
                remote_json,
                agent_json,
                user_json,
                optional,
            )
            handler.write_text_line(line.encode(), now)  # the line is ASCII (json_string)

    def _log(self, record: RequestRecord, status: int, exc: BaseException | None) -> None:
        """The line as a record handed to the access logger (ERROR lines; INFO without direct sinks)."""
        level = logging.ERROR if status >= 500 or (exc is not None and isinstance(exc, Exception)) else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        method, path, full_path, endpoint = self._values(record)
        values = (
            record.request_id,
            method,
            full_path,
            endpoint,
            status,
            round(record.duration * 1000.0, 3),
            record.response_bytes,
            record.remote_address(),
            self._text(record.user_agent() or ""),
            self._user_id(record),
        )
        fields: dict[str, Any] = dict(zip(FIELDS, values, strict=True))
        if record.trace_id is not None:
            fields["trace_id"] = record.trace_id
            if record.span_id is not None:
                fields["span_id"] = record.span_id
        if record.id_rejected:
            fields["request_id_rejected"] = True
        exc_info = None
        if exc is not None:
            fields["error_type"] = type(exc).__name__
            exc_info = (type(exc), exc, exc.__traceback__)
        # Built directly and handed to handle(): Logger.log would walk the stack for a caller we know.
        log_record = logging.getLogRecordFactory()(
            ACCESS_LOGGER, level, __file__, 0, "%s %s %s", (method, path, status), exc_info
        )
        log_record.__dict__.update(fields)
        log_record.__dict__[ACCESS_FIELDS] = fields
        self.logger.handle(log_record)

    def _values(self, record: RequestRecord) -> tuple[str, str, str, str]:
        """method, path, path with the redacted query and endpoint, as bounded text."""
        limit = self.limit
        method = record.method
        if not (type(method) is str and method.isascii()):
            method = self._text(method)
        method = method[:32]
        script = record.script_name
        path = without_userinfo(script + record.path if script else record.path)
        if len(path) > limit:
            path = self._text(path)
        query = record.query_string()
        # Redact before cutting, so a cut can never leave half a secret behind.
        full_path = self._text(f"{path}?{redact_query(query, self.sensitive)}") if query else path
        endpoint = record.endpoint or self.endpoints.of(record)
        if len(endpoint) > limit:
            endpoint = self._text(endpoint)
        return method, path, full_path, endpoint

    def _render(self, record: RequestRecord, status: int, key: tuple[Any, ...] | None) -> tuple[str, str]:
        """The line's message (a JSON string) and its request fields (``request_part``)."""
        method, path, full_path, endpoint = self._values(record)
        rendered = (json_string(f"{method} {path} {status}"), request_part(method, full_path, endpoint, status))
        if key is not None and len(full_path) <= MAX_CACHED_TEXT:
            if len(self._rendered) >= 1024:  # bounded; emptied rather than frozen, so hot lines come back
                self._rendered.clear()
            self._rendered[key] = rendered
        return rendered

    def _remember(self, text: str) -> str:
        """The JSON string of a user agent (clients repeat them); bounded."""
        escaped = json_string(text)
        if len(self._agents) < 1024 and len(text) <= MAX_CACHED_TEXT:
            self._agents[text] = escaped
        return escaped

    def _remember_address(self, remote: object) -> str:
        """The JSON string of a client address; bounded (a server facing the internet meets millions)."""
        escaped = json_string(str(remote))
        if type(remote) is str and len(self._addresses) < 1024 and len(remote) <= MAX_CACHED_TEXT:
            self._addresses[remote] = escaped
        return escaped

    def _user_id(self, record: RequestRecord) -> str | None:
        """``user_id_getter(environ)`` when set and it answers, else the user the server authenticated."""
        if self.user_id_getter is not None:
            try:
                value = self.user_id_getter(record.environ)
            except Exception as exc:
                report_failure("user_id_getter", exc)
                value = None
            if value is not None:
                return self._cap(str(value))
        user = record.remote_user()
        return self._text(user) if user else None
