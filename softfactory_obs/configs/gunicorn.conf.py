"""gunicorn settings for a service instrumented with softfactory_obs.

    gunicorn -c configs/gunicorn.conf.py yourapp.wsgi:app

Works with sync and gthread workers. Metrics are exact without any of the hooks below; they make
the store directory explicit (chosen once by the master, removed at exit) and turn gunicorn's own
log lines into the same JSON as the app's. Put the store on tmpfs: set SOFTFACTORY_OBS_METRICS_DIR
to a directory on /dev/shm or a Kubernetes emptyDir with medium: Memory (sizing: docs/METRICS.md in the repository).
"""

import os

from softfactory_obs.gunicorn import (  # noqa: F401 - gunicorn reads these names
    logconfig_dict,
    on_exit,
    on_starting,
    post_worker_init,
)

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WORKERS", "4"))
worker_class = os.environ.get("WORKER_CLASS", "sync")
threads = int(os.environ.get("THREADS", "1"))
accesslog = None  # softfactory_obs writes one JSON access line per request
timeout = 30
graceful_timeout = 10
# Recycle workers now and then; the metrics store keeps every count exact across restarts.
max_requests = int(os.environ.get("MAX_REQUESTS", "0"))
max_requests_jitter = int(os.environ.get("MAX_REQUESTS_JITTER", "0"))
