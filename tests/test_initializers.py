"""Initializers (issue 13): a model and a dataset put in place before the ranks start.

The HF cache is a real one, filled here (no network): a tiny GPT-2 saved with ``save_pretrained``
and a JSON-lines dataset, laid out as the hub's cache lays out a downloaded snapshot, read with
``HF_HUB_OFFLINE=1``. The job trains the model it finds in ``MODEL_PATH`` on ``DATASET_PATH``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trainjob import (
    CustomTrainer,
    HuggingFaceDatasetInitializer,
    HuggingFaceModelInitializer,
    Initializer,
    S3ModelInitializer,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cached_snapshot(hf_home: Path, repo_type: str, repo_id: str) -> Path:
    """The folder the hub's cache keeps a snapshot of ``repo_id`` in (``refs/main`` -> commit)."""
    root = hf_home / "hub" / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    return snap


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_dir = _cached_snapshot(hf_home, "model", "tiny-org/tiny-gpt2")
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2)).save_pretrained(model_dir)
    (model_dir / "pytorch_model.bin").write_bytes(b"ignored by the default ignore_patterns")
    data_dir = _cached_snapshot(hf_home, "dataset", "tiny-org/numbers")
    (data_dir / "train.jsonl").write_text("".join(json.dumps({"ids": [i % 64 for i in range(k, k + 16)]}) + "\n" for k in range(24)))
    return hf_home


def train_on_initialized(steps: int):
    """Runs in the job: the model and dataset are where the initializers put them."""
    import json
    import os

    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from trainjob import DATASET_PATH, MODEL_PATH

    assert sorted(os.listdir(MODEL_PATH)) == ["config.json", "generation_config.json", "model.safetensors"], os.listdir(MODEL_PATH)
    model = AutoModelForCausalLM.from_pretrained(MODEL_PATH)
    rows = [json.loads(line) for line in open(os.path.join(DATASET_PATH, "train.jsonl"))]
    data = [{"input_ids": torch.tensor(r["ids"]), "labels": torch.tensor(r["ids"])} for r in rows]
    args = TrainingArguments(output_dir="./output", max_steps=steps, per_device_train_batch_size=4, report_to=[], save_strategy="no", use_cpu=True)
    out = Trainer(model=model, args=args, train_dataset=data).train()
    return {"loss": out.training_loss, "rows": len(rows)}


@pytest.mark.slow
def test_hf_model_and_dataset_from_the_offline_cache(client, hf_cache):
    job = client.train(
        initializer=Initializer(
            model=HuggingFaceModelInitializer(storage_uri="hf://tiny-org/tiny-gpt2", access_token="hf_" + "x" * 34),
            dataset=HuggingFaceDatasetInitializer(storage_uri="hf://tiny-org/numbers"),
        ),
        trainer=CustomTrainer(func=train_on_initialized, func_args={"steps": 3}),
    )
    final = client.wait_for_job_status(job, timeout=240, polling_interval=0.5)
    result = client.get_job_result(job)
    assert result.return_value["rows"] == 24 and result.return_value["loss"] > 0
    assert [(s.name, s.status) for s in final.steps] == [("dataset-initializer", "Complete"), ("model-initializer", "Complete"), ("node-0", "Complete")]
    reasons = [e.reason for e in client.get_job_events(job)]
    assert reasons.index("InitializerCompleted") < reasons.index("Started"), reasons
    assert reasons.count("InitializerStarted") == 2 and reasons.count("InitializerCompleted") == 2
    log = "\n".join(client.get_job_logs(job, step="model-initializer"))
    assert "tiny-org/tiny-gpt2" in log and "offline" in log and "3 file(s) in place" in log, log
    assert "hf_xxxx" not in json.dumps(final.spec) and final.spec["env"]["TRAINJOB_MODEL_INITIALIZER_TOKEN"] == "******"
    assert (final.job_dir / "workdir" / "workspace" / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_local_paths_and_a_missing_repo(client, hf_cache, tmp_path):
    data = tmp_path / "my-data"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps({"ids": list(range(16))}) + "\n")
    model_snapshot = next((hf_cache / "hub").glob("models--*/snapshots/*"))
    ok = client.train(
        initializer=Initializer(model=HuggingFaceModelInitializer(storage_uri=model_snapshot.as_uri()), dataset=HuggingFaceDatasetInitializer(storage_uri=str(data))),
        trainer=CustomTrainer(func=train_on_initialized, func_args={"steps": 1}),
    )
    assert client.wait_for_job_status(ok, timeout=240, polling_interval=0.5).status == "Complete"
    assert client.get_job_result(ok).return_value["rows"] == 1

    missing = client.train(
        initializer=Initializer(model=HuggingFaceModelInitializer(storage_uri="hf://tiny-org/not-cached")),
        trainer=CustomTrainer(func=train_on_initialized, func_args={"steps": 1}),
    )
    with pytest.raises(RuntimeError, match="model-initializer failed"):
        client.wait_for_job_status(missing, timeout=240, polling_interval=0.5)
    job = client.get_job(missing)
    assert [(s.name, s.status) for s in job.steps][:1] == [("model-initializer", "Failed")]
    failed = [e.message for e in client.get_job_events(missing) if e.reason == "InitializerFailed"]
    assert len(failed) == 1 and failed[0].startswith("model-initializer: LocalEntryNotFoundError: ") and "HF_HUB_OFFLINE" in failed[0], failed  # the hub's own error
    assert "LocalEntryNotFoundError" in job.message and f"trainjob logs {missing} --step model-initializer" in job.message
    from test_cli import cli  # the command the message names prints that log

    shown = cli(Path(os.environ["TRAINJOB_HOME"]), "logs", missing, "--step", "model-initializer", check_rc=0).stdout
    assert "LocalEntryNotFoundError" in shown and "tiny-org/not-cached" in shown
    assert not (job.job_dir / "logs" / "attempt-0").exists()  # no rank started


def test_refused_initializers(client, tmp_path):
    with pytest.raises(ValueError, match="S3 initializers are not built yet"):
        client.train(initializer=Initializer(model=S3ModelInitializer(storage_uri="s3://bucket/model")), trainer=CustomTrainer(func=train_on_initialized))
    with pytest.raises(ValueError, match="does not exist"):
        client.train(initializer=Initializer(dataset=HuggingFaceDatasetInitializer(storage_uri=str(tmp_path / "nope"))), trainer=CustomTrainer(func=train_on_initialized))
    with pytest.raises(ValueError, match="hf://org/name"):
        HuggingFaceModelInitializer(storage_uri="gs://bucket/model")
    with pytest.raises(ValueError, match="s3://"):
        S3ModelInitializer(storage_uri="hf://org/model")
    assert client.list_jobs() == []
