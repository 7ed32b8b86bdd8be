"""The Ray backend, client side: jobs are Ray jobs whose ranks are Ray Train workers.

``train()`` stores the job's record and payload in the cluster's GCS key-value store and submits
a Ray job (Jobs API) whose entrypoint is trainjob's driver; it returns at once, and the job
outlives this process. Every read asks the cluster: Ray's job table says whether the driver is
alive, the GCS keys (``state``) hold progress, history, events and the outcome. No client-side
database: any client that reaches the cluster sees every trainjob job on it, and the records
live exactly as long as the cluster does (``delete_job`` removes them).

Addresses: ``"auto"`` (``RAY_ADDRESS`` or the Ray started on this machine) or ``"host:port"``
(the GCS; the client connects to it directly, without ``ray.init``), ``"ray://host:10001"``
(Ray Client), or ``"http://host:8265"`` (the dashboard; the GCS is then ``gcs_address``, never
guessed).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from trainjob.backends.base import Backend, JobExtras
from trainjob.backends.records import build_result, parse_log_step, utc
from trainjob.backends.ray import auth, integrity, plan
from trainjob.backends.ray.jobs_api import JobsAPI, JobsAPIError, RayJob
from trainjob.backends.ray.state import KV, EventWriter, Keys, read_events, read_metrics
from trainjob.config import RayBackendConfig
from trainjob.errors import BackendError, JobNotFoundError, JobStateError, Problem, ResourcesUnavailableError, SerializationError, ValidationError
from trainjob.payload import dumps_payload
from trainjob.resources import format_bytes
from trainjob.core.spec import JobSpec
from trainjob.masking import mask_url
from trainjob.trainers import CustomTrainer
from trainjob.types import Event, JobStatus, Result, Step, TrainJob

FOLLOW_INTERVAL = 1.0  # seconds between log polls with follow=True
DELETE_WAIT = 30.0  # seconds delete_job waits for Ray to end a running job
ENDING_GRACE = 5.0  # seconds delete_job lets a driver that has recorded the outcome end by itself
RAY_CLIENT_TRIES = 3
MAX_PAYLOAD = 100 * 2**20  # bytes of pickled function and arguments a job may keep in the GCS
INFO_TTL = 1.0  # seconds reads of a running job reuse Ray's record of it (see _snapshot)
PACKAGES_TIMEOUT = 120.0  # seconds get_runtime_packages waits for its listing job on the cluster
SUBMIT_GRACE = 60.0  # seconds a new record may wait for Ray to know its job (working_dir uploads take a while)
_RAY_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_RAY_MARKERS = (":job_id:", ":actor_name:", ":task_name:", ":task_attempt_start:", ":task_attempt_end:")
_ENV_LOCK = threading.Lock()


@dataclass
class _Connection:
    kv: KV
    dashboard: str  # http(s)://host:port
    token: str | None = None  # Ray's auth token (auth.py); None: Ray's own lookup, or no auth
    _api: JobsAPI | None = None
    _jobs: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def api(self) -> JobsAPI:
        """The dashboard's Jobs REST API (and its other endpoints)."""
        with self._lock:
            if self._api is None:
                self._api = JobsAPI(self.dashboard, self.token)
            return self._api

    def jobs(self):
        """Ray's ``JobSubmissionClient``, only to submit a job with a local ``working_dir``
        (imported on first use: 0.33 s)."""
        with self._lock:
            if self._jobs is None:
                from ray.job_submission import JobSubmissionClient

                # The SDK replaces the address it is given by $RAY_API_SERVER_ADDRESS or $RAY_ADDRESS,
                # and resolves a GCS address in $RAY_ADDRESS to the machine's interface address
                # (off loopback). Pin it to the dashboard already resolved here.
                with _ENV_LOCK:
                    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
                    os.environ["RAY_API_SERVER_ADDRESS"] = self.dashboard
                    try:
                        self._jobs = JobSubmissionClient(self.dashboard, headers=auth.http_headers(self.token) or None)
                    finally:
                        if saved is None:
                            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
                        else:
                            os.environ["RAY_API_SERVER_ADDRESS"] = saved
            return self._jobs


