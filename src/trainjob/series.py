"""A chart's view of a job's metrics history: every series with at most about ``points`` points.

Up to ``points`` entries every point is kept; beyond, the range is cut into ``points // 2``
buckets and each series keeps its lowest and highest point of each bucket, so spikes and the
overall extremes always show. Pure: ``downsample`` views a list in memory (any backend);
``store.history.series`` feeds the same ``SeriesView`` from the SQLite store's chunk summaries.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

DEFAULT_POINTS = 2000  # points per series in a downsampled view
# Keys of an entry that are bookkeeping, not series (as trainjob.core.public_records.BOOKKEEPING_KEYS).
NOT_SERIES = frozenset(("step", "epoch", "time", "attempt"))


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool): what a chart can draw."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def downsample(entries: list[dict[str, Any]], start: int = 0, stop: int | None = None, points: int = DEFAULT_POINTS) -> dict[str, Any]:
    """``store.history.series`` over a list of entries in memory (backends without a chunked store)."""
    stop = len(entries) if stop is None else min(max(start, stop), len(entries))
    start = min(max(0, start), stop)
    view = SeriesView(start, max(1, points // 2), stop - start, exact=stop - start <= points)
    view.add_entries(entries[start:stop], start)
    return {**view.result(), "start": start, "stop": stop, "count": len(entries)}


class SeriesView:
    """Min/max buckets of positions (``exact``: every point kept): a chart's view of a history.

    Fed with entries (``add_entries``) or with a stored chunk's summary (``add_summary``)."""

    def __init__(self, start: int, buckets: int, n: int, exact: bool) -> None:
        self.base, self.buckets, self.exact = start, buckets, exact
        self.width = max(1, -(-n // buckets))
        self.acc: dict[str, dict[int, list[list[Any]]]] = {}
        self.all: dict[str, list[list[Any]]] = {}
        self.attempts: list[list[Any]] = []

    def _point(self, key: str, pt: list[Any]) -> None:
        if self.exact:
            self.all.setdefault(key, []).append(pt)
            return
        buckets = self.acc.setdefault(key, {})
        b = (pt[0] - self.base) // self.width
        slot = buckets.get(b)
        if slot is None:
            buckets[b] = [pt, pt]
        elif pt[2] < slot[0][2]:
            slot[0] = pt
        elif pt[2] > slot[1][2]:
            slot[1] = pt

    def _attempt(self, mark: list[Any]) -> None:
        if not self.attempts or self.attempts[-1][2] != mark[2]:
            self.attempts.append(mark)  # summaries and a range's raw edges come in any order: sorted in result()

    def add_entries(self, entries: Iterable[dict[str, Any]], seq: int) -> None:
        for i, e in enumerate(entries, seq):
            step, att = e.get("step"), e.get("attempt", 0)
            self._attempt([i, step, att])
            if not is_number(step):
                continue
            for k, v in e.items():
                if k not in NOT_SERIES and is_number(v):
                    self._point(k, [i, step, v, att])

    def add_summary(self, summary: dict[str, Any]) -> None:
        for mark in summary.get("a", ()):
            self._attempt(mark)
        for k, pts in summary.get("s", {}).items():
            for pt in pts:
                self._point(k, pt)

    def result(self) -> dict[str, Any]:
        out: dict[str, list[list[Any]]] = {}
        if self.exact:
            source = self.all.items()
        else:
            source = ((k, [pt for b in sorted(bk) for pt in _pair(bk[b])]) for k, bk in self.acc.items())
        for k, pts in source:
            out[k] = [[p[1], p[2], p[3], p[0]] for p in pts]
        marks: list[list[Any]] = []
        for m in sorted(self.attempts, key=lambda m: m[0]):
            if not marks or marks[-1][2] != m[2]:
                marks.append(m)
        restarts = [{"seq": m[0], "step": m[1], "attempt": m[2]} for m in marks[1:]]
        return {"series": out, "restarts": restarts, "downsampled": not self.exact}


def _pair(slot: list[list[Any]]) -> list[list[Any]]:
    lo, hi = slot
    if lo is hi:
        return [lo]
    return [lo, hi] if lo[0] <= hi[0] else [hi, lo]
