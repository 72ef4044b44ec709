"""An app that passes its own log settings to instrument(), served under configs/gunicorn.conf.py,
whose logconfig_dict configured logging in the master first: the app's settings must win."""

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from softfactory_obs import instrument


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    logging.getLogger("shop.orders").info("order placed")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


app = instrument(hello, service_name="shop", log_schema="ecs", log_file=os.environ["TEST_LOG_FILE"])
