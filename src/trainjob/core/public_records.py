"""JSON-able records of jobs, events and results: the machine-readable shape of trainjob.

One shape for ``trainjob ... -o json`` and the dashboard's ``/api/``, so scripts and the page
read the same keys. Keys are snake_case; the nested ``progress`` keeps the progress schema of
DESIGN.md section 3 (camelCase) unchanged. Times are ISO 8601 in UTC with a ``Z``; paths are
strings; NaN and infinity become ``null`` (JSON has neither). Adding keys is allowed; renaming or
removing one is a breaking change.
"""

from __future__ import annotations

import enum
import math
from datetime import datetime, timezone
from pathlib import PurePath
from typing import Any

from trainjob.core.spec import JobSpec
from trainjob.types import Event, JobStatus, Result, Runtime, TrainJob

# Keys of a logged entry that are bookkeeping, not metrics.
BOOKKEEPING_KEYS = ("step", "epoch", "time", "attempt")
# A Running job whose newest progress is older than this is shown as "no step for N" (CLI, dashboard).
STALL_AFTER_SECONDS = 120


def iso(dt: datetime | None) -> str | None:
    """``2026-11-21T10:00:00.123Z`` (UTC), or None."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def jsonable(value: Any) -> Any:
    """A copy of ``value`` that ``json.dumps`` accepts with ``allow_nan=False``.

    Paths and enums become strings, datetimes ISO strings, NaN/inf None, tuples and sets lists;
    anything else unknown becomes its ``repr`` (a result's return value can be any object).
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    try:  # numpy / torch scalars
        as_float = float(value)
    except (TypeError, ValueError):
        return repr(value)
    return jsonable(as_float)


def entrypoint_text(spec: dict[str, Any]) -> str:
    """What the job runs, as a user would type it: ``pkg.mod:fn``, ``train.py --lr 1``, ``-m pkg.train``."""
    return JobSpec.from_dict(spec).entrypoint.text()


def job_record(job: TrainJob, progress: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything ``trainjob status -o json`` and ``GET /api/jobs/{id}`` say about one job."""
    return jsonable(
        {
            "id": job.id,
            "name": job.name,
            "status": job.status.value,
            "is_terminal": job.status.is_terminal,
            "backend": job.backend,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "runtime_seconds": job.runtime_seconds,
            "num_nodes": job.num_nodes,
            "procs_per_node": job.procs_per_node,
            "attempt": job.attempt,
            "message": job.message,
            "queue_position": job.queue_position,
            "entrypoint": entrypoint_text(job.spec),
            "labels": job.labels,
            "annotations": job.annotations,
            "runtime": job.runtime.name if job.runtime else None,
            "steps": [
                {"name": s.name, "status": s.status.value, "device": s.device, "device_count": s.device_count, "pids": list(s.pids), "pod_name": s.pod_name}
                for s in job.steps
            ],
            "progress": progress,
            "no_step_for_seconds": no_step_for(job.status, progress),
            "spec": job.spec,
            "job_dir": job.job_dir,
        }
    )


def runtime_record(rt: Runtime, packages: list[str] | None = None) -> dict[str, Any]:
    """What ``trainjob runtimes -o json`` says about one runtime (Kubeflow's fields, plus resources)."""
    t = rt.trainer
    record = {
        "name": rt.name,
        "kind": rt.kind.value,
        "trainer_type": t.trainer_type.value,
        "framework": t.framework,
        "image": t.image,
        "num_nodes": t.num_nodes,
        "device": t.device,
        "device_count": t.device_count,
        "resources": rt.resources,
    }
    if packages is not None:
        record["packages"] = packages
    return jsonable(record)


def no_step_for(status: JobStatus, progress: dict[str, Any] | None, now: datetime | None = None) -> int | None:
    """Seconds since a Running job last reported a step, once that is over ``STALL_AFTER_SECONDS``; else None.

    Read from the progress's own ``lastUpdatedTime`` (written by rank 0 as steps complete), so it
    means the same on every backend. A job with no step yet is not judged (loading may take long).
    """
    if status != JobStatus.RUNNING or not progress or not progress.get("lastUpdatedTime"):
        return None
    try:
        updated = datetime.fromisoformat(str(progress["lastUpdatedTime"]).replace("Z", "+00:00"))
    except ValueError:
        return None
    age = ((now or datetime.now(timezone.utc)) - updated).total_seconds()
    return int(age) if age >= STALL_AFTER_SECONDS else None


def event_record(event: Event) -> dict[str, Any]:
    return jsonable({"time": event.time, "reason": event.reason, "message": event.message, "data": event.data})


def result_record(result: Result) -> dict[str, Any]:
    return jsonable(
        {
            "job_id": result.job_id,
            "status": result.status.value if isinstance(result.status, JobStatus) else result.status,
            "metrics": result.metrics,
            "checkpoint": result.checkpoint,
            "best_checkpoint": result.best_checkpoint,
            "checkpoints": result.checkpoints,
            "output_dir": result.output_dir,
            "log_dir": result.log_dir,
            "return_value": result.return_value,
            "error": result.error,
        }
    )


def metric_keys(entries: list[dict[str, Any]]) -> list[str]:
    """Numeric keys logged in ``entries`` (first-seen order), bookkeeping keys left out."""
    seen: dict[str, None] = {}
    for e in entries:
        for k, v in e.items():
            if k not in BOOKKEEPING_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool):
                seen.setdefault(k, None)
    return list(seen)
