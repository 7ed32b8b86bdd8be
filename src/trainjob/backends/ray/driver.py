"""The Ray job's entrypoint: ``python -m trainjob.backends.ray.driver JOB_ID``.

Runs on the cluster (where Ray's job manager starts it), outlives the submitting client, and
plays the local supervisor's part: it makes the job folder, runs the initializer steps on every
node that can host a rank (``initializers``), runs Ray Train's ``TorchTrainer``
with one worker per rank (restarts are Ray Train's ``FailureConfig``; resuming from the newest
complete checkpoint is trainjob's, in each worker), honours stop requests, and records the outcome
(status, message, first error, result) in the GCS exactly once. If this process dies, Ray marks
the Ray job failed and clients record that (``RayBackend``), so a status is never stuck.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from trainjob import contract
from trainjob.backends.ray import plan
from trainjob.backends.ray.integrity import verified_payload
from trainjob.backends.ray.mirror import StateMirror
from trainjob.backends.ray.outcome import checkpoints_of, compute_result
from trainjob.backends.ray.state import KV, EventWriter, Keys, RayState, last_event, read_events
from trainjob.backends.ray.worker import job_secret_values, root_cause
from trainjob.core import state as job_state
from trainjob.core.outcome import deadline_passed, failure_message, stop_reason, stopped_outcome
from trainjob.core.records import error_record
from trainjob.core.resume import carry_workdir
from trainjob.core.signing import SignatureError
from trainjob.core.spec import JobSpec
from trainjob.types import JobStatus

MONITOR_INTERVAL = 0.5


class Driver:
    def __init__(self, job_id: str, kv: KV) -> None:
        self.job_id = job_id
        self.kv = kv
        self.keys = Keys(job_id)
        record = kv.get_json(self.keys.job)
        if record is None:
            raise RuntimeError(f"job {job_id} has no record in the Ray GCS (namespace trainjob); was it deleted?")
        self.record = record
        self.spec = JobSpec.from_dict(record["spec"])  # masked: the ranks put the secrets back (worker.train_loop)
        self.tracking = self.spec.tracking.enabled
        self.event = EventWriter(kv, self.keys, "drv")
        self.state = RayState(kv, events=self.event)  # the job's lifecycle (core.state.JobState), events through self.event
        home = Path(record.get("home") or contract.home()).expanduser()
        self.job_dir = (home / "jobs" / job_id).resolve()
        self._finished = threading.Lock()
        self.deadline_exceeded = False  # active_deadline_seconds passed: the stop that follows is a failure

    # ---- lifecycle ----------------------------------------------------------------------
    def run(self) -> int:
        if self._stop_requested() or self._deadline_passed():
            return self.finish(*self._stopped(" before it started"))
        try:
            self._prepare_job_dir()
        except OSError as e:
            msg = f"cannot make the job folder {self.job_dir} on the Ray head node ({e}); set RayBackendConfig(home=...) to a folder every node can write"
            return self.finish(JobStatus.FAILED, msg, {"type": type(e).__name__, "message": msg, "rank": None})
        except SignatureError as e:  # the payload was changed in the GCS: never run it
            return self.finish(JobStatus.FAILED, str(e), {"type": "SignatureError", "message": str(e), "rank": None})
        import ray

        scale = plan.scaling(self.spec)
        queued = self.state.transition(
            self.job_id, JobStatus.QUEUED, job_dir=str(self.job_dir), node_ip=ray.util.get_node_ip_address(), pid=os.getpid(), started_at=time.time(), scaling=scale
        )
        if not queued:  # a client recorded the job's end meanwhile (a stop before it started)
            return self.finish(*self._stopped(" before it started"))
        self.state.add_event(self.job_id, "Queued", f"driver started; waiting for Ray to place {plan.describe_scaling(scale)}", {"scaling": scale})
        monitor = threading.Thread(target=self._watch_stop, name="trainjob-stop-monitor", daemon=True)
        monitor.start()
        if self.spec.initializers:
            from trainjob.backends.ray.initializers import InitializerFailed, run_initializers

            try:
                run_initializers(self.kv, self.keys, self.event, self.job_dir, self.spec, scale["resources_per_worker"])
            except InitializerFailed as e:
                return self.finish(JobStatus.FAILED, str(e), {"type": "InitializerFailed", "message": str(e), "rank": None})
            if self._stop_requested():
                return self.finish(*self._stopped(" before its ranks started"))
        exc = None
        try:
            self._trainer(scale).fit()
        except Exception as e:  # noqa: BLE001 - every failure becomes the job's recorded outcome
            exc = e
        return self.finish(*self._decide(exc))

    def _trainer(self, scale: dict[str, Any]):
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        from trainjob.backends.ray.callbacks import FailureRecorder
        from trainjob.backends.ray.worker import train_loop

        config = {"job_id": self.job_id, "job_dir": str(self.job_dir), "spec": self.spec.to_json(), "resume_from": self.record.get("resume_from")}
        return TorchTrainer(
            train_loop,
            train_loop_config=config,
            scaling_config=ScalingConfig(**scale),
            run_config=RunConfig(
                name=f"trainjob-{self.job_id}",
                storage_path=str(self.job_dir / "ray"),
                failure_config=FailureConfig(max_failures=self.spec.limits.max_restarts),
                callbacks=[FailureRecorder(self.job_id)],
            ),
        )

    def _prepare_job_dir(self) -> None:
        """``<home>/jobs/<id>/``: spec.json, payload.pkl, workdir/ (a resumed job's starts as a copy of its source's)."""
        old = os.umask(0o077)
        try:
            (self.job_dir / contract.WORKDIR).mkdir(parents=True, exist_ok=True)
            (self.job_dir / contract.SPEC_FILE).write_text(self.spec.to_json())
            if self.spec.entrypoint.is_function:
                (self.job_dir / contract.PAYLOAD_FILE).write_bytes(verified_payload(self.kv, self.keys) or b"")  # a changed payload is refused
            source = self.record.get("resume_from")
            if source:
                src_dir = (self.kv.get_json(Keys(source).driver) or {}).get("job_dir")
                if src_dir:
                    carry_workdir(Path(src_dir) / contract.WORKDIR, self.job_dir / contract.WORKDIR)
        finally:
            os.umask(old)

    # ---- stop --------------------------------------------------------------------------
    def _stop_requested(self) -> bool:
        return self.kv.get(self.keys.stop) is not None

    def _watch_stop(self) -> None:
        """Announce a stop request; end the job if the ranks have not ended within the grace period.

        Tracked jobs stop at an agreed step after saving a checkpoint (the workers read the stop
        key themselves); untracked ones have no step to agree on, and a job whose workers Ray has
        not placed yet has nobody to save anything: both are ended at once.
        """
        deadline = None
        stop_grace = self.spec.limits.stop_grace_seconds
        while True:
            time.sleep(MONITOR_INTERVAL)
            try:
                if deadline is None and not self._stop_requested() and self._deadline_passed():
                    # The workers poll the stop key: the deadline is a stop they carry out alike.
                    self.kv.claim_json(self.keys.stop, {"time": time.time(), "reason": "DeadlineExceeded"})
                if deadline is None and self._stop_requested():
                    if not self.tracking:
                        grace, how = 0.0, "no Trainer is tracked, so the Ray job ends now"
                    elif not self._ranks_running():
                        grace, how = 0.0, "no rank has started yet, so the Ray job ends now"
                    else:
                        grace, how = stop_grace, "the ranks agree on a step, save a checkpoint there and end"
                    self.event("Stopping", f"{self._stop_reason()}: {how}")
                    deadline = time.monotonic() + grace
                if deadline is not None and time.monotonic() >= deadline:
                    why = "" if not grace else f"; the ranks did not end within stop_grace_seconds={grace:g}, so the Ray job was ended"
                    self.finish(*self._stopped(why))
                    StateMirror.flush()  # the outcome reaches a dashboard-only client (os._exit skips main's close)
                    os._exit(0)  # Ray ends the job's actors (Ray Train's controller and workers) with it
            except Exception as e:  # noqa: BLE001 - keep watching through a GCS hiccup
                print(f"[trainjob] stop monitor: {e}", file=sys.stderr, flush=True)

    def _deadline_passed(self) -> bool:
        if not self.deadline_exceeded:
            created = float(self.record.get("created_at") or time.time())
            self.deadline_exceeded = deadline_passed(self.spec.limits.active_deadline_seconds, created, time.time())
        return self.deadline_exceeded

    def _stop_reason(self) -> str:
        return stop_reason(self.deadline_exceeded, self.spec.limits.active_deadline_seconds)

    def _stopped(self, where: str) -> tuple[JobStatus, str, dict | None]:
        return stopped_outcome(self._stop_reason(), where, self.deadline_exceeded)

    def _ranks_running(self) -> bool:
        """Whether the latest attempt's ranks have started and it has not failed (else, between
        attempts or before Ray placed the workers, nobody is there to save a checkpoint)."""
        latest = max(0, len(self.kv.keys(self.keys.attempts())) - 1)
        return bool(self.kv.keys(self.keys.ranks(latest))) and self.kv.get(self.keys.first_error(latest)) is None

    # ---- outcome -----------------------------------------------------------------------
    def _decide(self, exc: BaseException | None) -> tuple[JobStatus, str | None, dict | None]:
        events = read_events(self.kv, self.keys)
        end = (last_event(events, "TrainEnd") or {}).get("data") or {}
        if self._stop_requested():
            if exc is None and end.get("completed"):
                return JobStatus.COMPLETE, None, None
            where = f" at step {end['global_step']}" if end.get("global_step") is not None and end.get("stopped") else ""
            ckpt = self._checkpoints().get("checkpoint")
            return self._stopped(where + (f"; newest complete checkpoint: {Path(ckpt).name}" if ckpt else "; no checkpoint was saved"))
        if exc is None:
            return JobStatus.COMPLETE, None, None
        first = self._first_error(exc)
        return JobStatus.FAILED, failure_message(first, self.spec.limits.max_restarts), first

    def _first_error(self, exc: BaseException) -> dict[str, Any]:
        """The first failure of the earliest failed attempt; else what Ray Train raised."""
        firsts = sorted(k for k in self.kv.keys(self.keys.errors()) if k.endswith("/first"))
        if firsts:
            found = self.kv.get_json(firsts[0])
            if found:
                return found
        attempt = max(0, len(self.kv.keys(self.keys.attempts())) - 1)
        failures = getattr(exc, "worker_failures", None)
        if failures:
            rank, cause = root_cause(failures)
            return error_record(rank, cause, job_secret_values(self.kv, self.keys), attempt=attempt)
        inner = getattr(exc, "controller_failure", None)
        return error_record(None, inner if isinstance(inner, BaseException) else exc, job_secret_values(self.kv, self.keys), attempt=attempt)

    def _checkpoints(self) -> dict[str, Any]:
        return checkpoints_of(self.kv, self.keys)

    def _result(self) -> dict[str, Any]:
        return compute_result(self.kv, self.keys, self.spec, str(self.job_dir / contract.WORKDIR))

    def finish(self, status: JobStatus, message: str | None, error: dict | None) -> int:
        """Record the outcome once (the first writer wins: a client that stopped a pending job, or us)."""
        with self._finished:
            try:
                result = self._result()
            except Exception as e:  # noqa: BLE001 - the outcome must be recorded even without a result
                result = {"metrics": {}, "error": f"{type(e).__name__}: {e}"}
            job_state.finish(self.state, self.job_id, status, message, error, result)
        if message and status != JobStatus.COMPLETE:
            print(f"[trainjob] job {self.job_id} {status.value}: {message}", file=sys.stderr, flush=True)
        return 1 if status == JobStatus.FAILED else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    package = None
    if len(argv) == 3 and argv[1] == "--bundle":  # submitted by a client that reaches only the Jobs API (bundle.py)
        argv, package = argv[:1], argv[2]
    if len(argv) != 1:
        print("usage: python -m trainjob.backends.ray.driver JOB_ID [--bundle gcs://PACKAGE.zip] (started by trainjob's Ray backend)", file=sys.stderr)
        return 2
    import ray

    ray.init(logging_level="WARNING")  # inside a Ray job: joins the cluster the job runs on
    kv = KV.in_cluster()
    if package:
        from trainjob.backends.ray.bundle import BundleError, load

        try:
            load(kv, argv[0], package)
        except BundleError as e:
            print(f"[trainjob] {e}", file=sys.stderr, flush=True)
            return 1
    mirror = StateMirror.start_if_asked(kv, Keys(argv[0]))  # for clients that reach only the dashboard (mirror.py)
    try:
        return Driver(argv[0], kv).run()
    finally:
        if mirror is not None:
            mirror.close()


if __name__ == "__main__":
    code = main()
    # The outcome is in the GCS and Ray Train has ended its actors: skip the interpreter's teardown
    # (Ray's shutdown, torch's finalisers: about 2 s), so Ray sees the job end when trainjob does
    # and delete_job or a resume does not wait on it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
