"""What the tests share: a WSGI harness that validates both sides, JSON log capture, forks,
binaries, free ports. Tests import these from here; conftest.py holds only pytest fixtures."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from softfactory_obs import ObservabilityMiddleware
from softfactory_obs.metrics.exposition import MetricsApp
from softfactory_obs.store.metrics import Registry

# CI sets this: a test that would skip for a missing binary fails instead.
STRICT = os.environ.get("SOFTFACTORY_OBS_STRICT_TESTS") == "1"


def _run_and_exit(body: Callable[[], None]) -> None:
    """In a forked child: run ``body`` and leave at once, exit code 1 (traceback on stderr) if it raised."""
    code = 0
    try:
        body()
    except BaseException:
        traceback.print_exc()
        code = 1
    os._exit(code)


def in_child(body: Callable[[], None]) -> int:
    """Run ``body`` in a forked process (a real incarnation with its own shard); return its exit code."""
    pid = os.fork()
    if pid == 0:
        _run_and_exit(body)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def in_c_forked_child(body: Callable[[], None]) -> int:
    """Like ``in_child``, but forked by libc's ``fork()`` as uWSGI and mod_wsgi fork their workers:
    Python's at-fork hooks do not run, so the child starts with every per-process state of the
    parent (PyDLL: the GIL stays held across the call, as it must for the child to go on). Fork only
    from a process with no other thread: see c_fork_scenarios.py."""
    pid = ctypes.PyDLL(None).fork()
    if pid == 0:
        _run_and_exit(body)
    assert pid > 0, "fork() failed"
    deadline = time.monotonic() + 60
    while True:  # bounded: a child stuck on a lock another thread held at the fork fails the test
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the C-forked child did not finish within 60 s")
        time.sleep(0.01)


def samples(registry: Registry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = MetricsApp(registry).render()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def skip_or_fail(message: str) -> None:
    """Skip on a laptop; under SOFTFACTORY_OBS_STRICT_TESTS=1 (CI) a missing prerequisite is a failure."""
    if STRICT:
        pytest.fail(message + " (SOFTFACTORY_OBS_STRICT_TESTS=1 forbids skipping)")
    pytest.skip(message)


def require_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        skip_or_fail(f"python package {name} is not installed (pip install -e '.[test]'; make test does)")
        raise


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} is not installed (apt-get install the package that ships it; .ci/run does)")
    assert path is not None
    return path


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A real, small tmpfs mounted for one test (root only), always unmounted."""
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, check=False
    )
    if result.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    """Make a ``tmpfs`` read-only (``mode="ro"``) or writable again (``"rw"``)."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True, capture_output=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_environ(**overrides: Any) -> dict[str, Any]:
    environ: dict[str, Any] = {"QUERY_STRING": ""}
    setup_testing_defaults(environ)
    environ.update(overrides)
    return environ


@dataclass
class Response:
    status: str
    headers: list[tuple[str, str]]
    body: bytes
    start_calls: list[tuple[str, bool]] = field(default_factory=list)

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def call_wsgi(
    app: Callable[..., Any],
    environ: dict[str, Any] | None = None,
    *,
    close_after: int | None = None,
    on_chunk: Callable[[bytes], None] | None = None,
) -> Response:
    """Play a strict server: start_response twice only with exc_info, headers go out with the first byte."""
    environ = make_environ() if environ is None else environ
    state: dict[str, Any] = {"status": None, "headers": None, "sent": False}
    written: list[bytes] = []
    calls: list[tuple[str, bool]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        if calls and exc_info is None:
            raise AssertionError("start_response called twice without exc_info")
        if exc_info is not None and state["sent"]:
            raise exc_info[1].with_traceback(exc_info[2])
        calls.append((status, exc_info is not None))
        state["status"], state["headers"] = status, headers

        def write(data: bytes) -> None:
            state["sent"] = True
            written.append(data)

        return write

    result = app(environ, start_response)
    body: list[bytes] = []
    try:
        for chunk in result:
            if chunk:
                state["sent"] = True
            body.append(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
            if close_after is not None and len(body) >= close_after:
                break
    finally:
        if hasattr(result, "close"):
            result.close()
    return Response(state["status"], state["headers"], b"".join(written + body), calls)


def wrap(app: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    """Our middleware with wsgiref's validator on both sides: any PEP 3333 slip fails the test."""
    options.setdefault("auto_configure_logging", False)
    return validator(ObservabilityMiddleware(validator(app), **options))


class LogCapture:
    def __init__(self) -> None:
        self.stream = io.StringIO()

    def lines(self) -> list[dict[str, Any]]:
        text = self.stream.getvalue()
        # Every line must be one complete JSON object: parse each, fail loudly on any other.
        return [json.loads(line) for line in text.splitlines()]

    def access(self) -> list[dict[str, Any]]:
        return [r for r in self.lines() if r["logger"] == "softfactory_obs.access"]

    def raw(self) -> str:
        return self.stream.getvalue()


class AsgiResponse:
    """What a strict fake ASGI server received for one request."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""

    def header(self, name: str) -> list[str]:
        wanted = name.lower().encode()
        return [v.decode("latin-1") for k, v in self.headers if k.lower() == wanted]


async def call_asgi(
    app: Callable[..., Any],
    path: str = "/",
    *,
    method: str = "GET",
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
    root_path: str = "",
    fail_send_after: int | None = None,
    pathsend: bool = False,
) -> AsgiResponse:
    """Drive one ``http`` request as a strict server would: the ASGI spec's message order checked
    on every message (one start, then body messages until ``more_body`` is false, nothing after),
    ``http.disconnect`` once the response is complete. ``fail_send_after``: the server's send
    raises OSError (the client is gone) from that body message on. ``pathsend``: the server offers
    the ``http.response.pathsend`` extension and sends the file it names."""
    path_only, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path_only,
        "raw_path": path_only.encode(),
        "query_string": query.encode(),
        "root_path": root_path,
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    if pathsend:
        scope["extensions"] = {"http.response.pathsend": {}}
    response = AsgiResponse()
    done = asyncio.Event()
    sent_request = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        assert not done.is_set(), f"message after the response was complete: {message}"
        response.messages.append(message)
        if message["type"] == "http.response.start":
            assert response.status == 0, "a second http.response.start"
            assert isinstance(message["status"], int)
            for name, value in message.get("headers", []):
                assert isinstance(name, bytes) and isinstance(value, bytes), (name, value)
            response.status, response.headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            assert response.status, "http.response.body before http.response.start"
            bodies = sum(m["type"] == "http.response.body" for m in response.messages)
            if fail_send_after is not None and bodies > fail_send_after:
                raise OSError("client went away")
            response.body += message.get("body", b"")
            if not message.get("more_body", False):
                done.set()
        elif message["type"] == "http.response.pathsend" and pathsend:
            assert response.status and not response.body, "pathsend ends a response that sent no body"
            response.body = Path(message["path"]).read_bytes()
            done.set()
        else:
            raise AssertionError(f"unexpected message {message}")

    await app(scope, receive, send)
    return response
