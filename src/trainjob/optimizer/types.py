"""What an optimization is made of and what it reports back (Kubeflow's ``kubeflow.optimizer`` names).

Pure data, no Optuna import: building a search space or an objective costs nothing and fails at
once, naming the field, when a value is wrong. ``trainjob.optimizer.spec`` turns these into
Optuna's distributions, samplers and pruners inside the optimizer process.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from trainjob.errors import Problem, ValidationError

_SCALARS = (str, int, float, bool, type(None))


# ---- search space ------------------------------------------------------------------------------
class Distribution(str, enum.Enum):
    """How a continuous value is drawn (Kubeflow's names)."""

    UNIFORM = "uniform"
    LOG_UNIFORM = "logUniform"


@dataclass(frozen=True)
class ContinuousSearchSpace:
    """A float drawn from ``[min, max]`` (``Search.uniform`` / ``Search.loguniform``)."""

    min: float
    max: float
    distribution: Distribution = Distribution.UNIFORM


@dataclass(frozen=True)
class IntegerSearchSpace:
    """An int drawn from ``min, min + step, ..., max`` (``Search.integer`` or a ``range``)."""

    min: int
    max: int
    step: int = 1
    log: bool = False


@dataclass(frozen=True)
class CategoricalSearchSpace:
    """One of ``choices`` (``Search.choice``); each value reaches the function with its own type."""

    choices: list


SearchSpace = ContinuousSearchSpace | IntegerSearchSpace | CategoricalSearchSpace


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


class Search:
    """Build the values of ``search_space`` (Kubeflow's ``Search``; ``integer`` is trainjob's)."""

    @staticmethod
    def uniform(min: float, max: float) -> ContinuousSearchSpace:
        """A float drawn uniformly from ``[min, max]``."""
        _check_range("Search.uniform", min, max, log=False)
        return ContinuousSearchSpace(float(min), float(max), Distribution.UNIFORM)

    @staticmethod
    def loguniform(min: float, max: float) -> ContinuousSearchSpace:
        """A float drawn uniformly in log space from ``[min, max]`` (``min > 0``): learning rates."""
        _check_range("Search.loguniform", min, max, log=True)
        return ContinuousSearchSpace(float(min), float(max), Distribution.LOG_UNIFORM)

    @staticmethod
    def choice(values: list) -> CategoricalSearchSpace:
        """One of ``values`` (str, int, float, bool or None), passed to the function as it is."""
        if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not values:
            raise ValidationError([Problem("Search.choice(values)", values, "a non-empty list such as [16, 32, 64]")], "search space")
        bad = [v for v in values if not isinstance(v, _SCALARS) or (isinstance(v, float) and not math.isfinite(v))]
        if bad:
            raise ValidationError([Problem("Search.choice(values)", bad[0], "str, int, float, bool or None values (they are stored in the study)")], "search space")
        if len({(type(v), v) for v in values}) != len(values):
            raise ValidationError([Problem("Search.choice(values)", list(values), "distinct values")], "search space")
        return CategoricalSearchSpace(list(values))

    @staticmethod
    def integer(min: int, max: int, step: int = 1, log: bool = False) -> IntegerSearchSpace:
        """An int from ``min`` to ``max`` inclusive, every ``step`` (``log=True``: drawn in log space, ``step`` 1)."""
        problems = []
        for label, v in (("min", min), ("max", max), ("step", step)):
            if isinstance(v, bool) or not isinstance(v, int):
                problems.append(Problem(f"Search.integer({label})", v, "an int"))
        if not problems:
            if min > max:
                problems.append(Problem("Search.integer(min, max)", (min, max), "min <= max"))
            if step < 1:
                problems.append(Problem("Search.integer(step)", step, "an int >= 1"))
            if log and (min < 1 or step != 1):
                problems.append(Problem("Search.integer(log=True)", (min, step), "min >= 1 and step 1 for a log-scaled range"))
        if problems:
            raise ValidationError(problems, "search space")
        return IntegerSearchSpace(min, max, step, bool(log))


def _check_range(what: str, lo: Any, hi: Any, log: bool) -> None:
    problems = []
    if not _number(lo):
        problems.append(Problem(f"{what}(min)", lo, "a finite number"))
    if not _number(hi):
        problems.append(Problem(f"{what}(max)", hi, "a finite number"))
    if not problems:
        if lo >= hi:
            problems.append(Problem(f"{what}(min, max)", (lo, hi), "min < max"))
        if log and lo <= 0:
            problems.append(Problem(f"{what}(min)", lo, "a number > 0 (a log scale starts above 0), e.g. 1e-5"))
    if problems:
        raise ValidationError(problems, "search space")


def as_search_space(value: Any) -> SearchSpace | None:
    """``value`` as a search space (a ``range`` becomes an integer range), or None if it is none."""
    if isinstance(value, (ContinuousSearchSpace, IntegerSearchSpace, CategoricalSearchSpace)):
        return value
    if isinstance(value, range) and len(value) > 0 and value.step > 0:
        return IntegerSearchSpace(value.start, value[-1], value.step)
    return None


# ---- objective, trials, algorithms ---------------------------------------------------------------
class Direction(str, enum.Enum):
    """Whether the objective metric should go down or up."""

    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"


@dataclass
class Objective:
    """What a trial is judged by: a metric its job logged (Kubeflow's ``Objective``).

    ``metric`` is matched against the job's metrics history like ``custom_metrics`` keys: the
    exact logged name first (``"loss"``, ``"eval_loss"``), else with the ``eval_`` prefix added
    (``"accuracy"`` finds ``eval_accuracy``). Jobs without a Trainer can instead return a dict
    holding it, or print ``metric=value`` lines (Katib's format). ``strategy``: the trial's value is
    the ``"latest"`` one it logged or its ``"best"`` one (trainjob's addition). Only the first
    objective is optimized; the others are reported with each trial.
    """

    metric: str = "loss"
    direction: Direction | str = Direction.MINIMIZE
    strategy: str = "latest"

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.metric, str) or not self.metric.strip():
            problems.append(Problem("Objective.metric", self.metric, "the name of a logged metric, e.g. 'eval_loss'"))
        try:
            self.direction = Direction(getattr(self.direction, "value", self.direction))
        except ValueError:
            problems.append(Problem("Objective.direction", self.direction, "'minimize' or 'maximize' (or Direction.MINIMIZE / Direction.MAXIMIZE)"))
        if self.strategy not in ("latest", "best"):
            problems.append(Problem("Objective.strategy", self.strategy, "'latest' (the last value logged) or 'best' (the best value logged)"))
        if problems:
            raise ValidationError(problems, "Objective")


