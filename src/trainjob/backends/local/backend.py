"""The embedded local backend: jobs are process trees on this machine, state is a SQLite file.

No server: ``train()`` writes the job folder and row, starts a detached supervisor and returns.
Any process reads the same store; a reader that finds a job whose supervisor died records it as
Failed with the reason (``reconcile``), so a status is never stuck. Jobs are read back as
``stored.StoredJob`` (decoded only as far as they are read).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from trainjob import contract
from trainjob.backends.base import Backend, JobExtras, JobQuery
from trainjob.backends.local import logs, procs
from trainjob.backends.local.jobdir import JobDir
from trainjob.backends.local.reconcile import elsewhere, end_orphans, reconcile
from trainjob.backends.local.stored import StoredJob
from trainjob.backends.records import build_result, utc
from trainjob.config import LocalBackendConfig, bind_host_problem, warm_config_problems
from trainjob.core.names import name_in_use, new_job_id
from trainjob.core.records import load_return_value
from trainjob.core.resume import carry_workdir
from trainjob.core.spec import JobSpec
from trainjob.errors import JobNotFoundError, JobStateError, Problem, ResourcesUnavailableError, ValidationError
from trainjob.payload import dumps_payload
from trainjob.resources import format_bytes, local_capacity
from trainjob.store import JobRow, Store
from trainjob.trainers import CustomTrainer
from trainjob.types import Event, JobStatus, LogChunk, Result, TrainJob

class LocalBackend(Backend):
    name = "local"

    def __init__(self, config: LocalBackendConfig | None = None) -> None:
        self.config = config or LocalBackendConfig()
        problem = bind_host_problem("metrics_host", self.config.metrics_host)
        if problem:  # every job's rank 0 would fail to serve /metrics there
            raise ValidationError([problem], "LocalBackendConfig")
        warm_problems = warm_config_problems(self.config)
        if warm_problems:
            raise ValidationError(warm_problems, "LocalBackendConfig")
        self.home = Path(self.config.home).expanduser() if self.config.home else contract.home()
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.home, 0o700)
        self.store = Store(self.home / "trainjob.db")
        self._local_runtime = None

    # ---- submit ------------------------------------------------------------------------
    def train(self, trainer: CustomTrainer, spec: JobSpec, name: str | None = None, extras: JobExtras | None = None) -> str:
        extras = extras or JobExtras()
        resume_from = spec.resume_from
        check_capacity(trainer)
        if name is not None and self.store.get_job(name) is not None:
            raise ValidationError([name_in_use(name)], "train()")
        source = self._resume_source(resume_from) if resume_from else None
        payload = dumps_payload(trainer.func, trainer.func_args) if trainer.func is not None else None
        job_id = name or new_job_id()
        spec = spec.replace(
            name=job_id,
            tracking=dataclasses.replace(spec.tracking, metrics_host=self.config.metrics_host),
            warm=dataclasses.replace(spec.warm, backend_enabled=self.config.warm_start, idle_timeout=self.config.warm_idle_timeout),
        )
        shown, hidden = spec.split()  # the real values live only in the job folder's secrets.json
        jobdir = JobDir.for_job(self.home, job_id)
        row = JobRow(
            id=job_id,
            name=job_id,
            backend=self.name,
            status=JobStatus.CREATED,
            created_at=time.time(),
            num_nodes=spec.num_nodes,
            procs_per_node=spec.procs_per_node,
            supervisor_host=procs.this_host(),  # the supervisor starts here: readers on other hosts leave it alone
            spec=shown.to_record(),  # versioned; decoded into a JobSpec when read (_job_spec)
            labels=dict(extras.labels),
            annotations=dict(extras.annotations),
        )
        try:
            # The row first: its primary key claims the name, so two submitters of one name
            # cannot share (and then remove) one job folder.
            self.store.insert_job(row)
        except sqlite3.IntegrityError:
            raise ValidationError([name_in_use(job_id)], "train()") from None
        try:
            jobdir.create(shown, hidden, payload)
            if source is not None:
                carry_workdir(source.workdir, jobdir.workdir)
            self.store.add_event(job_id, "Created", f"job created ({spec.trainer}, {spec.entrypoint.kind})" + (f", resuming {resume_from}" if resume_from else ""))
            self._start_supervisor(job_id, jobdir)
        except BaseException:
            self.store.delete_job(job_id)
            jobdir.remove()
            raise
        return job_id

    def _start_supervisor(self, job_id: str, jobdir: JobDir) -> None:
        env = dict(os.environ)
        env[contract.HOME] = str(self.home)
        argv = [sys.executable, "-m", "trainjob.backends.local.supervisor", job_id, str(self.home)]
        pid, start = procs.start_detached(argv, log=jobdir.supervisor_log, env=env, cwd=jobdir.root)
        # Recorded here, not only by the supervisor, so there is no window without an owner.
        self.store.update_job(job_id, supervisor_pid=pid, supervisor_start=start, supervisor_host=procs.this_host())

    def _resume_source(self, job_id: str) -> JobDir:
        """The folder of the ended job that ``resume=job_id`` continues from (validated here, in the caller)."""
        if not isinstance(job_id, str) or not job_id:
            raise ValidationError([Problem("resume", job_id, "the name of an ended job (the string train() returned)")], "train()")
        row = self._row(job_id)  # JobNotFoundError names the id
        if row.backend != self.name:
            raise JobStateError(f"cannot resume job {job_id}: it ran on the {row.backend!r} backend, not on this local one")
        if not row.status.is_terminal:
            raise JobStateError(
                f"cannot resume job {job_id}: it is {row.status.value}; stop it first (stop_job) and wait until it is Stopped"
            )
        source = JobDir.for_job(self.home, job_id)
        if not source.workdir.is_dir():
            raise JobStateError(f"cannot resume job {job_id}: its working folder {source.workdir} is gone")
        return source

    # ---- read --------------------------------------------------------------------------
    def _row(self, job_id: str) -> JobRow:
        row = self.store.get_job(job_id) if isinstance(job_id, str) else None
        if row is None:
            raise JobNotFoundError(str(job_id))
        return self.reconcile(row)

    def reconcile(self, row: JobRow) -> JobRow:
        """A non-terminal job whose supervisor is gone is recorded Failed (see ``reconcile.reconcile``)."""
        if row.backend != self.name:
            return row
        return reconcile(self.store, self.home, row)

    def get_job(self, job_id: str) -> TrainJob:
        return self._to_job(self._row(job_id))

    def list_jobs(self, status: set[JobStatus] | None = None) -> list[TrainJob]:
        return self.query_jobs(JobQuery(status=status))

    def query_jobs(self, query: JobQuery) -> list[TrainJob]:
        """One page of jobs, filtered, ordered and paged in SQL; specs are parsed only when read.

        The jobs that have not ended are reconciled first (a few: what runs or waits), so a job
        whose supervisor died is filtered by its recorded Failed status, never listed Running.
        """
        if query.runtime is not None and query.runtime != self._runtime().name:
            return []
        for row in self.store.list_jobs([s for s in JobStatus if not s.is_terminal]):
            self.reconcile(row)
        with _no_gc_pauses():
            rows = self.store.list_jobs(
                query.status, labels=query.labels, name=query.name, newest_first=query.newest_first, limit=query.limit, offset=query.offset, brief=True
            )
            return [self._to_job(r) for r in rows]

    def count_jobs(self, query: JobQuery) -> int:
        """How many jobs ``query`` selects, paging aside."""
        if query.runtime is not None and query.runtime != self._runtime().name:
            return 0
        return self.store.count_jobs(query.status, labels=query.labels, name=query.name)

    def get_job_events(self, job_id: str) -> list[Event]:
        self._row(job_id)
        return [Event(utc(e["time"]), e["reason"], e["message"], e["data"], involved_object_name=job_id) for e in self.store.events(job_id)]

    def get_job_progress(self, job_id: str) -> dict[str, Any] | None:
        ended = self.store.ended_progress(job_id) if isinstance(job_id, str) else None
        if ended is not None:  # an ended job needs no reconciling: read its progress alone
            return ended[0]
        return self._row(job_id).progress

    def get_job_metrics(self, job_id: str) -> list[dict[str, Any]]:
        self._row(job_id)
        return self.store.metrics(job_id)

    def read_job_metrics(self, job_id: str, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        self._exists(job_id)
        return self.store.metrics(job_id, after, limit)

    def count_job_metrics(self, job_id: str) -> int:
        self._exists(job_id)
        return self.store.metrics_count(job_id)

    def job_metrics_series(self, job_id: str, start: int = 0, stop: int | None = None, points: int = 2000) -> dict[str, Any]:
        self._exists(job_id)
        return self.store.metrics_series(job_id, start, stop, points)

    def compact(self) -> tuple[int, int]:
        return self.store.compact()

    def _exists(self, job_id: str) -> None:
        """Raise ``JobNotFoundError`` for an unknown job (a history read needs no reconciling)."""
        if not isinstance(job_id, str) or not self.store.has_job(job_id):
            raise JobNotFoundError(str(job_id))

    def get_job_result(self, job_id: str) -> Result:
        row = self._row(job_id)
        jobdir = JobDir.for_job(self.home, job_id)
        value = load_return_value(_read_bytes(jobdir.run_dir / contract.RESULT_FILE))
        return build_result(job_id, row.status, row.result, error=row.error, return_value=value, output_dir=jobdir.workdir, log_dir=jobdir.logs_dir)

    def get_job_logs(self, job_id: str, step: str = "node-0", follow: bool = False) -> Iterator[str]:
        row = self._row(job_id)
        jobdir = JobDir.for_job(self.home, job_id)
        files = logs.step_files(step, row.num_nodes, row.procs_per_node, jobdir)
        return logs.stream_lines(files, lambda: self._row(job_id).status.is_terminal, follow)

    def read_job_logs(self, job_id: str, step: str = "node-0", cursor: str | None = None) -> LogChunk:
        """The tail of a log step, or what follows ``cursor``, by byte range (see ``logs.read_chunk``)."""
        row = self._row(job_id)
        files = logs.step_files(step, row.num_nodes, row.procs_per_node, JobDir.for_job(self.home, job_id))
        return logs.read_chunk(step, files(), cursor, done=row.status.is_terminal)

    def wait_for_any_end(self, job_ids: list[str], timeout: float) -> None:
        """Wake when one of the jobs' supervisors exits (it exits right after recording the outcome)."""
        rows = [self.store.get_job(j) for j in job_ids]
        procs.wait_any_exit([(r.supervisor_pid, r.supervisor_start) for r in rows if r is not None and not r.status.is_terminal], timeout)

    # ---- control -----------------------------------------------------------------------
    def stop_job(self, job_id: str) -> None:
        """Ask the job to stop; returns at once (wait for ``Stopped`` with ``wait_for_job_status``).

        A no-op on an ended job. The request is the ``stop`` file in the run folder: a supervisor
        still waiting for resources gives up, a running one carries the stop out (see the
        supervisor's ``_monitor``). Idempotent.
        """
        row = self._row(job_id)
        if row.status.is_terminal:
            return
        jobdir = JobDir.for_job(self.home, job_id)
        stop_file = jobdir.run_dir / contract.STOP_FILE
        if stop_file.exists():
            return
        stop_file.touch()
        self.store.add_event(job_id, "StopRequested", "stop requested by the user")

    def delete_job(self, job_id: str) -> None:
        """End the job's supervisor and every process of the job, then remove its files and rows."""
        row = self.store.get_job(job_id)
        if row is None:
            raise JobNotFoundError(job_id)
        jobdir = JobDir.for_job(self.home, job_id)
        if not row.status.is_terminal and elsewhere(row):
            raise JobStateError(
                f"cannot delete job {job_id}: it is {row.status.value} and its supervisor runs on host {row.supervisor_host!r}, "
                f"not on this one ({procs.this_host()!r}); stop it (stop_job works from any host) or delete it there"
            )
        if not elsewhere(row):
            # Whatever the recorded status: an ended job's supervisor may still be finishing, and a
            # process recorded for it may have outlived it; its files are about to go.
            sup = procs.process(row.supervisor_pid, row.supervisor_start)
            if sup is not None:
                # SIGKILL, not SIGTERM: SIGTERM means "stop gracefully" to a supervisor.
                procs.kill_tree([sup], grace=2.0, sig=signal.SIGKILL)
            end_orphans(jobdir)
        jobdir.remove()
        self.store.delete_job(job_id)
        from trainjob.backends.local import scheduler

        scheduler.forget(self.store, job_id)

    # ---- conversion --------------------------------------------------------------------
    def _to_job(self, row: JobRow) -> TrainJob:
        """The record of a row: the fields a listing filters and sorts by at once, the rest
        (times, steps, spec, labels...) computed from the row when first read (``StoredJob``)."""
        job = object.__new__(StoredJob)  # every field set below or computed later: no per-field frozen __setattr__
        job.__dict__.update(
            id=row.id, name=row.name, status=row.status, backend=row.backend, num_nodes=row.num_nodes, procs_per_node=row.procs_per_node,
            attempt=row.attempt, message=row.message, queue_position=row.queue_position, runtime=self._runtime(), _row=row, _home=self.home,
        )  # fmt: skip
        return job

    def _runtime(self):
        """This machine's runtime, detected once per backend (every job runs on it)."""
        if self._local_runtime is None:
            self._local_runtime = self.list_runtimes()[0]
        return self._local_runtime


