"""A file sent through ``wsgi.file_wrapper`` (path and size from the environment), and this
process's peak resident memory at ``/peak``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from softfactory_obs import instrument

BIG = os.environ.get("TEST_BIG_FILE", "")


def bare(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/peak":
        with open("/proc/self/status") as f:
            peak_kb = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [peak_kb.encode()]
    environ["softfactory_obs.route"] = "/big"
    start_response(
        "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(os.path.getsize(BIG)))]
    )
    return environ["wsgi.file_wrapper"](open(BIG, "rb"), 65536)


app = instrument(bare, service_name="big")
