"""The WSGI environ as the driver reads it: PEP 3333's latin-1 strings as text, request headers
by name, and what the driver needs of the middleware's configuration (``Driver``)."""

from __future__ import annotations

from ..request_id import RequestIdPolicy

# Response headers frameworks send on most responses (Werkzeug, Django, Falcon spell them so or in
# lower case): start_response passes over them with one set lookup.
COMMON_RESPONSE_HEADERS = (
    "Content-Type", "Cache-Control", "Set-Cookie", "ETag", "Last-Modified", "Vary", "Location", "Expires", "Date",
    "Server", "Content-Encoding", "Content-Language", "Content-Disposition", "Accept-Ranges", "Allow",
    "X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy", "Cross-Origin-Opener-Policy",
    "Strict-Transport-Security", "Content-Security-Policy", "Access-Control-Allow-Origin",
)  # fmt: skip


def wsgi_to_text(value: str) -> str:
    """PEP 3333 strings hold raw bytes as latin-1; show what UTF-8 they spelled, never surrogates."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a server that broke the latin-1 rule: already text
        return value.encode("utf-8", "replace").decode("utf-8")


def environ_text(value: object) -> str:
    """An environ value as text; the common case (an ASCII str) as it is."""
    if type(value) is str and value.isascii():
        return value
    return wsgi_to_text(value) if type(value) is str else str(value)


_HEADER_KEYS: dict[str, str] = {}  # header name -> environ key; a program asks for a handful


def header_key(name: str) -> str:
    """The environ key of request header ``name``: ``HTTP_USER_AGENT``, or ``CONTENT_TYPE``/``CONTENT_LENGTH``."""
    key = _HEADER_KEYS.get(name)
    if key is None:
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        if len(_HEADER_KEYS) < 256:
            _HEADER_KEYS[name] = key
    return key


class Driver:
    """What the WSGI driver needs of the middleware's configuration, decided once: the request-id
    policy and header, and whether app exceptions propagate."""

    __slots__ = ("header_lower", "header_name", "header_size", "id_key", "other_headers", "propagate", "request_ids")

    def __init__(self, request_ids: RequestIdPolicy, header_name: str, *, propagate: bool) -> None:
        self.request_ids = request_ids
        self.id_key = request_ids.environ_key
        self.header_name = header_name
        self.header_lower = header_name.lower()
        self.header_size = len(self.header_lower)
        self.propagate = propagate
        # Spellings start_response skips with one set lookup: neither ours nor Content-Length.
        self.other_headers = frozenset(
            spelling
            for name in COMMON_RESPONSE_HEADERS
            for spelling in (name, name.lower())
            if spelling.lower() not in (self.header_lower, "content-length")
        )
