"""The demo with no softfactory_obs hooks at all: metrics must be exact without them."""

import os

bind = os.environ.get("DEMO_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("DEMO_WORKERS", "4"))
accesslog = None
