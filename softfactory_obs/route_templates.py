"""Route templates as users declare them: ``{name}`` is one path segment, ``{name:path}`` the rest."""

from __future__ import annotations

import re

PLACEHOLDER = re.compile(r"\{(\w+)(?::(\w+))?\}")


def template_problem(template: str) -> str | None:
    """What is wrong with a route template (None when nothing): it starts with ``/``, and its only
    braces are placeholders, ``{name}`` or ``{name:path}``."""
    if not isinstance(template, str) or not template.startswith("/"):
        return "a template starts with '/'"
    rest = PLACEHOLDER.sub("", template)
    if "{" in rest or "}" in rest:
        return "braces only as placeholders: {name} (one segment) or {name:path} (the rest of the path)"
    kinds = {m[2] for m in PLACEHOLDER.finditer(template)} - {None, "path"}
    if kinds:
        return f"unknown placeholder kind {sorted(kinds)[0]!r}: {{name}} or {{name:path}}"
    return None


def compile_template(template: str) -> re.Pattern[str]:
    """The regular expression a path must fully match to have ``template`` as its endpoint (a
    trailing slash allowed)."""
    pattern, pos = [], 0
    for match in PLACEHOLDER.finditer(template):
        pattern.append(re.escape(template[pos : match.start()]))
        pattern.append(".+" if match[2] == "path" else "[^/]+")
        pos = match.end()
    pattern.append(re.escape(template[pos:]))
    return re.compile("".join(pattern) + "/?")
