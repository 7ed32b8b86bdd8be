"""Metric curves as a PNG, for terminals and reports (``trainjob metrics ID --plot out.png``).

Draws what the dashboard draws, with matplotlib's Agg backend (no display needed): loss with
eval loss, learning rate, gradient norm, and one panel per other logged metric, against the
training step. A restart (a new attempt) starts a new line segment and is marked on the x axis.
matplotlib is imported only when a plot is made (``pip install 'trainjob[dashboard]'``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

# Keys that are not curves: bookkeeping, and end-of-training summaries logged once.
SKIP_KEYS = frozenset(
    {
        "step", "epoch", "time", "attempt",
        "train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss",
        "eval_runtime", "eval_samples_per_second", "eval_steps_per_second",
    }
)  # fmt: skip
# Panels in this order first; every other metric gets its own panel after them.
KNOWN_PANELS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Loss", "loss", ("loss", "eval_loss")),
    ("Learning rate", "learning rate", ("learning_rate",)),
    ("Gradient norm", "L2 norm of gradients", ("grad_norm",)),
)


class NoMetricsError(ValueError):
    """There is nothing to plot: the job logged no numeric metrics (yet, or tracking is off)."""


def series(entries: Iterable[dict[str, Any]]) -> dict[str, list[tuple[float, float, int]]]:
    """``{metric: [(step, value, attempt), ...]}`` for every numeric, finite logged value."""
    out: dict[str, list[tuple[float, float, int]]] = {}
    for e in entries:
        step = e.get("step")
        if not isinstance(step, (int, float)):
            continue
        for k, v in e.items():
            if k in SKIP_KEYS or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            out.setdefault(k, []).append((float(step), float(v), int(e.get("attempt") or 0)))
    return out


def panels(keys: Iterable[str]) -> list[tuple[str, str, list[str]]]:
    """Group metric names into panels: ``[(title, y label, [keys]), ...]``."""
    keys = list(keys)
    used: set[str] = set()
    result = []
    for title, ylabel, members in KNOWN_PANELS:
        present = [k for k in members if k in keys]
        if present:
            result.append((title, ylabel, present))
            used.update(present)
    for k in keys:
        if k not in used:
            result.append((k.removeprefix("eval_") + (" (eval)" if k.startswith("eval_") else ""), k, [k]))
    return result


def plot_metrics(entries: list[dict[str, Any]], path: str | os.PathLike, title: str | None = None, dpi: int = 120) -> Path:
    """Write the curves of ``entries`` (``TrainerClient.get_job_metrics``) to a PNG at ``path``.

    Raises :class:`NoMetricsError` when there is nothing numeric to draw. Returns the path.
    """
    data = series(entries)
    if not data:
        raise NoMetricsError("no metrics to plot: the job has not logged any numeric value yet (or progress tracking is off)")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, MaxNLocator

    groups = panels(data)
    cols = 1 if len(groups) == 1 else 2
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 3.4 * rows), squeeze=False, layout="constrained")
    restarts = _restart_steps(entries)
    for ax, (name, ylabel, keys) in zip(axes.flat, groups, strict=False):  # extra axes are hidden below
        for key in keys:
            is_eval = key.startswith("eval_")
            for i, (_, seg) in enumerate(_segments(data[key])):
                ax.plot(
                    [p[0] for p in seg], [p[1] for p in seg],
                    marker="o" if is_eval or len(seg) < 3 else None, markersize=3.5, linewidth=1.6,
                    linestyle="--" if is_eval and len(keys) > 1 else "-",
                    color=_color(key, keys), label=key if i == 0 else None,
                )  # fmt: skip
        for i, step in enumerate(restarts):
            ax.axvline(step, color="#888", linestyle=":", linewidth=1, label="restart" if i == 0 else None)
        ax.set_title(name, fontsize=11, loc="left")
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.grid(True, color="#ddd", linewidth=0.7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
        if keys == ["learning_rate"]:
            ax.yaxis.set_major_formatter(EngFormatter(sep=""))
        else:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useMathText=True)
        if len(keys) > 1 or restarts:
            ax.legend(fontsize=8, frameon=False)
    for ax in list(axes.flat)[len(groups) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=12)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png")
    plt.close(fig)
    return out


def _segments(points: list[tuple[float, float, int]]) -> list[tuple[int, list[tuple[float, float, int]]]]:
    """Split a series where the attempt changes (a restart goes back to a checkpoint's step)."""
    segs: list[tuple[int, list[tuple[float, float, int]]]] = []
    for p in points:
        if not segs or segs[-1][0] != p[2]:
            segs.append((p[2], []))
        segs[-1][1].append(p)
    return segs


def _restart_steps(entries: list[dict[str, Any]]) -> list[float]:
    steps, last = [], None
    for e in entries:
        attempt = int(e.get("attempt") or 0)
        if last is not None and attempt != last and isinstance(e.get("step"), (int, float)):
            steps.append(float(e["step"]))
        last = attempt
    return steps


_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf")


def _color(key: str, keys: list[str]) -> str:
    return _PALETTE[keys.index(key) % len(_PALETTE)]
