"""The ``endpoint`` label: a route template, never a raw path, and never more than ``max_endpoints`` values.

Resolution, in order:

1. the template a framework adapter stored in ``environ["softfactory_obs.route"]``;
2. the user's route table (``routes=["/api/users/{id}", ...]``, compiled once);
3. for plain WSGI, a normaliser that replaces ids, UUIDs, long hex or base64-ish tokens and
   e-mail addresses by placeholders.

A 404 that no adapter or table matched is ``__unmatched__``: scanners probing random paths add no
series. Raw paths are the first complaint against every peer (one prometheus_flask_exporter user
reached 366,675 series); the cap below is the last line of defence.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable

from ._failures import report_failure
from .request.record import MAX_CACHED_TEXT, RequestRecord, without_userinfo

# Where the adapters put the template and a handled exception; the WSGI driver reads them.
from .request.wsgi import EXCEPTION_KEY, ROUTE_KEY
from .route_templates import compile_template, display, framework_template

__all__ = [
    "EXCEPTION_KEY",
    "OVERFLOW",
    "ROUTE_KEY",
    "UNMATCHED",
    "EndpointCap",
    "Endpoints",
    "RouteTable",
    "normalise",
    "to_template",
]

UNMATCHED = "__unmatched__"
OVERFLOW = "__overflow__"
MAX_ENDPOINT_LENGTH = 256  # a longer "template" is a path no route table or normaliser tamed


_SEGMENT_RULES = [
    (re.compile(r"\d+"), "{id}"),
    (re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"), "{uuid}"),
    (re.compile(r"[0-9a-fA-F]{16,}"), "{hex}"),
    (re.compile(r"[^@/\s]+@[^@/\s]+\.[^@/\s]+"), "{email}"),
    # 20+ characters of a token alphabet with at least one digit: API keys, JWT parts, base64 ids.
    (re.compile(r"(?=[A-Za-z0-9_\-=+.~]*\d)[A-Za-z0-9_\-=+.~]{20,}"), "{token}"),
    (re.compile(r"\d[\d.,:-]*\d"), "{id}"),  # dates, versions, coordinates
]


_templates: dict[tuple[str, str], str] = {}


def to_template(rule: str, style: str = "flask") -> str:
    """A framework's route rule in one spelling, ``{name}`` for every parameter (see
    ``route_templates.framework_template`` for the styles); cached, as adapters call it per request."""
    template = _templates.get((rule, style))
    if template is None:
        template = framework_template(rule, style)
        if len(_templates) < 10_000:  # an app has a fixed set of rules
            _templates[rule, style] = template
    return template


_normalised: dict[str, str] = {}


def normalise(path: str) -> str:
    """``/users/42/orders/7f3c...`` -> ``/users/{id}/orders/{hex}``; literal segments stay."""
    found = _normalised.get(path)
    if found is None:
        found = "/".join(_normalise_segment(segment) for segment in path.split("/"))
        if len(_normalised) < 10_000:  # repeated paths are free; a scanner cannot grow this without bound
            _normalised[path] = found
    return found


def _normalise_segment(segment: str) -> str:
    if segment.isdigit():
        return "{id}"
    if not segment or (len(segment) < 16 and segment.isalpha()):  # the common literal: no regex needed
        return segment
    for pattern, placeholder in _SEGMENT_RULES:
        if pattern.fullmatch(segment):
            return placeholder
    if not segment.isprintable():  # raw control bytes (NUL, ESC, CR, DEL, U+2028) never reach a label
        return "".join(c if c.isprintable() else "\ufffd" for c in segment)
    return segment


class RouteTable:
    """User-declared templates, matched in order: ``{name}`` is one segment, ``{name:path}`` the rest."""

    def __init__(self, templates: Iterable[str]) -> None:
        self._compiled = [(compile_template(t), display(t)) for t in templates]
        # Templates declared: a path that matches none is ``__unmatched__``, whatever its status,
        # so a scanner's paths (answered 401, 405, 301) take no endpoint slot.
        self.declared = bool(self._compiled)
        self._cache: dict[str, str | None] = {}
        # request path (after the mount point) -> (endpoint, matched a template): what ``resolve`` decided
        self.resolved: dict[str, tuple[str, bool]] = {}

    def match(self, path: str) -> str | None:
        """The first declared template that ``path`` matches, or None."""
        if not self._compiled:
            return None
        found = self._cache.get(path, False)
        if found is False:
            found = next((t for regex, t in self._compiled if regex.fullmatch(path)), None)
            if len(self._cache) < 10_000:  # hot paths repeat; a scanner cannot grow this without bound
                self._cache[path] = found
        return found  # type: ignore[return-value]


class EndpointCap:
    """At most ``limit`` distinct endpoint values, across all the workers sharing a store directory.

    Admitted values live in ``endpoints.txt`` beside the shards; a worker reads and appends it
    under ``flock`` only the first time it meets a value, so the steady state does no I/O. Once the
    file is full it never shrinks, and a worker that knows it is full folds new values without
    asking again.
    """

    def __init__(self, limit: int, directory: Callable[[], str | None] = lambda: None) -> None:
        self.limit = limit
        self._directory = directory
        self.admitted: set[str] = set()  # read by the hot path before calling admit()
        self._full = False
        self._lock = threading.Lock()
        self._warned = False

    def admit(self, endpoint: str) -> bool:
        """Whether ``endpoint`` may be a label value: admitted before, or room left under the cap
        (shared by all workers)."""
        if endpoint in self.admitted:
            return True
        if self._full:
            return False
        with self._lock:
            try:
                directory = self._directory()
                admitted = self._admit_shared(endpoint, directory) if directory else self._admit_local(endpoint)
            except OSError as exc:  # an unusable directory: fall back to this worker's own cap
                report_failure("endpoint cap", exc)
                admitted = self._admit_local(endpoint)
        if not admitted and not self._warned:
            self._warned = True
            logging.getLogger("softfactory_obs").warning(
                "endpoint label cap of %d reached: further endpoints are counted as %r; declare route "
                "templates (routes=... or a framework adapter) or raise max_endpoints",
                self.limit,
                OVERFLOW,
            )
        return admitted

    def _admit_local(self, endpoint: str) -> bool:
        if len(self.admitted) < self.limit:
            self.admitted.add(endpoint)
            return True
        self._full = True
        return False

    def _admit_shared(self, endpoint: str, directory: str) -> bool:
        # The file holds one line per value: a newline (or a lone surrogate) cannot be written as it
        # is, and every worker must recognise the spelling another one wrote, or each would add its own.
        written = endpoint.replace("\n", " ").encode("utf-8", "replace").decode("utf-8")
        path = os.path.join(directory, "endpoints.txt")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with os.fdopen(os.dup(fd), "r", encoding="utf-8", newline="\n") as f:
                known = [line.rstrip("\n") for line in f if line.endswith("\n")]
            self.admitted.update(known[: self.limit])
            if endpoint in self.admitted or written in self.admitted:
                self.admitted.add(endpoint)
                return True
            if len(known) >= self.limit:
                self._full = True
                return False
            os.write(fd, written.encode("utf-8") + b"\n")
            self.admitted.add(endpoint)
            return True
        finally:
            os.close(fd)  # releases the lock


def resolve(record: RequestRecord, table: RouteTable) -> str:
    """The endpoint template for a request whose status is final (before the cap).

    Templates are relative to where the app is mounted, so the mount point (``script_name``) is
    put in front: two apps mounted at /a and /b never share an endpoint.
    """
    script, route = record.script_name, record.route
    if route:  # an adapter's template, or its word that no route matched
        return UNMATCHED if route == UNMATCHED else script + str(route)
    raw = without_userinfo(script + record.path if script else record.path)
    known = table.resolved.get(raw)
    if known is None:
        template = table.match(raw)
        if template is not None:
            known = (template, True)
        elif table.declared:  # templates declared and none matched: whatever it was answered
            known = (UNMATCHED, True)
        else:
            known = (normalise(raw) or "/", False)
        if len(table.resolved) < 10_000 and len(raw) <= MAX_CACHED_TEXT:  # hot paths repeat
            table.resolved[raw] = known
    endpoint, matched = known
    if not matched and record.status == 404:
        return UNMATCHED
    return endpoint


class Endpoints:
    """The ``endpoint`` of a request: ``resolve``, then the cap when metrics keep one.

    One instance serves every recorder that shows the endpoint (the HTTP metrics' label, the access
    line), so a request has one endpoint wherever it appears, whichever asks first: the answer is
    kept on the record (``RequestRecord.endpoint``). Call it once the status is final.
    """

    def __init__(self, table: RouteTable, cap: EndpointCap | None = None) -> None:
        self.table = table
        self.cap = cap

    def of(self, record: RequestRecord) -> str:
        """The request's endpoint (its status must be final), resolved once per request."""
        endpoint = record.endpoint
        if endpoint is None:
            endpoint = resolve(record, self.table)
            cap = self.cap
            if cap is not None and endpoint not in cap.admitted:
                endpoint = endpoint if len(endpoint) <= MAX_ENDPOINT_LENGTH and cap.admit(endpoint) else OVERFLOW
            record.endpoint = endpoint
        return endpoint
