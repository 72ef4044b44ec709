"""The two exposition formats, Prometheus text 0.0.4 and OpenMetrics 1.0, and choosing between them.

The encoders are ours and small (the formats are a few lines each; tests hold them to
prometheus_client's parsers and to promtool), so a worker never imports prometheus_client just
to answer a scrape. Negotiation is our own too: prometheus_client's raises on a malformed Accept
header (a 500 for the scrape) and ignores q-values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .families import Family

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def go_float(value: float) -> str:
    """A sample value as Prometheus (Go) writes it: +Inf, -Inf, NaN, exponents from 1e+06 on (as
    prometheus_client's floatToGoString)."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:  # noqa: PLR0124 - NaN
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


# Text-format names and types of the OpenMetrics-only kinds (as prometheus_client maps them).
_TEXT_KINDS = {
    "counter": ("_total", "counter"),
    "info": ("_info", "gauge"),
    "stateset": ("", "gauge"),
    "gaugehistogram": ("", "histogram"),
    "unknown": ("", "untyped"),
}


def encode_text(families: Iterable[Family]) -> bytes:
    """Prometheus text format 0.0.4."""
    out = []
    for family in families:
        suffix, kind = _TEXT_KINDS.get(family.type, ("", family.type))
        name = family.name + suffix
        doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
        out.extend(f"{s.name}{_labels(s.labels)} {go_float(s.value)}\n" for s in family.samples)
    return "".join(out).encode("utf-8", "replace")  # a stray surrogate from a callback: "?"


def encode_openmetrics(families: Iterable[Family]) -> bytes:
    """OpenMetrics 1.0 text, with exemplars on counter and bucket samples."""
    out = []
    for family in families:
        out.append(f"# HELP {family.name} {_escape(family.documentation)}\n# TYPE {family.name} {family.type}\n")
        dropped = _sumless(family) if family.type == "histogram" else None
        for s in family.samples:
            if dropped and s.name in dropped[0] and _series_key(s.labels) in dropped[1]:
                continue
            line = f"{s.name}{_labels(s.labels)} {go_float(s.value)}"
            ex = s.exemplar
            if ex is not None:
                stamp = "" if ex.timestamp is None else f" {ex.timestamp}"
                line += f" # {_labels(ex.labels) or '{}'} {go_float(ex.value)}{stamp}"
            out.append(line + "\n")
    out.append("# EOF\n")
    return "".join(out).encode("utf-8", "replace")  # a stray surrogate from a callback: "?"


def _sumless(family: Family) -> tuple[tuple[str, str], set[tuple[tuple[str, str], ...]]] | None:
    """The histogram series whose ``_sum`` OpenMetrics forbids: it is a counter, so never negative,
    and absent when a bucket threshold is negative (a strict parser refuses the whole scrape).
    ``_count`` goes with it: the parser wants both or neither. The text format keeps both."""
    sum_name = family.name + "_sum"
    keys = {
        _series_key(s.labels)
        for s in family.samples
        if (s.name == sum_name and s.value < 0) or _negative(s.labels.get("le", ""))
    }
    return ((sum_name, family.name + "_count"), keys) if keys else None


def _negative(le: str) -> bool:
    if le[:1] != "-":
        return False
    try:
        return float(le) < 0  # not "-0.0"
    except ValueError:  # a callback's odd bound: left as it is
        return False


def _series_key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k != "le"))


def negotiate(accept: str) -> str:
    """OpenMetrics only when the client prefers it (q-values honoured); text otherwise, never an error."""
    best, best_q = TEXT, 0.0
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            key, _, val = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(val)
                except ValueError:
                    q = 0.0
        media = media.lower()
        if q <= 0 or not math.isfinite(q):
            continue
        if media == "application/openmetrics-text" and q > best_q:
            best, best_q = OPENMETRICS, q
        elif media in ("text/plain", "text/*", "*/*") and q > best_q:
            best, best_q = TEXT, q
    return best


def gzip_accepted(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value admits gzip (``q=0`` refuses it)."""
    for part in accept_encoding.split(","):
        coding, *params = (p.strip() for p in part.split(";"))
        if coding.lower() == "gzip":
            return not any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params)
    return False
