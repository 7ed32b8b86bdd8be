"""Bad input is rejected at construction or at train(), names the field, and leaves nothing behind."""

from __future__ import annotations

import threading

import pytest

from trainjob import (
    CustomTrainer,
    ResourcesUnavailableError,
    SerializationError,
    TrainerClient,
    TransformersTrainer,
    ValidationError,
)
from trainjob.resources import local_capacity


def ok(**_):
    return 1


# (kwargs, the field the error must name, a fragment of what would be right)
BAD_SPECS = [
    ({"func": None}, "func", "training function"),
    ({}, "func", "training function"),
    ({"func": 42}, "func", "callable"),
    ({"func": "not a ref"}, "func", "package.module:function"),
    ({"func": ok, "script": "x.py"}, "script", "only one of"),
    ({"func": ok, "func_args": [1, 2]}, "func_args", "dict"),
    ({"func": ok, "func_args": {1: "a"}}, "func_args", "str keys"),
    ({"func": ok, "num_nodes": 0}, "num_nodes", ">= 1"),
    ({"func": ok, "num_nodes": -2}, "num_nodes", ">= 1"),
    ({"func": ok, "num_nodes": "2"}, "num_nodes", "int"),
    ({"func": ok, "num_nodes": True}, "num_nodes", "int"),
    ({"func": ok, "num_nodes": 1.5}, "num_nodes", "int"),
    ({"func": ok, "num_procs_per_node": 0}, "num_procs_per_node", ">= 1"),
    ({"func": ok, "max_restarts": -1}, "max_restarts", ">= 0"),
    ({"func": ok, "active_deadline_seconds": 0}, "active_deadline_seconds", ">= 1"),
    ({"func": ok, "stop_grace_seconds": -1}, "stop_grace_seconds", "seconds > 0"),
    ({"func": ok, "exit_grace_seconds": float("nan")}, "exit_grace_seconds", "seconds > 0"),
    ({"func": ok, "progress_timeout": "10m"}, "progress_timeout", "seconds > 0"),
    ({"func": ok, "progress_timeout": 60, "enable_progression_tracking": False}, "progress_timeout", "enable_progression_tracking=False"),
    ({"func": ok, "resources_per_node": {"memroy": "1Gi"}}, "resources_per_node['memroy']", "did you mean 'memory'"),
    ({"func": ok, "resources_per_node": {"memory": "16Gx"}}, "resources_per_node['memory']", "16Gi"),
    ({"func": ok, "resources_per_node": {"cpu": "lots"}}, "resources_per_node['cpu']", "500m"),
    ({"func": ok, "resources_per_node": {"cpu": -1}}, "resources_per_node['cpu']", "positive"),
    ({"func": ok, "resources_per_node": {"gpu": 0.5}}, "resources_per_node['gpu']", "whole number"),
    ({"func": ok, "resources_per_node": "4 cpus"}, "resources_per_node", "dict"),
    ({"func": ok, "env": {"A": 1}}, "env['A']", "string value"),
    ({"func": ok, "env": {"1BAD": "x"}}, "env['1BAD']", "variable name"),
    ({"func": ok, "env": ["A=1"]}, "env", "dict"),
    ({"func": ok, "metrics_port": 80}, "metrics_port", "1024 and 65535"),
    ({"func": ok, "metrics_port": 70000}, "metrics_port", "1024 and 65535"),
    ({"func": ok, "metrics_port": "28080"}, "metrics_port", "int port"),
    ({"func": ok, "enable_progression_tracking": "yes"}, "enable_progression_tracking", "True or False"),
    ({"func": ok, "custom_metrics": {"f1": 3}}, "custom_metrics", "exposed name"),
    ({"func": ok, "packages_to_install": "trl"}, "packages_to_install", "list"),
    ({"func": ok, "packages_to_install": ["trl", ""]}, "packages_to_install[1]", "non-empty"),
    ({"func": ok, "pip_index_urls": ["pypi.org/simple"]}, "pip_index_urls[0]", "http"),
    ({"script": "/nonexistent/train.py"}, "script", "does not exist"),
    ({"module": "not a module!"}, "module", "dotted module"),
    ({"script": __file__, "script_args": "--lr 1e-4"}, "script_args", "list of strings"),
    ({"func": ok, "script_args": ["--x"]}, "script_args", "script, module or command"),
]


