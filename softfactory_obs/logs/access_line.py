"""The access line's bytes in the default schema: the one place their layout is written.

Both routes render through ``access_line``: the direct one (``logs.access`` hands it the parts,
most of them from its caches, since request lines and clients repeat) and the ``logging`` one
(``JsonFormatter.format`` derives the same parts from an access record's fields). The parts are
JSON already; ``access_line`` only puts them in order. A line with anything else to carry (an
exception, static fields, the ECS schema) goes through the formatter's general path instead.
"""

from __future__ import annotations

from json.encoder import encode_basestring_ascii as json_string
from math import floor
from typing import Any

ACCESS_LOGGER = "softfactory_obs.access"
LOGGER_JSON = json_string(ACCESS_LOGGER)
# The fields of an access line after the envelope (timestamp, level, logger, message, service,
# pid), in order; trace_id (with span_id) and request_id_rejected follow when set.
FIELDS = (
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
OPTIONAL_FIELDS = ("trace_id", "span_id", "request_id_rejected")
# latency_ms as repr(round(ms, 3)) spells it ("12.5", "3.0"), from whole microseconds (one digit
# apart only within float error of half a microsecond): float formatting was a tenth of the line.
# Spelled from tables: the fraction always, the whole milliseconds under a second.
_MS_FRACTIONS = tuple(repr(i / 1000)[1:] for i in range(1000))
_MS_WHOLE = tuple(str(i) for i in range(1000))


def latency_ms(seconds: float) -> str:
    """A duration as the line's ``latency_ms`` value."""
    us = floor(seconds * 1e6 + 0.5)  # whole microseconds, half up (floor: cheaper than round() or int())
    if 0 <= us < 1_000_000:
        return _MS_WHOLE[us // 1000] + _MS_FRACTIONS[us % 1000]
    ms, fraction = divmod(us, 1000)
    return f"{ms}{_MS_FRACTIONS[fraction]}"


def request_part(method: str, path: str, endpoint: str, status: int) -> str:
    """``"method": ..., "path": ..., "endpoint": ..., "status": ...`` (the request line's fields)."""
    return (
        f'"method": {json_string(method)}, "path": {json_string(path)}, "endpoint": {json_string(endpoint)}, '
        f'"status": {status}'
    )


def optional_part(trace_id: str | None, span_id: str | None, id_rejected: bool) -> str:
    """``, "trace_id": ...`` (with ``, "span_id": ...``) and ``, "request_id_rejected": true`` when
    they apply; else empty."""
    text = "" if trace_id is None else f', "trace_id": {json_string(trace_id)}'
    if span_id is not None and trace_id is not None:
        text += f', "span_id": {json_string(span_id)}'
    return text + ', "request_id_rejected": true' if id_rejected else text


def access_line(  # noqa: PLR0917 - the line's parts in order; an object per line would cost more
    stamp: str,
    message: str,
    service_fields: str,
    request_id: str,
    request: str,
    latency: str,
    content_length: int,
    remote: str,
    agent: str,
    user: str,
    optional: str,
) -> str:
    """One INFO access line, newline-terminated. ``message``, ``remote``, ``agent`` and ``user``
    are JSON values; ``request`` is ``request_part``'s, ``optional`` ``optional_part``'s and
    ``service_fields`` the formatter's. ``request_id`` is written as it is: ids are validated to
    ``[A-Za-z0-9_.:-]`` (``request_id.py``), nothing in them to escape."""
    return (
        f'{{"timestamp": "{stamp}", "level": "INFO", "logger": {LOGGER_JSON}, "message": {message}, {service_fields}'
        f'"request_id": "{request_id}", {request}, "latency_ms": {latency}, "content_length": {content_length}, '
        f'"remote_addr": {remote}, "user_agent": {agent}, "user_id": {user}{optional}}}\n'
    )


def from_fields(fields: dict[str, Any]) -> tuple[str, str, str, int, str, str, str, str] | None:
    """An access record's fields as ``access_line``'s parts after the envelope (request id,
    request, latency, content length, remote, agent, user, optional), or None when they hold
    anything ``access_line`` does not write (then the general path renders the record)."""
    if not set(fields).issubset((*FIELDS, *OPTIONAL_FIELDS)) or not set(FIELDS).issubset(fields):
        return None
    request_id, method, path, endpoint, status, latency, size, remote, agent, user = (fields[k] for k in FIELDS)
    trace_id, rejected = fields.get("trace_id"), fields.get("request_id_rejected", False)
    span_id = fields.get("span_id")
    plain = (
        all(type(t) is str for t in (request_id, method, path, endpoint, remote, agent))
        and type(status) is int
        and type(size) is int
        and type(latency) is float
        and (user is None or type(user) is str)
        and (trace_id is None or type(trace_id) is str)
        and (span_id is None or (type(span_id) is str and trace_id is not None))
        and rejected in (True, False)
        and json_string(request_id) == f'"{request_id}"'  # written as it is: only what needs no escape
    )
    if not plain:
        return None
    return (
        request_id,
        request_part(method, path, endpoint, status),
        repr(latency),
        size,
        json_string(remote),
        json_string(agent),
        "null" if user is None else json_string(user),
        optional_part(trace_id, span_id, bool(rejected)),
    )
