"""A WSGI app whose /burn spends about 20 ms of CPU per request, instrumented (for the CPU-accounting test)."""

from __future__ import annotations

import time
from typing import Any

from softfactory_obs import instrument


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    if environ["PATH_INFO"] == "/burn":
        end = time.process_time() + 0.02
        while time.process_time() < end:
            pass
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


app = instrument(_app, access_log=False)
