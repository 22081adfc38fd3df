"""A histogram as plain numbers: bumped on the hot path, cumulated only at scrape time."""

from __future__ import annotations

from bisect import bisect_left


class Histogram:
    """Bucket counts (`le` bounds, then +Inf) and a sum; everything on the loop's thread.

    prometheus_client's own Histogram takes a lock per observation; this costs a bisect
    and two additions.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def merge(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total

    def copy(self) -> Histogram:
        copied = Histogram(self.bounds)
        copied.counts = list(self.counts)
        copied.total = self.total
        return copied
