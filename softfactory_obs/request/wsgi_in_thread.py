"""The telemetry routes (``/metrics``, the probes, the JSON endpoints) are WSGI apps; the ASGI front
serves them through this adapter, in a worker thread, so that what may block (a scrape merging
shards, a health check waiting for its timeout) never holds up the event loop."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Callable, Iterable
from typing import Any

from .asgi import Message, Receive, Scope, Send

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def wsgi_environ(scope: Scope, body: bytes) -> dict[str, Any]:
    """A PEP 3333 environ for an ASGI ``http`` scope (strings as latin-1 code points)."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode("utf-8").decode("latin-1"),
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]) if server[1] is not None else "",
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": str(client[0]) if client else "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in scope["headers"]:
        key = name.decode("latin-1").upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        text = value.decode("latin-1")
        environ[key] = f"{environ[key]},{text}" if key in environ else text
    return environ


def run_wsgi(app: WSGIApp, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Call ``app`` and read its whole answer: (status, headers, body). For the small bodies of
    telemetry routes only."""
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        answer["status"], answer["headers"] = status, headers
        return answer.setdefault("written", []).append  # type: ignore[no-any-return]

    result = app(environ, start_response)
    try:
        body = b"".join([*answer.get("written", []), *result])
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    headers = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in answer["headers"]]
    return int(answer["status"][:3]), headers, body


def in_thread(app: WSGIApp) -> Callable[[Scope, Receive, Send], Any]:
    """An ASGI app that serves the WSGI ``app`` in the event loop's default executor."""

    async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
        chunks = []
        while True:  # telemetry requests carry no body worth keeping, but the protocol wants it read
            message: Message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        environ = wsgi_environ(scope, b"".join(chunks))
        loop = asyncio.get_running_loop()
        status, headers, body = await loop.run_in_executor(None, run_wsgi, app, environ)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})

    return asgi_app
