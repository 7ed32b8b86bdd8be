"""trainjob: run HuggingFace Transformers and TRL training as managed jobs.

The public API, and only it. Everything else is internal and may change.
"""

from typing import TYPE_CHECKING

from trainjob.config import LocalBackendConfig, RayBackendConfig
from trainjob.errors import (
    BackendError,
    JobFailedError,
    JobNotFoundError,
    JobStateError,
    JobTimeoutError,
    Problem,
    ResourcesUnavailableError,
    SerializationError,
    TrainJobError,
    ValidationError,
)
from trainjob.types import Event, JobStatus, Result, Runtime, RuntimeKind, RuntimeTrainer, Step, TrainerType, TrainJob

# Imported at first use (PEP 562): a process that imports a part of trainjob (a job's supervisor,
# ~0.16 s from start to its ranks' fork, of which ~30 ms were these) does not pay for the clients.
_LAZY = {
    "TrainerClient": "trainjob.client",
    "DATASET_PATH": "trainjob.initializers",
    "MODEL_PATH": "trainjob.initializers",
    "HuggingFaceDatasetInitializer": "trainjob.initializers",
    "HuggingFaceModelInitializer": "trainjob.initializers",
    "Initializer": "trainjob.initializers",
    "S3DatasetInitializer": "trainjob.initializers",
    "S3ModelInitializer": "trainjob.initializers",
    "OptimizerClient": "trainjob.optimizer",  # HPO (kubeflow.optimizer; the rest in trainjob.optimizer)
    "TrainJobTemplate": "trainjob.optimizer",
    "BuiltinTrainer": "trainjob.trainers",
    "CustomTrainer": "trainjob.trainers",
    "CustomTrainerContainer": "trainjob.trainers",
    "TransformersTrainer": "trainjob.trainers",
}

if TYPE_CHECKING:
    from trainjob.client import TrainerClient
    from trainjob.initializers import (
        DATASET_PATH,
        MODEL_PATH,
        HuggingFaceDatasetInitializer,
        HuggingFaceModelInitializer,
        Initializer,
        S3DatasetInitializer,
        S3ModelInitializer,
    )
    from trainjob.optimizer import OptimizerClient, TrainJobTemplate
    from trainjob.trainers import BuiltinTrainer, CustomTrainer, CustomTrainerContainer, TransformersTrainer


def __getattr__(name: str):
    import importlib

    module = _LAZY.get(name)
    if module is None:
        try:  # a submodule not imported yet (trainjob.optimizer, trainjob.demo...), as before
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BuiltinTrainer",
    "CustomTrainer",
    "CustomTrainerContainer",
    "DATASET_PATH",
    "Event",
    "HuggingFaceDatasetInitializer",
    "HuggingFaceModelInitializer",
    "Initializer",
    "JobFailedError",
    "JobNotFoundError",
    "JobStateError",
    "JobStatus",
    "JobTimeoutError",
    "LocalBackendConfig",
    "MODEL_PATH",
    "OptimizerClient",
    "Problem",
    "RayBackendConfig",
    "ResourcesUnavailableError",
    "Result",
    "Runtime",
    "RuntimeKind",
    "RuntimeTrainer",
    "S3DatasetInitializer",
    "S3ModelInitializer",
    "SerializationError",
    "Step",
    "TrainJob",
    "TrainJobError",
    "TrainJobTemplate",
    "TrainerClient",
    "TrainerType",
    "TransformersTrainer",
    "ValidationError",
]
