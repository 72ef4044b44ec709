"""softfactory_obs: production observability for any WSGI app in one line.

from softfactory_obs import instrument
app = instrument(app, service_name="shop")
"""

from .logs import JsonFormatter, RequestContextFilter, configure_logging, request_context_processor
from .middleware import ObservabilityMiddleware, instrument
from .request_id import add_request_id, current_request_id, current_trace_id, outgoing_headers
from .settings import Settings

__version__ = "0.1.0"

__all__ = [
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
    "outgoing_headers",
    "request_context_processor",
]
