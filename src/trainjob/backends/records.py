"""Turning what a backend stored about a job into the records users get (shared by all backends)."""

from __future__ import annotations

import pickle
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from trainjob.types import JobStatus, Result


def utc(ts: float) -> datetime:
    """A stored epoch timestamp as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def load_return_value(data: bytes | None) -> Any:
    """Rank 0's pickled return value (``bootstrap`` writes ``{"value": ...}``); None if there is none.

    A value the client cannot unpickle (a class only the job could import) comes back as a
    message saying so, and an unpicklable one as its repr.
    """
    if data is None:
        return None
    try:
        loaded = pickle.loads(data)
    except Exception as e:  # noqa: BLE001 - any import/unpickling failure is reported the same way
        return f"<return value could not be loaded here: {type(e).__name__}: {e}>"
    return loaded.get("value") if "unpicklable" not in loaded else loaded.get("repr")


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


def _path(p: str | None) -> Path | None:
    return Path(p) if p else None
