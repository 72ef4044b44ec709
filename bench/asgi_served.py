"""The ASGI bench variant ``$BENCH_ASGI_VARIANT``, for uvicorn's workers to serve (``bench.asgi_served:app``)."""

from __future__ import annotations

import os

from .asgi import build

app = build(os.environ["BENCH_ASGI_VARIANT"], metrics_dir=os.environ.get("BENCH_ASGI_STORE"))
