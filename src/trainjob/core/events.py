"""The lifecycle events every backend records, built in one place so their wording is the same.

A backend writes ``reason``, ``message`` and ``data`` where it keeps events (the local store's
events table, the Ray GCS through a sink); ``as_record`` is the shape a rank-side sink takes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from trainjob.core.outcome import describe_error, outcome_reason
from trainjob.types import JobStatus


@dataclass(frozen=True)
class LifecycleEvent:
    reason: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_record(self, attempt: int | None = None, now: float | None = None) -> dict[str, Any]:
        record = {"time": time.time() if now is None else now, "reason": self.reason, "message": self.message, "data": self.data}
        if attempt is not None:
            record["attempt"] = attempt
        return record


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def started(attempt: int, world_size: int, placement: str, resume: bool, **data: Any) -> LifecycleEvent:
    """``Started``: 'attempt 1: 2 ranks on 2 nodes (resuming)'; ``placement`` says where the ranks run."""
    return LifecycleEvent(
        "Started",
        f"attempt {attempt}: {_plural(world_size, 'rank')} {placement}" + (" (resuming)" if resume else ""),
        {"attempt": attempt, "world_size": world_size, **data, "resume": resume},
    )


def on_nodes(nodes: int) -> str:
    """``started``'s placement for ranks launched on ``nodes`` nodes."""
    return f"on {_plural(nodes, 'node')}"


def restarting(attempt: int, max_restarts: int, cause: str, checkpoint: Path | None, step: int | None) -> LifecycleEvent:
    """``Restarting``: which restart this is, after what, and the checkpoint it resumes from (or none)."""
    return LifecycleEvent(
        "Restarting",
        f"restart {attempt}/{max_restarts} after {cause}" + (f"; resuming from {checkpoint.name}" if checkpoint else "; no complete checkpoint yet: from the start"),
        {"attempt": attempt, "checkpoint": str(checkpoint) if checkpoint else None, "step": step},
    )


def attempt_failed(error: Mapping[str, Any], attempt: int) -> LifecycleEvent:
    return LifecycleEvent("AttemptFailed", describe_error(error, attempt), {"attempt": attempt, "error": dict(error)})


def ended(status: JobStatus, message: str | None, error: Mapping[str, Any] | None) -> LifecycleEvent:
    """The event of a job's outcome: ``Completed``, ``Failed``, ``Stopped`` or ``DeadlineExceeded``."""
    return LifecycleEvent(outcome_reason(status, error), message or f"job {status.value.lower()}", {"error": dict(error)} if error else {})
