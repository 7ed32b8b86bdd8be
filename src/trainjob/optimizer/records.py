"""An optimization as JSON-able data: what ``trainjob studies/trials -o json`` print and the dashboard reads."""

from __future__ import annotations

import math
from typing import Any


def study_record(job: Any) -> dict[str, Any]:
    """An ``OptimizationJob`` as JSON-able data (the ``-o json`` shape)."""
    from trainjob.optimizer.spec import describe_space

    def trial(t: Any) -> dict[str, Any]:
        return {"number": t.number, "name": t.name, "status": t.status.value, "value": _finite(t.value), "step": t.step,
                "parameters": t.parameters, "error": t.error, "job_status": t.trainjob.status.value if t.trainjob else None}  # fmt: skip

    objective = job.objectives[0]
    return {
        "name": job.name,
        "status": job.status.value,
        "message": job.message,
        "created_at": job.creation_timestamp.isoformat(),
        "metric": objective.metric,
        "direction": objective.direction.value,
        "num_trials": job.trial_config.num_trials,
        "parallel_trials": job.trial_config.parallel_trials,
        "search_space": {k: describe_space(v) for k, v in job.search_space.items()},
        "trials": [trial(t) for t in job.trials],
        "best_trial": trial(job.best_trial) if job.best_trial else None,
    }


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else v