@contextlib.contextmanager
def _no_gc_pauses() -> Iterator[None]:
    """Build a listing without the cyclic garbage collector's passes: 10,000 jobs are ~100,000 new
    objects, none of them garbage, and the collector's scans of them took a third of the time."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def check_capacity(trainer: CustomTrainer) -> None:
    """All of a local job's nodes share this machine: their summed request must fit in it."""
    cap = local_capacity()
    res = trainer.resources
    n = trainer.num_nodes
    problems = []
    if res.cpu is not None and res.cpu * n > cap.cpus:
        problems.append(Problem("resources_per_node['cpu']", res.cpu, f"at most {cap.cpus / n:g} per node: this machine has {cap.cpus} CPUs for {n} node(s)"))
    if res.memory is not None and res.memory * n > cap.memory:
        problems.append(
            Problem("resources_per_node['memory']", format_bytes(res.memory), f"at most {format_bytes(cap.memory // n)} per node: this machine has {format_bytes(cap.memory)} for {n} node(s)")
        )
    if res.gpu * n > len(cap.gpus):
        problems.append(Problem("resources_per_node['gpu']", res.gpu, f"at most {len(cap.gpus) // n} per node: this machine has {len(cap.gpus)} GPU(s) for {n} node(s)"))
    if problems:
        raise ResourcesUnavailableError(problems, "resources")


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
