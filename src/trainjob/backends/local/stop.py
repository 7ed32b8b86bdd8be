"""Stop requests and the active deadline of one local job, as its supervisor sees them.

A job is asked to stop three ways: ``stop_job`` (the client touches ``run/stop``), SIGTERM to the
supervisor (preemption, ``kill``), or ``active_deadline_seconds`` running out (then the stop that
follows is a failure, Kubeflow's ``DeadlineExceeded``). ``StopControl`` tells the supervisor
whether to stop and words the outcome; how the ranks are stopped is the monitor's (``monitor``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

from trainjob import contract
from trainjob.core.outcome import deadline_passed, stop_reason, stopped_outcome
from trainjob.core.spec import JobSpec
from trainjob.types import JobStatus


class StopControl:
    """Whether the job is to stop, and why. Lives in the supervisor; ``on_sigterm`` is its SIGTERM handler."""

    def __init__(self, run_dir: Path, spec: JobSpec, created_at: float) -> None:
        self.run_dir = run_dir
        self.deadline_seconds = spec.limits.active_deadline_seconds
        self.created_at = created_at  # the job's creation time: the deadline counts from it
        self.requested = False  # set by SIGTERM to the supervisor
        self.deadline_exceeded = False  # active_deadline_seconds passed: the stop that follows is a failure

    def on_sigterm(self, signum: int, frame: Any) -> None:
        """Preemption or ``kill``: the same graceful stop as ``stop_job()``.

        No store writes here: the main thread may be inside one; the monitor loop records the stop
        on its next pass.
        """
        self.requested = True
        try:
            (self.run_dir / contract.STOP_FILE).touch()
        except OSError:
            pass

    def stopping(self) -> bool:
        """True once a stop was asked for (any of the three ways)."""
        return self.requested or (self.run_dir / contract.STOP_FILE).exists() or self.deadline_passed()

    def deadline_passed(self) -> bool:
        if not self.deadline_exceeded:
            self.deadline_exceeded = deadline_passed(self.deadline_seconds, self.created_at, time.time())
        return self.deadline_exceeded

    def reason(self) -> str:
        """'stopped on request', 'stopped by SIGTERM to the supervisor', or the deadline's reason."""
        how = "by SIGTERM to the supervisor" if self.requested else "on request"
        return stop_reason(self.deadline_exceeded, self.deadline_seconds, how)

    def outcome(self, where: str) -> tuple[JobStatus, str, dict | None]:
        """``Stopped`` (``Failed`` for the deadline) with the reason and ``where`` it stopped."""
        return stopped_outcome(self.reason(), where, self.deadline_exceeded)

    def attempt_outcome(self, ok: bool, train_end: Mapping[str, Any] | None, checkpoint: Path | None) -> tuple[JobStatus, str, dict | None] | None:
        """The job's outcome if this attempt ended because of a stop; None otherwise.

        ``train_end``: the data of the attempt's ``TrainEnd`` event; ``checkpoint``: the newest
        complete one. A stop that came too late to matter (training already finished, every rank
        exited 0) is a completion. Ranks that stopped training because one of them got SIGTERM
        (preemption of a rank, not a stop request) also count as stopped: they saved a checkpoint
        to resume from.
        """
        data = train_end or {}
        where = (f" at step {data['global_step']}" if data.get("global_step") is not None else "") + (
            f"; newest complete checkpoint: {checkpoint.name}" if checkpoint else "; no checkpoint was saved"
        )
        if self.stopping():
            if ok and data.get("completed"):
                return None
            return self.outcome(where)
        if ok and data.get("stopped") and not data.get("completed"):
            why = data.get("stop_reason") or "a rank received SIGTERM (preemption?)"  # or it stopped itself (pruned)
            return JobStatus.STOPPED, f"{why} and training stopped{where}", None
        return None
