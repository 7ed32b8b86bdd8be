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
        # Kubeflow's types (issue 13)
        "CustomTrainerContainer", "BuiltinTrainer", "Runtime", "RuntimeTrainer", "RuntimeKind", "TrainerType",
        "Initializer", "HuggingFaceModelInitializer", "HuggingFaceDatasetInitializer", "S3ModelInitializer",
        "S3DatasetInitializer", "MODEL_PATH", "DATASET_PATH",
        # hyperparameter optimization (issue 14; the rest lives in trainjob.optimizer)
        "OptimizerClient", "TrainJobTemplate",
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


def test_kubeflow_client_signatures():
    """Kubeflow's parameter names and order, so `get_job(name=...)` and positional calls work unchanged."""
    sig = lambda m: list(inspect.signature(getattr(TrainerClient, m)).parameters.values())[1:]  # noqa: E731
    train = sig("train")
    assert [p.name for p in train[:4]] == ["runtime", "initializer", "trainer", "options"]
    assert all(p.kind is p.KEYWORD_ONLY for p in train[4:]) and {p.name for p in train[4:]} == {"resume", "name"}
    lj = sig("list_jobs")
    assert lj[0].name == "runtime" and lj[0].kind is lj[0].POSITIONAL_OR_KEYWORD and {p.name for p in lj[1:]} == {"status", "labels", "name", "limit", "offset", "newest_first"}
    assert all(p.kind is p.KEYWORD_ONLY for p in lj[1:]) and {p.name: p.default for p in lj[1:]}["limit"] is None  # Kubeflow's default: every job
    for method in ("get_job", "get_job_logs", "get_job_events", "wait_for_job_status", "delete_job", "get_job_progress",
                   "get_job_metrics", "get_job_result", "wait_for_job_completion", "stop_job", "read_job_logs"):  # fmt: skip
        assert sig(method)[0].name == "name", method
    logs = {p.name: p.default for p in sig("get_job_logs")}
    assert logs == {"name": inspect.Parameter.empty, "step": "node-0", "follow": False}
    assert [p.name for p in sig("wait_for_job_status")] == ["name", "status", "timeout", "polling_interval", "callbacks"]
    assert [p.name for p in sig("get_runtime")] == ["name"] and [p.name for p in sig("get_runtime_packages")] == ["runtime"]


def test_kubeflow_trainer_positional_order():
    """CustomTrainer's positional arguments are Kubeflow's; TransformersTrainer's are RHAI's (no image)."""
    from trainjob import CustomTrainer

    def f():
        pass

    t = CustomTrainer(f, {"a": 1}, "img:1", ["peft"], ["https://pypi.org/simple"], 2, {"cpu": 1}, {"X": "1"})
    assert (t.func, t.func_args, t.image, t.packages_to_install, t.pip_index_urls, t.num_nodes, t.resources_per_node, t.env) == (
        f, {"a": 1}, "img:1", ["peft"], ["https://pypi.org/simple"], 2, {"cpu": 1}, {"X": "1"})  # fmt: skip
    assert CustomTrainer(f, num_nodes=None).num_nodes == 1  # Kubeflow's None: the runtime's default
    r = TransformersTrainer(f, None, ["peft"], None, 1, None, {"X": "1"}, False)
    assert r.packages_to_install == ["peft"] and r.env == {"X": "1"} and r.enable_progression_tracking is False and r.image is None
    assert t.to_spec()["image"] == "img:1"


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


def test_errors_are_the_classes_kubeflow_callers_catch():
    import pickle

    from trainjob import BackendError, JobFailedError, JobNotFoundError, JobStateError, JobTimeoutError, Problem, ValidationError

    assert issubclass(ValidationError, ValueError) and issubclass(JobTimeoutError, TimeoutError)
    for cls in (JobNotFoundError, JobFailedError, JobStateError, BackendError):
        assert issubclass(cls, RuntimeError), cls
    assert issubclass(JobNotFoundError, KeyError)  # what trainjob's callers caught before
    err = ValidationError([Problem("Name", "Bad", "a DNS-1035 name")], "Name")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is ValidationError and again.problems == err.problems and str(again) == str(err)
    again = pickle.loads(pickle.dumps(JobFailedError("j", "Failed", {"type": "ValueError", "message": "boom"})))
    assert isinstance(again, RuntimeError) and again.error["message"] == "boom" and again.job_id == "j"
