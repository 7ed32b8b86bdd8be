"""JobSpec: typed, frozen, one JSON form with a version; reads the dicts earlier releases stored."""

from __future__ import annotations

import dataclasses
import json
import pickle
import time

import pytest

from trainjob import CustomTrainer, TrainerClient, TransformersTrainer, ValidationError
from trainjob.config import LocalBackendConfig
from trainjob.core.spec import SPEC_VERSION, JobSpec
from trainjob.masking import MASK
from trainjob.store import JobRow, Store
from trainjob.types import JobStatus

# A spec as the local backend stored it before JobSpec (no version), secrets already masked.
OLD_LOCAL = {
    "trainer": "TransformersTrainer", "entrypoint": "script", "func": None, "func_args": None, "image": None,
    "packages_to_install": None, "pip_index_urls": None, "num_nodes": 2, "resources_per_node": {"cpu": 2},
    "env": {"HF_TOKEN": MASK, "A": "1"}, "script": "/code/train.py", "module": None, "command": None,
    "script_args": ["--lr", "0.1"], "num_procs_per_node": None, "max_restarts": 3, "active_deadline_seconds": None,
    "stop_grace_seconds": 60.0, "exit_grace_seconds": 30.0, "warm_start": True, "enable_progression_tracking": True,
    "custom_metrics": {"ppl": "perplexity"}, "metrics_port": 28080, "progress_timeout": None, "procs_per_node": 1,
    "resources": {"cpu": 2.0, "memory": None, "gpu": 0}, "submit_dir": "/code", "metrics_host": "127.0.0.1",
    "warm": {"enabled": True, "idle_timeout": 600}, "resume_from": None, "name": "old-job", "initializers": [],
}  # fmt: skip


def _trainer(**kw):
    return TransformersTrainer(func="pkg.mod:train", env={"HF_TOKEN": "hf_abcdefghijklmnopqrstuv", "A": "1"}, num_nodes=2, max_restarts=1, **kw)


def test_json_round_trip_keeps_every_field():
    spec = _trainer(custom_metrics={"ppl": "perplexity"}, resources_per_node={"cpu": 1}).job_spec(name="j", submit_dir="/s", initializers=[{"step": "model-initializer", "target": "m"}])
    text = spec.to_json()
    assert json.loads(text)["version"] == SPEC_VERSION
    again = JobSpec.from_json(text)
    assert again == spec and again.world_size == 2 and again.tracking.custom_metrics == {"ppl": "perplexity"}
    assert pickle.loads(pickle.dumps(spec)) == spec  # travels to Ray workers and between processes


def test_frozen():
    spec = _trainer().job_spec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.num_nodes = 3  # type: ignore[misc]
    with pytest.raises(TypeError, match="frozen"):
        spec.env["B"] = "2"  # type: ignore[index]


def test_reads_a_version_less_dict_from_an_earlier_release():
    spec = JobSpec.from_dict(OLD_LOCAL)
    assert spec.masked  # what earlier releases stored was the masked form
    assert (spec.num_nodes, spec.procs_per_node, spec.world_size, spec.limits.max_restarts) == (2, 1, 2, 3)
    assert spec.entrypoint.kind == "script" and spec.entrypoint.text() == "/code/train.py --lr 0.1"
    assert spec.tracking.metrics_host == "127.0.0.1" and spec.warm.idle_timeout == 600.0
    assert spec.shown_dict() == OLD_LOCAL  # shown exactly as before
    # An older, smaller record (fields added since are missing) takes the defaults.
    tiny = JobSpec.from_dict({"trainer": "CustomTrainer", "entrypoint": "func", "func": "m:f", "num_nodes": "2", "procs_per_node": 1})
    assert tiny.num_nodes == 2 and tiny.limits.stop_grace_seconds == 60.0 and tiny.tracking.metrics_port == 28080
    assert tiny.tracking.enabled  # absent: on, as readers before JobSpec took it (the dashboard draws its history)


def test_a_bad_field_is_named():
    with pytest.raises(ValidationError) as e:
        JobSpec.from_dict({**OLD_LOCAL, "num_nodes": 0, "env": ["A=1"], "entrypoint": "jar"})
    msg = str(e.value)
    assert "num_nodes" in msg and "env" in msg and "entrypoint" in msg and "an integer >= 1" in msg
    with pytest.raises(ValidationError, match="version"):
        JobSpec.from_json(json.dumps({**OLD_LOCAL, "version": SPEC_VERSION + 1}))


def test_secrets_are_kept_apart_and_put_back():
    spec = _trainer(script_args=None).job_spec()
    shown, hidden = spec.split()
    assert shown.masked and shown.env == {"HF_TOKEN": MASK, "A": "1"} and "hf_abc" not in shown.to_json()
    assert hidden == {"env": {"HF_TOKEN": "hf_abcdefghijklmnopqrstuv", "A": "1"}}
    real = JobSpec.from_json(shown.to_json()).with_secrets(hidden)
    assert real == spec and not real.masked
    with pytest.raises(ValueError, match="masked"):
        shown.require_real("plan_launch")  # ranks never get ****** as a value
    with pytest.raises(ValueError, match="stored"):
        spec.require_masked()


def test_to_spec_is_the_shown_dict():
    t = CustomTrainer(func="pkg.mod:f", env={"API_KEY": "x"})
    assert t.to_spec() == t.job_spec().to_dict() and t.to_spec(mask_secrets=True)["env"] == {"API_KEY": MASK}


def test_old_stored_jobs_still_list_and_show(tmp_path):
    home = tmp_path / "home"
    client = TrainerClient(LocalBackendConfig(home=str(home)))
    store = Store(home / "trainjob.db")
    now = time.time()
    store.insert_job(
        JobRow(id="old-job", name="old-job", backend="local", status=JobStatus.COMPLETE, created_at=now, started_at=now, finished_at=now,
               num_nodes=2, procs_per_node=1, spec=dict(OLD_LOCAL))
    )  # fmt: skip
    [job] = client.list_jobs()
    assert job.name == "old-job" and job.spec == OLD_LOCAL and [s.name for s in job.steps] == ["node-0", "node-1"]
    assert client.get_job("old-job").spec["env"]["HF_TOKEN"] == MASK
