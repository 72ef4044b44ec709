"""The demo plus a critical health check that never returns (timeout 1 s)."""

import threading

from examples.demo import app

app.add_health_check("hangs", lambda: threading.Event().wait(3600), critical=True, timeout=1.0)
