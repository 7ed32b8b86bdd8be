"""The backend interface: a few operations every backend implements.

``TrainerClient`` is a facade over one backend; waiting, status filtering and progress bars are
built once in the client from ``get_job``, so backends stay small.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Iterator

from trainjob.trainers import CustomTrainer
from trainjob.types import Event, JobStatus, Result, TrainJob


class Backend(ABC):
    """Where jobs run. Implementations must be safe to use from several client processes at once."""

    name: str = "base"

    @abstractmethod
    def train(self, trainer: CustomTrainer, name: str | None = None, resume_from: str | None = None) -> str:
        """Validate against the target, start the job, and return its id without waiting for it."""

    @abstractmethod
    def list_jobs(self, status: set[JobStatus] | None = None) -> list[TrainJob]: ...

    @abstractmethod
    def get_job(self, job_id: str) -> TrainJob:
        """The job's current state; raises ``JobNotFoundError``. Never reports a dead job as running."""

    @abstractmethod
    def get_job_logs(self, job_id: str, step: str = "node-0", follow: bool = False) -> Iterator[str]: ...

    @abstractmethod
    def get_job_events(self, job_id: str) -> list[Event]: ...

    @abstractmethod
    def get_job_progress(self, job_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def get_job_metrics(self, job_id: str) -> list[dict[str, Any]]: ...

    @abstractmethod
    def get_job_result(self, job_id: str) -> Result: ...

    @abstractmethod
    def stop_job(self, job_id: str) -> None:
        """Ask every rank to save a checkpoint at the same step and end; the job becomes Stopped."""

    @abstractmethod
    def delete_job(self, job_id: str) -> None:
        """Stop the job if it runs (ending every process), then remove its record and files."""
