"""The detached process that owns one local job: ``python -m trainjob.backends.local.supervisor ID``.

It outlives the client that started it. In order: prepare the job's package environment, wait
for resources, launch the ranks, collect what they report into the store, restart them after a
failure (up to ``max_restarts``, resuming from the last complete checkpoint), honour stop
requests, and record the outcome. Every exit path records a terminal status and releases what it
took; if this process itself is killed, the next reader notices (see ``backend.reconcile``).

The supervisor is an adapter: it launches processes and reports what happened. What a failure
means (restart or not, the message, the result) is decided in ``core`` and written through
``core.state`` (the store is this backend's ``JobState``). The parts: ``monitor`` watches an
attempt (failures, hangs, stops), ``nodes`` ends processes, ``stop`` knows whether and why the
job stops, ``attempt`` names an attempt's root cause.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from trainjob import contract
from trainjob.backends.local import procs
from trainjob.backends.local.attempt import Attempt, clear_attempt_files, root_cause
from trainjob.backends.local.collector import Collector
from trainjob.backends.local.jobdir import JobDir
from trainjob.backends.local.launcher import plan_launch
from trainjob.backends.local.monitor import Monitor
from trainjob.backends.local.nodes import NodeControl
from trainjob.backends.local.stop import StopControl
from trainjob.backends.local.warm import client as warm_start
from trainjob.checkpoints import checkpoint_step, latest_complete, list_checkpoints
from trainjob.core import events
from trainjob.core import state as job_state
from trainjob.core.outcome import after_failure, result_record
from trainjob.core.rank_env import free_port
from trainjob.resources import local_capacity
from trainjob.errors import TrainJobError
from trainjob.store import Store
from trainjob.types import JobStatus


class Supervisor:
    """One job's supervisor (see the module docstring). ``run()`` returns the process's exit code."""

    def __init__(self, job_id: str, home: Path) -> None:
        self.job_id = job_id
        self.home = home
        self.store = Store(home / "trainjob.db")
        self.dir = JobDir.for_job(home, job_id)
        self.spec = self.dir.read_spec()
        self.collector = Collector(self.store, job_id, self.dir.run_dir)
        self.python = sys.executable
        self.extra_env: dict[str, str] = {}
        self.grant = None  # the scheduler's Grant, once resources are acquired
        self.world = self.spec.world_size
        self.attempt: Attempt | None = None  # the attempt whose processes run now
        self.stop = StopControl(self.dir.run_dir, self.spec, created_at=time.time())  # created_at: the job's, set in run()
        self.nodes = NodeControl(self.dir.run_dir, self.world, self.store, job_id)

    # ---- lifecycle ----------------------------------------------------------------------
    def run(self) -> int:
        procs.become_subreaper()
        signal.signal(signal.SIGTERM, self.stop.on_sigterm)
        job = self.store.get_job(self.job_id)
        if job is None or job.status.is_terminal:
            return 0  # deleted or stopped before we started
        self.stop.created_at = job.created_at
        self.store.update_job(self.job_id, supervisor_pid=os.getpid(), supervisor_start=procs.start_time(os.getpid()))
        status, message, error = JobStatus.FAILED, None, None
        release = None
        try:
            self._prepare_environment()
            self._run_initializers()
            release = self._acquire_resources()
            if self.stop.stopping():
                status, message, error = self.stop.outcome("before it started") if self.stop.deadline_exceeded else (JobStatus.STOPPED, "stopped before it started", None)
            else:
                status, message, error = self._run_attempts()
        except TrainJobError as e:  # an expected failure whose message is for the user (a package install failed...)
            error = {"type": type(e).__name__, "message": str(e), "traceback": "", "rank": None}
            status, message = JobStatus.FAILED, f"{type(e).__name__}: {e}"
            print(message, file=sys.stderr, flush=True)
        except BaseException as e:  # noqa: BLE001 - anything (SIGINT's KeyboardInterrupt too) still ends the job with a reason
            import traceback

            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
            what = "interrupted (SIGINT)" if isinstance(e, KeyboardInterrupt) else f"error: {type(e).__name__}: {e}"
            ended = self.nodes.end_all(self.attempt)
            error = {"type": type(e).__name__, "message": str(e) or what, "traceback": traceback.format_exc(), "rank": None}
            status = JobStatus.FAILED
            message = f"supervisor {what}; " + (f"{ended} process{'es' if ended != 1 else ''} of the job ended" if ended else "no process of the job was left")
            print(traceback.format_exc(), file=sys.stderr, flush=True)
        finally:
            if release is not None:
                release()
        return self._finish(status, message, error)

    def _prepare_environment(self) -> None:
        """Build (or reuse) the job's package environment. See ``envs``."""
        from trainjob.backends.local import envs

        prepared = envs.prepare_for_job(self.spec, self.store, self.job_id, self.dir)
        if prepared is not None:
            self.python, self.extra_env = prepared.python, prepared.env

    def _run_initializers(self) -> None:
        """The job's model/dataset initializer steps, before resources and ranks. See ``initializers``."""
        from trainjob.backends.local.initializers import run_initializers

        run_initializers(self.store, self.job_id, self.dir, self.spec, self.python, self.extra_env, self.stop.stopping)

    def _acquire_resources(self):
        """Wait in the local scheduler until the job's CPUs/GPUs/memory are free. Returns a release callable."""
        from trainjob.backends.local import scheduler

        grant = scheduler.acquire(self.store, self.job_id, self.spec, should_abort=self.stop.stopping, wake_dirs=[self.dir.run_dir])
        self.extra_env.update(grant.env)
        self.grant = grant
        return grant.release

    def _run_attempts(self) -> tuple[JobStatus, str | None, dict | None]:
        """Launch, and relaunch after a failure up to ``max_restarts`` times; the job's outcome.

        Every relaunch (and the first launch of a job created with ``resume=``) sets
        ``TRAINJOB_RESUME=1``, so each ``Trainer.train()`` continues from the newest complete
        checkpoint in its ``output_dir``.
        """
        max_restarts = self.spec.limits.max_restarts
        monitor = Monitor(self.store, self.job_id, self.dir, self.spec, self.collector, self.nodes, self.stop, self.python)
        resume = bool(self.spec.resume_from)
        first_error: dict | None = None
        cause: str | None = None
        attempt_no = 0
        while True:
            if self.stop.stopping():  # a stop that came while the previous attempt was being cleaned up
                return self.stop.outcome(f"before attempt {attempt_no}")
            attempt = self._launch(attempt_no, resume=resume or attempt_no > 0, restarted_after=cause)
            ok = monitor.watch(attempt)
            self.collector.collect(attempt.number)
            if attempt.hang is not None:
                # The supervisor ended hung ranks: the attempt's outcome is its verdict, not their exit codes.
                ok = attempt.hang_error is None
            outcome = self._stop_outcome(attempt, ok)
            if outcome is not None:
                return outcome
            if ok:
                return JobStatus.COMPLETE, None, None
            error = attempt.hang_error or self._root_cause(attempt)
            job_state.attempt_failed(self.store, self.job_id, attempt.number, error)
            then = after_failure(attempt_no, max_restarts, error, first_error)
            first_error, cause = dict(then.first_error), then.cause
            if not then.restart:
                return JobStatus.FAILED, then.message, first_error
            attempt_no = then.next_attempt
            ckpt = latest_complete(self._output_dir())
            job_state.record_event(self.store, self.job_id, events.restarting(attempt_no, max_restarts, cause, ckpt, checkpoint_step(ckpt) if ckpt else None))
            clear_attempt_files(self.dir)
            self.collector.forget_endpoint()  # the next rank 0 may serve /metrics on another port

    def _launch(self, number: int, resume: bool, restarted_after: str | None = None) -> Attempt:
        log_dir = self.dir.attempt_logs(number)
        log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        plans = plan_launch(
            self.spec,
            job_id=self.job_id,
            job_dir=self.dir.root,
            attempt=number,
            base_env=os.environ,
            python=self.python,
            master_port=free_port(),
            metrics_host=self.spec.tracking.metrics_host,
            extra_env=self.extra_env,
            resume=resume,
            cpus=local_capacity().cpus,
        )
        attempt = Attempt(number)
        self.attempt = attempt
        nproc = self.spec.procs_per_node
        # Warm start (backends/local/warm): the nodes forked from the environment's warm process, or None: cold.
        warm = warm_start.start_nodes(plans, spec=self.spec, home=self.home, python=self.python, run_dir=self.dir.run_dir, attempt=number)
        for i, plan in enumerate(plans):
            if warm.nodes is not None:
                proc = warm.nodes[i]
            else:
                with open(plan.log_file, "ab") as log:
                    proc = subprocess.Popen(plan.argv, env=plan.env, cwd=plan.cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            attempt.nodes.append(proc)
            attempt.ranks.append(tuple(range(plan.node_rank * nproc, (plan.node_rank + 1) * nproc)))
            # Recorded for readers: if this supervisor dies, reconcile() ends the launchers too.
            contract.write_json_atomic(
                self.dir.run_dir / contract.PIDS_DIR / f"node-{plan.node_rank}.json", {"pid": proc.pid, "start": procs.start_time(proc.pid)}
            )
        steps = [
            {"name": f"node-{p.node_rank}", "status": "Running", "pid": n.pid, "device": self.spec.device, "device_count": nproc}
            for p, n in zip(plans, attempt.nodes)
        ]
        message = f"attempt {number}: restarted after {restarted_after}" if restarted_after else None
        self.store.transition(self.job_id, JobStatus.RUNNING, attempt=number, steps=steps, message=message, queue_position=None)
        job_state.record_event(self.store, self.job_id, events.started(number, self.world, events.on_nodes(len(plans)), resume, pids=[n.pid for n in attempt.nodes]))
        if warm.reason:
            self.store.add_event(self.job_id, warm.reason, warm.message, warm.data)
        return attempt

    def _stop_outcome(self, attempt: Attempt, ok: bool) -> tuple[JobStatus, str, dict | None] | None:
        """The job's outcome if this attempt ended because of a stop (``StopControl.attempt_outcome``); None otherwise."""
        end = self.collector.last_event.get("TrainEnd")
        end = end if end and end.get("attempt", attempt.number) == attempt.number else None
        return self.stop.attempt_outcome(ok, (end or {}).get("data"), latest_complete(self._output_dir()))

    def _root_cause(self, attempt: Attempt) -> dict[str, Any]:
        """The attempt's failure (``attempt.root_cause``), with the nodes ended for exceeding their memory limit."""
        return root_cause(self.dir, attempt, self.world, self.grant.limit_errors() if self.grant else [], self._output_dir())

    # ---- outcome -----------------------------------------------------------------------
    def _output_dir(self) -> str | None:
        begin = self.collector.last_event.get("TrainBegin")
        if begin and begin["data"].get("output_dir"):
            return begin["data"]["output_dir"]
        job = self.store.get_job(self.job_id)
        return (job.extra or {}).get("output_dir") if job else None

    def _finish(self, status: JobStatus, message: str | None, error: dict | None) -> int:
        self.collector.collect(self._attempt_no())
        job_state.finish(self.store, self.job_id, status, message, error, self._result())
        return 0 if status == JobStatus.COMPLETE else 1

    def _attempt_no(self) -> int:
        job = self.store.get_job(self.job_id)
        return job.attempt if job else 0

    def _result(self) -> dict[str, Any]:
        output_dir = self._output_dir()
        ckpt = latest_complete(output_dir)
        return result_record(
            metrics=self.store.metrics(self.job_id),
            custom_metrics=self.spec.tracking.custom_metrics,
            train_end=(self.collector.last_event.get("TrainEnd") or {}).get("data"),
            checkpoint=str(ckpt) if ckpt else None,
            checkpoints=[str(p) for p in list_checkpoints(output_dir)],
            output_dir=output_dir or str(self.dir.workdir),
            log_dir=str(self.dir.logs_dir),
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.umask(0o077)
    job_id, home = argv[0], Path(argv[1])
    return Supervisor(job_id, home).run()


if __name__ == "__main__":
    sys.exit(main())