"""The demo plus two checks driven from outside: a critical one that fails while a flag file
exists, and a non-critical one that hangs forever."""

import os
import threading

from examples.demo import app

FLAG = os.environ["HEALTH_FLAG_FILE"]
app.add_health_check("flagged", lambda: not os.path.exists(FLAG), critical=True, timeout=0.5)
app.add_health_check("hangs", lambda: threading.Event().wait(3600), critical=False, timeout=0.5)
