"""The request record: what one request was, in terms every recorder reads, whatever the protocol.

A server-side driver (``request.wsgi.RequestCycle`` for WSGI; an ASGI front fills the same fields)
builds one record per request and calls the recorders' hooks with it at three moments:

- start: before the app runs. Set: ``method``, ``path``, ``script_name``, ``request_id``,
  ``id_rejected``, ``trace_id``, ``request_bytes``, ``started``, ``threaded``, ``environ``,
  ``state``.
- response: the status is final, before the first body byte goes out (so a worker killed while
  sending has counted what it answered). Set as well: ``status``, ``route``.
- finish: the body was sent and the response closed, or the request failed. Set as well:
  ``duration``, ``response_bytes``, ``exc``.

Every slot holds a value from the start (``None``, ``0`` or ``0.0`` until its moment): readers
never probe for attributes. Fields are what recorders read on every request; what only the access
line reads (the query, headers, the client's address and user) is asked of methods, so a request
that nobody logs never pays for it. Recorders read the record and write nothing to it but
``endpoint`` (a memo, see ``routes.Endpoints``) and their own positions of ``state`` (reserved from
the middleware when they are built), so recorders never depend on each other having run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._failures import report_failure

RecordHook = Callable[["RequestRecord"], None]


def hook_failed(hook: RecordHook, exc: Exception) -> None:
    """Count and report a hook that raised, under its owner's component name: a recorder's failure
    degrades its telemetry, never the request."""
    owner = getattr(hook, "__self__", hook)
    report_failure(getattr(owner, "component", "request hook"), exc)


# The longest request text (path, user agent) a per-process cache keys on: hot values are short,
# and a scanner's 8 KB paths or random agents must not pile up.
MAX_CACHED_TEXT = 256

MAX_LENGTH_DIGITS = 11


def parse_length(value: object) -> int | None:
    """A Content-Length header's byte count, or None when it is not one. ASCII digits only: int()
    would take ' 5' and '5_0', and str.isdigit() passes '²', on which int() raises. At most 11
    digits (under 100 GB): the size sums are int64, which ten requests claiming an exabyte each
    overflowed (it now takes some 92 million). Remembered in ``LENGTHS``."""
    if type(value) is not str or not (value.isascii() and value.isdigit()) or len(value) > MAX_LENGTH_DIGITS:
        return None
    length = int(value)
    if len(LENGTHS) < 4096:  # bounded: request lengths are the client's to choose
        LENGTHS[value] = length
    return length


def status_code(status: object) -> int:
    """The code of a status line (``"404 Not Found"`` -> 404); 0 when there is none. Remembered in
    ``STATUS_CODES``."""
    try:
        code = int(str(status)[:3])
    except ValueError:
        code = 0
    if type(status) is str and len(STATUS_CODES) < 256:  # apps answer a handful; never unbounded
        STATUS_CODES[status] = code
    return code


_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#@]*@")


def without_userinfo(target: str) -> str:
    """A request target without the ``user:password@`` of an absolute-form URL (``GET
    http://user:secret@host/x``: wsgiref passes it through as the path); anything else unchanged.
    Whatever shows a request's path (the access line, an endpoint label) goes through this."""
    return _USERINFO.sub(r"\1", target, count=1) if "@" in target else target


# What the two functions above answered, for the values a program meets on every request. The hot
# path tries ``TABLE[value]`` first (an exact dict's subscript is the cheapest lookup there is) and
# calls the function on a miss.
LENGTHS: dict[str, int] = {}
STATUS_CODES: dict[str, int] = {}


class RequestRecord:
    """One request, as the recorders (HTTP metrics, access log, queue time, your hooks) read it.

    ``path`` and ``script_name`` are text as the client sent them (percent-escapes kept; for WSGI,
    PEP 3333's latin-1 strings decoded as the UTF-8 they carry). ``status`` is the code (500 when
    the app failed before answering). ``route`` is the template a framework adapter matched, if
    any; ``endpoint`` what the recorders show (``routes.Endpoints``). ``request_bytes`` is the
    request's declared Content-Length (``None`` without a valid one); ``response_bytes`` the
    response body's size: its declared Content-Length, else what was sent (under ASGI, what was
    sent, unless no body went through ``send``: a HEAD, a file the server sent). ``started`` is
    ``time.perf_counter()`` at arrival and ``duration`` the seconds until the body was sent and
    closed. ``threaded``: other threads of this process may serve requests at the same time (a
    recorder then takes locks). ``environ`` is the protocol's own mapping (the WSGI environ, the
    ASGI scope), handed to user policies such as ``user_id_getter``; recorders use the methods.
    ``state``: per-request values of the recorders, each at the positions it reserved.
    """

    __slots__ = (
        "__weakref__",
        "duration",
        "endpoint",
        "environ",
        "exc",
        "id_rejected",
        "method",
        "path",
        "request_bytes",
        "request_id",
        "response_bytes",
        "route",
        "script_name",
        "span_id",
        "started",
        "state",
        "status",
        "threaded",
        "trace_id",
    )

    duration: float
    endpoint: str | None
    environ: dict[str, Any]
    exc: BaseException | None
    id_rejected: bool
    method: str
    path: str
    request_bytes: int | None
    request_id: str
    response_bytes: int
    route: str | None
    script_name: str
    started: float
    state: list[Any]
    status: int | None
    threaded: bool
    trace_id: str | None
    span_id: str | None  # the tracer's span for this request (OpenTelemetry's, when it runs in front)

    def query_string(self) -> str:
        """The query string as text, without the ``?`` (empty when there is none)."""
        raise NotImplementedError

    def header(self, name: str) -> str | None:
        """The value of request header ``name`` (case-insensitive), or None."""
        raise NotImplementedError

    def user_agent(self) -> str | None:
        """The User-Agent header (the access line shows it), or None."""
        return self.header("User-Agent")

    def remote_address(self) -> str:
        """The client's address as the server saw it (the proxy's, behind one); empty if unknown."""
        raise NotImplementedError

    def remote_user(self) -> str | None:
        """The user the server (or a middleware in front of us) authenticated, if any."""
        raise NotImplementedError

    def access_details(self) -> tuple[str, str | None, str, str | None]:
        """``(query_string(), user_agent(), remote_address(), remote_user())``: what the access line
        shows besides the fields, asked in one call (a driver answers it from its own mapping)."""
        return self.query_string(), self.user_agent(), self.remote_address(), self.remote_user()


@dataclass(frozen=True, slots=True)
class Hooks:
    """What runs per request, built once by the middleware. ``start``: before the app runs;
    ``response``: once the status is final and before the first body byte goes out; ``finish``:
    after the body was sent and closed. ``state``: what each request's ``RequestRecord.state``
    starts as (a copy; one entry per position a recorder reserved, see ``reserve_state``)."""

    response: tuple[RecordHook, ...] = ()
    finish: tuple[RecordHook, ...] = ()
    start: tuple[RecordHook, ...] = ()
    state: list[Any] = field(default_factory=list)  # never written: each request copies it


NO_HOOKS = Hooks()
