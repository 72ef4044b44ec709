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


def display(template: str) -> str:
    """A declared template as endpoints show it: ``{path:path}`` is ``{path}``."""
    return PLACEHOLDER.sub(lambda m: "{" + m[1] + "}", template)


# Each framework's parameter syntax, spelled ``{name}`` in every endpoint whatever the framework.
_ANGLE_CONVERTER_FIRST = re.compile(r"<(?:\w+(?:\([^()]*\))?:)?(\w+)>")  # Flask, Django path(): <int(signed=True):n>
_DJANGO_GROUP = re.compile(r"\(\?P<(\w+)>(?:[^()]|\([^()]*\))*\)")  # re_path: (?P<year>[0-9]{4}), one level of ()
_BOTTLE = re.compile(r"<(\w+)(?::[^<>]*)?>|(?<![\w\\]):(\w+)")  # <id:int>, <n:re:[a-z]+>; old :name


def _braced(rule: str) -> str:
    # Falcon and Pyramid: {name}, {name:int(min=1)}, {x:\d{4}} (a regex with braces of its own).
    out, i = [], 0
    while i < len(rule):
        if rule[i] != "{":
            out.append(rule[i])
            i += 1
            continue
        depth, j = 0, i
        while j < len(rule):
            depth += {"{": 1, "}": -1}.get(rule[j], 0)
            if depth == 0:
                break
            j += 1
        name = re.match(r"\{\s*(\w+)", rule[i : j + 1])
        out.append("{" + name[1] + "}" if name else rule[i : j + 1])
        i = j + 1
    return "".join(out)


def framework_template(rule: str, style: str) -> str:
    """A framework's route rule spelled as an endpoint: ``{name}`` for every parameter.

    ``style``: ``"flask"`` and ``"django"`` put the converter first (``<int:id>``, custom ones too),
    Django's ``re_path`` uses named groups and anchors; ``"bottle"`` puts the name first
    (``<id:int>``) or uses the old ``:name``; ``"falcon"``, ``"pyramid"`` and ``"starlette"`` use
    braces, Pyramid also ``*subpath``.
    """
    if style == "flask":
        template = _ANGLE_CONVERTER_FIRST.sub(r"{\1}", rule)
    elif style == "django":  # re_path's named groups first: their <name> is not a path() converter
        template = _ANGLE_CONVERTER_FIRST.sub(r"{\1}", _DJANGO_GROUP.sub(r"{\1}", rule))
        template = "/" + template.replace("^", "").replace("$", "").lstrip("/")
    elif style == "bottle":
        template = _BOTTLE.sub(lambda m: "{" + (m[1] or m[2]) + "}", rule)
    elif style in ("falcon", "pyramid", "starlette"):  # Starlette: {name}, {name:int}, {name:path}
        template = _braced(rule)
        if style == "pyramid":
            template = re.sub(r"\*(\w+)$", r"{\1}", template)
            template = "/" + template.lstrip("/")  # a route_prefix gives patterns without one
    else:
        raise ValueError(f"style: expected flask, django, bottle, falcon, pyramid or starlette, got {style!r}")
    return template or "/"
