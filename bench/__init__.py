"""Benchmarks: ``make bench`` (``python -m bench``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

# Seconds idle between an in-process runner's warm-up and its timing, as a server is between its
# start and its traffic, so work a variant starts in the background finishes first (ours: the
# maintenance thread's first round). Timed under load it would overlap by chance: each of the
# round's system calls gives up the GIL, and while the thread waits to get it back every GIL
# release of the request thread (the access line's write) wakes it in vain, as CPython hands the
# GIL over only after 5 ms without a switch. That is a worker's first moments, not the steady
# state these tables compare (docs/PERFORMANCE.md says what a round costs under load).
PAUSE = 0.5
# The runners read the pause from this environment variable, by name: they also run against older
# checkouts (--baseline), whose bench package has no PAUSE.
PAUSE_VARIABLE = "BENCH_PAUSE_SECONDS"


def interleaved(order: Sequence[str], rounds: int) -> Iterator[str]:
    """Every variant once per round, the order reversed every other round: a host that speeds up or
    slows down during a round (neighbours, thermals) then favours no variant by its position."""
    for i in range(rounds):
        yield from (order if i % 2 == 0 else reversed(order))
