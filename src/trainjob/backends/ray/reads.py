"""Reading jobs: one job's state in one go (``Snapshot``), its status, and what the client shows.

Every read asks the cluster: Ray's job table says whether the driver is alive, the job's keys
(``state``) hold progress, history, events and the outcome.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainjob.backends.records import build_result, utc
from trainjob.backends.ray import integrity, plan
from trainjob.backends.ray.jobs_api import JobsAPIError, RayJob
from trainjob.backends.ray.state import EventWriter, Keys, read_events, read_metrics
from trainjob.core.spec import JobSpec
from trainjob.errors import BackendError, JobNotFoundError
from trainjob.types import Event, JobStatus, Result, Step, TrainJob

INFO_TTL = 1.0  # seconds reads of a running job reuse Ray's record of it (see _snapshot)
SUBMIT_GRACE = 60.0  # seconds a new record may wait for Ray to know its job (working_dir uploads take a while)
RAY_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass
class Snapshot:
    """What the cluster knows about one job, read in one go."""

    job_id: str
    record: dict[str, Any]
    info: RayJob | None  # Ray's record of the job; None if Ray has none (or it was not needed)
    outcome: dict[str, Any] | None
    driver: dict[str, Any] | None
    attempt: int
    ranks: list[dict[str, Any]]
    status: JobStatus = JobStatus.CREATED
    message: str | None = None

    @property
    def spec(self) -> JobSpec:
        """The record's spec (masked), decoded: this release's JSON or an earlier release's dict."""
        return JobSpec.from_dict(self.record["spec"])


