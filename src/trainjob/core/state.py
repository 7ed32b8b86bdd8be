"""``JobState``: where a backend writes a job's lifecycle, and the core functions that write it.

A backend keeps its jobs somewhere of its own (the local backend in SQLite, the Ray backend in
the Ray GCS); the lifecycle it records there is the same. This module names the writes that
lifecycle needs as a ``Protocol`` (no I/O here: the implementations are ``store.Store`` and
``backends.ray.state.RayState``), and the writes that several of them make together
(``record_event``, ``attempt_failed``, ``finish``), so that every backend records an attempt's
failure and a job's outcome the same way: the adapters observe, the core decides and words it.

The rules every implementation keeps:

- **A terminal status is final.** ``transition`` and ``record_outcome`` return False, and change
  nothing, once the job has ended; the first writer of an outcome wins (a supervisor that notices
  an exit after a stop, a client that records a lost driver).
- **An attempt has one first failure.** ``record_error`` keeps the first error given for an
  attempt and returns False for the later ones (the other ranks that failed because one did).
- **Events and metrics are appended**, in the order written; ``events`` and ``metrics`` read them
  back in that order.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

from trainjob.core import events
from trainjob.types import JobStatus


@runtime_checkable
class JobState(Protocol):
    """What a backend's job state offers the lifecycle (see the module docstring for the rules).

    Every method may be called from any process that reaches the state (a supervisor, a Ray
    driver or worker, a client recording a lost driver); each write is atomic on its own.
    """

    def transition(self, job_id: str, status: JobStatus, **fields: Any) -> bool:
        """Move the job to ``status`` with ``fields`` (message, attempt, error, result...), unless it ended.

        Returns False (and writes nothing) when the job had already ended.
        """
        ...

    def add_event(self, job_id: str, reason: str, message: str, data: dict[str, Any] | None = None, at: float | None = None) -> None:
        """Append an event (``at``: its time, default now)."""
        ...

    def set_progress(self, job_id: str, progress: dict[str, Any], at: float | None = None) -> None:
        """Replace the job's latest progress document (DESIGN.md section 3)."""
        ...

    def append_metrics(self, job_id: str, attempt: int, entries: list[dict[str, Any]]) -> None:
        """Append logged entries of attempt ``attempt`` (each with at least ``step`` and ``time``)."""
        ...

    def record_error(self, job_id: str, attempt: int, error: Mapping[str, Any]) -> bool:
        """Keep ``error`` as the first failure of ``attempt``; False if that attempt has one already."""
        ...

    def record_outcome(self, job_id: str, status: JobStatus, message: str | None, error: Mapping[str, Any] | None, result: Mapping[str, Any]) -> bool:
        """Record the job's terminal ``status`` with its message, error and result; False if it had ended."""
        ...

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """Every event, oldest first: dicts with ``time``, ``reason``, ``message`` and ``data``."""
        ...

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        """Every logged entry, in the order appended."""
        ...


def record_event(state: JobState, job_id: str, event: events.LifecycleEvent, at: float | None = None) -> None:
    """Append one of ``core.events``' lifecycle events."""
    state.add_event(job_id, event.reason, event.message, event.data, at)


def attempt_failed(state: JobState, job_id: str, attempt: int, error: Mapping[str, Any]) -> bool:
    """Record ``error`` as the first failure of ``attempt`` and, if it is the first, its ``AttemptFailed`` event.

    Returns whether this call recorded it (a later failure of the same attempt is not announced).
    """
    if not state.record_error(job_id, attempt, error):
        return False
    record_event(state, job_id, events.attempt_failed(error, attempt))
    return True


def finish(state: JobState, job_id: str, status: JobStatus, message: str | None, error: Mapping[str, Any] | None, result: Mapping[str, Any]) -> bool:
    """Record the job's outcome and its event (``Completed``, ``Failed``, ``Stopped``, ``DeadlineExceeded``).

    Only the first outcome counts: returns False, and adds no event, when the job had already
    ended (the outcome recorded first stays).
    """
    if not status.is_terminal:
        raise ValueError(f"an outcome is a terminal status (Complete, Failed, Stopped), not {status.value}")
    if not state.record_outcome(job_id, status, message, dict(error) if error else None, dict(result)):
        return False
    record_event(state, job_id, events.ended(status, message, error))
    return True