@dataclass
class _Snapshot:
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


class RayBackend(Backend):
    name = "ray"

    def __init__(self, config: RayBackendConfig | None = None) -> None:
        self.config = config or RayBackendConfig()
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise BackendError("RayBackendConfig needs Ray on this machine; install it with: pip install 'trainjob[ray]'")
        problems = _check_config(self.config)
        if problems:
            raise ValidationError(problems, "RayBackendConfig")
        self._conn: _Connection | None = None
        self._conn_lock = threading.Lock()
        self._info_cache: dict[str, tuple[float, RayJob | None]] = {}
        self._cluster_runtime = None  # list_runtimes(), kept for TrainJob records

    # ---- connection --------------------------------------------------------------------
    @property
    def conn(self) -> _Connection:
        """The connection to the cluster, made on first use (creating a client does no I/O)."""
        with self._conn_lock:
            if self._conn is None:
                self._conn = self._connect()
            return self._conn

    def _connect(self) -> _Connection:
        address = self.config.address
        token = auth.token_of(self.config.auth_token)
        env = os.environ.get("RAY_ADDRESS", "")
        if address == "auto" and env.startswith(("http://", "https://", "ray://")):
            address = env  # "auto" follows $RAY_ADDRESS in every form Ray accepts there
        try:
            auth.use_token(token)
            if address.startswith(("http://", "https://")):
                if not self.config.gcs_address:
                    raise ValidationError([_needs_gcs_address(address)], "RayBackendConfig")
                return _Connection(KV.connect(self.config.gcs_address), address.rstrip("/"), token)
            if address.startswith("ray://"):
                import ray

                for tries_left in reversed(range(RAY_CLIENT_TRIES)):
                    if ray.is_initialized():
                        break
                    try:
                        ray.init(address, logging_level="WARNING")
                    except ConnectionError:
                        if not tries_left:  # a cold cluster may time out starting its first client server
                            raise
                kv = KV.through_ray_client()
                return _Connection(kv, _dashboard_of(kv, urllib.parse.urlparse(address).hostname or ""), token)
            gcs = _resolve_gcs(address)
            kv = KV.connect(gcs)
            return _Connection(kv, _dashboard_of(kv, gcs.rpartition(":")[0]), token)
        except (BackendError, ValidationError):
            raise
        except Exception as e:  # noqa: BLE001 - any failure to reach the cluster is reported the same way
            if auth.is_auth_failure(e):
                raise BackendError(auth.refused_message(address, bool(token) or os.environ.get(auth.MODE_ENV) == "token")) from e
            raise BackendError(
                f"cannot reach the Ray cluster at RayBackendConfig(address={address!r}): {type(e).__name__}: {e}. "
                "Start one (ray start --head) or give its address: 'host:6379' (GCS), 'ray://host:10001' or 'http://host:8265'"
            ) from e

    # ---- submit ------------------------------------------------------------------------
    def train(self, trainer: CustomTrainer, spec: JobSpec, name: str | None = None, extras: JobExtras | None = None) -> str:
        from trainjob.core.names import name_in_use, new_job_id

        extras = extras or JobExtras()
        resume_from = spec.resume_from
        if getattr(trainer, "progress_timeout", None) is not None:
            # Ray Train owns its workers: nothing here could dump and end a stalled one.
            raise ValidationError([Problem("progress_timeout", trainer.progress_timeout, "None on the Ray backend (a local-backend feature; use active_deadline_seconds to bound a job)")], "train()")
        conn = self.conn
        if resume_from is not None:
            self._check_resume_source(resume_from)
        if self.config.check_resources:
            self._check_resources(trainer, spec)
        _check_no_index_credentials(spec)
        if name is not None and (conn.kv.get(Keys(name).job) is not None or self._job_info(name) is not None):
            raise ValidationError([name_in_use(name)], "train()")  # a trainjob job, or any Ray job with this submission id
        job_id = name or new_job_id()
        keys = Keys(job_id)
        # The record (and Ray's runtime_env, which Ray's dashboard shows) get the masked spec;
        # the real values of masked fields travel in their own GCS key, read by the ranks.
        real = spec.replace(name=job_id)
        spec, hidden = real.split()
        public_env = {k: v for k, v in real.env.items() if spec.env.get(k) == v}
        runtime_env = plan.runtime_env(spec, public_env, self.config.installer, plan.working_dir(spec, self.config.working_dir))
        record = {
            "id": job_id,
            "name": job_id,
            "labels": dict(extras.labels),
            "annotations": dict(extras.annotations),
            "created_at": time.time(),
            "spec": spec.to_record(),
            "home": str(self.config.home) if self.config.home else None,
            "resume_from": resume_from,
            "submitted_from": os.uname().nodename,
        }
        signer_key, record["signer"] = integrity.client_identity()
        payload = _checked_payload(trainer) if trainer.func is not None else None
        kv = conn.kv
        if not kv.claim_json(keys.job, record):  # another submitter took the name since the check above
            raise ValidationError([name_in_use(job_id)], "train()")
        try:
            integrity.give_job_key(kv, keys, signer_key)
            if payload is not None:
                kv.put(keys.payload, integrity.sign_payload(signer_key, job_id, payload))
            if hidden:
                kv.put_json(keys.secrets, hidden)
            EventWriter(kv, keys, "cli")(
                "Created", f"job created ({spec.trainer}, {spec.entrypoint.kind}) on Ray at {conn.dashboard}" + (f", resuming {resume_from}" if resume_from else "")
            )
            submission = {
                "entrypoint": plan.entrypoint(job_id, self.config.python),
                "submission_id": job_id,
                "runtime_env": runtime_env,
                "metadata": {"trainjob.id": job_id, "trainjob.name": job_id},
            }
            if "working_dir" in runtime_env:
                conn.jobs().submit_job(**submission)  # Ray's SDK packages and uploads the local folder
            else:
                conn.api.submit(**submission)
        except BaseException as e:
            kv.delete_prefix(keys.prefix)
            if isinstance(e, (ValidationError, KeyboardInterrupt)):  # SerializationError names the culprit
                raise
            raise BackendError(f"Ray did not accept job {job_id}: {type(e).__name__}: {e}") from e
        return job_id

    def _check_resume_source(self, job_id: str) -> None:
        if not isinstance(job_id, str) or not job_id:
            raise ValidationError([Problem("resume", job_id, "the name of an ended job (the string train() returned)")], "train()")
        snap = self._snapshot(job_id)
        if not snap.status.is_terminal:
            raise JobStateError(f"cannot resume job {job_id}: it is {snap.status.value}; stop it first (stop_job) and wait until it is Stopped")

    def _check_resources(self, trainer: CustomTrainer, spec: JobSpec) -> None:
        """A job Ray could never place would wait forever: say so now.

        Checked against the nodes alive now: one worker must fit on some node; a one-node job
        (``STRICT_PACK``) needs a node that holds all its workers; one rank per node on several
        nodes (``STRICT_SPREAD``) needs that many nodes that each hold one.
        """
        try:
            nodes = json.loads(self.conn.api.get("/api/v0/nodes", limit=10000, detail="true"))["data"]["result"]["result"]
        except (OSError, ValueError, KeyError, TypeError):
            return  # the state API is unavailable: let Ray decide
        alive = [n.get("resources_total") or {} for n in nodes if n.get("state") == "ALIVE"]
        if not alive:
            return
        scale = plan.scaling(spec)
        per_worker, strategy = scale["resources_per_worker"], scale["placement_strategy"]
        nnodes, nproc = spec.num_nodes, spec.procs_per_node

        def fits(node: dict[str, float], workers: int) -> bool:
            return all(node.get(k, 0) >= v * workers for k, v in per_worker.items())

        if strategy == "STRICT_SPREAD" and any(fits(n, 1) for n in alive):
            holding = sum(fits(n, 1) for n in alive)
            if holding < nnodes:
                raise ResourcesUnavailableError(
                    [Problem("num_nodes", nnodes, f"at most {holding} (the Ray nodes alive that can each hold one rank, {plan.describe_scaling(scale)})")],
                    "resources (too few Ray nodes for one rank on each)",
                )
            return
        workers = nproc if strategy == "STRICT_PACK" else 1
        if any(fits(n, workers) for n in alive):
            return
        names = {"CPU": ("cpu", "CPUs"), "GPU": ("gpu", "GPUs"), "memory": ("memory", "of memory")}
        problems = []
        asked = trainer.resources_per_node or {}
        for key, need in per_worker.items():
            best = max(node.get(key, 0) for node in alive)
            if need * workers <= best:
                continue
            field_, unit = names.get(key, (key, key))
            most = (lambda v: format_bytes(int(v))) if key == "memory" else (lambda v: f"{v:g}")
            where = f"{most(best)} {unit} on the largest Ray node"
            if field_ not in asked:  # the default of one CPU per rank
                problems.append(Problem("num_procs_per_node", nproc, f"at most {int(best // need)} ({where}, {most(need)} per rank unless resources_per_node says otherwise)"))
            elif workers == nproc:
                problems.append(Problem(f"resources_per_node['{field_}']", asked[field_], f"at most {most(best)} ({where}: a one-node job's ranks all run on one node)"))
            else:
                problems.append(Problem(f"resources_per_node['{field_}']", asked[field_], f"at most {most(best * nproc)} ({where}, for each of {nproc} ranks per node)"))
        if problems:
            raise ResourcesUnavailableError(problems, "resources (no node of the Ray cluster can hold " + ("the job's ranks)" if workers > 1 else "one worker)"))

    # ---- read --------------------------------------------------------------------------
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
        return info

    def _snapshot(self, job_id: str, info: Any = ..., got: dict[str, bytes] | None = None) -> _Snapshot:
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
        snap = _Snapshot(
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

    def _derive_status(self, snap: _Snapshot) -> None:
        """Status from the outcome if written, else from the driver's liveness and the ranks seen."""
        if snap.outcome is None:
            ray_status = snap.info.status if snap.info is not None else ""
            if snap.info is None and time.time() - float(snap.record.get("created_at") or 0) < SUBMIT_GRACE:
                snap.status, snap.message = JobStatus.CREATED, "being submitted to Ray"  # train() writes the record first
                return
            if snap.info is None or ray_status in _RAY_TERMINAL:
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

    def _record_lost_driver(self, snap: _Snapshot, ray_status: str) -> None:
        """The driver ended (or Ray forgot it) without recording an outcome: record one now, once."""
        from trainjob.backends.ray.outcome import compute_result, record_outcome

        kv, keys = self.conn.kv, Keys(snap.job_id)
        fresh = kv.get_json(keys.outcome)  # it may have been written since our first read
        if fresh is None:
            if ray_status == "STOPPED":
                status, msg, error = JobStatus.STOPPED, "the Ray job was stopped outside trainjob (ray job stop)", None
            else:
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
                status = JobStatus.FAILED
            record_outcome(kv, keys, EventWriter(kv, keys, "cli"), status, msg, error, compute_result(kv, keys, snap.spec, None))
            fresh = kv.get_json(keys.outcome)
        snap.outcome = fresh

    def get_job(self, job_id: str) -> TrainJob:
        return self._to_job(self._snapshot(job_id))

    def list_jobs(self, status: set[JobStatus] | None = None) -> list[TrainJob]:
        infos = {}
        for d in self.conn.api.list():
            jid = (d.metadata or {}).get("trainjob.id")
            if jid and d.submission_id == jid:
                infos[jid] = d
        kv = self.conn.kv
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

    # ---- logs --------------------------------------------------------------------------
    def get_job_logs(self, job_id: str, step: str = "node-0", follow: bool = False) -> Iterator[str]:
        """Rank logs are the Ray Train workers' own output files, read through the dashboard's log API.

        ``node-K``: the ranks Ray Train placed on its node K (prefixed ``[rank R]`` when there are
        several); ``rank-R``: one rank, every attempt in turn; ``driver`` (or ``supervisor``): the
        Ray job's driver output, which Ray also streams worker output into; ``model-initializer``/
        ``dataset-initializer``: the step's output on every node (kept in the GCS once it ended).
        """
        snap = self._snapshot(job_id)
        spec = snap.spec
        if step in [s["step"] for s in spec.initializers]:
            return self._stream_logs(job_id, lambda backend, job_id: [(f"init:{job_id}/{step}", "")], follow)
        world, nodes = spec.world_size, spec.num_nodes
        sources = _log_sources(step, nodes, world)
        return self._stream_logs(job_id, sources, follow)

    def _stream_logs(self, job_id: str, select, follow: bool) -> Iterator[str]:
        seen: dict[str, int] = {}
        while True:
            done = self._snapshot(job_id).status.is_terminal if follow else True  # state before content: no lost tail
            for source, prefix in select(self, job_id):
                text = self._read_log(source)
                lines = text.splitlines()
                if not done and text and not text.endswith("\n"):
                    lines = lines[:-1]  # a line still being written
                start = seen.get(source, 0)
                for line in lines[start:]:
                    yield prefix + line
                seen[source] = max(start, len(lines))
            if done:
                return
            time.sleep(FOLLOW_INTERVAL)

    def _read_log(self, source: str) -> str:
        kind, _, ident = source.partition(":")
        try:
            if kind == "driver":
                return self.conn.api.logs(ident)
            if kind == "init":  # an initializer step's output, kept in the GCS by the driver
                job, _, step = ident.partition("/")
                return (self.conn.kv.get(Keys(job).init_log(step)) or b"").decode(errors="replace")
            raw = self.conn.api.get("/api/v0/logs/file", actor_id=ident, lines=-1, suffix="out").decode(errors="replace")
        except Exception as e:  # noqa: BLE001 - a node that is gone takes its log files with it
            return f"[trainjob] the log of {source} is not available from Ray: {type(e).__name__}: {e}\n"
        return "".join(line for line in raw.splitlines(keepends=True) if not line.startswith(_RAY_MARKERS))

    def _ranks_by_attempt(self, job_id: str) -> list[list[dict[str, Any]]]:
        kv, keys = self.conn.kv, Keys(job_id)
        per: dict[str, list[dict[str, Any]]] = {}
        for key, rec in kv.scan_json(keys.ranks()):
            per.setdefault(key.split("/")[2], []).append(rec)
        return [per[a] for a in sorted(per)]

    # ---- control -----------------------------------------------------------------------
    def stop_job(self, job_id: str) -> None:
        snap = self._snapshot(self._check_id(job_id), info=self._job_info(job_id))  # Ray's record fresh: whether a driver runs decides below
        if snap.status.is_terminal:
            return
        kv, keys = self.conn.kv, Keys(job_id)
        if kv.claim_json(keys.stop, {"time": time.time()}):
            EventWriter(kv, keys, "cli")("StopRequested", "stop requested by the user")
        if snap.status == JobStatus.CREATED:
            # No driver yet to carry the stop out: have Ray cancel the job, and record it here.
            from trainjob.backends.ray.outcome import record_outcome

            self._ray_stop(job_id)
            record_outcome(kv, keys, EventWriter(kv, keys, "cli"), JobStatus.STOPPED, "stopped on request before it started", None, {"metrics": {}})

    def delete_job(self, job_id: str) -> None:
        kv, keys = self.conn.kv, Keys(self._check_id(job_id))
        info = self._job_info(job_id)
        record = kv.get_json(keys.job)
        if info is not None and info.metadata.get("trainjob.id") != job_id:
            info = None  # a Ray job that is not trainjob's (same id by chance or on purpose): never touched
        if record is None and info is None:
            raise JobNotFoundError(job_id)
        if info is not None and not self._ray_ended(info):
            # A driver that has written the outcome is exiting by itself: let it (a stop would only race it).
            if kv.get(keys.outcome) is None or not self._wait_ray_end(job_id, ENDING_GRACE):
                self._ray_stop(job_id)
                if not self._wait_ray_end(job_id, DELETE_WAIT):
                    raise BackendError(f"Ray did not end job {job_id} within {DELETE_WAIT:g}s of `ray job stop`; try again")
            info = self._job_info(job_id)
        driver = kv.get_json(keys.driver) or {}
        if info is not None:
            try:
                self.conn.api.delete(job_id)
            except JobsAPIError as e:
                if e.status != 404:  # 404: the record is already gone
                    raise BackendError(f"Ray could not delete job {job_id}: {e}") from e
        kv.delete_prefix(keys.prefix)
        self._info_cache.pop(job_id, None)
        folder = Path(driver["job_dir"]) if driver.get("job_dir") else None
        if folder is not None and folder.name == job_id and folder.parent.name == "jobs" and folder.is_dir():
            import shutil

            shutil.rmtree(folder, ignore_errors=True)  # visible here when the cluster's home is this machine's or shared

    @staticmethod
    def _ray_ended(info: RayJob | None) -> bool:
        return info is None or info.status in _RAY_TERMINAL

    def _wait_ray_end(self, job_id: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._ray_ended(self._job_info(job_id)):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def _ray_stop(self, job_id: str) -> None:
        try:
            self.conn.api.stop(job_id)
        except JobsAPIError as e:
            if e.status != 404:  # 404: it is gone meanwhile
                raise BackendError(f"Ray could not stop job {job_id}: {e}") from e

    # ---- helpers -----------------------------------------------------------------------
    def _check_id(self, job_id: str) -> str:
        if not isinstance(job_id, str) or not job_id or "/" in job_id:
            raise JobNotFoundError(str(job_id))
        return job_id

    def _require(self, job_id: str) -> None:
        if self.conn.kv.get(Keys(self._check_id(job_id)).job) is None:
            raise JobNotFoundError(job_id)

    def _to_job(self, snap: _Snapshot) -> TrainJob:
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

    # ---- runtimes ----------------------------------------------------------------------
    def list_runtimes(self):
        """The cluster's ``torch-distributed`` runtime: its resources are the alive nodes' totals."""
        from trainjob.runtimes import ray_runtime

        try:
            nodes = json.loads(self.conn.api.get("/api/v0/nodes", limit=10000, detail="true"))["data"]["result"]["result"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BackendError(f"Ray's state API did not list the cluster's nodes at {self.conn.dashboard}: {type(e).__name__}: {e}") from e
        alive = [n.get("resources_total") or {} for n in nodes if n.get("state") == "ALIVE"]
        totals: dict[str, float] = {}
        for node in alive:
            for k, v in node.items():
                totals[k] = totals.get(k, 0) + v
        self._cluster_runtime = ray_runtime(totals, len(alive))
        return [self._cluster_runtime]

    def runtime_packages(self, runtime) -> list[str]:
        """The packages of the cluster's Python (``RayBackendConfig.python`` on the node Ray puts a
        small Ray job on; the nodes are expected to share one stack, which a job's
        ``packages_to_install`` extends). Costs a Ray job: a few seconds."""
        import secrets
        import shlex

        api = self.conn.api
        probe = f"trainjob-packages-{secrets.token_hex(4)}"  # not a DNS-1035 job name: never a trainjob job's
        try:
            api.submit(entrypoint=f"{shlex.quote(self.config.python)} -m trainjob.runtimes", submission_id=probe, runtime_env={}, metadata={"trainjob.probe": "packages"})
            deadline = time.monotonic() + PACKAGES_TIMEOUT
            while not self._ray_ended(info := api.info(probe)):
                if time.monotonic() >= deadline:
                    raise BackendError(f"Ray did not run the package listing within {PACKAGES_TIMEOUT:g}s (job {probe})")
                time.sleep(0.2)
            text = api.logs(probe)
        except (JobsAPIError, OSError) as e:
            raise BackendError(f"Ray could not list the cluster's packages: {e}") from e
        finally:
            try:
                api.stop(probe)
                api.delete(probe)
            except (JobsAPIError, OSError):
                pass  # best effort: the probe's record is harmless
        if info is None or info.status != "SUCCEEDED":
            raise BackendError(f"listing the cluster's packages failed ({info.status if info else 'no record'}): {text.strip()[-500:]}")
        return [line for line in text.splitlines() if "==" in line and " " not in line.strip()]

    def _runtime(self):
        """The cluster's runtime for TrainJob records, listed once per backend; a state API that
        does not answer leaves it with unknown resources rather than failing the read."""
        if self._cluster_runtime is None:
            try:
                self.list_runtimes()
            except BackendError:
                from trainjob.runtimes import ray_runtime

                return ray_runtime({}, 0)
        return self._cluster_runtime


def _checked_payload(trainer: CustomTrainer) -> bytes:
    """The pickled function and arguments, refused if too large to keep in the cluster's GCS
    (held in the head node's memory), naming the part that makes it large."""
    payload = dumps_payload(trainer.func, trainer.func_args)
    if len(payload) <= MAX_PAYLOAD:
        return payload
    import cloudpickle

    args_size = len(cloudpickle.dumps(trainer.func_args or {}))
    field_, value = ("func_args", f"{format_bytes(args_size)} pickled") if args_size * 2 > len(payload) else ("func", getattr(trainer.func, "__name__", "func"))
    raise SerializationError(
        [
            Problem(
                field_,
                value,
                f"at most {format_bytes(MAX_PAYLOAD)} pickled on Ray (the job's function and arguments are {format_bytes(len(payload))}, kept in the "
                "cluster's GCS): load large data inside the function, from a path or dataset every node can read",
            )
        ],
        "train()",
    )


# ---- logs ------------------------------------------------------------------------------------
def _log_sources(step: str, nodes: int, world: int):
    """Which logs make up ``step``: a callable (backend, job_id) -> [(source, line prefix)]."""
    kind, k = parse_log_step(step, nodes, world, ("driver", "supervisor"))
    if kind in ("driver", "supervisor"):
        return lambda backend, job_id: [(f"driver:{job_id}", "")]

    def select(backend: RayBackend, job_id: str) -> list[tuple[str, str]]:
        out = []
        for ranks in backend._ranks_by_attempt(job_id):
            mine = sorted((r for r in ranks if (r.get("rank") if kind == "rank" else r.get("node_rank")) == k), key=lambda r: r["rank"])
            several = kind == "node" and len(mine) > 1
            out += [(f"actor:{r['actor_id']}", f"[rank {r['rank']}] " if several else "") for r in mine if r.get("actor_id")]
        return out

    return select


# ---- addresses -------------------------------------------------------------------------------
def _check_config(config: RayBackendConfig) -> list[Problem]:
    p = []
    a = config.address
    if not isinstance(a, str) or not a.strip():
        p.append(Problem("address", a, "'auto', 'host:port' (the GCS), 'ray://host:10001' or 'http://host:8265'"))
    elif "://" in a and not a.startswith(("ray://", "http://", "https://")):
        p.append(Problem("address", a, "a ray://, http:// or https:// address, 'host:port' (the GCS) or 'auto'"))
    elif "://" not in a and a != "auto" and not _is_host_port(a):
        p.append(Problem("address", a, "'auto' or 'host:port' of the cluster's GCS (e.g. '10.0.0.1:6379')"))
    if isinstance(a, str) and a.startswith(("http://", "https://")) and config.gcs_address is None:
        p.append(_needs_gcs_address(a))
    if config.gcs_address is not None and not _is_host_port(config.gcs_address):
        p.append(Problem("gcs_address", config.gcs_address, "'host:port' of the cluster's GCS (e.g. '10.0.0.1:6379')"))
    if config.auth_token is not None and (not isinstance(config.auth_token, str) or not config.auth_token.strip()):
        p.append(Problem("auth_token", "******", "the cluster's token as a non-empty string (`ray get-auth-token` on a node), or None"))
    if config.installer not in plan.INSTALLERS:
        p.append(Problem("installer", config.installer, f"one of {', '.join(plan.INSTALLERS)}"))
    if config.working_dir is not None and not Path(config.working_dir).expanduser().is_dir():
        p.append(Problem("working_dir", str(config.working_dir), "an existing local folder to ship with every job (or None)"))
    if not isinstance(config.python, str) or not config.python.strip():
        p.append(Problem("python", config.python, "the Python command on the cluster's nodes, e.g. 'python' or '/opt/venv/bin/python'"))
    return p


def _needs_gcs_address(address: str) -> Problem:
    """A dashboard address alone: the GCS is never guessed from it (its port is the cluster's choice)."""
    return Problem(
        "gcs_address",
        None,
        f"the cluster's GCS 'host:port' (`ray status` on the head prints it) with address={address!r}: this client reads job state "
        "from the GCS and does not guess its port; a client that reaches only the Jobs API is not supported yet (docs/ray.md)",
    )


def _is_host_port(a: str) -> bool:
    host, sep, port = a.rpartition(":")
    return bool(sep and host and port.isdigit())


def _resolve_gcs(address: str) -> str:
    """``"auto"`` -> ``RAY_ADDRESS`` or this machine's running cluster; ``host:port`` stays as given.

    Ray's own resolution turns 127.0.0.1 into the machine's interface address; trainjob keeps the
    address it was given (so a cluster on loopback stays on loopback).
    """
    if address != "auto":
        return address
    env = os.environ.get("RAY_ADDRESS")
    if env and env != "auto":
        return env  # a host:port (_connect took the ray:// and http:// forms)
    from ray._private.services import find_bootstrap_address

    found = find_bootstrap_address(None)
    if not found:
        raise BackendError("RayBackendConfig(address='auto') found no Ray cluster on this machine; start one (ray start --head) or give its address")
    return found


def _dashboard_of(kv: KV, cluster_host: str) -> str:
    """The dashboard URL the cluster registered in its GCS; a wildcard bind host becomes the host we reached."""
    raw = kv._gcs.internal_kv_get(b"dashboard", b"dashboard")
    if not raw:
        raise BackendError(f"the Ray cluster at {cluster_host} has no dashboard; the Ray Jobs API needs one (ray start --include-dashboard=true)")
    host, _, port = raw.decode().rpartition(":")
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = cluster_host
    return f"http://{host}:{port}"


def _check_no_index_credentials(spec: JobSpec) -> None:
    """Refuse URL credentials in ``pip_index_urls``/``packages_to_install`` on Ray.

    Ray installs a job's packages from its ``runtime_env``, which Ray's dashboard shows to anyone
    who can open it; there is no private channel to Ray's installer. Credentials belong on the
    nodes instead, where uv finds them without any URL carrying them.
    """
    problems = [
        Problem(f"{name}[{i}]", url, "a URL without credentials on Ray (Ray's dashboard shows a job's runtime_env): put them in a netrc file "
                "(~/.netrc, or $NETRC) on every node, or in the nodes' UV_INDEX_URL when they start Ray; the local backend passes them to uv privately")
        for name, urls in (("pip_index_urls", spec.packages.index_urls), ("packages_to_install", spec.packages.install))
        for i, url in enumerate(urls)
        if isinstance(url, str) and mask_url(url) != url
    ]  # fmt: skip
    if problems:
        raise ValidationError(problems, "TrainerClient(RayBackendConfig).train()")


# ---- payload ---------------------------------------------------------------------------------
