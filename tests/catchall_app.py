"""Answers 200 for every path, so every random path reaches the normaliser and the endpoint cap."""

from softfactory_obs import instrument


def catchall(environ, start_response):  # type: ignore[no-untyped-def]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


app = instrument(catchall)
