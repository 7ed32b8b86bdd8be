"""The records a user gets back: jobs, statuses, events, results.

Names follow the Kubeflow Trainer SDK (``TrainJob``, ``Step``, ``Event``) where they exist.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


class JobStatus(str, enum.Enum):
    """A job's lifecycle state. Compares equal to its string value (``JobStatus.RUNNING == "Running"``)."""

    CREATED = "Created"
    QUEUED = "Queued"
    RUNNING = "Running"
    COMPLETE = "Complete"
    FAILED = "Failed"
    STOPPED = "Stopped"

    @property
    def is_terminal(self) -> bool:
        """True once the job can no longer change state on its own."""
        return self in _TERMINAL

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: "str | JobStatus") -> "JobStatus":
        """Accepts the enum, its value (``"Running"``) or its name in any case (``"running"``)."""
        if isinstance(value, JobStatus):
            return value
        for s in cls:
            if value in (s.value, s.name) or str(value).lower() == s.value.lower():
                return s
        allowed = ", ".join(s.value for s in cls)
        raise ValueError(f"unknown job status {value!r}; expected one of: {allowed}")


_TERMINAL = frozenset({JobStatus.COMPLETE, JobStatus.FAILED, JobStatus.STOPPED})


@dataclass(frozen=True)
class Step:
    """One node of a job (Kubeflow calls them steps): ``node-0``, ``node-1``..."""

    name: str
    status: JobStatus
    device: str  # "cpu" or "gpu"
    device_count: int  # processes (ranks) on this node
    pids: tuple[int, ...] = ()


@dataclass(frozen=True)
class TrainJob:
    """A snapshot of one job as the store knows it."""

    id: str
    name: str
    status: JobStatus
    backend: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    num_nodes: int
    procs_per_node: int
    attempt: int
    steps: list[Step] = field(default_factory=list)
    message: str | None = None  # why it is in this status (queued behind..., failed because...)
    queue_position: int | None = None
    spec: dict[str, Any] = field(default_factory=dict)  # the trainer spec, secrets masked
    job_dir: Path | None = None

    @property
    def runtime_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or datetime.now(self.started_at.tzinfo)
        return (end - self.started_at).total_seconds()


@dataclass(frozen=True)
class Event:
    """Something that happened to a job: created, started, a rank's exit, a checkpoint save..."""

    time: datetime
    reason: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    """What a finished job produced.

    ``checkpoint`` is the newest complete checkpoint, ``best_checkpoint`` the Trainer's
    ``best_model_checkpoint`` when ``load_best_model_at_end``/``metric_for_best_model`` are used.
    ``return_value`` is what the training function returned on rank 0 (``None`` for scripts).
    """

    job_id: str
    status: JobStatus
    metrics: dict[str, Any]
    checkpoint: Path | None
    best_checkpoint: Path | None
    checkpoints: list[Path]
    output_dir: Path | None
    log_dir: Path | None
    return_value: Any = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class LogChunk:
    """A piece of a job's log, read without reading the whole log (``TrainerClient.read_job_logs``).

    ``lines``: complete lines (a running job's unfinished last line waits for the next read).
    ``cursor``: pass it to the next read to get what follows (opaque; backend-specific).
    ``skipped_bytes``: how much earlier output a first read (no cursor) left out to return the tail.
    ``more``: more is already there (the read stopped at its size limit): read again at once.
    """

    step: str
    lines: list[str]
    cursor: str
    skipped_bytes: int = 0
    more: bool = False
