"""The records a user gets back: jobs, statuses, events, results.

Names follow the Kubeflow Trainer SDK (``TrainJob``, ``Step``, ``Event``, ``Runtime``) where they
exist, and each carries Kubeflow's fields (``TrainJob.creation_timestamp``, ``Step.pod_name``,
``Event.event_time``...) next to trainjob's own (``TrainJob.id``, ``created_at``, ``Step.pids``),
so code written for ``kubeflow.trainer`` reads them unchanged.
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


UNKNOWN = "Unknown"  # Kubeflow's value for a device or count nobody can tell


class TrainerType(str, enum.Enum):
    """Which trainer class a runtime runs (Kubeflow's ``TrainerType``)."""

    CUSTOM_TRAINER = "CustomTrainer"
    BUILTIN_TRAINER = "BuiltinTrainer"


class RuntimeKind(str, enum.Enum):
    """Kubeflow's runtime kinds; trainjob's runtimes are ``TrainingRuntime``s of one backend."""

    CLUSTER_TRAINING_RUNTIME = "ClusterTrainingRuntime"
    TRAINING_RUNTIME = "TrainingRuntime"


@dataclass(frozen=True)
class RuntimeTrainer:
    """What a runtime's trainer is (Kubeflow's fields first).

    ``image`` is where the code runs: ``"local"`` (this machine's Python environment) or
    ``"ray"`` (the Ray cluster's). ``device``/``device_count`` are what the backend offers (``gpu``
    and the GPUs found, else ``cpu`` and the CPUs), as strings like Kubeflow's.
    """

    trainer_type: TrainerType
    framework: str
    image: str
    num_nodes: int = 1
    device: str = UNKNOWN
    device_count: str = UNKNOWN


@dataclass(frozen=True)
class Runtime:
    """A training runtime: what ``train(runtime=...)`` runs on (Kubeflow's ``Runtime``).

    ``resources`` (trainjob's) is what the backend has in all: ``cpu``, ``memory`` (bytes),
    ``gpu``, and on Ray ``nodes``.
    """

    name: str
    trainer: RuntimeTrainer
    kind: RuntimeKind = RuntimeKind.TRAINING_RUNTIME
    pretrained_model: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One node of a job (Kubeflow calls them steps): ``node-0``, ``node-1``...

    ``pod_name`` (Kubeflow's) names the node's process group: ``<job>-node-<k>``.
    """

    name: str
    status: JobStatus
    device: str  # "cpu" or "gpu"
    device_count: int  # processes (ranks) on this node
    pids: tuple[int, ...] = ()
    pod_name: str = ""


@dataclass(frozen=True)
class TrainJob:
    """A snapshot of one job as the store knows it.

    A job's ``name`` is its identifier (``id`` is the same string, kept for existing code):
    ``options=[Name("x")]`` chooses it, else it is 12 random characters. Kubeflow's fields:
    ``name``, ``runtime``, ``steps``, ``num_nodes``, ``creation_timestamp`` (= ``created_at``),
    ``status``.
    """

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
    runtime: Runtime | None = None  # Kubeflow's: the runtime it runs on
    labels: dict[str, str] = field(default_factory=dict)  # options=[Labels({...})]
    annotations: dict[str, str] = field(default_factory=dict)  # options=[Annotations({...})]

    @property
    def creation_timestamp(self) -> datetime:
        """Kubeflow's name for ``created_at``."""
        return self.created_at

    @property
    def runtime_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or datetime.now(self.started_at.tzinfo)
        return (end - self.started_at).total_seconds()


@dataclass(frozen=True)
class Event:
    """Something that happened to a job: created, started, a rank's exit, a checkpoint save...

    Kubeflow's fields: ``involved_object_kind`` (``"TrainJob"``), ``involved_object_name`` (the
    job's name), ``message``, ``reason``, ``event_time`` (= ``time``).
    """

    time: datetime
    reason: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    involved_object_kind: str = "TrainJob"
    involved_object_name: str = ""

    @property
    def event_time(self) -> datetime:
        """Kubeflow's name for ``time``."""
        return self.time


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