class Reads:
    """``RayBackend``'s reads (a mixin: it uses the backend's ``conn`` and ``_runtime``)."""

    def _job_info(self, job_id: str, max_age: float = 0.0):
        """Ray's record of the job (None if Ray has none); one up to ``max_age`` seconds old may be reused."""
        if max_age > 0:
            hit = self._info_cache.get(job_id)
            if hit is not None and time.monotonic() - hit[0] < max_age:
                return hit[1]
        try:
            info = self.conn.api.info(job_id)
        except (JobsAPIError, OSError) as e:
            raise BackendError(f"Ray could not say how job {job_id} is: {e}") from e
        self._info_cache[job_id] = (time.monotonic(), info)
        if self.conn.jobs_api_only:
            self.conn.kv._gcs.prime(job_id, info)  # the mirror reads need Ray's record too: one request serves both
        return info

    def _snapshot(self, job_id: str, info: Any = ..., got: dict[str, bytes] | None = None) -> Snapshot:
        """The job as the GCS keys say, plus Ray's record of it while no outcome is written.

        Ray's record (an HTTP request to the dashboard) is only needed to notice a driver that
        ended without an outcome, so it is skipped once the outcome is there and otherwise reused
        for ``INFO_TTL`` seconds: a client polling every 50 ms does not load the dashboard, which
        shares the head node's CPUs with the job.
        """
        if not isinstance(job_id, str) or not job_id or "/" in job_id:
            raise JobNotFoundError(str(job_id))
        kv, keys = self.conn.kv, Keys(job_id)
        if got is None:
            got = kv.multi_get([keys.job, keys.outcome, keys.driver])
        if keys.job not in got:
            raise JobNotFoundError(job_id)
        if keys.outcome in got:
            info = None if info is ... else info
        elif info is ...:
            info = self._job_info(job_id, max_age=INFO_TTL)  # read after the keys: _record_lost_driver reads the outcome again
        attempts = kv.keys(keys.attempts())
        attempt = max(0, len(attempts) - 1)
        snap = Snapshot(
            job_id=job_id,
            record=json.loads(got[keys.job]),
            info=info,
            outcome=json.loads(got[keys.outcome]) if keys.outcome in got else None,
            driver=json.loads(got[keys.driver]) if keys.driver in got else None,
            attempt=attempt,
            ranks=[r for _, r in kv.scan_json(keys.ranks(attempt))] if attempts else [],
        )
        self._derive_status(snap)
        return snap

    def _derive_status(self, snap: Snapshot) -> None:
        """Status from the outcome if written, else from the driver's liveness and the ranks seen."""
        if snap.outcome is None:
            ray_status = snap.info.status if snap.info is not None else ""
            if snap.info is None and time.time() - float(snap.record.get("created_at") or 0) < SUBMIT_GRACE:
                snap.status, snap.message = JobStatus.CREATED, "being submitted to Ray"  # train() writes the record first
                return
            if snap.info is None or ray_status in RAY_TERMINAL:
                self._record_lost_driver(snap, ray_status)
        if snap.outcome is not None:
            snap.status = JobStatus.parse(snap.outcome["status"])
            snap.message = snap.outcome.get("message")
            return
        ray_status = snap.info.status
        if ray_status == "PENDING":
            snap.status, snap.message = JobStatus.CREATED, "Ray is starting the job's driver (and preparing its runtime environment)"
        elif snap.ranks:
            snap.status, snap.message = JobStatus.RUNNING, (f"attempt {snap.attempt}" if snap.attempt else None)
        else:
            scale = (snap.driver or {}).get("scaling")
            snap.status = JobStatus.QUEUED
            snap.message = f"waiting for Ray to place {plan.describe_scaling(scale)}" if scale else "the driver is starting"

    def _record_lost_driver(self, snap: Snapshot, ray_status: str) -> None:
        """The driver ended (or Ray forgot it) without recording an outcome: record one now, once."""
        from trainjob.backends.ray.outcome import compute_result, record_outcome

        kv, keys = self.conn.kv, Keys(snap.job_id)
        if self.conn.jobs_api_only:
            self.conn.kv._gcs.refresh(snap.job_id)  # the driver writes its mirror's last copy before it exits
        fresh = kv.get_json(keys.outcome)  # it may have been written since our first read
        if fresh is None and self.conn.jobs_api_only:  # no GCS to record it in: derived on every read, alike
            from trainjob.backends.ray.outcome import lost_outcome

            status, msg, error = self._lost_driver_outcome(snap, ray_status)
            snap.outcome = lost_outcome(status, msg, error, compute_result(kv, keys, snap.spec, None))
            return
        if fresh is None:
            status, msg, error = self._lost_driver_outcome(snap, ray_status)
            record_outcome(kv, keys, EventWriter(kv, keys, "cli"), status, msg, error, compute_result(kv, keys, snap.spec, None))
            fresh = kv.get_json(keys.outcome)
        snap.outcome = fresh

    def _lost_driver_outcome(self, snap: Snapshot, ray_status: str) -> tuple[JobStatus, str, dict | None]:
        """The outcome of a job whose driver ended without writing one, from Ray's record of it."""
        if ray_status == "STOPPED":
            how = "stop_job before its driver started, or ray job stop" if self.conn.jobs_api_only else "ray job stop"
            return JobStatus.STOPPED, f"the Ray job was stopped outside trainjob's driver ({how})", None
        said = f"Ray says {ray_status}: {snap.info.message or ''}".strip() if snap.info is not None else "Ray has no record of it"
        started = snap.driver is not None
        msg = f"the job's driver {'ended without recording an outcome' if started else 'never started'} ({said})"
        error = {
            "type": "DriverLost" if started else "DriverNotStarted",
            "message": msg,
            "rank": None,
            "traceback": "",
            "ray_error_type": snap.info.error_type if snap.info is not None else None,  # e.g. RUNTIME_ENV_SETUP_FAILURE
        }
        return JobStatus.FAILED, msg, error

    def get_job(self, job_id: str) -> TrainJob:
        return self._to_job(self._snapshot(job_id))

    def list_jobs(self, status: set[JobStatus] | None = None) -> list[TrainJob]:
        infos = {}
        for d in self.conn.api.list():
            jid = (d.metadata or {}).get("trainjob.id")
            if jid and d.submission_id == jid:
                infos[jid] = d
        kv = self.conn.kv
        if self.conn.jobs_api_only:
            for jid, info in infos.items():
                kv._gcs.prime(jid, info)  # their mirrors are read with Ray's records just listed
        wanted = [k for jid in infos for k in (Keys(jid).job, Keys(jid).outcome, Keys(jid).driver)]
        got = kv.multi_get(wanted)
        jobs = []
        for jid, info in infos.items():
            if Keys(jid).job not in got:
                continue  # a Ray job record left after its trainjob keys were deleted
            snap = self._snapshot(jid, info=info, got={k: v for k, v in got.items() if k.startswith(f"{jid}/")})
            if status is None or snap.status in status:
                jobs.append(self._to_job(snap))
        return sorted(jobs, key=lambda j: (j.created_at, j.id))

    def get_job_events(self, job_id: str) -> list[Event]:
        self._require(job_id)
        return [Event(utc(e["time"]), e["reason"], e["message"], e.get("data") or {}, involved_object_name=job_id) for e in read_events(self.conn.kv, Keys(job_id))]

    def get_job_progress(self, job_id: str) -> dict[str, Any] | None:
        keys = Keys(self._check_id(job_id))
        got = self.conn.kv.multi_get([keys.job, keys.progress])
        if keys.job not in got:
            raise JobNotFoundError(job_id)
        return json.loads(got[keys.progress]) if keys.progress in got else None

    def get_job_metrics(self, job_id: str) -> list[dict[str, Any]]:
        self._require(job_id)
        return read_metrics(self.conn.kv, Keys(job_id))

    def get_job_result(self, job_id: str) -> Result:
        snap = self._snapshot(job_id)
        outcome = snap.outcome or {}
        value = integrity.read_return_value(self.conn.kv.get(Keys(job_id).return_value), job_id, snap.record) if snap.status.is_terminal else None
        return build_result(job_id, snap.status, outcome.get("result"), error=outcome.get("error"), return_value=value)

    def rank_info(self, job_id: str, attempt: int | None = None) -> list[dict[str, Any]]:
        """Where each rank of an attempt (default: the latest) ran: rank, node_rank, node_ip, node_id, pid, actor_id."""
        snap = self._snapshot(job_id)
        if attempt is None or attempt == snap.attempt:
            return snap.ranks
        return [r for _, r in self.conn.kv.scan_json(Keys(job_id).ranks(attempt))]

    def _check_id(self, job_id: str) -> str:
        if not isinstance(job_id, str) or not job_id or "/" in job_id:
            raise JobNotFoundError(str(job_id))
        return job_id

    def _require(self, job_id: str) -> None:
        if self.conn.kv.get(Keys(self._check_id(job_id)).job) is None:
            raise JobNotFoundError(job_id)

    def _to_job(self, snap: Snapshot) -> TrainJob:
        spec = snap.spec
        device = spec.device
        by_node: dict[int, list[dict[str, Any]]] = {}
        for r in snap.ranks:
            by_node.setdefault(int(r.get("node_rank", 0)), []).append(r)
        steps = [
            Step(f"node-{k}", snap.status, device, len(rs), tuple(int(r["pid"]) for r in sorted(rs, key=lambda r: r["rank"]) if r.get("pid")), f"{snap.job_id}-node-{k}")
            for k, rs in sorted(by_node.items())
        ] or [Step(f"node-{i}", snap.status, device, spec.procs_per_node, pod_name=f"{snap.job_id}-node-{i}") for i in range(spec.num_nodes)]
        if spec.initializers:
            init = self.conn.kv.get_json(Keys(snap.job_id).initializers) or {}

            def step_status(name: str) -> JobStatus:
                status = JobStatus.parse(init.get(name) or "Created")
                return snap.status if status == JobStatus.RUNNING and snap.status.is_terminal else status  # the driver ended meanwhile

            steps = [Step(s["step"], step_status(s["step"]), "cpu", 1, pod_name=f"{snap.job_id}-{s['step']}") for s in spec.initializers] + steps
        first_attempt = self.conn.kv.get_json(Keys(snap.job_id).attempt(0)) if snap.status != JobStatus.CREATED else None
        finished = (snap.outcome or {}).get("finished_at")
        annotations = dict(snap.record.get("annotations") or {})
        if snap.record.get("name") not in (None, snap.job_id):  # a record from before names were ids
            annotations.setdefault("trainjob/former-name", snap.record["name"])
        return TrainJob(
            id=snap.job_id,
            name=snap.job_id,
            status=snap.status,
            backend=self.name,
            created_at=utc(snap.record["created_at"]),
            started_at=utc(first_attempt["time"]) if first_attempt else None,
            finished_at=utc(finished) if finished and snap.status.is_terminal else None,
            num_nodes=spec.num_nodes,
            procs_per_node=spec.procs_per_node,
            attempt=snap.attempt,
            steps=steps,
            message=snap.message,
            spec=spec.shown_dict(),
            job_dir=Path(snap.driver["job_dir"]) if (snap.driver or {}).get("job_dir") else None,
            runtime=self._runtime(),
            labels=dict(snap.record.get("labels") or {}),
            annotations=annotations,
        )

