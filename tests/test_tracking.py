"""Zero-code-change progress tracking on real jobs: HF Trainer and TRL trainers."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

import jobs
from trainjob import CustomTrainer, TransformersTrainer
from trainjob.progress import PROGRESS_KEYS

pytestmark = pytest.mark.slow


def _run(client, func, timeout=240, **kw):
    job_id = client.train(TransformersTrainer(func=func, **kw))
    client.wait_for_job_completion(job_id, timeout=timeout)
    return job_id


def test_hf_trainer_with_eval_and_compute_metrics(client):
    job_id = _run(client, jobs.classifier_with_metrics, func_args={"max_steps": 20}, custom_metrics={"my_f1": "eval_custom_f1", "grad_norm": "gradient_norm"})
    p = client.get_job_progress(job_id)
    assert tuple(p) == PROGRESS_KEYS
    assert p["progressPercentage"] == 100 and p["currentStep"] == 20 and p["totalSteps"] == 20
    assert p["totalEpochs"] == 3 and p["currentEpoch"] == 2  # 8 steps/epoch: 20 steps = 2.5 epochs of 3
    assert p["estimatedRemainingSeconds"] == 0 and p["estimatedRemainingTimeSummary"] == "0 seconds"
    ev = p["evalMetrics"]
    assert 0 <= ev["eval_accuracy"] <= 1 and ev["eval_loss"] > 0
    assert ev["eval_custom_f1"] == pytest.approx(ev["eval_accuracy"] * 0.9)  # custom metric renamed into evalMetrics
    assert "eval_my_f1" not in ev
    assert p["trainMetrics"]["gradient_norm"] > 0 and "grad_norm" not in p["trainMetrics"]
    assert p["trainMetrics"]["throughput_samples_sec"] > 0
    history = client.get_job_metrics(job_id)
    assert [h["step"] for h in history if "loss" in h] == [5, 10, 15, 20]
    assert [h["step"] for h in history if "eval_accuracy" in h] == [10, 20]
    events = client.get_job_events(job_id)
    begin = next(e for e in events if e.reason == "TrainBegin").data
    assert begin["model_class"] == "BertForSequenceClassification" and begin["parameters"] > 1000
    assert begin["max_steps"] == 20 and begin["num_train_epochs"] == 3 and begin["world_size"] == 1
    saves = [e.data for e in events if e.reason == "Save"]
    assert [s["step"] for s in saves] == [10, 20] and saves[0]["checkpoint"].endswith("clf/checkpoint-10")
    assert [e.data["step"] for e in events if e.reason == "Evaluate"] == [10, 20]
    end = next(e for e in events if e.reason == "TrainEnd").data
    assert end["global_step"] == 20 and end["total_flos"] > 0 and end["completed"] is True
    assert end["best_metric"] is not None and end["best_model_checkpoint"].endswith(("checkpoint-10", "checkpoint-20"))
    result = client.get_job_result(job_id)
    assert str(result.best_checkpoint) == end["best_model_checkpoint"]


@pytest.mark.parametrize(
    "func,kwargs",
    [(jobs.trl_sft, {}), (jobs.trl_sft, {"messages": True}), (jobs.trl_dpo, {}), (jobs.trl_grpo, {})],
    ids=["sft-text", "sft-messages", "dpo", "grpo"],
)
def test_trl_trainers_are_instrumented(client, func, kwargs):
    job_id = _run(client, func, func_args=kwargs)
    p = client.get_job_progress(job_id)
    max_steps = func.__defaults__[0]
    assert p["currentStep"] == max_steps and p["progressPercentage"] == 100
    assert p["trainMetrics"]["loss"] is not None or p["trainMetrics"].get("train_loss") is not None
    begin = next(e for e in client.get_job_events(job_id) if e.reason == "TrainBegin")
    assert begin.data["model_class"] == "GPT2LMHeadModel"
    assert len([m for m in client.get_job_metrics(job_id) if "loss" in m]) >= max_steps // 2 - 1


def test_two_node_job_only_rank0_reports(client):
    job_id = _run(client, jobs.tiny, num_nodes=2, func_args={"max_steps": 20})
    events = client.get_job_events(job_id)
    assert [e.reason for e in events].count("TrainBegin") == 1
    assert [e.reason for e in events].count("TrainEnd") == 1
    assert [m["step"] for m in client.get_job_metrics(job_id) if "loss" in m] == [10, 20]
    p = client.get_job_progress(job_id)
    assert p["currentStep"] == 20 and p["totalEpochs"] == 2  # 224 samples / (8 x 2 ranks) = 14 steps per epoch
    run_dir = client.get_job(job_id).job_dir / "run"
    assert json.loads((run_dir / "endpoint.json").read_text())["pid"]  # written once, by rank 0


def test_tracking_off_injects_nothing(client):
    job_id = _run(client, jobs.injected_state, enable_progression_tracking=False)
    state = client.get_job_result(job_id).return_value
    assert state["default_callbacks"] == ["DefaultFlowCallback"]
    assert state["threads"] == ["MainThread"]
    assert "_TrainerImportHook" not in state["meta_path"]
    assert state["server_module_loaded"] is False
    assert client.get_job_progress(job_id) is None
    assert client.get_job_metrics(job_id) == []
    # ...and with tracking on, the same probe sees the callback and the endpoint thread.
    job_id = _run(client, jobs.injected_state)
    state = client.get_job_result(job_id).return_value
    assert state["default_callbacks"] == ["DefaultFlowCallback", "TrainjobCallback"]
    assert "trainjob-metrics" in state["threads"]


def test_live_progress_endpoint_and_monotonic_steps(client):
    # 150 steps of at least 40 ms each: the test's polls see the run mid-way even on a busy machine
    job_id = client.train(TransformersTrainer(func=jobs.slow_tiny, func_args={"max_steps": 150, "save_steps": None, "step_delay": 0.04, "logging_steps": 5}, metrics_port=28180))
    assert client.get_job_progress(job_id) is None  # before the first step
    steps, polled, proms = [], [], []
    endpoint = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        job = client.get_job(job_id)
        p = client.get_job_progress(job_id)
        if p:
            steps.append(p["currentStep"])
            endpoint = endpoint or job.spec and _endpoint(client, job_id)
            if endpoint and not job.status.is_terminal and len(polled) < 10 and (len(polled) < 3 or not any("loss" in q["trainMetrics"] for q in polled)):
                with urllib.request.urlopen(endpoint, timeout=5) as r:
                    polled.append(json.loads(r.read()))
                with urllib.request.urlopen(endpoint + "/prometheus", timeout=5) as r:
                    proms.append((polled[-1], r.read().decode()))
        if job.status.is_terminal:
            break
        time.sleep(0.3)
    assert client.get_job(job_id).status == "Complete"
    assert steps == sorted(steps), "progress went backwards"
    assert len(set(steps)) >= 3, f"progress was not live: {steps}"
    assert steps[-1] == 150
    assert polled and all(tuple(p) == PROGRESS_KEYS for p in polled)
    assert endpoint.startswith("http://127.0.0.1:")
    live = [p for p in polled if p["currentStep"] < 150]
    assert live, f"the endpoint was never polled mid-run: {polled}"
    assert any(p["trainMetrics"].get("throughput_samples_sec", 0) > 0 for p in live), live  # live, not only at the end
    assert all("trainjob_current_step" in text and "trainjob_progress_percentage" in text for _, text in proms)
    logged = [text for p, text in proms if "loss" in p["trainMetrics"]]  # a loss was logged before that poll
    assert logged and all('name="loss"' in text for text in logged), proms


def _endpoint(client, job_id):
    from trainjob.backends.local.backend import LocalBackend

    backend = client.backend
    assert isinstance(backend, LocalBackend)
    row = backend.store.get_job(job_id)
    return (row.extra or {}).get("metrics_endpoint")


def test_two_jobs_on_one_port_do_not_collide(client):
    a = client.train(TransformersTrainer(func=jobs.tiny, func_args={"max_steps": 300}, metrics_port=28190))
    b = client.train(TransformersTrainer(func=jobs.tiny, func_args={"max_steps": 300}, metrics_port=28190))
    for j in (a, b):
        client.wait_for_job_completion(j, timeout=240)
    ports = {_endpoint(client, j) for j in (a, b)}
    assert len(ports) == 2
    moved = [e for j in (a, b) for e in client.get_job_events(j) if e.reason == "MetricsPort"]
    assert len(moved) == 1 and moved[0].data["requested"] == 28190


def test_custom_trainer_reports_no_progress(client):
    job_id = client.train(CustomTrainer(func=jobs.tiny, func_args={"max_steps": 5}))
    client.wait_for_job_completion(job_id, timeout=120)
    assert client.get_job_progress(job_id) is None
    assert "TrainBegin" not in [e.reason for e in client.get_job_events(job_id)]


def test_wait_with_progress_bar(client, capsys):
    job_id = client.train(TransformersTrainer(func=jobs.tiny, func_args={"max_steps": 60}))
    job = client.wait_for_job_completion(job_id, timeout=180, show_progress=True)
    assert job.status == "Complete"
    out = capsys.readouterr().out
    assert job_id in out and "step 60/60" in out and "100%" in out


def test_training_stopped_early_by_user_code_ends_with_no_time_left(client):
    job_id = _run(client, jobs.tiny_stopping_early, func_args={"stop_at": 7, "max_steps": 50})
    p = client.get_job_progress(job_id)
    assert p["currentStep"] == 7 and p["totalSteps"] == 50 and p["progressPercentage"] == 14
    assert p["estimatedRemainingSeconds"] == 0 and p["estimatedRemainingTimeSummary"] == "0 seconds"
    end = next(e for e in client.get_job_events(job_id) if e.reason == "TrainEnd")
    assert end.data["completed"] is False and end.data["global_step"] == 7
