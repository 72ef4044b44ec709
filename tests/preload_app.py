"""The demo app plus a counter incremented once at import: with --preload that import runs in the master."""

from softfactory_obs.store.metrics import Counter

IMPORTS = Counter("app_imports_total", "Times this module was imported")
IMPORTS.inc()

from examples.demo import app  # noqa: E402,F401 - what gunicorn serves
