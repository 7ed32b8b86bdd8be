"""``StoredJob``: a ``TrainJob`` read from the local store, decoded only as far as it is read.

A listing of 10,000 jobs builds 10,000 of them: each holds its store row, and its times, steps,
spec (parsed and masked), labels, annotations and folder are computed on first read
(``_FromRow``), so a listing parses no spec and builds no step it does not show.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from trainjob.backends.local.jobdir import JobDir
from trainjob.backends.records import utc
from trainjob.core.spec import JobSpec
from trainjob.store import JobRow
from trainjob.types import JobStatus, Step, TrainJob


_STATUS_OF = {s.value: s for s in JobStatus}


class _FromRow:
    """A field of a ``StoredJob`` computed from its row when first read, then kept.

    Also the field's setter, so the dataclass ``__init__`` (``dataclasses.replace``, unpickling
    an old pickle) can set it like any field.
    """

    def __init__(self, compute: Callable[[StoredJob], Any]) -> None:
        self.compute = compute

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = "_" + name

    def __get__(self, job: StoredJob | None, owner: type | None = None) -> Any:
        if job is None:
            return self
        d = job.__dict__
        if self.key not in d:
            d[self.key] = self.compute(job)
        return d[self.key]

    def __set__(self, job: StoredJob, value: Any) -> None:
        job.__dict__[self.key] = value


def _job_spec(job: StoredJob) -> JobSpec:
    """The stored spec (masked), decoded once: this release's JSON or an earlier release's dict."""
    row: JobRow = job.__dict__["_row"]
    return JobSpec.from_dict(row.spec if row.spec is not None else json.loads(row.spec_text or "{}"))


def _steps(job: StoredJob) -> list[Step]:
    row: JobRow = job.__dict__["_row"]
    spec = job.job_spec
    initializers = spec.initializers
    device = spec.device
    steps = [
        Step(
            name=s["name"],
            status=_STATUS_OF.get(s.get("status")) or row.status,
            device=s.get("device", device),
            device_count=int(s.get("device_count", row.procs_per_node)),
            pids=(s["pid"],) if s.get("pid") else (),
            pod_name=f"{row.id}-{s['name']}",
        )
        for s in row.steps or []
    ] or [Step(f"node-{i}", row.status, device, row.procs_per_node, pod_name=f"{row.id}-node-{i}") for i in range(row.num_nodes)]
    if initializers:
        init = (row.extra or {}).get("initializers") or {}
        steps = [Step(s["step"], JobStatus.parse(init.get(s["step"], "Created")), "cpu", 1, pod_name=f"{row.id}-{s['step']}") for s in initializers] + steps
    return steps


def _spec(job: StoredJob) -> dict[str, Any]:
    return job.job_spec.shown_dict()


def _time(column: str) -> Callable[[StoredJob], Any]:
    def compute(job: StoredJob) -> Any:
        ts = getattr(job.__dict__["_row"], column)
        return utc(ts) if ts else None

    return compute


class StoredJob(TrainJob):
    """A ``TrainJob`` read from the local store, holding its row: what a listing does not read is
    not decoded. Its times, steps, spec (parsed and masked), labels, annotations and folder are
    computed on first read, so 10,000 listed jobs parse no spec and build no step. Otherwise a
    ``TrainJob`` (fields, equality between stored jobs, ``dataclasses.replace``, pickling)."""

    created_at = _FromRow(_time("created_at"))  # type: ignore[assignment]
    started_at = _FromRow(_time("started_at"))  # type: ignore[assignment]
    finished_at = _FromRow(_time("finished_at"))  # type: ignore[assignment]
    steps = _FromRow(_steps)  # type: ignore[assignment]
    spec = _FromRow(_spec)  # type: ignore[assignment]
    job_spec = _FromRow(_job_spec)  # the typed, masked JobSpec (not a TrainJob field)
    labels = _FromRow(lambda job: dict(job.__dict__["_row"].labels or {}))  # type: ignore[assignment]
    annotations = _FromRow(lambda job: dict(job.__dict__["_row"].annotations or {}))  # type: ignore[assignment]
    job_dir = _FromRow(lambda job: JobDir.for_job(job.__dict__["_home"], job.id).root)  # type: ignore[assignment]
