"""Submitting a job: checks, the record and payload into the cluster, the Ray job (Jobs API)."""

from __future__ import annotations

import json
import os
import time

from trainjob.backends.base import JobExtras
from trainjob.backends.ray import bundle, integrity, mirror, plan
from trainjob.backends.ray.state import EventWriter, Keys, dumps
from trainjob.core import signing
from trainjob.core.spec import JobSpec
from trainjob.errors import BackendError, JobStateError, Problem, ResourcesUnavailableError, SerializationError, ValidationError
from trainjob.masking import mask_url
from trainjob.payload import dumps_payload
from trainjob.resources import format_bytes
from trainjob.trainers import CustomTrainer

MAX_PAYLOAD = 100 * 2**20  # bytes of pickled function and arguments a job may keep in the GCS


class Submit:
    """``RayBackend``'s ``train()`` (a mixin: it uses the backend's ``config``, ``conn`` and reads)."""

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
        created = f"job created ({spec.trainer}, {spec.entrypoint.kind}) on Ray at {conn.dashboard}" + (f", resuming {resume_from}" if resume_from else "")
        submission = {
            "entrypoint": plan.entrypoint(job_id, self.config.python),
            "submission_id": job_id,
            "runtime_env": runtime_env,
            "metadata": {"trainjob.id": job_id, "trainjob.name": job_id},
        }
        if conn.jobs_api_only:
            signed = integrity.sign_payload(signer_key, job_id, payload) if payload is not None else None
            self._submit_through_jobs_api(submission, record, signed, signing.job_key(signer_key, job_id).hex(), hidden, created)
            return job_id
        kv = conn.kv
        if not kv.claim_json(keys.job, record):  # another submitter took the name since the check above
            raise ValidationError([name_in_use(job_id)], "train()")
        try:
            integrity.give_job_key(kv, keys, signer_key)
            if payload is not None:
                kv.put(keys.payload, integrity.sign_payload(signer_key, job_id, payload))
            if hidden:
                kv.put_json(keys.secrets, hidden)
            EventWriter(kv, keys, "cli")("Created", created)
            self._submit_ray_job(submission)
        except BaseException as e:
            kv.delete_prefix(keys.prefix)
            if isinstance(e, (ValidationError, KeyboardInterrupt)):  # SerializationError names the culprit
                raise
            raise BackendError(f"Ray did not accept job {job_id}: {type(e).__name__}: {e}") from e
        return job_id

    def _submit_ray_job(self, submission: dict) -> None:
        if "working_dir" in submission["runtime_env"]:
            self.conn.jobs().submit_job(**submission)  # Ray's SDK packages and uploads the local folder
        else:
            self.conn.api.submit(**submission)

    def _submit_through_jobs_api(self, submission: dict, record: dict, signed_payload: bytes | None, job_key_hex: str, hidden: dict, created: str) -> None:
        """Jobs-API-only mode: what the GCS writes above carry travels in an uploaded package
        (``bundle``) that the driver puts into the GCS; the masked record also goes into the Ray
        job's metadata (listing and reading a job before its driver starts); the driver mirrors
        the job's state for the reads (``mirror``)."""
        job_id = submission["submission_id"]
        try:
            data = bundle.pack(record, signed_payload, job_key_hex, dumps(hidden) if hidden else None, created)
            uri = bundle.upload(self.conn.api, data)
            submission["entrypoint"] = plan.entrypoint(job_id, self.config.python, bundle=uri)
            submission["runtime_env"]["env_vars"][mirror.ENV] = "1"
            submission["metadata"].update({"trainjob.record": dumps(record), "trainjob.bundle": uri})
            self._submit_ray_job(submission)
        except BaseException as e:
            if isinstance(e, (ValidationError, KeyboardInterrupt)):
                raise
            raise BackendError(f"Ray did not accept job {job_id}: {type(e).__name__}: {e}") from e

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


