"""Request ids: accept a safe incoming id or make one, parse W3C ``traceparent``, hold both in a contextvar.

An incoming id is attacker-controlled text that we echo in a response header and write into
every log line, so it is checked against a strict ASCII allowlist (never ``uuid.UUID()``, which
accepts leading whitespace and underscores) and a rejected value is dropped, not sanitised.
"""

from __future__ import annotations

import ipaddress
import os
import re
from contextvars import ContextVar
from typing import Any

from .process_state import on_new_process
from .settings import Settings

# 1-128 of letters, digits and - _ . : (UUIDs, nginx's $request_id, W3C trace ids, ULIDs).
_SAFE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}", re.ASCII).fullmatch
# W3C Trace Context: version-traceid-parentid-flags; version ff and all-zero ids are invalid.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?", re.ASCII).fullmatch
_ZERO_TRACE = "0" * 32

# The request context: (request_id, trace_id, span_id) of the request in flight in this thread or
# task, None between requests. Set by the request path (WSGI or ASGI) for the request's duration
# and reset after its finish hooks; read by the log pipeline and the helpers below. Nothing else
# writes it, but ``replace_trace`` (a tracer in front knows the trace better than the header did).
request_context: ContextVar[tuple[str, str | None, str | None] | None] = ContextVar(
    "softfactory_obs_request", default=None
)

# Ids are cut from one batch of kernel randomness: os.urandom per request is a syscall (~0.5 µs).
_BATCH = 512
_VERSION_4 = bytes((b & 0x0F) | 0x40 for b in range(256))  # byte 6: version nibble 4
_VARIANT_1 = bytes((b & 0x3F) | 0x80 for b in range(256))  # byte 8: RFC 4122 variant


def _new_batch() -> list[str]:
    raw = bytearray(os.urandom(16 * _BATCH))
    raw[6::16] = raw[6::16].translate(_VERSION_4)
    raw[8::16] = raw[8::16].translate(_VARIANT_1)
    return raw.hex(" ", 16).split(" ")  # one id per 16 bytes, cut in C: slicing in Python cost twice this


# list.pop() is atomic under the GIL, so no two threads take the same id; two threads that find it
# empty at once both refill it, each with fresh randomness. Empty until the first request: no
# randomness is read at import.
_ids: list[str] = []


@on_new_process
def _forget_ids() -> None:
    _ids.clear()  # a new process must never hand out its parent's (or a sibling's) next ids


def new_request_id() -> str:
    """32 lowercase hex digits of a version-4 UUID, like ``uuid.uuid4().hex`` at a tenth of the cost."""
    while True:
        try:
            return _ids.pop()
        except IndexError:
            _ids.extend(_new_batch())


def current_request_id() -> str | None:
    """The id of the request being handled in this thread/task, or ``None`` outside a request."""
    ctx = request_context.get()
    return ctx[0] if ctx is not None else None


def current_trace_id() -> str | None:
    """The W3C trace id of the request being handled, when the client sent a valid ``traceparent``."""
    ctx = request_context.get()
    return ctx[1] if ctx is not None else None


def outgoing_headers(header: str = "X-Request-Id") -> dict[str, str]:
    """Headers that carry the current request's id to a service it calls, so that both services'
    logs share it: ``requests.get(url, headers=outgoing_headers())``. Empty outside a request."""
    ctx = request_context.get()
    return {header: ctx[0]} if ctx is not None else {}


def add_request_id(request: Any, header: str = "X-Request-Id") -> None:
    """Put the current request's id on an outgoing ``request`` (anything with a mutable ``headers``
    mapping), unless it has one already: an httpx event hook as it is,
    ``httpx.Client(event_hooks={"request": [add_request_id]})``. Nothing outside a request."""
    ctx = request_context.get()
    if ctx is None:
        return
    headers = request.headers
    wanted = header.lower()
    if not any(str(name).lower() == wanted for name in headers):  # header names are case-insensitive
        headers[header] = ctx[0]


def replace_trace(request_id: str, trace_id: str, span_id: str) -> None:
    """Within a request: its trace is this span's (OpenTelemetry's server span). The request path's
    reset at the end of the request still restores what was there before the request."""
    request_context.set((request_id, trace_id, span_id))


def parse_traceparent(value: str | None) -> str | None:
    """The trace id of a valid W3C ``traceparent`` header, else None."""
    if not value or type(value) is not str:  # a lax server's bytes: no trace rather than a failed request
        return None
    match = _TRACEPARENT(value.strip())
    if match is None or match[1] == "ff" or match[2] == _ZERO_TRACE or match[3] == "0" * 16:
        return None
    return match[2]


class RequestIdPolicy:
    """Decides, per request, whether the incoming id is used. Built once from the settings."""

    __slots__ = ("_mode", "_networks", "_trusted_cache", "environ_key")

    def __init__(self, settings: Settings) -> None:
        self.environ_key = "HTTP_" + settings.request_id_header.upper().replace("-", "_")
        self._mode = settings.trust_request_id
        self._networks = settings.proxy_networks
        self._trusted_cache: dict[str, bool] = {}

    def resolve(self, environ: dict[str, object]) -> tuple[str, bool]:
        """Return ``(request_id, rejected)``; ``rejected`` is true when a sent id was unusable."""
        return self.resolve_value(environ.get(self.environ_key), environ.get("REMOTE_ADDR"))

    def resolve_value(self, raw: object, addr: object) -> tuple[str, bool]:
        """``resolve`` from the header's value and the client's address (the ASGI front has no environ)."""
        if not raw or self._mode == "never" or (self._mode == "trusted_proxies" and not self._trusted(addr)):
            return new_request_id(), False
        if type(raw) is str and _SAFE_ID(raw):
            return raw, False
        # Whitespace-only counts as absent; anything else unusable is reported (never its value).
        return new_request_id(), not (type(raw) is str and raw.isspace())

    def _trusted(self, addr: object) -> bool:
        if not isinstance(addr, str):
            return False
        known = self._trusted_cache.get(addr)
        if known is None:
            try:
                ip = ipaddress.ip_address(addr)
            except ValueError:
                known = False
            else:
                known = any(ip in net for net in self._networks)
            if len(self._trusted_cache) < 4096:  # bounded: REMOTE_ADDR is client-controlled in volume
                self._trusted_cache[addr] = known
        return known
