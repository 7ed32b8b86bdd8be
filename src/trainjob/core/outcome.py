"""A job's outcome: the reason recorded with it, the failure message, and the result record.

Pure functions of what a backend observed; the backend stores what they return.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from trainjob.types import JobStatus

_REASONS = {JobStatus.COMPLETE: "Completed", JobStatus.FAILED: "Failed", JobStatus.STOPPED: "Stopped"}


def outcome_reason(status: JobStatus, error: Mapping[str, Any] | None) -> str:
    """The event reason for a terminal status; a missed deadline is Kubeflow's ``DeadlineExceeded``."""
    if error and error.get("type") == "DeadlineExceeded":
        return "DeadlineExceeded"
    return _REASONS[status]


def describe_error(error: Mapping[str, Any] | None, attempt: int | None = None) -> str:
    """'attempt 0: rank 1: ValueError: boom'; 'node-1: NodeLost: ...' when no rank is known."""
    if not error:
        return "failed"
    if error.get("rank") is not None:
        where = f"rank {error['rank']}: "
    elif error.get("node") is not None:
        where = f"node-{error['node']}: "
    else:
        where = ""
    pre = f"attempt {attempt}: " if attempt is not None else ""
    return f"{pre}{where}{error.get('type')}: {error.get('message')}"


def failure_message(first_error: Mapping[str, Any] | None, max_restarts: int) -> str:
    """The message of a job that failed for good: its first failure, and the restarts it used."""
    msg = describe_error(first_error)
    if max_restarts:
        msg += f" (the first failure; {max_restarts} restart{'s' if max_restarts != 1 else ''} used, see the events for each attempt)"
    return msg


@dataclass(frozen=True)
class AfterFailure:
    """What follows a failed attempt (``after_failure``)."""

    restart: bool
    next_attempt: int | None  # the attempt to launch; None when the job fails for good
    first_error: Mapping[str, Any]  # the job's first failure, reported as its error
    cause: str  # the failure in one line, for the Restarting event and the next attempt's log
    message: str | None  # the job's failure message when it does not restart


def after_failure(attempt: int, max_restarts: int, error: Mapping[str, Any], first_error: Mapping[str, Any] | None) -> AfterFailure:
    """Attempt ``attempt`` (0 first) failed with ``error``: restart, which attempt next, or fail with which message.

    A job gets ``max_restarts`` relaunches after its first attempt; the first failure is the one
    it reports. (On Ray, Ray Train counts the restarts itself with the same ``max_restarts``.)
    """
    first = first_error or error
    if attempt >= max_restarts:
        return AfterFailure(False, None, first, describe_error(error), failure_message(first, max_restarts))
    return AfterFailure(True, attempt + 1, first, describe_error(error), None)


def deadline_passed(active_deadline_seconds: float | None, created_at: float, now: float) -> bool:
    """``active_deadline_seconds`` counted from the job's creation (Kubernetes counts from its start)."""
    return bool(active_deadline_seconds) and now - created_at >= float(active_deadline_seconds)


def stop_reason(deadline_exceeded: bool, active_deadline_seconds: float | None, how: str = "on request") -> str:
    """Why a job is being stopped: its deadline (Kubeflow's ``DeadlineExceeded``), else 'stopped <how>'."""
    if deadline_exceeded:
        return f"DeadlineExceeded: the job ran past active_deadline_seconds={active_deadline_seconds}"
    return f"stopped {how}"


def stopped_outcome(reason: str, where: str, deadline_exceeded: bool) -> tuple[JobStatus, str, dict[str, Any] | None]:
    """The outcome of a job ended by a stop: ``Stopped``, or ``Failed`` when the stop was its deadline.

    ``where``: what follows the reason ('at step 40; newest complete checkpoint: checkpoint-40').
    """
    message = reason + (where if not where or where[:1] in (" ", ";") else f" {where}")
    if deadline_exceeded:
        return JobStatus.FAILED, message, {"type": "DeadlineExceeded", "message": message, "rank": None, "traceback": ""}
    return JobStatus.STOPPED, message, None


def result_record(
    *,
    metrics: Iterable[Mapping[str, Any]],
    custom_metrics: Mapping[str, str] | None,
    train_end: Mapping[str, Any] | None,
    checkpoint: str | None,
    checkpoints: Iterable[str],
    output_dir: str | None,
    log_dir: str | None,
    best_checkpoint: str | None = None,
) -> dict[str, Any]:
    """The result a backend stores at the end of a job (read back by ``backends.records.build_result``).

    ``metrics``: every logged entry, in order (the latest value of each key wins);
    ``train_end``: the data of the last ``TrainEnd`` event; ``best_checkpoint``: used when the
    Trainer did not name one at its end.
    """
    from trainjob.progress import merge_latest

    end = train_end or {}
    train, evals = merge_latest(list(metrics), custom_metrics)
    return {
        "metrics": {**train, **evals},
        "checkpoint": checkpoint,
        "best_checkpoint": end.get("best_model_checkpoint") or best_checkpoint,
        "checkpoints": list(checkpoints),
        "output_dir": output_dir,
        "log_dir": log_dir,
        "global_step": end.get("global_step"),
    }
