"""A Ray job's result and outcome, written into the GCS by whoever ends the job first.

Used by the driver (on the cluster) and by the client (``RayBackend``, when the driver died
without recording an outcome), so it lives apart from both; the decisions are ``core``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainjob.backends.ray.state import KV, EventWriter, Keys, RayState, last_event, read_events, read_metrics
from trainjob.core.outcome import result_record
from trainjob.core.state import finish
from trainjob.core.spec import JobSpec
from trainjob.types import JobStatus


def checkpoints_of(kv: KV, keys: Keys) -> dict[str, Any]:
    """Rank 0's report of its checkpoints, checked against the disk when this machine sees it."""
    from trainjob.checkpoints import latest_complete, list_checkpoints

    rec = dict(kv.get_json(keys.checkpoints) or {})
    out = rec.get("output_dir")
    if out is None:
        begin = last_event(read_events(kv, keys), "TrainBegin")
        out = rec["output_dir"] = ((begin or {}).get("data") or {}).get("output_dir")
    if out and Path(out).is_dir():
        ckpt = latest_complete(out)
        rec["checkpoint"] = str(ckpt) if ckpt else None
        rec["checkpoints"] = [str(p) for p in list_checkpoints(out)]
    return rec


def compute_result(kv: KV, keys: Keys, spec: JobSpec, default_output_dir: str | None) -> dict[str, Any]:
    """The job's result from what its ranks reported: latest metrics, checkpoints, best checkpoint."""
    ckpts = checkpoints_of(kv, keys)
    return result_record(
        metrics=read_metrics(kv, keys),
        custom_metrics=spec.tracking.custom_metrics,
        train_end=(last_event(read_events(kv, keys), "TrainEnd") or {}).get("data"),
        checkpoint=ckpts.get("checkpoint"),
        checkpoints=ckpts.get("checkpoints") or [],
        output_dir=ckpts.get("output_dir") or default_output_dir,
        log_dir=None,
        best_checkpoint=ckpts.get("best_checkpoint"),
    )


def lost_outcome(status: JobStatus, message: str | None, error: dict | None, result: dict) -> dict[str, Any]:
    """An outcome as ``record_outcome`` writes it (``finished_at`` unknown: None)."""
    return {"status": status.value, "message": message, "error": error, "result": result, "finished_at": None}


def record_outcome(kv: KV, keys: Keys, event: EventWriter, status: JobStatus, message: str | None, error: dict | None, result: dict) -> bool:
    """Write the job's outcome unless one exists (a terminal status is final); the matching event if written.

    ``core.state.finish`` over the job's ``RayState``, its event written by ``event``."""
    return finish(RayState(kv, events=event), keys.job_id, status, message, error, result)
