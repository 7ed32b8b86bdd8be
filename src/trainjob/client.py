"""``TrainerClient``: the one entry point, the same on every backend (Kubeflow Trainer SDK names)."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator

from trainjob.backends import Backend, create_backend
from trainjob.config import LocalBackendConfig
from trainjob.errors import JobFailedError, JobStateError, JobTimeoutError, Problem, ValidationError
from trainjob.trainers import CustomTrainer
from trainjob.types import Event, JobStatus, LogChunk, Result, TrainJob


class TrainerClient:
    """Submit, follow and control training jobs.

    ``backend_config``: ``None`` (the embedded local backend), ``LocalBackendConfig(...)`` or
    ``RayBackendConfig(address=...)`` (the Kubernetes backend is not built yet). Creating a
    client starts nothing: the local backend has no server, its state is a SQLite file.
    """

    def __init__(self, backend_config: Any = None) -> None:
        self.backend_config = backend_config if backend_config is not None else LocalBackendConfig()
        self.backend: Backend = create_backend(self.backend_config)

    # ---- submit ------------------------------------------------------------------------
    def train(self, trainer: CustomTrainer, name: str | None = None, resume: str | None = None) -> str:
        """Start a job and return its 12-character id at once.

        ``resume``: the id of an ended (stopped or failed) job; the new job continues from that
        job's newest complete checkpoint.
        """
        problems = []
        if not isinstance(trainer, CustomTrainer):
            problems.append(Problem("trainer", trainer, "a TransformersTrainer(...) or CustomTrainer(...)"))
        if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > 128):
            problems.append(Problem("name", name, "a non-empty string of at most 128 characters"))
        if problems:
            raise ValidationError(problems, "train()")
        return self.backend.train(trainer, name=name, resume_from=resume)

    # ---- read --------------------------------------------------------------------------
    def list_jobs(self, status: str | JobStatus | Iterable[str | JobStatus] | None = None) -> list[TrainJob]:
        """Every job, oldest first; ``status`` filters (one status or several)."""
        return self.backend.list_jobs(_status_set(status))

    def get_job(self, job_id: str) -> TrainJob:
        return self.backend.get_job(job_id)

    def get_job_logs(self, job_id: str, step: str = "node-0", follow: bool = False) -> Iterator[str]:
        """Log lines of one node (``node-0``), one rank (``rank-1``) or the supervisor (``supervisor``).

        With ``follow=True`` the iterator streams new lines until the job ends.
        """
        return self.backend.get_job_logs(job_id, step=step, follow=follow)

    def read_job_logs(self, job_id: str, step: str = "node-0", cursor: str | None = None) -> LogChunk:
        """A piece of a log for a poller: the tail first (``cursor`` None), then what follows.

        Pass the returned ``cursor`` to the next call. Reads by byte range on the local backend,
        so polling a huge log costs the same as a small one. ``step`` as in ``get_job_logs``.
        """
        return self.backend.read_job_logs(job_id, step=step, cursor=cursor)

    def get_job_events(self, job_id: str) -> list[Event]:
        return self.backend.get_job_events(job_id)

    def get_job_progress(self, job_id: str) -> dict[str, Any] | None:
        """Live progress (DESIGN.md section 3); None before the first step or without tracking."""
        return self.backend.get_job_progress(job_id)

    def get_job_metrics(self, job_id: str) -> list[dict[str, Any]]:
        """Every entry the job's Trainers logged, in order, each with ``step``, ``time``, ``attempt``."""
        return self.backend.get_job_metrics(job_id)

    def get_job_result(self, job_id: str) -> Result:
        return self.backend.get_job_result(job_id)

    # ---- wait --------------------------------------------------------------------------
    def wait_for_job_status(
        self,
        job_id: str,
        status: set[str] | set[JobStatus] | str = frozenset({JobStatus.COMPLETE}),
        timeout: float | None = 600,
        polling_interval: float = 2,
        callbacks: list[Callable[[TrainJob], None]] | None = None,
    ) -> TrainJob:
        """Block until the job reaches one of ``status``; raises ``JobTimeoutError`` after ``timeout``.

        It never hangs on a job that can no longer reach the wanted status: one that ends Failed
        or Stopped raises ``JobFailedError`` (with the job's error), one that ends Complete
        without passing through it (a short job waited on for ``Running``) ``JobStateError``.
        """
        wanted = _status_set(status) or {JobStatus.COMPLETE}
        if polling_interval <= 0:
            raise ValidationError([Problem("polling_interval", polling_interval, "a positive number of seconds")], "wait_for_job_status()")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            for cb in callbacks or ():
                cb(job)
            if job.status in wanted:
                return job
            if job.status == JobStatus.COMPLETE:  # it ended well, just not where the caller waited for
                raise JobStateError(f"job {job_id} ended Complete without reaching {', '.join(sorted(s.value for s in wanted))}")
            if job.status.is_terminal:
                raise JobFailedError(job_id, job.status.value, self._error_of(job_id))
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeoutError(job_id, sorted(s.value for s in wanted), job.status.value, timeout or 0)
            time.sleep(polling_interval if deadline is None else max(0.0, min(polling_interval, deadline - time.monotonic())))

    def wait_for_job_completion(
        self, job_id: str, timeout: float | None = None, show_progress: bool = False, polling_interval: float = 0.5
    ) -> TrainJob:
        """Wait until the job is Complete; raises ``JobFailedError`` with the job's error otherwise.

        ``show_progress=True`` draws a live bar (step, ETA, loss) in a terminal or a notebook.
        """
        if not show_progress:
            return self.wait_for_job_status(job_id, {JobStatus.COMPLETE}, timeout=timeout, polling_interval=polling_interval)
        from trainjob.progressbar import ProgressDisplay

        with ProgressDisplay(job_id) as bar:
            return self.wait_for_job_status(
                job_id,
                {JobStatus.COMPLETE},
                timeout=timeout,
                polling_interval=polling_interval,
                callbacks=[lambda job: bar.update(job, self.get_job_progress(job_id))],
            )

    def _error_of(self, job_id: str) -> dict[str, Any] | None:
        return self.get_job_result(job_id).error

    # ---- control -----------------------------------------------------------------------
    def stop_job(self, job_id: str) -> None:
        """Graceful stop: every rank saves a checkpoint at the same step, then the job is Stopped."""
        self.backend.stop_job(job_id)

    def delete_job(self, job_id: str) -> None:
        """End the job's processes if it runs, then remove its record and files."""
        self.backend.delete_job(job_id)


def _status_set(status: Any) -> set[JobStatus] | None:
    if status is None:
        return None
    if isinstance(status, (str, JobStatus)):
        status = [status]
    try:
        return {JobStatus.parse(s) for s in status}
    except ValueError as e:
        raise ValidationError([Problem("status", status, str(e))], "status filter") from None


def check_local_home(config: LocalBackendConfig | None = None) -> list[Any]:
    """Health checks of the local backend's home folder: what ``trainjob doctor`` prints.

    Works where ``TrainerClient()`` cannot start (a corrupt or unreadable store makes it raise
    ``StoreError``) and changes nothing: the folder, its file system (SQLite WAL needs a local
    disk), free space, the store's integrity and lock, the full-disk reserve, leftover processes.
    Returns one ``trainjob.backends.local.doctor.Finding`` per check (``level`` ok/warn/fail,
    ``detail``, and ``fix``: what to do).
    """
    from pathlib import Path

    from trainjob import contract
    from trainjob.backends.local.doctor import run_checks

    config = config or LocalBackendConfig()
    return run_checks(Path(config.home).expanduser() if config.home else contract.home())
