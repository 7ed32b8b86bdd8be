"""Turning what a backend stored about a job into the records users get (shared by all backends)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from trainjob.errors import Problem, ValidationError
from trainjob.types import JobStatus, Result

_LISTED = 8  # log step names listed in an error before "..."


def utc(ts: float) -> datetime:
    """A stored epoch timestamp as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def build_result(
    job_id: str,
    status: JobStatus,
    record: dict[str, Any] | None,
    *,
    error: dict[str, Any] | None,
    return_value: Any,
    output_dir: Path | None = None,
    log_dir: Path | None = None,
) -> Result:
    """A ``Result`` from the result record a supervisor/driver stored at the end of a job.

    ``output_dir``/``log_dir`` are fallbacks for a job that ended before recording its own.
    """
    res = record or {}
    return Result(
        job_id=job_id,
        status=status,
        metrics=res.get("metrics") or {},
        checkpoint=_path(res.get("checkpoint")),
        best_checkpoint=_path(res.get("best_checkpoint")),
        checkpoints=[Path(p) for p in res.get("checkpoints") or []],
        output_dir=_path(res.get("output_dir")) or output_dir,
        log_dir=_path(res.get("log_dir")) or log_dir,
        return_value=return_value,
        error=error,
    )


def parse_log_step(step: object, nodes: int, world: int, named: tuple[str, ...]) -> tuple[str, int]:
    """``"node-K"``, ``"rank-R"`` or one of ``named`` (``"supervisor"``...) -> ``(kind, number)``.

    ``K``/``R`` are ASCII digits below ``nodes``/``world`` (``"node-²"`` is refused, not taken
    for a number). Raises ``ValidationError`` naming the allowed forms and the job's own names.
    """
    if isinstance(step, str):
        if step in named:
            return step, 0
        kind, _, num = step.partition("-")
        limit = nodes if kind == "node" else world
        if kind in ("node", "rank") and num.isascii() and num.isdigit() and int(num) < limit:
            return kind, int(num)
    choices = [f"node-{i}" for i in range(nodes)][:_LISTED] + [f"rank-{r}" for r in range(world)][:_LISTED] + list(named)
    forms = f"node-K (K < {nodes}), rank-R (R < {world}) or {' or '.join(named)}"
    raise ValidationError([Problem("step", step, f"{forms}: {', '.join(choices)}")], "get_job_logs()")


def _path(p: str | None) -> Path | None:
    return Path(p) if p else None
