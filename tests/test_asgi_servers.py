"""The ASGI front under real multi-process servers, with nothing configured: uvicorn --workers,
gunicorn with uvicorn's worker class (the README's FastAPI recipe), hypercorn --workers. N
requests give N distinct ids, every scrape counts exactly N whichever worker answers, the route
template is the endpoint, and the access lines are JSON with the response's id."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from servers import ROOT, Command, Gunicorn, Server, exact_under_load, get

PATH = f"{ROOT / 'tests'}{os.pathsep}{ROOT}"
USER = "/users/{user_id}"

SERVERS: dict[str, Callable[[Path], Server]] = {
    "uvicorn-workers": lambda tmp: Command(
        tmp,
        "uvicorn",
        [sys.executable, "-m", "uvicorn", "--port", "{port}", "--host", "127.0.0.1", "--workers", "3",
         "--no-access-log", "asgi_app:app"],
        PYTHONPATH=PATH,
    ),
    "gunicorn-uvicorn-worker": lambda tmp: Gunicorn(
        tmp, "asgi_app:app", workers=3, PYTHONPATH=PATH, GUNICORN_CMD_ARGS="-k uvicorn_worker.UvicornWorker"
    ),
    "hypercorn-workers": lambda tmp: Command(
        tmp,
        "hypercorn",
        [sys.executable, "-m", "hypercorn", "--bind", "127.0.0.1:{port}", "--workers", "2", "asgi_app:app"],
        PYTHONPATH=PATH,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SERVERS))
def test_asgi_servers_count_exactly_with_distinct_ids(tmp_path: Path, name: str) -> None:
    with SERVERS[name](tmp_path) as server:
        # ?block holds a worker's event loop for 20 ms, so the other workers take connections too.
        ids = exact_under_load(server, lambda n: f"/users/{n + 1}?block=0.02", USER)
        assert get(server.port, "/health")[0] == 200
        lines = server.log_lines(wait_for=len(ids))
    assert all(ids) and len(set(ids)) == len(ids) == 120
    access = [x for x in lines if x.get("logger") == "softfactory_obs.access" and x["path"].startswith("/users/")]
    assert sorted(x["request_id"] for x in access) == sorted(ids)
    assert all(x["status"] == 200 and x["endpoint"] == USER and x["service"] == "asgi-shop" for x in access)
    assert len({x["pid"] for x in access}) >= 2, "one worker served everything: the test means nothing"
