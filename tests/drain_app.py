"""An app whose slow route reports, at its end, whether its worker had started draining."""

import json
import time

from softfactory_obs import instrument


def inner(environ, start_response):  # type: ignore[no-untyped-def]
    time.sleep(float(environ.get("QUERY_STRING", "").partition("=")[2] or 1.0))
    body = json.dumps({"draining": app.readiness.draining}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


app = instrument(inner, service_name="drain")
