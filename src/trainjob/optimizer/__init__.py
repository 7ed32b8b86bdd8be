"""Hyperparameter optimization: Kubeflow's ``kubeflow.optimizer`` API on Optuna (docs/hpo.md).

``from kubeflow.optimizer import OptimizerClient, Search, TrialConfig`` becomes
``from trainjob.optimizer import ...``. Trials are ordinary trainjob jobs; the study is a plain
Optuna storage under ``$TRAINJOB_HOME``; pruning acts on the metrics the trials log while they run.
"""

from trainjob.optimizer.client import OptimizerClient
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
    OptimizationJob,
    OptimizationStatus,
    RandomSearch,
    Result,
    Search,
    SuccessiveHalving,
    TPE,
    Trial,
    TrialConfig,
    TrialStatus,
    TrainJobTemplate,
)

__all__ = [
    "BaseAlgorithm",
    "CategoricalSearchSpace",
    "ContinuousSearchSpace",
    "Direction",
    "Distribution",
    "EarlyStopping",
    "GridSearch",
    "Hyperband",
    "IntegerSearchSpace",
    "Median",
    "Metric",
    "Objective",
    "OptimizationJob",
    "OptimizationStatus",
    "OptimizerClient",
    "RandomSearch",
    "Result",
    "Search",
    "SuccessiveHalving",
    "TPE",
    "Trial",
    "TrialConfig",
    "TrialStatus",
    "TrainJobTemplate",
]
