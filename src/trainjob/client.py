"""``TrainerClient``: the one entry point, the same on every backend (Kubeflow Trainer SDK names)."""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from typing import Any, Callable, Iterable, Iterator

from trainjob.backends import Backend, create_backend
from trainjob.backends.base import JobExtras, JobQuery
from trainjob.config import LocalBackendConfig
from trainjob.errors import JobFailedError, JobStateError, JobTimeoutError, Problem, ValidationError
from trainjob import initializers
from trainjob.options import Name, TrainerCommand, apply_options, name_problem
from trainjob.trainers import BuiltinTrainer, CustomTrainer, CustomTrainerContainer
from trainjob.types import Event, JobStatus, LogChunk, Result, Runtime, TrainJob


class TrainerClient:
    """Submit, follow and control training jobs.

    ``backend_config``: ``None`` (the embedded local backend), ``LocalBackendConfig(...)`` or
    ``RayBackendConfig(address=...)`` (the Kubernetes backend is not built yet). Creating a
    client starts nothing: the local backend has no server, its state is a SQLite file.
    """

    def __init__(self, backend_config: Any = None) -> None:
        self.backend_config = backend_config if backend_config is not None else LocalBackendConfig()
        self.backend: Backend = create_backend(self.backend_config)

    # ---- runtimes ----------------------------------------------------------------------
    def list_runtimes(self) -> list[Runtime]:
        """The runtimes this backend offers: ``torch-distributed`` (this machine's, or the Ray cluster's)."""
        return self.backend.list_runtimes()

    def get_runtime(self, name: str) -> Runtime:
        """The runtime called ``name``; an unknown name is a ``ValidationError`` (a ``ValueError``) listing the known ones."""
        runtimes = self.backend.list_runtimes()
        for rt in runtimes:
            if rt.name == name:
                return rt
        known = ", ".join(repr(rt.name) for rt in runtimes)
        raise ValidationError([Problem("runtime", name, f"a runtime of the {self.backend.name} backend: {known}")], "get_runtime()")

    def get_runtime_packages(self, runtime: Runtime | str) -> list[str]:
        """The runtime's Python packages, ``name==version``, sorted (Kubeflow prints them; trainjob
        returns them: a notebook shows the list, ``trainjob runtimes --packages`` prints it)."""
        rt = self.get_runtime(runtime.name if isinstance(runtime, Runtime) else runtime)  # unknown: ValidationError
        return self.backend.runtime_packages(rt)

    # ---- submit ------------------------------------------------------------------------
    def train(
        self,
        runtime: str | Runtime | CustomTrainer | None = None,
        initializer: initializers.Initializer | None = None,
        trainer: CustomTrainer | CustomTrainerContainer | BuiltinTrainer | None = None,
        options: list[Any] | None = None,
        *,
        resume: str | None = None,
        name: str | None = None,
    ) -> str:
        """Start a job and return its name (its identifier) at once. Kubeflow's signature.

        ``runtime``: a ``Runtime`` or its name (default ``torch-distributed``); a trainer given
        here, as in ``train(TransformersTrainer(...))``, counts as ``trainer=``. ``options``:
        ``trainjob.options`` (``Name``, ``Labels``, ``Annotations``, ``ActiveDeadlineSeconds``,
        ``TrainerCommand``, ``TrainerArgs``). ``initializer``: a model and/or dataset put in
        ``workspace/model``/``workspace/dataset`` of the job's working directory before the ranks
        start (``trainjob.initializers``; on Ray, on every node that can host a rank). Beyond Kubeflow, keyword-only: ``resume``, the name
        of an ended (stopped or failed) job whose newest complete checkpoint the new job
        continues from; ``name``, the same as ``options=[Name(name)]``.
        """
        if trainer is None and isinstance(runtime, (CustomTrainer, CustomTrainerContainer, BuiltinTrainer)):
            runtime, trainer = None, runtime  # train(trainer): trainjob's original calling style
        backend = self.backend.name
        problems = []
        if runtime is not None:
            wanted = runtime.name if isinstance(runtime, Runtime) else runtime
            known = [rt.name for rt in self.backend.list_runtimes()]
            if wanted not in known:
                problems.append(Problem("runtime", wanted, f"a runtime of the {backend} backend: {', '.join(map(repr, known))} (list_runtimes())"))
        if isinstance(trainer, CustomTrainerContainer):
            if not any(isinstance(o, TrainerCommand) for o in options or ()):
                problems.append(Problem("trainer", "CustomTrainerContainer", f"a CustomTrainer or TransformersTrainer: the {backend} backend runs no container images; run the code with CustomTrainer(func=...), or give the container's command as options=[TrainerCommand([...])] (it then runs in the backend's own environment)"))
        elif isinstance(trainer, BuiltinTrainer):
            problems.append(Problem("trainer", "BuiltinTrainer", f"a CustomTrainer or TransformersTrainer: the {backend} backend has no built-in (TorchTune) trainers"))
        elif trainer is not None and not isinstance(trainer, CustomTrainer):
            problems.append(Problem("trainer", trainer, "a TransformersTrainer(...) or CustomTrainer(...)"))
        if name is not None:
            problem = name_problem(name, "name")
            if problem:
                problems.append(problem)
            if any(isinstance(o, Name) for o in options or ()):
                problems.append(Problem("name", name, "None when options has a Name (name= is the same as options=[Name(...)])"))
        if problems:
            raise ValidationError(problems, "train()")
        sub = apply_options(([Name(name)] if name is not None else []) + list(options or []), trainer, backend)
        if sub.trainer is None:
            raise ValidationError([Problem("trainer", None, "a TransformersTrainer(...) or CustomTrainer(...), or options=[TrainerCommand([...])]")], "train()")
        steps: list[dict[str, Any]] = []
        if initializer is not None:
            steps, token_env = initializers.plan(initializer, backend)
            if token_env:  # the tokens reach the job only through its env, masked wherever it is shown
                sub.trainer = dataclasses.replace(sub.trainer, env={**(sub.trainer.env or {}), **token_env})
        if sub.trainer.image is not None:
            warnings.warn(
                f"CustomTrainer(image={sub.trainer.image!r}) is recorded but not used: the {backend} backend runs the job in its own "
                "Python environment (packages_to_install adds packages to it)",
                UserWarning,
                stacklevel=2,
            )
        spec = sub.trainer.job_spec(resume_from=resume, initializers=steps, submit_dir=os.getcwd())  # the one JobSpec of the job
        extras = JobExtras(labels=sub.labels, annotations=sub.annotations)
        return self.backend.train(sub.trainer, spec, name=sub.name, extras=extras)

    # ---- read --------------------------------------------------------------------------
    def list_jobs(
        self,
        runtime: Runtime | str | None = None,
        *,
        status: str | JobStatus | Iterable[str | JobStatus] | None = None,
        labels: dict[str, str] | None = None,
        name: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[TrainJob]:
        """Jobs, oldest first: every one by default (Kubeflow's ``list_jobs()``), or a page of them.

        Filters: Kubeflow's ``runtime``, and trainjob's ``status`` (one status or several),
        ``labels`` (jobs carrying every one of these labels), ``name`` (a glob pattern such as
        ``"sweep-*"``, or an exact name). Paging: ``offset`` jobs skipped, then at most ``limit``;
        ``newest_first=True`` turns the order around (``limit=50, newest_first=True``: the newest 50).
        On the local backend the filters, order and page are done by the store's indexes.
        """
        query = self._job_query(runtime, status, labels, name, limit, offset, newest_first)
        return self.backend.query_jobs(query)

    def count_jobs(
        self,
        runtime: Runtime | str | None = None,
        *,
        status: str | JobStatus | Iterable[str | JobStatus] | None = None,
        labels: dict[str, str] | None = None,
        name: str | None = None,
    ) -> int:
        """How many jobs ``list_jobs`` with these filters returns (without a ``limit``)."""
        query = self._job_query(runtime, status, labels, name, None, 0, False)
        count = getattr(self.backend, "count_jobs", None)
        return count(query) if count is not None else len(self.backend.query_jobs(query))

    def _job_query(self, runtime: Any, status: Any, labels: Any, name: Any, limit: Any, offset: Any, newest_first: bool) -> JobQuery:
        problems = []
        if labels is not None and (not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())):
            problems.append(Problem("labels", labels, 'a dict of str to str, e.g. {"team": "nlp"}'))
        if name is not None and (not isinstance(name, str) or not name):
            problems.append(Problem("name", name, 'a job name, or a glob pattern such as "sweep-*"'))
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            problems.append(Problem("limit", limit, "None (every job) or an integer >= 0"))
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            problems.append(Problem("offset", offset, "an integer >= 0"))
        if problems:
            raise ValidationError(problems, "list_jobs()")
        wanted = runtime.name if isinstance(runtime, Runtime) else runtime
        return JobQuery(status=_status_set(status), labels=labels or None, name=name, runtime=wanted, newest_first=bool(newest_first), limit=limit, offset=offset)

    def get_job(self, name: str) -> TrainJob:
        return self.backend.get_job(name)

    def get_job_logs(self, name: str, step: str = "node-0", follow: bool = False) -> Iterator[str]:
        """Log lines of one node (``node-0``), one rank (``rank-1``) or the supervisor (``supervisor``).

        With ``follow=True`` the iterator streams new lines until the job ends.
        """
        return self.backend.get_job_logs(name, step=step, follow=follow)

    def read_job_logs(self, name: str, step: str = "node-0", cursor: str | None = None) -> LogChunk:
        """A piece of a log for a poller: the tail first (``cursor`` None), then what follows.

        Pass the returned ``cursor`` to the next call. Reads by byte range on the local backend,
        so polling a huge log costs the same as a small one. ``step`` as in ``get_job_logs``.
        """
        return self.backend.read_job_logs(name, step=step, cursor=cursor)

    def get_job_events(self, name: str) -> list[Event]:
        return self.backend.get_job_events(name)

    def get_job_progress(self, name: str) -> dict[str, Any] | None:
        """Live progress (DESIGN.md section 3); None before the first step or without tracking."""
        return self.backend.get_job_progress(name)

    def get_job_metrics(self, name: str, after: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """The entries the job's Trainers logged, in order, each with ``step``, ``time``, ``attempt``.

        Every entry by default. ``after``: skip the first ``after`` entries (a poller passes the
        number it already has, and gets only new ones); ``limit``: at most this many. For long
        histories see ``iter_job_metrics``.
        """
        problems = [Problem(k, v, "None or an integer >= 0") for k, v in (("after", after), ("limit", limit)) if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0)]
        if problems:
            raise ValidationError(problems, "get_job_metrics()")
        if after is None and limit is None:
            return self.backend.get_job_metrics(name)
        return self.backend.read_job_metrics(name, after or 0, limit)

    def iter_job_metrics(self, name: str, after: int = 0, batch: int = 10_000) -> Iterator[dict[str, Any]]:
        """Every logged entry from position ``after`` on, read ``batch`` at a time: a million-entry
        history streams in bounded memory. Entries logged while iterating are included."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValidationError([Problem("batch", batch, "an integer >= 1")], "iter_job_metrics()")
        while True:
            entries = self.get_job_metrics(name, after=after, limit=batch)
            yield from entries
            if len(entries) < batch:
                return
            after += len(entries)

    def count_job_metrics(self, name: str) -> int:
        """How many entries the job has logged (without reading them)."""
        return self.backend.count_job_metrics(name)

    def get_job_metrics_series(self, name: str, start: int = 0, stop: int | None = None, points: int = 2000) -> dict[str, Any]:
        """The history of entries ``start`` to ``stop`` (positions; None: to the end) as chart
        series of at most about ``points`` points each: every point when they fit, else each
        series' lowest and highest point per bucket, so extremes always show. Returns
        ``{"series": {key: [[step, value, attempt, position], ...]}, "restarts": [...], "start",
        "stop", "count", "downsampled"}``. What the dashboard draws; cheap on any history length
        on the local backend."""
        problems = [Problem(k, v, "an integer >= 0") for k, v in (("start", start), ("points", points)) if isinstance(v, bool) or not isinstance(v, int) or v < 0]
        if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int) or stop < 0):
            problems.append(Problem("stop", stop, "None or an integer >= 0"))
        if problems:
            raise ValidationError(problems, "get_job_metrics_series()")
        return self.backend.job_metrics_series(name, start, stop, max(2, points))

    def get_job_result(self, name: str) -> Result:
        return self.backend.get_job_result(name)

    # ---- wait --------------------------------------------------------------------------
    def wait_for_job_status(
        self,
        name: str,
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
            job = self.get_job(name)
            for cb in callbacks or ():
                cb(job)
            if job.status in wanted:
                return job
            if job.status == JobStatus.COMPLETE:  # it ended well, just not where the caller waited for
                raise JobStateError(f"job {name} ended Complete without reaching {', '.join(sorted(s.value for s in wanted))}")
            if job.status.is_terminal:
                raise JobFailedError(name, job.status.value, self._error_of(name))
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeoutError(name, sorted(s.value for s in wanted), job.status.value, timeout or 0)
            time.sleep(polling_interval if deadline is None else max(0.0, min(polling_interval, deadline - time.monotonic())))

    def wait_for_job_completion(
        self, name: str, timeout: float | None = None, show_progress: bool = False, polling_interval: float = 0.5
    ) -> TrainJob:
        """Wait until the job is Complete; raises ``JobFailedError`` with the job's error otherwise.

        ``show_progress=True`` draws a live bar (step, ETA, loss) in a terminal or a notebook.
        """
        if not show_progress:
            return self.wait_for_job_status(name, {JobStatus.COMPLETE}, timeout=timeout, polling_interval=polling_interval)
        from trainjob.progressbar import ProgressDisplay

        with ProgressDisplay(name) as bar:
            return self.wait_for_job_status(
                name,
                {JobStatus.COMPLETE},
                timeout=timeout,
                polling_interval=polling_interval,
                callbacks=[lambda job: bar.update(job, self.get_job_progress(name))],
            )

    def _error_of(self, name: str) -> dict[str, Any] | None:
        return self.get_job_result(name).error

    # ---- control -----------------------------------------------------------------------
    def stop_job(self, name: str) -> None:
        """Graceful stop: every rank saves a checkpoint at the same step, then the job is Stopped."""
        self.backend.stop_job(name)

    def delete_job(self, name: str) -> None:
        """End the job's processes if it runs, then remove its record and files."""
        self.backend.delete_job(name)

    def prune_jobs(
        self,
        older_than: float | None = None,
        keep_last: int | None = None,
        status: str | JobStatus | Iterable[str | JobStatus] | None = None,
        dry_run: bool = False,
    ) -> PruneResult:
        """Delete ended jobs (records, history, files), never one that has not ended.

        ``older_than``: only jobs that ended more than this many seconds ago; ``keep_last``: keep
        the newest N ended jobs (of ``status``, when given) whatever their age; ``status``: only
        jobs in these ended statuses (Complete, Failed, Stopped). At least one of ``older_than``
        and ``keep_last`` is needed. Then the store gives the freed pages back to the disk.
        ``dry_run``: only say what would go.
        """
        wanted = _status_set(status)
        problems = []
        if older_than is None and keep_last is None:
            problems.append(Problem("older_than", None, "a number of seconds, or keep_last: prune needs at least one of them (it never removes every job by default)"))
        if older_than is not None and (isinstance(older_than, bool) or not isinstance(older_than, (int, float)) or older_than < 0):
            problems.append(Problem("older_than", older_than, "a number of seconds >= 0"))
        if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0):
            problems.append(Problem("keep_last", keep_last, "an integer >= 0"))
        if wanted is not None and not all(s.is_terminal for s in wanted):
            problems.append(Problem("status", sorted(s.value for s in wanted), "ended statuses only: Complete, Failed, Stopped (a job that has not ended is never pruned)"))
        if problems:
            raise ValidationError(problems, "prune_jobs()")
        ended = wanted if wanted is not None else {s for s in JobStatus if s.is_terminal}
        jobs = self.list_jobs(status=ended, newest_first=True)[keep_last or 0 :]
        if older_than is not None:
            cutoff = time.time() - older_than
            jobs = [j for j in jobs if (j.finished_at or j.created_at).timestamp() < cutoff]
        freed = sum(_folder_bytes(j.job_dir) for j in jobs)
        if dry_run:
            return PruneResult([j.name for j in jobs], freed, None)
        for j in jobs:
            self.backend.delete_job(j.name)
        return PruneResult([j.name for j in jobs], freed, self.backend.compact())


