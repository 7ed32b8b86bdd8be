"""trainjob: run HuggingFace Transformers and TRL training as managed jobs.

The public API, and only it. Everything else is internal and may change.
"""

from trainjob.client import TrainerClient
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
from trainjob.initializers import (
    DATASET_PATH,
    MODEL_PATH,
    HuggingFaceDatasetInitializer,
    HuggingFaceModelInitializer,
    Initializer,
    S3DatasetInitializer,
    S3ModelInitializer,
)
from trainjob.optimizer import OptimizerClient, TrainJobTemplate  # HPO (kubeflow.optimizer; the rest in trainjob.optimizer)
from trainjob.trainers import BuiltinTrainer, CustomTrainer, CustomTrainerContainer, TransformersTrainer
from trainjob.types import Event, JobStatus, Result, Runtime, RuntimeKind, RuntimeTrainer, Step, TrainerType, TrainJob

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
