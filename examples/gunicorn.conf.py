"""gunicorn settings for the demo: 4 sync workers on 127.0.0.1:8000, our JSON access log instead of gunicorn's."""

import os

bind = os.environ.get("DEMO_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("DEMO_WORKERS", "4"))
worker_class = "sync"
accesslog = None  # softfactory_obs writes one JSON access line per request
errorlog = "-"
timeout = 30
graceful_timeout = 10
