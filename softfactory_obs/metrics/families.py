"""Metric families as a scrape builds them: plain data that ``exposition`` writes out.

Shaped like prometheus_client's (``name``, ``type``, ``documentation``, ``samples`` of
``(name, labels, value, exemplar)``; a counter family's name has no ``_total``, its samples do),
so an app's own prometheus_client metrics convert field by field. Ours, so that serving a scrape
does not import prometheus_client into every worker (about 2.3 MB of resident memory each).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class Exemplar(NamedTuple):
    """An exemplar of a sample: its labels (a trace or request id), value and time."""

    labels: dict[str, str]
    value: float
    timestamp: float | None = None


class Sample(NamedTuple):
    """One sample of a family: name, labels, value, and an optional exemplar."""

    name: str
    labels: dict[str, str]
    value: float
    exemplar: Exemplar | None = None


class Family:
    """One metric family; ``add`` appends a sample for label values given in ``labels`` order."""

    __slots__ = ("documentation", "labels", "name", "samples", "type")

    def __init__(self, name: str, documentation: str, kind: str, labels: Sequence[str] = ()) -> None:
        if kind == "counter" and name.endswith("_total"):
            name = name[:-6]  # OpenMetrics names the family without the suffix its samples carry
        self.name = name
        self.documentation = documentation
        self.type = kind
        self.labels = tuple(labels)
        self.samples: list[Sample] = []

    def add(self, values: Sequence[str], value: float, exemplar: Exemplar | None = None) -> None:
        """A counter's or a gauge's sample."""
        name = self.name + "_total" if self.type == "counter" else self.name
        self.samples.append(Sample(name, dict(zip(self.labels, values, strict=True)), float(value), exemplar))

    def add_histogram(
        self, values: Sequence[str], buckets: Sequence[tuple[str, float, Exemplar | None]], sum_value: float
    ) -> None:
        """Cumulative ``(le, count, exemplar)`` buckets, the last one ``+Inf``, then ``_count`` and ``_sum``."""
        labels = dict(zip(self.labels, values, strict=True))
        for le, count, exemplar in buckets:
            self.samples.append(Sample(self.name + "_bucket", {**labels, "le": le}, count, exemplar))
        self.samples.append(Sample(self.name + "_count", labels, buckets[-1][1] if buckets else 0.0))
        self.samples.append(Sample(self.name + "_sum", labels, sum_value))


def gauge(name: str, documentation: str, value: float) -> Family:
    """An unlabelled gauge with its one value."""
    family = Family(name, documentation, "gauge")
    family.add((), value)
    return family
