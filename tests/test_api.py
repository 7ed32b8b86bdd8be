"""The public surface is exactly what DESIGN.md lists (pinned, so changes are deliberate)."""

from __future__ import annotations

import inspect

import trainjob
from trainjob import JobStatus, TrainerClient, TransformersTrainer


def test_public_names_are_pinned():
    assert sorted(trainjob.__all__) == sorted([
        "TrainerClient", "TransformersTrainer", "CustomTrainer", "LocalBackendConfig", "RayBackendConfig",
        "TrainJob", "JobStatus", "Event", "Result", "Step",
        "TrainJobError", "ValidationError", "Problem", "ResourcesUnavailableError", "SerializationError",
        "JobNotFoundError", "JobFailedError", "JobTimeoutError", "BackendError", "JobStateError",
    ])  # fmt: skip
    for name in trainjob.__all__:
        assert getattr(trainjob, name) is not None


def test_kubeflow_argument_names():
    params = inspect.signature(TransformersTrainer).parameters
    for name in ("func", "func_args", "packages_to_install", "pip_index_urls", "num_nodes", "resources_per_node", "env",
                 "enable_progression_tracking", "custom_metrics", "metrics_port", "max_restarts"):  # fmt: skip
        assert name in params, name
    assert params["metrics_port"].default == 28080 and params["enable_progression_tracking"].default is True
    for method in ("train", "list_jobs", "get_job", "get_job_logs", "get_job_events", "get_job_progress", "get_job_metrics",
                   "get_job_result", "wait_for_job_status", "wait_for_job_completion", "stop_job", "delete_job"):  # fmt: skip
        assert callable(getattr(TrainerClient, method)), method
    wait = inspect.signature(TrainerClient.wait_for_job_status).parameters
    assert wait["timeout"].default == 600 and wait["polling_interval"].default == 2


def test_status_enum():
    assert JobStatus.RUNNING == "Running" and str(JobStatus.FAILED) == "Failed"
    assert {s.value for s in JobStatus if s.is_terminal} == {"Complete", "Failed", "Stopped"}
    assert JobStatus.parse("queued") is JobStatus.QUEUED


def test_errors_pickle_across_processes():
    import pickle

    from trainjob import JobFailedError, JobNotFoundError, JobTimeoutError

    for err in (JobFailedError("abc", "Failed", {"rank": 1, "type": "ValueError", "message": "x"}), JobNotFoundError("abc"),
                JobTimeoutError("abc", ["Complete"], "Running", 5.0)):  # fmt: skip
        again = pickle.loads(pickle.dumps(err))
        assert type(again) is type(err) and str(again) == str(err)