@dataclass
class TrialConfig:
    """How many trials, how many at once, and how many may fail (Kubeflow's ``TrialConfig``).

    ``max_failed_trials``: the optimization fails once more trials than this have failed (``None``:
    it only fails when every trial failed).
    """

    num_trials: int = 10
    parallel_trials: int = 1
    max_failed_trials: int | None = None

    def __post_init__(self) -> None:
        problems = []
        for name, lo in (("num_trials", 1), ("parallel_trials", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                problems.append(Problem(f"TrialConfig.{name}", v, f"an int >= {lo}"))
        v = self.max_failed_trials
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            problems.append(Problem("TrialConfig.max_failed_trials", v, "an int >= 0, or None (no limit)"))
        if problems:
            raise ValidationError(problems, "TrialConfig")


class BaseAlgorithm:
    """A search algorithm: how the next trial's values are chosen."""

    algorithm_name: str = ""

    def settings(self) -> dict[str, Any]:
        """The algorithm's settings, JSON-able, as shown in ``get_job`` and the CLI."""
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class RandomSearch(BaseAlgorithm):
    """Values drawn at random (Optuna's ``RandomSampler``); ``random_state`` makes the draws repeatable."""

    random_state: int | None = None
    algorithm_name = "random"


@dataclass
class GridSearch(BaseAlgorithm):
    """Every combination of the ``Search.choice`` values and integer ranges, in order (nested loops, the
    first parameter outermost). ``num_trials`` larger than the grid is cut to the grid's size."""

    algorithm_name = "grid"


@dataclass
class TPE(BaseAlgorithm):
    """Bayesian optimization with Optuna's Tree-structured Parzen Estimator (``TPESampler``).

    The first ``n_startup_trials`` are random; later ones model which values did well.
    """

    random_state: int | None = None
    n_startup_trials: int = 10
    algorithm_name = "tpe"


class EarlyStopping:
    """A rule that stops unpromising trials while they run (an Optuna pruner)."""

    name: str = ""

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class Median(EarlyStopping):
    """Stop a trial whose best objective so far is worse than the median of the finished trials at the
    same step (Optuna's ``MedianPruner``). Nothing is stopped before ``n_startup_trials`` trials have
    finished, nor before step ``n_warmup_steps``; a NaN objective is stopped at once.

    ``n_startup_trials=3`` by default, as Kubeflow Katib's median stopping rule
    (``min_trials_required``) and Ray Tune's ``MedianStoppingRule`` (``min_samples_required``);
    Optuna's own default is 5. Three finished trials already give a median, and every startup
    trial runs to its end whatever its values: with 5 of 16 trials, the startup trials were half
    of the steps a pruned study spent. Raise it when early values say little about the final one
    (a noisy objective, a long warm-up of the learning rate), or use ``n_warmup_steps``."""

    n_startup_trials: int = 3
    n_warmup_steps: int = 0
    interval_steps: int = 1
    name = "median"


@dataclass
class Hyperband(EarlyStopping):
    """Hyperband (Optuna's ``HyperbandPruner``): successive halving over several budgets; the budget
    is the training step. ``max_resource="auto"`` takes it from the first finished trial."""

    min_resource: int = 1
    max_resource: int | str = "auto"
    reduction_factor: int = 3
    name = "hyperband"


@dataclass
class SuccessiveHalving(EarlyStopping):
    """Successive halving (Optuna's ``SuccessiveHalvingPruner``), the budget being the training step."""

    min_resource: int | str = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    name = "successive_halving"


@dataclass
class TrainJobTemplate:
    """What every trial runs (Kubeflow's ``TrainJobTemplate``): a trainer whose ``func`` receives the
    sampled values as keyword arguments (a script receives them as ``--name=value``)."""

    trainer: Any
    runtime: Any = None
    initializer: Any = None

    def keys(self):
        return ["trainer", "runtime", "initializer"]

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


# ---- what comes back ------------------------------------------------------------------------------
class OptimizationStatus(str, enum.Enum):
    """An optimization's state; compares equal to its value (``"Complete"``)."""

    CREATED = "Created"
    RUNNING = "Running"
    COMPLETE = "Complete"
    FAILED = "Failed"
    STOPPED = "Stopped"

    @property
    def is_terminal(self) -> bool:
        return self in (OptimizationStatus.COMPLETE, OptimizationStatus.FAILED, OptimizationStatus.STOPPED)

    def __str__(self) -> str:
        return self.value


class TrialStatus(str, enum.Enum):
    """A trial's state: its job's, plus ``Pruned`` (stopped early by the early-stopping rule)."""

    CREATED = "Created"
    QUEUED = "Queued"
    RUNNING = "Running"
    COMPLETE = "Complete"
    PRUNED = "Pruned"
    FAILED = "Failed"
    STOPPED = "Stopped"

    @property
    def is_terminal(self) -> bool:
        return self in (TrialStatus.COMPLETE, TrialStatus.PRUNED, TrialStatus.FAILED, TrialStatus.STOPPED)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Metric:
    """One metric of a trial over its run (Kubeflow's ``Metric``; numbers here, not strings)."""

    name: str
    min: float | None
    max: float | None
    latest: float | None


@dataclass(frozen=True)
class Result:
    """The best trial's parameters (typed) and metrics (Kubeflow's ``Result``)."""

    parameters: dict[str, Any]
    metrics: list[Metric]
    trial_name: str | None = None
    value: float | None = None


@dataclass(frozen=True)
class Trial:
    """One trial (Kubeflow's ``Trial``): ``name`` is its job's name, ``trainjob`` that job.

    trainjob's fields: ``number`` (0, 1, ...), ``status``, ``value`` (the objective), ``step``
    (where a pruned trial was stopped), ``error`` (a failed trial's).
    """

    name: str
    parameters: dict[str, Any]
    trainjob: Any = None
    metrics: list[Metric] = field(default_factory=list)
    number: int = 0
    status: TrialStatus = TrialStatus.CREATED
    value: float | None = None
    step: int | None = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class OptimizationJob:
    """A snapshot of one optimization (Kubeflow's ``OptimizationJob``), trials in order.

    trainjob's fields: ``early_stopping``, ``message`` (why it is in its status), ``best_trial``.
    """

    name: str
    search_space: dict[str, SearchSpace]
    objectives: list[Objective]
    algorithm: Any
    trial_config: TrialConfig
    trials: list[Trial]
    creation_timestamp: datetime
    status: OptimizationStatus = OptimizationStatus.CREATED
    early_stopping: Any = None
    message: str | None = None
    best_trial: Trial | None = None
