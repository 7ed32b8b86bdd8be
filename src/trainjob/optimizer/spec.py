"""Translations, no I/O: search spaces to JSON and to Optuna distributions, algorithms to samplers,
early-stopping rules to pruners, a job's metrics history to the objective value.

Imported by the client (validation, display) and by the optimizer process (sampling, pruning).
Optuna is imported inside the functions that need it.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any, Iterable, Mapping

from trainjob.errors import Problem
from trainjob.optimizer.types import (
    BaseAlgorithm,
    CategoricalSearchSpace,
    ContinuousSearchSpace,
    Direction,
    Distribution,
    EarlyStopping,
    GridSearch,
    Hyperband,
    IntegerSearchSpace,
    Median,
    Metric,
    Objective,
    RandomSearch,
    SearchSpace,
    SuccessiveHalving,
    TPE,
    as_search_space,
)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
GRID_LIMIT = 100_000  # grid points enqueued at most (a bigger grid is a mistake, not a study)


# ---- search space -------------------------------------------------------------------------------
def search_space_problems(search_space: Any, algorithm: Any) -> tuple[dict[str, SearchSpace], list[Problem]]:
    """The search space normalized (``range`` -> integer range) and every problem with it."""
    if not isinstance(search_space, Mapping) or not search_space:
        return {}, [Problem("search_space", search_space, 'a non-empty dict of parameter name -> Search.uniform/loguniform/choice/integer, e.g. {"learning_rate": Search.loguniform(1e-5, 1e-2)}')]
    out, problems = {}, []
    for name, value in search_space.items():
        if not isinstance(name, str) or not _IDENT.match(name):
            problems.append(Problem(f"search_space[{name!r}]", value, "a parameter name usable as a keyword argument (letters, digits, _)"))
            continue
        space = as_search_space(value)
        if space is None:
            problems.append(Problem(f"search_space[{name!r}]", value, "Search.uniform(min, max), Search.loguniform(min, max), Search.choice([...]), Search.integer(min, max) or a range(...)"))
            continue
        if isinstance(algorithm, GridSearch) and isinstance(space, ContinuousSearchSpace):
            problems.append(Problem(f"search_space[{name!r}]", value, "with GridSearch: Search.choice([...]) or an integer range (a continuous range has no grid points)"))
        out[name] = space
    return out, problems


def space_to_json(space: SearchSpace) -> dict[str, Any]:
    if isinstance(space, ContinuousSearchSpace):
        return {"type": "float", "min": space.min, "max": space.max, "distribution": Distribution(space.distribution).value}
    if isinstance(space, IntegerSearchSpace):
        return {"type": "int", "min": space.min, "max": space.max, "step": space.step, "log": space.log}
    return {"type": "categorical", "choices": list(space.choices)}


def space_from_json(d: Mapping[str, Any]) -> SearchSpace:
    if d["type"] == "float":
        return ContinuousSearchSpace(d["min"], d["max"], Distribution(d["distribution"]))
    if d["type"] == "int":
        return IntegerSearchSpace(d["min"], d["max"], d.get("step", 1), d.get("log", False))
    return CategoricalSearchSpace(list(d["choices"]))


def describe_space(space: SearchSpace) -> str:
    """``loguniform(1e-05, 0.01)``, ``integer(1, 4)``, ``choice([16, 32])``: for tables."""
    d = space_to_json(space)
    if d["type"] == "float":
        return f"{'loguniform' if d['distribution'] == 'logUniform' else 'uniform'}({d['min']:g}, {d['max']:g})"
    if d["type"] == "int":
        return f"integer({d['min']}, {d['max']}{', step ' + str(d['step']) if d['step'] != 1 else ''}{', log' if d['log'] else ''})"
    return f"choice({d['choices']!r})"


def distributions(spaces: Mapping[str, SearchSpace]) -> dict[str, Any]:
    """Optuna distributions for ``ask(fixed_distributions=...)``."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for name, s in spaces.items():
        if isinstance(s, ContinuousSearchSpace):
            out[name] = FloatDistribution(s.min, s.max, log=Distribution(s.distribution) is Distribution.LOG_UNIFORM)
        elif isinstance(s, IntegerSearchSpace):
            out[name] = IntDistribution(s.min, s.max, step=s.step, log=s.log)
        else:
            out[name] = CategoricalDistribution(list(s.choices))
    return out


def grid_points(spaces: Mapping[str, SearchSpace]) -> Iterable[dict[str, Any]]:
    """Every combination, the first parameter outermost (only discrete spaces have a grid)."""
    axes = []
    for s in spaces.values():
        axes.append(list(s.choices) if isinstance(s, CategoricalSearchSpace) else list(range(s.min, s.max + 1, s.step)))
    names = list(spaces)
    for combo in itertools.product(*axes):
        yield dict(zip(names, combo))


def grid_size(spaces: Mapping[str, SearchSpace]) -> int:
    n = 1
    for s in spaces.values():
        n *= len(s.choices) if isinstance(s, CategoricalSearchSpace) else len(range(s.min, s.max + 1, s.step))
    return n


# ---- algorithms and early stopping ------------------------------------------------------------------
def algorithm_problems(algorithm: Any) -> list[Problem]:
    if algorithm is None or isinstance(algorithm, (RandomSearch, GridSearch, TPE)) or _is_optuna(algorithm, "samplers", "BaseSampler"):
        return []
    return [Problem("algorithm", algorithm, "RandomSearch(), GridSearch(), TPE() or an optuna.samplers sampler (e.g. optuna.samplers.CmaEsSampler())")]


