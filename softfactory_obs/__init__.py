"""softfactory_obs: production observability for any WSGI or ASGI app in one line.

from softfactory_obs import instrument
app = instrument(app, service_name="shop")            # WSGI
app = instrument_asgi(app, service_name="shop")       # ASGI (Starlette, FastAPI, Django ASGI)
"""

from .asgi import AsgiMiddleware, instrument_asgi
from .logs import JsonFormatter, RequestContextFilter, configure_logging, request_context_processor
from .middleware import ObservabilityMiddleware, instrument
from .request_id import add_request_id, current_request_id, current_trace_id, outgoing_headers
from .settings import Settings

__version__ = "0.1.0"

__all__ = [
    "AsgiMiddleware",
    "JsonFormatter",
    "ObservabilityMiddleware",
    "RequestContextFilter",
    "Settings",
    "__version__",
    "add_request_id",
    "configure_logging",
    "current_request_id",
    "current_trace_id",
    "instrument",
    "instrument_asgi",
    "outgoing_headers",
    "request_context_processor",
]