@dataclasses.dataclass(frozen=True)
class PruneResult:
    """What ``prune_jobs`` removed (or would remove, in a dry run)."""

    names: list[str]  # the pruned jobs, newest first
    files_bytes: int  # disk space of their folders (files hard-linked into other jobs' folders not counted)
    store_bytes: tuple[int, int] | None  # the store's size before and after (None: dry run, or a backend without one)


def _folder_bytes(path: Any) -> int:
    """Disk space a folder frees when removed: files linked from elsewhere too (a resumed job's
    checkpoints) stay, so they do not count."""
    import os

    total = 0
    if path is None:
        return 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if st.st_nlink == 1:
                total += st.st_blocks * 512
    return total


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


def list_package_envs(home: Any = None) -> list[Any]:
    """The local backend's cached package environments (built for ``packages_to_install``) under
    ``home`` (default: ``TRAINJOB_HOME``), most recently used first: what ``trainjob envs ls``
    prints. One ``trainjob.backends.local.envcache.EnvInfo`` each. Reads only."""
    from trainjob import contract
    from trainjob.backends.local.envcache import list_envs

    return list_envs(home or contract.home())


def prune_package_envs(home: Any = None, older_than: float | None = None) -> list[Any]:
    """Remove the cached package environments no running job uses (only those unused for
    ``older_than`` seconds, if given); returns what was removed. Safe while jobs run."""
    from trainjob import contract
    from trainjob.backends.local.envcache import prune_envs

    return prune_envs(home or contract.home(), older_than=older_than)
