"""Benchmarks: ``make bench`` (``python -m bench``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence


def interleaved(order: Sequence[str], rounds: int) -> Iterator[str]:
    """Every variant once per round, the order reversed every other round: a host that speeds up or
    slows down during a round (neighbours, thermals) then favours no variant by its position."""
    for i in range(rounds):
        yield from (order if i % 2 == 0 else reversed(order))