@pytest.mark.parametrize("kwargs,field,expected", BAD_SPECS, ids=[f"{i}-{c[1]}" for i, c in enumerate(BAD_SPECS)])
def test_bad_spec_names_field_and_fix(kwargs, field, expected):
    with pytest.raises(ValidationError) as info:
        TransformersTrainer(**kwargs)
    err = info.value
    assert field in err.fields, f"{field} not in {err.fields}"
    problem = next(p for p in err.problems if p.field == field)
    assert expected in problem.expected
    assert field in str(err)


def test_every_problem_reported_at_once():
    with pytest.raises(ValidationError) as info:
        TransformersTrainer(func=ok, num_nodes=0, resources_per_node={"memroy": "1Gi"}, env={"A": 1}, metrics_port=1)
    assert set(info.value.fields) == {"num_nodes", "resources_per_node['memroy']", "env['A']", "metrics_port"}
    assert "4 problems" in str(info.value)


def test_validation_error_is_a_value_error_and_pickles():
    import pickle

    with pytest.raises(ValueError) as info:
        CustomTrainer(func=ok, num_nodes=0)
    again = pickle.loads(pickle.dumps(info.value))
    assert again.fields == ["num_nodes"] and str(again) == str(info.value)


def test_custom_trainer_is_never_instrumented():
    t = CustomTrainer(func=ok)
    assert t.enable_progression_tracking is False
    with pytest.raises(TypeError):
        CustomTrainer(func=ok, enable_progression_tracking=True)  # not an argument of CustomTrainer


def _nothing_left(home):
    jobs_dir = home / "jobs"
    leftover = list(jobs_dir.iterdir()) if jobs_dir.exists() else []
    return leftover == [] and TrainerClient().list_jobs() == []


def test_request_larger_than_machine_fails_at_submit(client, home):
    cap = local_capacity()
    with pytest.raises(ResourcesUnavailableError) as info:
        client.train(TransformersTrainer(func=ok, resources_per_node={"cpu": cap.cpus + 1}))
    assert f"this machine has {cap.cpus} CPUs" in str(info.value)
    with pytest.raises(ResourcesUnavailableError) as info:
        client.train(TransformersTrainer(func=ok, resources_per_node={"memory": "100000Gi"}))
    assert "this machine has" in str(info.value) and "resources_per_node['memory']" in str(info.value)
    with pytest.raises(ResourcesUnavailableError):
        client.train(TransformersTrainer(func=ok, resources_per_node={"gpu": len(cap.gpus) + 1}))
    with pytest.raises(ResourcesUnavailableError):  # summed over the nodes sharing this machine
        client.train(TransformersTrainer(func=ok, num_nodes=cap.cpus + 1, resources_per_node={"cpu": 1}))
    assert _nothing_left(home)


def test_unpicklable_closure_is_named(client, home):
    lock = threading.Lock()

    def train():
        with lock:
            return 1

    with pytest.raises(SerializationError) as info:
        client.train(TransformersTrainer(func=train))
    assert "closure variable 'lock'" in str(info.value)
    assert "lock" in str(info.value) and "create it inside the function" in str(info.value)
    assert _nothing_left(home)


def test_unpicklable_argument_is_named(client, home):
    with pytest.raises(SerializationError) as info:
        client.train(TransformersTrainer(func=ok, func_args={"lock": threading.Lock()}))
    assert "func_args['lock']" in str(info.value)
    assert _nothing_left(home)


def test_train_rejects_non_trainer_and_bad_name(client, home):
    with pytest.raises(ValidationError) as info:
        client.train(trainer=ok)
    assert info.value.fields == ["trainer"]
    with pytest.raises(ValidationError) as info:
        client.train(TransformersTrainer(func=ok), name="")
    assert info.value.fields == ["name"]
    assert _nothing_left(home)


def test_unknown_status_filter(client):
    with pytest.raises(ValidationError) as info:
        client.list_jobs(status="Finished")
    assert "Complete" in str(info.value)


def test_bad_backend_config():
    from trainjob import BackendError

    with pytest.raises(BackendError) as info:
        TrainerClient(backend_config={"address": "auto"})
    assert "LocalBackendConfig()" in str(info.value)
