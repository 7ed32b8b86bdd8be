"""The backend interface: a few operations every backend implements.

``TrainerClient`` is a facade over one backend; waiting, status filtering and progress bars are
built once in the client from ``get_job``, so backends stay small.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterator

from trainjob.core.spec import JobSpec
from trainjob.trainers import CustomTrainer
from trainjob.types import Event, JobStatus, LogChunk, Result, Runtime, TrainJob

TAIL_LINES = 400  # lines of a first read_job_logs in the line-based default
CHUNK_LINES = 5000  # most lines of a later one


@dataclass(frozen=True)
class JobExtras:
    """What a job carries beside its spec: Kubeflow's labels and annotations (stored and shown)."""

    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobQuery:
    """Which jobs a listing wants, in which order, which page (``TrainerClient.list_jobs``).

    ``name``: a glob pattern (``sweep-*``) or an exact name; ``labels``: every one must match;
    ``runtime``: a runtime's name. Order: by creation time (then name), oldest first unless
    ``newest_first``; ``offset`` jobs are skipped, then at most ``limit`` (None: all) returned.
    """

    status: set[JobStatus] | None = None
    labels: dict[str, str] | None = None
    name: str | None = None
    runtime: str | None = None
    newest_first: bool = False
    limit: int | None = None
    offset: int = 0

    def matches(self, job: TrainJob) -> bool:
        """Whether ``job`` passes the filters (status aside): what a backend checks in memory."""
        from fnmatch import fnmatchcase

        if self.runtime is not None and job.runtime is not None and job.runtime.name != self.runtime:
            return False
        if self.labels and not all(job.labels.get(k) == v for k, v in self.labels.items()):
            return False
        return self.name is None or fnmatchcase(job.name, self.name)


class Backend(ABC):
    """Where jobs run. Implementations must be safe to use from several client processes at once."""

    name: str = "base"

    @abstractmethod
    def train(self, trainer: CustomTrainer, spec: JobSpec, name: str | None = None, extras: JobExtras | None = None) -> str:
        """Validate against the target, start the job, and return its name without waiting for it.

        ``spec`` is the job's, built once by the client from ``trainer`` (which still carries the
        function itself, for the payload); the backend adds only its own settings to it.

        ``name`` (already DNS-1035-checked by the client) becomes the job's identifier; one in
        use is a ``ValidationError``. None: 12 random characters.
        """

    def list_runtimes(self) -> list[Runtime]:
        """The runtimes this backend offers; by default this machine's ``torch-distributed``."""
        from trainjob.runtimes import local_runtime

        return [local_runtime()]

    def runtime_packages(self, runtime: Runtime) -> list[str]:
        """``name==version`` of every package a job of ``runtime`` sees (the base environment's)."""
        from trainjob.runtimes import installed_packages

        return installed_packages()

    @abstractmethod
    def list_jobs(self, status: set[JobStatus] | None = None) -> list[TrainJob]: ...

    def query_jobs(self, query: JobQuery) -> list[TrainJob]:
        """The jobs ``query`` selects, in its order and page.

        This default filters and pages ``list_jobs`` in memory; a backend with an indexed store
        (the local one) overrides it to do the work there, so a page costs what it shows.
        """
        jobs = self.list_jobs(query.status)
        jobs = [j for j in jobs if query.matches(j)]
        if query.newest_first:
            jobs.reverse()
        return jobs[query.offset :] if query.limit is None else jobs[query.offset : query.offset + query.limit]

    def compact(self) -> tuple[int, int] | None:
        """Give the space of deleted jobs' records back (``(bytes before, bytes after)``), where the
        backend keeps records of its own; None where there is nothing to compact."""
        return None

    @abstractmethod
    def get_job(self, job_id: str) -> TrainJob:
        """The job's current state; raises ``JobNotFoundError``. Never reports a dead job as running."""

    @abstractmethod
    def get_job_logs(self, job_id: str, step: str = "node-0", follow: bool = False) -> Iterator[str]: ...

    def read_job_logs(self, job_id: str, step: str = "node-0", cursor: str | None = None) -> LogChunk:
        """The tail of a log step (``cursor`` None), or what follows ``cursor``; for pollers.

        This default counts lines over ``get_job_logs`` (it reads the whole log each time); a
        backend whose logs are files overrides it with byte-range reads.
        """
        from trainjob.errors import Problem, ValidationError

        if cursor is not None and not (isinstance(cursor, str) and cursor.isascii() and cursor.isdigit()):
            raise ValidationError([Problem("cursor", cursor, "the cursor a previous read returned: a number of lines")], "read_job_logs()")
        lines = list(self.get_job_logs(job_id, step=step))
        if cursor is None:
            start = max(0, len(lines) - TAIL_LINES)
            skipped = sum(len(line.encode()) + 1 for line in lines[:start])
        else:
            start, skipped = min(int(cursor), len(lines)), 0
        end = min(len(lines), start + CHUNK_LINES)
        return LogChunk(step=step, lines=lines[start:end], cursor=str(end), skipped_bytes=skipped, more=end < len(lines))

    @abstractmethod
    def get_job_events(self, job_id: str) -> list[Event]: ...

    @abstractmethod
    def get_job_progress(self, job_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def get_job_metrics(self, job_id: str) -> list[dict[str, Any]]: ...

    def read_job_metrics(self, job_id: str, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """The entries from position ``after`` on, at most ``limit`` (default: slices ``get_job_metrics``)."""
        entries = self.get_job_metrics(job_id)
        return entries[after:] if limit is None else entries[after : after + limit]

    def count_job_metrics(self, job_id: str) -> int:
        return len(self.get_job_metrics(job_id))

    def job_metrics_series(self, job_id: str, start: int = 0, stop: int | None = None, points: int = 2000) -> dict[str, Any]:
        """A chart's view of the history (``trainjob.series``); default: ``downsample`` over ``get_job_metrics``."""
        from trainjob.series import downsample

        return downsample(self.get_job_metrics(job_id), start, stop, points)

    @abstractmethod
    def get_job_result(self, job_id: str) -> Result: ...

    def wait_for_any_end(self, job_ids: list[str], timeout: float) -> None:
        """Return when one of ``job_ids`` may have ended, at the latest after ``timeout`` seconds.

        For pollers (the optimizer process) that want to act the moment a job ends, not on their
        next tick. This default just sleeps; a backend that can be woken does better.
        """
        import time

        time.sleep(timeout)

    @abstractmethod
    def stop_job(self, job_id: str) -> None:
        """Ask every rank to save a checkpoint at the same step and end; the job becomes Stopped."""

    @abstractmethod
    def delete_job(self, job_id: str) -> None:
        """Stop the job if it runs (ending every process), then remove its record and files."""