def early_stopping_problems(rule: Any) -> list[Problem]:
    if rule is None or isinstance(rule, (Median, Hyperband, SuccessiveHalving)) or _is_optuna(rule, "pruners", "BasePruner"):
        return []
    return [Problem("early_stopping", rule, "None, Median(), Hyperband(), SuccessiveHalving() or an optuna.pruners pruner")]


def _is_optuna(obj: Any, module: str, base: str) -> bool:
    if not type(obj).__module__.startswith("optuna."):
        return False
    import importlib

    return isinstance(obj, getattr(importlib.import_module(f"optuna.{module}"), base))


def describe_algorithm(algorithm: Any) -> dict[str, Any]:
    if isinstance(algorithm, BaseAlgorithm):
        return {"name": algorithm.algorithm_name, **algorithm.settings()}
    return {"name": type(algorithm).__name__}


def describe_early_stopping(rule: Any) -> dict[str, Any] | None:
    if rule is None:
        return None
    if isinstance(rule, EarlyStopping):
        return {"name": rule.name, **rule.settings()}
    return {"name": type(rule).__name__}


def sampler(algorithm: Any, seed_offset: int = 0) -> Any:
    """The Optuna sampler. A seeded sampler restarted by a resume is seeded ``seed + trials so far``,
    so it does not draw the first trials' values again."""
    import optuna

    if algorithm is None or isinstance(algorithm, (RandomSearch, GridSearch)):
        seed = getattr(algorithm, "random_state", None)
        return optuna.samplers.RandomSampler(seed=None if seed is None else seed + seed_offset)
    if isinstance(algorithm, TPE):
        seed = algorithm.random_state
        return optuna.samplers.TPESampler(seed=None if seed is None else seed + seed_offset, n_startup_trials=algorithm.n_startup_trials)
    return algorithm


def pruner(rule: Any) -> Any:
    import optuna

    if rule is None:
        return optuna.pruners.NopPruner()
    if isinstance(rule, Median):
        return optuna.pruners.MedianPruner(n_startup_trials=rule.n_startup_trials, n_warmup_steps=rule.n_warmup_steps, interval_steps=rule.interval_steps)
    if isinstance(rule, Hyperband):
        return optuna.pruners.HyperbandPruner(min_resource=rule.min_resource, max_resource=rule.max_resource, reduction_factor=rule.reduction_factor)
    if isinstance(rule, SuccessiveHalving):
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=rule.min_resource, reduction_factor=rule.reduction_factor, min_early_stopping_rate=rule.min_early_stopping_rate)
    return rule


# ---- objectives ---------------------------------------------------------------------------------------
def objective_to_json(o: Objective) -> dict[str, Any]:
    return {"metric": o.metric, "direction": Direction(o.direction).value, "strategy": o.strategy}


def metric_key(metric: str, entries: Iterable[Mapping[str, Any]]) -> str | None:
    """The key of ``metric`` in a metrics history: the exact name, else ``eval_`` + name."""
    keys: set[str] = set()
    for e in entries:
        keys.update(e)
    if metric in keys:
        return metric
    if not metric.startswith("eval_") and f"eval_{metric}" in keys:
        return f"eval_{metric}"
    return None


def metric_series(metric: str, entries: list[Mapping[str, Any]]) -> list[tuple[int, float]]:
    """``(step, value)`` of every logged ``metric`` in order; a missing number (NaN/inf stored as
    null) is NaN. Later attempts of a restarted job replace the steps they repeat."""
    key = metric_key(metric, entries)
    if key is None:
        return []
    by_step: dict[int, float] = {}
    for e in entries:
        if key in e:
            v = e[key]
            by_step[int(e.get("step") or 0)] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
    return sorted(by_step.items())


_STDOUT_METRIC = r"(?:^|[\s,;{(])[\"']?NAME[\"']?\s*[=:]\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|NaN|inf)"


def stdout_series(metric: str, lines: Iterable[str]) -> list[tuple[int, float]]:
    """Values printed as ``metric=value`` (Katib's stdout format), in order; the exact name first,
    else with the ``eval_`` prefix. The step is the value's position among them."""
    lines = list(lines)
    for name in [metric] if metric.startswith("eval_") else [metric, f"eval_{metric}"]:
        pattern = re.compile(_STDOUT_METRIC.replace("NAME", re.escape(name)))
        values = [float(m.group(1)) for line in lines for m in pattern.finditer(line)]
        if values:
            return list(enumerate(values))
    return []


def value_from_return(metric: str, value: Any) -> float | None:
    """The objective from a function's return value: a dict holding ``metric`` (or ``eval_`` + it)."""
    if not isinstance(value, Mapping):
        return None
    for key in (metric, f"eval_{metric}"):
        v = value.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def pick(series: list[tuple[int, float]], direction: Direction | str, strategy: str) -> float | None:
    """The trial's value: the latest, or the best (NaN never counts as best)."""
    if not series:
        return None
    if strategy == "latest":
        return series[-1][1]
    values = [v for _, v in series if not math.isnan(v)]
    if not values:
        return math.nan
    return min(values) if Direction(direction) is Direction.MINIMIZE else max(values)


def summarize(name: str, series: list[tuple[int, float]]) -> Metric:
    values = [v for _, v in series if not math.isnan(v)]
    latest = series[-1][1] if series else None
    return Metric(name, min(values) if values else None, max(values) if values else None, None if latest is None or math.isnan(latest) else latest)
