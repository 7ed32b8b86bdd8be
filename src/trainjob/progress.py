"""Progress math: pure functions from Trainer figures to the progress schema.

The schema is RHAI's ``trainerStatus`` (see DESIGN.md section 3); every key is always present.
Kept free of I/O and of transformers so it is cheap to import in ranks and easy to test.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

PROGRESS_KEYS = (
    "progressPercentage",
    "estimatedRemainingSeconds",
    "currentStep",
    "totalSteps",
    "currentEpoch",
    "totalEpochs",
    "trainMetrics",
    "evalMetrics",
    "lastUpdatedTime",
    "estimatedRemainingTimeSummary",
)

# Figures the Trainer logs for bookkeeping rather than as metrics.
_NOT_METRICS = frozenset({"step", "epoch", "time", "attempt"})
# An "epoch count" this large means the dataloader has no length (IterableDataset + max_steps).
_UNKNOWN_EPOCHS = 10**9


def clean_number(v: Any) -> float | int | None:
    """Numbers pass, NaN/inf and non-numbers become None (JSON has no NaN)."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    try:  # numpy / torch scalars
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def percentage(step: int, total: int | None) -> int | None:
    """Whole percent done, 0-100; None when the total is unknown."""
    if not total or total <= 0:
        return None
    return max(0, min(100, int(100 * step / total)))


def remaining_seconds(step: int, total: int | None, steps_per_second: float | None) -> int | None:
    if not total or not steps_per_second or steps_per_second <= 0:
        return None
    return max(0, int(round((total - step) / steps_per_second)))


def time_summary(seconds: int | None) -> str | None:
    """Human wording of a duration in whole units, rounded down as DESIGN.md's example is
    (217 s -> '3 minutes'): '45 seconds', '3 minutes', '2 hours 5 minutes'."""
    if seconds is None:
        return None
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    hours, minutes = divmod(minutes, 60)
    out = f"{hours} hour{'s' if hours != 1 else ''}"
    if minutes:
        out += f" {minutes} minute{'s' if minutes != 1 else ''}"
    return out


def total_epochs(num_train_epochs: Any) -> int | None:
    """The Trainer's own epoch count (right when ``max_steps`` is set); None when unbounded."""
    n = clean_number(num_train_epochs)
    if n is None or n <= 0 or n >= _UNKNOWN_EPOCHS:
        return None
    return int(math.ceil(n))


def current_epoch(epoch: Any, total: int | None) -> int | None:
    """Completed epochs, as RHAI reports them (epoch 1.35 of 3 -> 1)."""
    e = clean_number(epoch)
    if e is None:
        return None
    whole = int(math.floor(e + 1e-9))
    return min(whole, total) if total else whole


def categorize(
    logs: Mapping[str, Any], custom_metrics: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split one logged entry into (trainMetrics, evalMetrics).

    ``custom_metrics`` maps a logged name (matched with or without its ``eval_`` prefix) to an
    exposed name; an exposed name starting with ``eval_`` lands in evalMetrics.
    """
    custom = dict(custom_metrics or {})
    train: dict[str, Any] = {}
    evals: dict[str, Any] = {}
    for key, value in logs.items():
        if key in _NOT_METRICS:
            continue
        num = clean_number(value)
        if num is None and value is not None and not _is_nan_like(value):
            continue  # strings, lists: not a metric
        exposed = _exposed_name(key, custom)
        (evals if exposed.startswith("eval_") else train)[exposed] = num
    return train, evals


def _exposed_name(key: str, custom: Mapping[str, str]) -> str:
    if key in custom:
        return custom[key]
    if key.startswith("eval_") and key[5:] in custom:
        return custom[key[5:]]
    return key


def _is_nan_like(v: Any) -> bool:
    try:
        return not math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def iso_now() -> str:
    """The current UTC time to the second, as RHAI writes ``lastUpdatedTime``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # half the cost of datetime's strftime


@dataclass
class RateWindow:
    """Steps per second over a recent window, counted from this attempt's own steps only.

    A resumed run starts at a high step with no history; counting only steps seen here keeps the
    rate (and so the ETA) honest after a resume. The callback adds a sample per progress write,
    not per step (the rate between two samples does not need the steps in between); ``add`` is
    O(1) amortized (each sample is dropped once).
    """

    window_seconds: float = 30.0
    samples: deque = field(default_factory=lambda: deque(maxlen=4096))

    def add(self, step: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.samples.append((now, step))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window_seconds:
            self.samples.popleft()

    def steps_per_second(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, s0), (t1, s1) = self.samples[0], self.samples[-1]
        if t1 <= t0 or s1 <= s0:
            return None
        return (s1 - s0) / (t1 - t0)


def build_progress(
    *,
    step: int,
    max_steps: int | None,
    epoch: Any,
    num_train_epochs: Any,
    steps_per_second: float | None,
    samples_per_step: int | None,
    train_metrics: Mapping[str, Any],
    eval_metrics: Mapping[str, Any],
    finished: bool = False,
) -> dict[str, Any]:
    """The progress document, every key present, NaN/inf as null."""
    total_ep = total_epochs(num_train_epochs)
    eta = 0 if finished else remaining_seconds(step, max_steps, steps_per_second)
    train = {k: clean_number(v) for k, v in train_metrics.items()}
    if steps_per_second and samples_per_step:
        train["throughput_samples_sec"] = round(steps_per_second * samples_per_step, 3)
    return {
        "progressPercentage": percentage(step, max_steps),
        "estimatedRemainingSeconds": eta,
        "currentStep": step,
        "totalSteps": max_steps or None,
        "currentEpoch": current_epoch(epoch, total_ep),
        "totalEpochs": total_ep,
        "trainMetrics": train,
        "evalMetrics": {k: clean_number(v) for k, v in eval_metrics.items()},
        "lastUpdatedTime": iso_now(),
        "estimatedRemainingTimeSummary": time_summary(eta),
    }


def merge_latest(entries: Iterable[Mapping[str, Any]], custom_metrics: Mapping[str, str] | None = None) -> tuple[dict, dict]:
    """The latest value of every metric over a sequence of logged entries."""
    train: dict[str, Any] = {}
    evals: dict[str, Any] = {}
    for e in entries:
        t, ev = categorize(e, custom_metrics)
        train.update(t)
        evals.update(ev)
    return train, evals
