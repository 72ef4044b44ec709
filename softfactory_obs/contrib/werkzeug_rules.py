"""What Flask and Quart share: werkzeug's URL map, asked for the rule of a 405."""

from __future__ import annotations

from typing import Any

from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Rule


def rule_of_other_methods(app: Any, request: Any) -> Rule | None:
    """For a 405, the rule the path matched with a method it allows (the template its GET has).
    ``app`` and ``request``: a Flask or Quart app and its current request."""
    error = request.routing_exception
    allowed = list(error.valid_methods or ()) if isinstance(error, MethodNotAllowed) else []
    adapter = app.create_url_adapter(request)
    if not allowed or adapter is None:
        return None
    try:
        rule, _ = adapter.match(method=allowed[0], return_rule=True)
    except HTTPException:
        return None
    return rule  # type: ignore[no-any-return]
