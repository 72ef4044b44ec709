"""gunicorn settings for the demo: 4 sync workers on 127.0.0.1:8000, JSON logs, the softfactory_obs hooks."""

import os

os.environ.setdefault("SOFTFACTORY_OBS_SERVICE_NAME", "demo-shop")

from softfactory_obs.gunicorn import (  # noqa: F401 - gunicorn reads these names
    json_logconfig,
    on_exit,
    on_starting,
    post_worker_init,
)

logconfig_dict = json_logconfig()

bind = os.environ.get("DEMO_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("DEMO_WORKERS", "4"))
worker_class = "sync"
accesslog = None  # softfactory_obs writes one JSON access line per request
timeout = 30
graceful_timeout = 10
