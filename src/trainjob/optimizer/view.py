"""An optimization as the client shows it: ``OptimizationJob`` and its ``Trial``s, built from the
study's records and the trials' jobs. Reads only."""

from __future__ import annotations

import math
from typing import Any

from trainjob.errors import JobNotFoundError
from trainjob.optimizer import spec, state
from trainjob.optimizer.types import (
    GridSearch,
    Hyperband,
    Median,
    Metric,
    Objective,
    OptimizationJob,
    OptimizationStatus,
    RandomSearch,
    SuccessiveHalving,
    TPE,
    Trial,
    TrialConfig,
    TrialStatus,
)

_ALGORITHMS = {"random": RandomSearch, "grid": GridSearch, "tpe": TPE}
_RULES = {"median": Median, "hyperband": Hyperband, "successive_halving": SuccessiveHalving}


def optimization_job(storage: Any, trainer_client: Any, name: str, sid: int, status: OptimizationStatus) -> OptimizationJob:
    """The optimization's spec, ``status`` and trials (each with its values, status, metrics, job)."""
    from optuna.trial import TrialState

    from trainjob.backends.records import utc

    attrs = storage.get_study_user_attrs(sid)
    s = attrs[state.SPEC_ATTR]
    objectives = [Objective(**o) for o in s["objectives"]]
    trials = [trial(trainer_client, t, objectives[0]) for t in storage.get_all_trials(sid, deepcopy=False) if t.state != TrialState.WAITING]
    return OptimizationJob(
        name=name,
        search_space={k: spec.space_from_json(v) for k, v in s["search_space"].items()},
        objectives=objectives,
        algorithm=rebuild(s["algorithm"], _ALGORITHMS),
        trial_config=TrialConfig(**s["trial_config"]),
        trials=trials,
        creation_timestamp=utc(s["created_at"]),
        status=status,
        early_stopping=rebuild(s["early_stopping"], _RULES) if s.get("early_stopping") else None,
        message=attrs.get("message"),
        best_trial=best(trials, objectives[0]),
    )


def trial(trainer_client: Any, t: Any, objective: Objective) -> Trial:
    """One Optuna trial (frozen) as a ``Trial``: its job's status while the trial has not ended."""
    from optuna.trial import TrialState

    job_name = t.user_attrs.get("job")
    job = None
    if job_name:
        try:
            job = trainer_client.get_job(job_name)
        except JobNotFoundError:
            job = None
    recorded = TrialStatus(t.user_attrs.get("status", TrialStatus.CREATED.value))
    status = recorded if recorded.is_terminal or job is None else TrialStatus(job.status.value)
    steps = sorted(t.intermediate_values.items())
    value = t.value if t.state == TrialState.COMPLETE else (steps[-1][1] if steps and t.state == TrialState.PRUNED else None)
    metrics = [Metric(**m) for m in t.user_attrs.get("metrics") or []] or ([spec.summarize(objective.metric, steps)] if steps else [])
    return Trial(
        name=job_name or f"trial-{t.number}",
        parameters=dict(t.params),
        trainjob=job,
        metrics=metrics,
        number=t.number,
        status=status,
        value=None if value is None or math.isnan(value) else value,
        step=t.user_attrs.get("pruned_step") if status == TrialStatus.PRUNED else (steps[-1][0] if steps else None),
        error=t.user_attrs.get("error"),
    )


def rebuild(desc: dict[str, Any], known: dict[str, type]) -> Any:
    """An algorithm or rule from its stored description (a custom Optuna one stays a description)."""
    desc = dict(desc)
    cls = known.get(desc.pop("name", ""))
    if cls is None:
        return desc
    try:
        return cls(**desc)
    except TypeError:
        return desc


def best(trials: list[Trial], objective: Objective) -> Trial | None:
    """The best completed trial (the lowest number among equals); None before any completed."""
    done = [t for t in trials if t.status == TrialStatus.COMPLETE and t.value is not None]
    if not done:
        return None
    sign = 1 if objective.direction.value == "minimize" else -1
    return min(done, key=lambda t: (sign * t.value, t.number))
