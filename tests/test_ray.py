"""The Ray backend on real Ray clusters started by these tests (issue 7).

A one-node cluster on loopback serves most tests; the tests that describe behaviour both backends
must share run twice, on the local backend and on Ray (``any_client``), so a difference shows. The
multi-node test starts two Ray nodes, each in its own network namespace, and runs the client
inside the first one. Jobs are the tiny GPT-2 of ``trainjob.demo`` (tens of steps); ranks start as
Ray Train workers, which costs 10-20 s per job on this machine.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import zipfile
from pathlib import Path

import psutil
import pytest

import jobs
import ray_cluster
from conftest import wait_until
from test_initializers import hf_cache  # noqa: F401 - the offline HF cache fixture
from trainjob import (
    BackendError,
    CustomTrainer,
    HuggingFaceDatasetInitializer,
    HuggingFaceModelInitializer,
    Initializer,
    JobFailedError,
    JobNotFoundError,
    JobStatus,
    RayBackendConfig,
    ResourcesUnavailableError,
    SerializationError,
    TrainerClient,
    TransformersTrainer,
    ValidationError,
)
from trainjob.backends.ray import plan
from trainjob.checkpoints import is_complete, list_checkpoints
from trainjob.progress import PROGRESS_KEYS

pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]

TERMINAL = {"Complete", "Failed", "Stopped"}
JOB_TIMEOUT = 240


# ---- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = ray_cluster.start_loopback(tmp_path_factory.mktemp("rayhome"))
    yield c
    c.stop()


@pytest.fixture
def ray_client(cluster, home):
    c = TrainerClient(cluster.config())  # its signing key lives in the test's own TRAINJOB_HOME
    yield c
    _end_running(c)


@pytest.fixture(params=["local", "ray"])
def any_client(request):
    """The same test against the local backend and against Ray."""
    if request.param == "local":
        return request.getfixturevalue("client")
    return request.getfixturevalue("ray_client")


def _end_running(c: TrainerClient) -> None:
    for job in c.list_jobs():
        if not job.status.is_terminal:
            c.delete_job(job.id)


# ---- helpers -------------------------------------------------------------------------------
def finish(client: TrainerClient, job_id: str, timeout: float = JOB_TIMEOUT):
    return client.wait_for_job_status(job_id, TERMINAL, timeout=timeout, polling_interval=0.25)


def events(client: TrainerClient, job_id: str, reason: str) -> list:
    return [e for e in client.get_job_events(job_id) if e.reason == reason]


def watch_progress(client: TrainerClient, job_id: str, timeout: float = JOB_TIMEOUT) -> tuple[object, list[dict]]:
    """Poll until the job ends; every distinct progress document seen while it was Running."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while True:
        job = client.get_job(job_id)
        p = client.get_job_progress(job_id)
        if p is not None and job.status == JobStatus.RUNNING and (not seen or p != seen[-1]):
            seen.append(p)
        if job.status.is_terminal:
            return job, seen
        assert time.monotonic() < deadline, f"job {job_id} still {job.status.value} after {timeout}s"
        time.sleep(0.2)


def wait_step(client: TrainerClient, job_id: str, step: int) -> int:
    def reached():
        p = client.get_job_progress(job_id)
        return p is not None and p["currentStep"] >= step and p["currentStep"]

    return wait_until(reached, JOB_TIMEOUT, what=f"step {step} of {job_id}")


def ranks_gone(client: TrainerClient, job_id: str) -> None:
    """On Ray: the Ray Train worker processes of the job are gone soon after it ends."""
    if client.backend.name != "ray":
        return
    pids = [r["pid"] for r in client.backend.rank_info(job_id)]
    assert pids
    wait_until(lambda: not any(psutil.pid_exists(p) for p in pids), timeout=30, what=f"the workers of {job_id} to exit")


# ---- the same behaviour on both backends ---------------------------------------------------
def test_two_rank_hf_trainer_job(any_client, request):
    """Progress while it runs, the metrics history, events, logs per rank, and a loadable checkpoint."""
    max_steps = 40
    trainer = TransformersTrainer(func=jobs.slow_tiny, func_args={"max_steps": max_steps, "save_steps": 20, "step_delay": 0.1}, num_procs_per_node=2)
    on_ray = any_client.backend.name == "ray"
    watch = ray_cluster.TrafficWatch(request.getfixturevalue("cluster")) if on_ray else None
    if watch:
        watch.__enter__()
    try:
        job_id = any_client.train(trainer, name="two-ranks")
        job, seen = watch_progress(any_client, job_id)
    finally:
        if watch:
            watch.__exit__(None, None, None)
    assert job.status == JobStatus.COMPLETE and job.name == "two-ranks" and job.attempt == 0, job.message
    assert job.started_at and job.finished_at and job.finished_at >= job.started_at

    # Live progress, in the documented schema, that moved while the job ran.
    mid = [p for p in seen if 0 < p["currentStep"] < max_steps]
    assert mid, f"no progress seen mid-run: {seen}"
    for p in seen:
        assert set(p) == set(PROGRESS_KEYS) and p["totalSteps"] == max_steps
    assert any("throughput_samples_sec" in p["trainMetrics"] and "loss" in p["trainMetrics"] for p in mid)
    final = any_client.get_job_progress(job_id)
    assert (final["currentStep"], final["progressPercentage"], final["estimatedRemainingSeconds"]) == (max_steps, 100, 0)

    # Every logged entry, in order, from rank 0 only.
    history = any_client.get_job_metrics(job_id)
    losses = [m for m in history if "loss" in m]
    assert [m["step"] for m in losses] == list(range(5, max_steps + 1, 5))
    assert all(m["attempt"] == 0 and m["learning_rate"] > 0 for m in losses)
    assert "train_runtime" in history[-1]

    reasons = [e.reason for e in any_client.get_job_events(job_id)]
    assert reasons[0] == "Created" and reasons[-1] == "Completed"
    assert reasons.count("Save") == 2 and "TrainEnd" in reasons and "Started" in reasons
    assert events(any_client, job_id, "TrainBegin")[0].data["world_size"] == 2  # DDP over both ranks

    rank0 = list(any_client.get_job_logs(job_id, step="rank-0"))
    assert any("'loss'" in line for line in rank0)
    node0 = list(any_client.get_job_logs(job_id, step="node-0"))
    assert any(line.startswith("[rank 0] ") for line in node0) and any(line.startswith("[rank 1] ") for line in node0)
    with pytest.raises(ValidationError):
        any_client.get_job_logs(job_id, step="rank-2")

    result = any_client.get_job_result(job_id)
    assert result.error is None and result.return_value["global_step"] == max_steps
    assert result.metrics["train_loss"] == pytest.approx(result.return_value["train_loss"])
    assert [p.name for p in result.checkpoints] == ["checkpoint-20", "checkpoint-40"]
    assert result.checkpoint == result.output_dir / "checkpoint-40" and is_complete(result.checkpoint)
    assert result.output_dir == job.job_dir / "workdir" / "output"  # a relative output_dir lands in the job's folder
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(result.checkpoint)  # a plain HF checkpoint, not Ray's nesting
    assert model.config.n_layer == 2
    assert [s.name for s in job.steps] == ["node-0"] and job.steps[0].device_count == 2

    if on_ray:
        driver_log = "\n".join(any_client.get_job_logs(job_id, step="driver"))
        assert "trainjob.backends.ray.driver" in driver_log  # the Ray job's own log
        ranks = any_client.backend.rank_info(job_id)
        assert sorted(r["rank"] for r in ranks) == [0, 1] and {r["node_ip"] for r in ranks} == {"127.0.0.1"}
        ranks_gone(any_client, job_id)
        assert watch.samples >= 5 and watch.connections_seen > 0
        assert not watch.offenders, f"traffic off loopback: {watch.offenders}"


def test_failure_names_the_rank_and_the_cause(any_client):
    job_id = any_client.train(CustomTrainer(func=jobs.fail_on_rank, func_args={"rank": 1, "message": "bad batch"}, num_procs_per_node=2))
    with pytest.raises(JobFailedError) as info:
        any_client.wait_for_job_completion(job_id, timeout=JOB_TIMEOUT)
    err = info.value.error
    assert (err["rank"], err["type"], err["message"]) == (1, "ValueError", "bad batch")
    assert "fail_on_rank" in err["traceback"]
    assert "on rank 1: ValueError: bad batch" in str(info.value)
    job = any_client.get_job(job_id)
    assert job.status == JobStatus.FAILED and "ValueError: bad batch" in job.message
    failed = events(any_client, job_id, "AttemptFailed")
    assert len(failed) == 1 and failed[0].data["error"]["rank"] == 1
    assert any_client.get_job_result(job_id).error["type"] == "ValueError"
    assert any("bad batch" in line for line in any_client.get_job_logs(job_id, step="rank-1"))
    ranks_gone(any_client, job_id)


def test_stop_saves_at_an_agreed_step(any_client):
    trainer = TransformersTrainer(func=jobs.slow_tiny, func_args={"max_steps": 300, "save_steps": None, "step_delay": 0.1}, num_procs_per_node=2)
    job_id = any_client.train(trainer)
    wait_step(any_client, job_id, 6)
    any_client.stop_job(job_id)
    job = finish(any_client, job_id)
    assert job.status == JobStatus.STOPPED, job.message
    end = events(any_client, job_id, "TrainEnd")[-1].data
    stopped_at = end["global_step"]
    assert end["stopped"] and 6 <= stopped_at < 300 and stopped_at % 5 == 0  # agreed at a check step by both ranks
    assert f"at step {stopped_at}" in job.message
    result = any_client.get_job_result(job_id)
    ckpts = list_checkpoints(result.output_dir)
    assert [c.name for c in ckpts] == [f"checkpoint-{stopped_at}"] and is_complete(ckpts[0])
    assert (ckpts[0] / "rng_state_0.pth").exists() and (ckpts[0] / "rng_state_1.pth").exists()  # both ranks saved
    assert result.checkpoint == ckpts[0]
    reasons = [e.reason for e in any_client.get_job_events(job_id)]
    assert reasons.index("StopRequested") < reasons.index("TrainEnd") < reasons.index("Stopped")
    n = len(reasons)
    any_client.stop_job(job_id)  # stopping an ended job changes nothing
    assert any_client.get_job(job_id).status == JobStatus.STOPPED and len(any_client.get_job_events(job_id)) == n
    ranks_gone(any_client, job_id)

    # train(resume=...) continues from that checkpoint in a new job (here: 10 steps more). The new
    # job gets the old one's files: a complete checkpoint shared (hard links: never written again),
    # everything else copied, so whatever the new job overwrites in place (a partial checkpoint,
    # final model files in output_dir) leaves the old job's files as they were.
    out = Path(result.output_dir)
    partial, final = out / f"checkpoint-{stopped_at + 5}", out / "model.safetensors"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"partial weights of the old job")
    final.write_bytes(b"final weights of the old job")
    rewrite = (f"output/{partial.name}/model.safetensors", "output/model.safetensors")
    more = TransformersTrainer(
        func=jobs.rewrite_then_slow_tiny, func_args={"rewrite": rewrite, "max_steps": stopped_at + 10, "save_steps": None, "step_delay": 0.0}, num_procs_per_node=2
    )
    resumed = any_client.train(more, resume=job_id)
    any_client.wait_for_job_completion(resumed, timeout=JOB_TIMEOUT)
    assert events(any_client, resumed, "TrainBegin")[0].data["start_step"] == stopped_at
    assert any_client.get_job_result(resumed).return_value["global_step"] == stopped_at + 10
    new_out = Path(any_client.get_job_result(resumed).output_dir)
    assert (new_out / "model.safetensors").read_bytes() != b"final weights of the old job"  # the new job did write its own
    assert (partial / "model.safetensors").read_bytes() == b"partial weights of the old job"
    assert final.read_bytes() == b"final weights of the old job"
    name = f"checkpoint-{stopped_at}"
    assert (out / name / "model.safetensors").stat().st_ino == (new_out / name / "model.safetensors").stat().st_ino
    assert [c.name for c in list_checkpoints(out)] == [name, partial.name]  # no new checkpoint in the old job's folder


def test_active_deadline_saves_and_fails_with_deadline_exceeded(any_client):
    """Kubeflow's ``ActiveDeadlineSeconds``: a graceful stop at the deadline, then ``Failed``."""
    trainer = TransformersTrainer(
        func=jobs.slow_tiny, func_args={"max_steps": 100000, "save_steps": None, "step_delay": 0.05}, active_deadline_seconds=30, stop_grace_seconds=20
    )
    job_id = any_client.train(trainer)
    job = finish(any_client, job_id)
    assert job.status == JobStatus.FAILED
    assert job.message.startswith("DeadlineExceeded: the job ran past active_deadline_seconds=30"), job.message
    assert any_client.get_job_events(job_id)[-1].reason == "DeadlineExceeded"
    assert any_client.get_job_result(job_id).error["type"] == "DeadlineExceeded"
    stopping = events(any_client, job_id, "Stopping")[0].message
    if "agree on a step" in stopping:  # training was under way: the ranks saved where they were
        assert "newest complete checkpoint: checkpoint-" in job.message
    ranks_gone(any_client, job_id)


def test_restart_resumes_from_the_last_checkpoint(any_client):
    """``max_restarts``: on Ray a Ray Train restart (FailureConfig); the resume is trainjob's on both."""
    trainer = TransformersTrainer(func=jobs.fails_once_at, func_args={"fail_at": 15, "rank": 1, "max_steps": 30, "save_steps": 10}, num_procs_per_node=2, max_restarts=1)
    job_id = any_client.train(trainer)
    job = any_client.wait_for_job_completion(job_id, timeout=JOB_TIMEOUT)
    assert job.status == JobStatus.COMPLETE and job.attempt == 1
    failed = events(any_client, job_id, "AttemptFailed")
    assert len(failed) == 1
    err = failed[0].data["error"]
    assert (err["rank"], err["type"], err["message"]) == (1, "RuntimeError", "injected failure at step 15")
    restart = events(any_client, job_id, "Restarting")
    assert len(restart) == 1 and (restart[0].data["attempt"], restart[0].data["step"]) == (1, 10)
    assert [b.data["start_step"] for b in events(any_client, job_id, "TrainBegin")] == [0, 10]
    assert [r.data["step"] for r in events(any_client, job_id, "Resuming")] == [10]
    history = [m for m in any_client.get_job_metrics(job_id) if "loss" in m]
    second = [m for m in history if m["attempt"] == 1]
    assert second and min(m["step"] for m in second) > 10 and max(m["step"] for m in second) == 30
    result = any_client.get_job_result(job_id)
    assert result.checkpoint.name == "checkpoint-30" and result.return_value["global_step"] == 30


def test_plain_torch_distributed_code(any_client):
    """Code written for torchrun (its own ``init_process_group``) runs unchanged, Ray Train or not."""
    job_id = any_client.train(CustomTrainer(func=jobs.gloo_allreduce, num_procs_per_node=2))
    any_client.wait_for_job_completion(job_id, timeout=JOB_TIMEOUT)
    assert any_client.get_job_result(job_id).return_value == 3.0  # (0 + 1) + (1 + 1)
    assert any_client.get_job_progress(job_id) is None  # no Trainer, no tracking


# ---- Ray only ----------------------------------------------------------------------------------
SFT_SCRIPT = '''
"""A TRL SFT script, as a user runs it with `torchrun train_sft.py --max-steps 8`."""
import argparse
from datasets import Dataset
from trl import SFTConfig, SFTTrainer
from trainjob.demo import build_model, build_tokenizer, corpus
from helper_mod import TEXT_FIELD  # a module next to the script

p = argparse.ArgumentParser()
p.add_argument("--max-steps", type=int)
a = p.parse_args()
texts = corpus(64)
tok = build_tokenizer(texts)
args = SFTConfig(output_dir="./sft", max_length=32, max_steps=a.max_steps, per_device_train_batch_size=4, logging_steps=2,
                 save_strategy="steps", save_steps=a.max_steps, report_to=[], use_cpu=True, disable_tqdm=True)
trainer = SFTTrainer(model=build_model(tok), args=args, train_dataset=Dataset.from_dict({TEXT_FIELD: texts}), processing_class=tok)
print("SFT-DONE", trainer.train().metrics["train_loss"] > 0)
'''


def test_trl_sft_script_job(ray_client, tmp_path):
    (tmp_path / "train_sft.py").write_text(SFT_SCRIPT)
    (tmp_path / "helper_mod.py").write_text("TEXT_FIELD = 'text'\n")
    job_id = ray_client.train(TransformersTrainer(script=str(tmp_path / "train_sft.py"), script_args=["--max-steps", "8"], num_procs_per_node=2))
    followed = list(ray_client.get_job_logs(job_id, step="rank-0", follow=True))  # streams until the job ends
    job = ray_client.get_job(job_id)
    assert job.status == JobStatus.COMPLETE, job.message
    assert any("SFT-DONE True" in line for line in followed)
    assert ray_client.get_job_progress(job_id)["currentStep"] == 8
    assert [m["step"] for m in ray_client.get_job_metrics(job_id) if "loss" in m] == [2, 4, 6, 8]
    begin = events(ray_client, job_id, "TrainBegin")[0].data
    assert begin["world_size"] == 2 and begin["model_class"] == "GPT2LMHeadModel"
    result = ray_client.get_job_result(job_id)
    assert result.output_dir == job.job_dir / "workdir" / "sft" and result.checkpoint.name == "checkpoint-8"


def _wheel(folder: Path, name: str = "tjraypkg", version: str = "0.1", value: int = 7) -> Path:
    """A minimal pure-Python wheel, built here (no index or network needed to install it)."""
    whl = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VALUE = {value}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: trainjob-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(whl, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
            digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(text)}")
        z.writestr(f"{info}/RECORD", "\n".join(record + [f"{info}/RECORD,,"]) + "\n")
    return whl


def _package_and_env():
    import os

    import tjraypkg

    return {"value": tjraypkg.VALUE, "file": tjraypkg.__file__, "flag": os.environ.get("MY_FLAG"), "secret": os.environ.get("MY_TOKEN")}


def test_packages_env_and_return_value(ray_client, tmp_path):
    """``packages_to_install`` -> Ray's uv runtime env; ``env`` reaches the workers; secrets are masked in the spec."""
    wheel = _wheel(tmp_path)
    job_id = ray_client.train(CustomTrainer(func=_package_and_env, packages_to_install=[f"tjraypkg @ {wheel.as_uri()}"], env={"MY_FLAG": "on", "MY_TOKEN": "s3cret"}))
    job = ray_client.wait_for_job_completion(job_id, timeout=480)
    value = ray_client.get_job_result(job_id).return_value
    assert value["value"] == 7 and "runtime_resources" in value["file"]  # installed in Ray's environment for the job
    assert (value["flag"], value["secret"]) == ("on", "s3cret")
    assert job.spec["env"] == {"MY_FLAG": "on", "MY_TOKEN": "******"}
    assert "s3cret" not in json.dumps(job.spec)


SECRET_SCRIPT = """
import json, os, sys
with open("received.json", "w") as f:
    json.dump({"token": os.environ.get("MY_TOKEN"), "flag": os.environ.get("MY_FLAG"), "argv": sys.argv[1:]}, f)
raise RuntimeError("rejected token " + os.environ["MY_TOKEN"])
"""


def test_secrets_stay_out_of_rays_runtime_env(ray_client, cluster, tmp_path):
    """Ray's dashboard shows a job's runtime_env to anyone: secret env values and script arguments
    reach the ranks through trainjob's own GCS key instead, and trainjob's records mask them."""
    import urllib.request

    secret, arg_secret = "ray-env-secret-4k2", "ray-arg-secret-9p1"
    script = tmp_path / "secret_job.py"
    script.write_text(SECRET_SCRIPT)
    job_id = ray_client.train(CustomTrainer(script=str(script), script_args=["--hf_token", arg_secret, "--lr", "1"], env={"MY_TOKEN": secret, "MY_FLAG": "on"}))
    with pytest.raises(JobFailedError):
        ray_client.wait_for_job_completion(job_id, timeout=JOB_TIMEOUT)
    result = ray_client.get_job_result(job_id)
    received = json.loads(Path(result.output_dir, "received.json").read_text())
    assert received == {"token": secret, "flag": "on", "argv": ["--hf_token", arg_secret, "--lr", "1"]}
    with urllib.request.urlopen(f"{cluster.dashboard}/api/jobs/{job_id}", timeout=10) as r:
        ray_record = r.read().decode()
    assert '"MY_FLAG": "on"' in ray_record.replace('":"', '": "') and secret not in ray_record and arg_secret not in ray_record
    assert result.error["message"] == "rejected token ******"
    shown = json.dumps([repr(ray_client.get_job(job_id)), [repr(e) for e in ray_client.get_job_events(job_id)], repr(result)])
    assert secret not in shown and arg_secret not in shown
    # Index credentials cannot be kept out of Ray's runtime_env: refused, the URL masked in the message.
    with pytest.raises(ValidationError) as e:
        ray_client.train(CustomTrainer(func=jobs.quick_value, packages_to_install=["peft"], pip_index_urls=["https://bob:idx-pass-7@pypi.example/simple"]))
    assert e.value.fields == ["pip_index_urls[0]"] and "idx-pass-7" not in str(e.value) and "netrc" in str(e.value)


def test_every_address_form_sees_the_same_jobs(ray_client, cluster, monkeypatch):
    job_id = ray_client.train(CustomTrainer(func=jobs.quick_value, func_args={"x": 5}), name="quick")
    ray_client.wait_for_job_completion(job_id, timeout=JOB_TIMEOUT)
    ray_client_address = f"ray://127.0.0.1:{cluster.client_port}"
    forms = {  # form: (config, $RAY_ADDRESS)
        "gcs": (cluster.config(), None),
        "auto": (RayBackendConfig(address="auto"), cluster.gcs),
        "dashboard": (RayBackendConfig(address=cluster.dashboard, gcs_address=cluster.gcs), None),
        "ray-client": (RayBackendConfig(address=ray_client_address), None),
        "auto, ray:// in $RAY_ADDRESS": (RayBackendConfig(address="auto"), ray_client_address),
    }
    import ray

    try:
        with ray_cluster.TrafficWatch(cluster) as watch:
            for form, (config, env) in forms.items():
                monkeypatch.setenv("RAY_ADDRESS", env or cluster.gcs)
                other = TrainerClient(config)
                job = other.get_job(job_id)
                assert (job.status, job.name, job.backend) == (JobStatus.COMPLETE, "quick", "ray"), form
                assert job_id in [j.id for j in other.list_jobs(status="Complete")], form
                assert job_id not in [j.id for j in other.list_jobs(status="Running")], form
                assert other.get_job_result(job_id).return_value == 5, form
                with pytest.raises(JobNotFoundError):
                    other.get_job("nosuchjob000")
    finally:
        ray.shutdown()  # the Ray Client connection of the ray:// form
    # $RAY_ADDRESS=127.0.0.1:port makes Ray's own SDK go to the interface address; trainjob stays on loopback.
    assert not watch.offenders, watch.offenders


class _Evil:
    """A pickle that creates a folder when loaded: what another cluster user could plant."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_return_values_cannot_be_forged(ray_client, cluster, home, tmp_path, monkeypatch):
    """Issue 15: the client unpickles only a return value signed with the key of its own home;
    a value another cluster user writes into the GCS is refused, never loaded, and a client from
    another home reads JSON values but unpickles nothing. The ranks verify the payload too."""
    import pickle

    from trainjob.backends.ray import integrity
    from trainjob.backends.ray.state import KV, Keys
    from trainjob.core import signing

    plain = ray_client.train(CustomTrainer(func=jobs.quick_value, func_args={"x": {"loss": 0.5, "steps": [1, 2]}}))
    pickled = ray_client.train(CustomTrainer(func=jobs.quick_value, func_args={"x": (1, 2)}))
    for job_id in (plain, pickled):
        ray_client.wait_for_job_completion(job_id, timeout=JOB_TIMEOUT)
    assert ray_client.get_job_result(plain).return_value == {"loss": 0.5, "steps": [1, 2]}
    assert ray_client.get_job_result(pickled).return_value == (1, 2)  # a tuple: pickled, and verified

    # Another home (another submitter): lists and reads both jobs, gets the JSON value, unpickles nothing.
    monkeypatch.setenv("TRAINJOB_HOME", str(tmp_path / "other-home"))
    other = TrainerClient(cluster.config())
    assert {plain, pickled} <= {j.id for j in other.list_jobs()}
    assert other.get_job(pickled).status == JobStatus.COMPLETE and other.get_job_metrics(pickled) == ray_client.get_job_metrics(pickled)
    assert other.get_job_result(plain).return_value == {"loss": 0.5, "steps": [1, 2]}
    with pytest.raises(signing.SignatureError, match=f"return value of job {pickled} is pickled and signed by another trainjob client"):
        other.get_job_result(pickled)
    monkeypatch.setenv("TRAINJOB_HOME", str(home))

    # Another cluster user writes into the GCS: a raw pickle, one signed with a job key of their
    # own (the job's key replaced too), and a genuine value of another job. All refused, none loaded.
    kv, keys = KV.connect(cluster.gcs), Keys(pickled)
    canary = tmp_path / "pwned"
    evil = pickle.dumps({"value": _Evil(canary)})
    attacker_key = signing.job_key(b"attacker" * 4, pickled)
    forgeries = {
        "unsigned": (evil, "is not signed"),
        "own key": (signing.sign(attacker_key, integrity.RETURN, pickled, evil), "does not match its signature"),
        "replayed": (kv.get(Keys(plain).return_value), "does not match its signature"),
    }
    kv.put(integrity.signing_key_name(keys), attacker_key.hex())
    for form, (blob, message) in forgeries.items():
        kv.put(keys.return_value, blob)
        with pytest.raises(signing.SignatureError, match=f"return value of job {pickled} {message}"):
            ray_client.get_job_result(pickled)
        assert not canary.exists(), form
    # The payload, changed in the GCS, is refused by the driver and the ranks (integrity.verified_payload).
    kv.put(integrity.signing_key_name(keys), bytes.hex(signing.job_key(signing.client_key(), pickled)))
    assert integrity.verified_payload(kv, keys)  # the genuine one verifies
    kv.put(keys.payload, evil)
    with pytest.raises(signing.SignatureError, match=f"payload of job {pickled} is not signed"):
        integrity.verified_payload(kv, keys)


def test_polling_spares_the_dashboard_and_ray_ends_with_the_job(ray_client, monkeypatch):
    """A client polling every 50 ms asks Ray's dashboard about the job at most once per ``INFO_TTL``
    while it runs and never once it has ended; Ray records the job ended as soon as trainjob does
    (the driver skips the interpreter's teardown), so a delete right after does not wait."""
    from trainjob.backends.ray.reads import INFO_TTL

    api = ray_client.backend.conn.api
    asked: list[float] = []
    real = api.info
    monkeypatch.setattr(api, "info", lambda job_id: asked.append(time.monotonic()) or real(job_id))

    job_id = ray_client.train(CustomTrainer(func=jobs.sleep_for, func_args={"seconds": 3}, num_procs_per_node=2))
    start = time.monotonic()
    statuses = []
    while not (job := ray_client.get_job(job_id)).status.is_terminal:
        statuses.append(job.status)
        time.sleep(0.05)
    polled = time.monotonic() - start
    assert job.status == JobStatus.COMPLETE and JobStatus.RUNNING in statuses, (job.message, statuses)
    assert len(statuses) > 40  # it really polled fast
    assert len(asked) <= polled / INFO_TTL + 2, f"{len(asked)} dashboard requests in {polled:.1f}s of polling"

    ended = len(asked)
    for _ in range(5):
        assert ray_client.get_job(job_id).status == JobStatus.COMPLETE
    assert len(asked) == ended  # an ended job is read from the GCS alone

    monkeypatch.undo()
    ray_status = lambda: str(ray_client.backend._job_info(job_id).status).split(".")[-1]  # noqa: E731
    wait_until(lambda: ray_status() == "SUCCEEDED", timeout=1.5, what="Ray to record the job ended")
    t0 = time.monotonic()
    ray_client.delete_job(job_id)
    assert time.monotonic() - t0 < 2.0


def test_delete_running_job_leaves_nothing(ray_client):
    job_id = ray_client.train(TransformersTrainer(func=jobs.slow_tiny, func_args={"max_steps": 1000, "step_delay": 0.1}, num_procs_per_node=2))
    wait_step(ray_client, job_id, 2)
    job = ray_client.get_job(job_id)
    pids = [r["pid"] for r in ray_client.backend.rank_info(job_id)]
    assert job.job_dir.is_dir() and all(psutil.pid_exists(p) for p in pids)
    ray_client.delete_job(job_id)
    wait_until(lambda: not any(psutil.pid_exists(p) for p in pids), timeout=30, what="the workers to end")
    assert not job.job_dir.exists()
    with pytest.raises(JobNotFoundError):
        ray_client.get_job(job_id)
    assert job_id not in [j.id for j in ray_client.list_jobs()]
    kv = ray_client.backend.conn.kv
    assert kv.keys(f"{job_id}/") == []  # nothing left in the GCS either


def test_stop_right_after_submit(ray_client):
    """A stop while Ray is still starting the driver (or the driver the workers) ends the job as Stopped."""
    job_id = ray_client.train(CustomTrainer(func=jobs.sleep_for, func_args={"seconds": 300}, num_procs_per_node=2))
    ray_client.stop_job(job_id)
    job = finish(ray_client, job_id, timeout=90)
    assert job.status == JobStatus.STOPPED and "stopped on request" in job.message
    assert not events(ray_client, job_id, "TrainBegin")
    reasons = [e.reason for e in ray_client.get_job_events(job_id)]
    assert reasons.count("Stopped") == 1 and reasons[-1] == "Stopped"
    ray_status = lambda: str(ray_client.backend._job_info(job_id).status).split(".")[-1]  # noqa: E731
    wait_until(lambda: ray_status() in ("STOPPED", "SUCCEEDED", "FAILED"), timeout=60, what="Ray to end the job")


def test_a_killed_driver_is_noticed(ray_client):
    """The job's status is never stuck: a driver that dies is recorded Failed, with Ray's word for it."""
    job_id = ray_client.train(TransformersTrainer(func=jobs.slow_tiny, func_args={"max_steps": 1000, "step_delay": 0.1}, num_procs_per_node=2))
    wait_step(ray_client, job_id, 2)
    driver = ray_client.backend.conn.kv.get_json(f"{job_id}/driver")
    os.kill(driver["pid"], 9)  # a process of the cluster this test started
    job = finish(ray_client, job_id, timeout=60)
    assert job.status == JobStatus.FAILED and "driver ended without recording an outcome" in job.message
    assert ray_client.get_job_result(job_id).error["type"] == "DriverLost"
    assert [e.reason for e in ray_client.get_job_events(job_id)][-1] == "Failed"
    ranks_gone(ray_client, job_id)  # Ray ends the job's workers with its driver


def test_jobs_ray_could_never_place_are_refused(ray_client):
    """Checked at train() against the nodes alive (one, with 2 CPUs): nothing is submitted or left behind."""
    api, kv = ray_client.backend.conn.api, ray_client.backend.conn.kv
    before = {j.submission_id for j in api.list()}
    prefixes = lambda: {k.split("/")[0] for k in kv.keys("")}  # noqa: E731 - one per job
    before_keys = prefixes()
    cases = [
        (CustomTrainer(func=jobs.quick_value, resources_per_node={"cpu": 64}), ["resources_per_node['cpu']"], "2 CPUs on the largest Ray node"),
        (CustomTrainer(func=jobs.quick_value, num_nodes=2), ["num_nodes"], "at most 1"),  # one rank on each of 2 nodes
        (CustomTrainer(func=jobs.quick_value, num_procs_per_node=3), ["num_procs_per_node"], "at most 2"),  # 1 CPU per rank by default
        (CustomTrainer(func=jobs.quick_value, num_procs_per_node=2, resources_per_node={"cpu": 3}), ["resources_per_node['cpu']"], "ranks all run on one node"),
    ]
    for trainer, fields, words in cases:
        with pytest.raises(ResourcesUnavailableError) as info:
            ray_client.train(trainer)
        assert info.value.fields == fields and words in str(info.value), str(info.value)
    assert {j.submission_id for j in api.list()} == before
    assert prefixes() <= before_keys


def test_a_payload_too_large_for_the_gcs_is_refused(ray_client):
    from trainjob.backends.ray.submit import MAX_PAYLOAD

    kv = ray_client.backend.conn.kv
    before = {k.split("/")[0] for k in kv.keys("")}
    with pytest.raises(SerializationError) as info:
        ray_client.train(CustomTrainer(func=jobs.quick_value, func_args={"x": b"\0" * (MAX_PAYLOAD + 1)}))
    assert info.value.fields == ["func_args"] and "at most 100.0Mi pickled on Ray" in str(info.value), str(info.value)
    assert {k.split("/")[0] for k in kv.keys("")} <= before


def test_stop_a_job_still_waiting_for_its_workers(ray_client):
    """A tracked job whose workers Ray has not placed yet has nobody to save a checkpoint: it ends Stopped at once."""
    busy = ray_client.train(CustomTrainer(func=jobs.sleep_for, func_args={"seconds": 300}, num_procs_per_node=2))  # both CPUs
    wait_until(lambda: ray_client.get_job(busy).status == JobStatus.RUNNING, timeout=JOB_TIMEOUT, what="the first job to hold the CPUs")
    waiting = ray_client.train(TransformersTrainer(func=jobs.slow_tiny, num_procs_per_node=2))
    wait_until(lambda: (ray_client.get_job(waiting).message or "").startswith("waiting for Ray to place"), timeout=JOB_TIMEOUT, what="the second job to wait")
    assert ray_client.get_job(waiting).status == JobStatus.QUEUED
    t0 = time.monotonic()
    ray_client.stop_job(waiting)
    job = finish(ray_client, waiting, timeout=30)
    assert job.status == JobStatus.STOPPED and time.monotonic() - t0 < 15, job.message
    assert "no rank has started yet" in events(ray_client, waiting, "Stopping")[0].message
    ray_client.stop_job(busy)
    assert finish(ray_client, busy, timeout=60).status == JobStatus.STOPPED


def test_a_new_client_process_needs_no_ray_sdk(cluster):
    """A new process submits, follows and deletes a function job over the Jobs REST API: Ray's
    Python SDK (0.33 s to import, in every CLI call) is never loaded."""
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from trainjob import CustomTrainer, RayBackendConfig, TrainerClient\n"
        "import jobs\n"
        f"c = TrainerClient(RayBackendConfig(address={cluster.gcs!r}, home={str(cluster.home)!r}))\n"
        "job_id = c.train(CustomTrainer(func=jobs.quick_value, func_args={'x': 3}))\n"
        "job = c.wait_for_job_completion(job_id, timeout=120, polling_interval=0.2)\n"
        "value = c.get_job_result(job_id).return_value\n"
        "log = '\\n'.join(c.get_job_logs(job_id, step='driver'))\n"
        "c.delete_job(job_id)\n"
        "print(json.dumps({'value': value, 'log': 'trainjob.backends.ray.driver' in log, 'sdk': 'ray.job_submission' in sys.modules}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")) if p)}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"value": 3, "log": True, "sdk": False}


def test_ray_state_keeps_the_lifecycle_rules(cluster):
    """Issue 12: ``RayState`` over the cluster's real GCS keeps ``core.state.JobState``'s rules
    (the same lifecycle as ``test_state.py`` on SQLite); the outcome reads back as the keys the
    Ray backend reads, and a non-terminal transition lands in the driver's record."""
    from test_state import run_lifecycle

    from trainjob.backends.ray.state import KV, Keys, RayState

    kv, job_id = KV.connect(cluster.gcs), f"conformance-{os.getpid()}"
    keys = Keys(job_id)
    try:

        def outcome_of(jid: str) -> dict:
            got = kv.get_json(Keys(jid).outcome)
            return {**got, "status": JobStatus.parse(got["status"])}

        run_lifecycle(RayState(kv, source="test"), job_id, outcome_of)
        assert kv.get_json(keys.driver)["status"] == "Running" and kv.get_json(keys.driver)["attempt"] == 1
        assert kv.get_json(keys.first_error(0))["message"] == "boom" and kv.get_json(keys.progress) == {"currentStep": 2, "totalSteps": 3}
    finally:
        kv.delete_prefix(keys.prefix)


def test_state_mirror_serves_a_jobs_state_through_the_dashboard(ray_client, cluster):
    """Issue 15 (partial): with TRAINJOB_STATE_MIRROR=1 the driver mirrors the job's keys into a
    file that the dashboard's log endpoint serves; read through it alone (no GCS), the progress
    (live, and how stale), metrics, events, outcome and verified return value are the GCS's."""
    from trainjob.backends.ray import integrity
    from trainjob.backends.ray.jobs_api import JobsAPI
    from trainjob.backends.ray.mirror import ENV, INTERVAL, MirrorGcs
    from trainjob.backends.ray.state import KV, Keys, read_events, read_metrics

    trainer = TransformersTrainer(func=jobs.slow_tiny, func_args={"max_steps": 60, "save_steps": None, "step_delay": 0.1}, env={ENV: "1"})
    job_id = ray_client.train(trainer)
    api, keys = JobsAPI(cluster.dashboard), Keys(job_id)  # the dashboard only: no GCS below
    wait_until(lambda: (api.info(job_id) or None) and api.info(job_id).driver_node_id, timeout=JOB_TIMEOUT)
    mirrored = KV(MirrorGcs.through_dashboard(api, job_id, api.info(job_id).driver_node_id, ttl=0))

    def live_progress():
        try:
            return mirrored.get_json(keys.progress)
        except Exception:  # noqa: BLE001 - the file is written once the driver started
            return None

    wait_until(live_progress, timeout=JOB_TIMEOUT)
    ages = []
    while (progress := mirrored.get_json(keys.progress)) and progress["currentStep"] < 50:
        ages.append(time.time() - json.loads(api.get("/api/v0/logs/file", node_id=api.info(job_id).driver_node_id, filename=f"trainjob-{job_id}.state.json", lines=-1))["time"])
        time.sleep(0.3)
    assert ages and max(ages) < INTERVAL + 1.5, ages  # the copy is never older than the interval, plus a scan
    ray_client.wait_for_job_completion(job_id, timeout=JOB_TIMEOUT)
    wait_until(lambda: mirrored.get(keys.outcome) is not None, timeout=30)
    kv = ray_client.backend.conn.kv
    assert mirrored.get_json(keys.outcome) == kv.get_json(keys.outcome) and mirrored.get_json(keys.outcome)["status"] == "Complete"
    assert read_events(mirrored, keys) == read_events(kv, keys) and read_metrics(mirrored, keys) == read_metrics(kv, keys)
    assert mirrored.get_json(keys.progress) == kv.get_json(keys.progress)
    record = mirrored.get_json(keys.job)
    assert integrity.read_return_value(mirrored.get(keys.return_value), job_id, record) == ray_client.get_job_result(job_id).return_value
    assert mirrored.get(keys.payload) is None and mirrored.get(keys.secrets) is None and mirrored.get(integrity.signing_key_name(keys)) is None



# ---- a client that reaches only the Jobs API (issue 15) ----------------------------------------
def staleness(polls: list[tuple[float, int]], step_log: str) -> list[float]:
    """For each poll (time, step shown): how long ago that step stopped being the current one
    (0 if it still was), from the job's own step times (``jobs.clocked_tiny``)."""
    ends = {}
    for line in Path(step_log).read_text().splitlines():
        step, at = line.split()
        ends[int(step)] = float(at)
    return [max(0.0, t - ends[s + 1]) for t, s in polls if s + 1 in ends]


def jobs_api_scenario(dashboard: str, gcs: str, home: str, num_nodes: int = 1) -> dict:
    """Runs where only the dashboard is reachable (``ray_cluster.dashboard_only``): every client
    method through the Jobs API alone; facts for the test to check."""
    import socket
    import threading

    from trainjob.backends.ray.jobs_api import JobsAPI

    out: dict = {}
    host, _, port = gcs.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        out["gcs"] = "reachable"
    except OSError as e:
        out["gcs"] = f"{type(e).__name__}: {e}"
    c = TrainerClient(RayBackendConfig(address=dashboard, home=home))
    out["jobs_api_only"] = c.backend.conn.jobs_api_only
    per_node = 2 if num_nodes == 1 else 1

    # A live job: progress (how stale), list/get, logs followed, then a graceful stop.
    live = c.train(TransformersTrainer(func=jobs.clocked_tiny, func_args={"max_steps": 400, "step_delay": 0.1}, num_nodes=num_nodes, num_procs_per_node=per_node))
    followed: list[str] = []
    follower = threading.Thread(target=lambda: followed.extend(c.get_job_logs(live, step="node-0", follow=True)), daemon=True)
    polls: list[tuple[float, int]] = []
    seen_running = False
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        p = c.get_job_progress(live)
        if p is not None and p["currentStep"] > 0:
            polls.append((time.time(), p["currentStep"]))
            if not follower.is_alive() and not followed:
                follower.start()
            if not seen_running:
                seen_running = c.get_job(live).status == JobStatus.RUNNING and [j.id for j in c.list_jobs(status=JobStatus.RUNNING)] == [live]
            if p["currentStep"] >= 40:
                break
        time.sleep(0.2)
    t0 = time.monotonic()
    c.stop_job(live)
    out["stop_call_s"] = time.monotonic() - t0
    job = finish(c, live)
    follower.join(timeout=60)
    result = c.get_job_result(live)
    out["live"] = {
        "status": job.status.value, "message": job.message, "seen_running": seen_running, "polls": len(polls),
        "staleness": sorted(staleness(polls, str(Path(result.output_dir) / "steps.log"))),
        "end": events(c, live, "TrainEnd")[-1].data, "reasons": [e.reason for e in c.get_job_events(live)],
        "checkpoints": [p.name for p in list_checkpoints(result.output_dir)], "checkpoint": result.checkpoint.name if result.checkpoint else None,
        "followed": len(followed), "follow_ended": not follower.is_alive(), "loss_steps": [m["step"] for m in c.get_job_metrics(live) if "loss" in m],
        "ranks": {r["rank"]: r["node_ip"] for r in c.backend.rank_info(live)},
    }  # fmt: skip

    # train(resume=...) from that checkpoint; max_restarts with trainjob's resume; a secret env value.
    stopped_at = out["live"]["end"]["global_step"]
    resumed = c.train(TransformersTrainer(func=jobs.slow_tiny, func_args={"max_steps": stopped_at + 10, "save_steps": None, "step_delay": 0.0}, num_nodes=num_nodes, num_procs_per_node=per_node), resume=live)
    restart = c.train(TransformersTrainer(func=jobs.fails_once_at, func_args={"fail_at": 15, "rank": 1, "max_steps": 30, "save_steps": 10}, num_nodes=num_nodes, num_procs_per_node=per_node, max_restarts=1))
    secret = c.train(CustomTrainer(func=jobs.env_value, func_args={"name": "MY_TOKEN"}, env={"MY_TOKEN": "jobs-api-secret-5x"}))
    for job_id in (resumed, restart, secret):
        c.wait_for_job_completion(job_id, timeout=JOB_TIMEOUT, polling_interval=0.25)
    out["resumed"] = {"start_step": events(c, resumed, "TrainBegin")[0].data["start_step"], "global_step": c.get_job_result(resumed).return_value["global_step"]}
    out["restart"] = {
        "attempt": c.get_job(restart).attempt, "restarting": [(e.data["attempt"], e.data["step"]) for e in events(c, restart, "Restarting")],
        "start_steps": [b.data["start_step"] for b in events(c, restart, "TrainBegin")], "checkpoint": c.get_job_result(restart).checkpoint.name,
        "global_step": c.get_job_result(restart).return_value["global_step"],
    }  # fmt: skip
    api = JobsAPI(dashboard)
    out["secret"] = {"value": c.get_job_result(secret).return_value, "in_ray_record": "jobs-api-secret-5x" in json.dumps(api.info(secret).__dict__), "shown": "jobs-api-secret-5x" in repr(c.get_job(secret))}
    out["driver_log"] = "trainjob.backends.ray.driver" in "".join(c.get_job_logs(secret, step="driver"))

    # delete: Ray's records, the job's keys (checked by the test, which reaches the GCS), folders.
    ids = [live, resumed, restart, secret]
    out["ids"] = ids
    out["bundles"] = [api.info(j).metadata["trainjob.bundle"] for j in ids]
    out["job_dirs"] = [str(c.get_job(j).job_dir) for j in ids]
    t0 = time.monotonic()
    for j in ids:
        c.delete_job(j)
    out["delete_s"] = (time.monotonic() - t0) / len(ids)
    time.sleep(4)  # the relays' Ray records go a little after they end (control.RELAY_RECORD_GRACE)
    out["listed_after"] = [j.id for j in c.list_jobs()]
    out["ray_jobs_after"] = sorted(d.submission_id for d in api.list() if d.submission_id in ids or d.submission_id.startswith("trainjob-relay-"))
    try:
        c.get_job(live)
        out["get_after_delete"] = "found"
    except JobNotFoundError:
        out["get_after_delete"] = "JobNotFoundError"
    return out


def check_jobs_api_scenario(facts: dict, cluster, num_nodes: int = 1) -> None:
    assert facts["gcs"] != "reachable" and facts["jobs_api_only"], facts["gcs"]
    live = facts["live"]
    stopped_at = live["end"]["global_step"]
    assert live["status"] == "Stopped" and live["end"]["stopped"] and stopped_at >= 40 and stopped_at % 5 == 0, live
    assert live["checkpoints"] == [f"checkpoint-{stopped_at}"] == [live["checkpoint"]]
    assert live["reasons"].index("Created") < live["reasons"].index("StopRequested") < live["reasons"].index("TrainEnd") < live["reasons"].index("Stopped")
    assert live["seen_running"] and live["followed"] > 0 and live["follow_ended"] and live["loss_steps"][:3] == [5, 10, 15]
    ages = live["staleness"]
    assert len(ages) >= 20 and ages[int(0.95 * (len(ages) - 1))] <= 2.0, ages  # p95 of how stale the progress shown was
    assert facts["resumed"] == {"start_step": stopped_at, "global_step": stopped_at + 10}
    r = facts["restart"]
    assert (r["attempt"], r["restarting"], r["start_steps"], r["checkpoint"], r["global_step"]) == (1, [[1, 10]], [0, 10], "checkpoint-30", 30)
    assert facts["secret"] == {"value": "jobs-api-secret-5x", "in_ray_record": False, "shown": False} and facts["driver_log"]
    assert facts["listed_after"] == [] and facts["ray_jobs_after"] == [] and facts["get_after_delete"] == "JobNotFoundError"
    assert not any(Path(d).exists() for d in facts["job_dirs"])
    if not cluster.netns:  # this test process reaches the GCS: nothing of the jobs is left in it
        from trainjob.backends.ray.state import KV

        kv = KV.connect(cluster.gcs)
        assert not any(kv.keys(f"{j}/") for j in facts["ids"])
        assert all(kv._gcs.internal_kv_get(uri.encode(), None) is None for uri in facts["bundles"])
        # The mirror files went with the jobs (only these jobs': the cluster is shared by the file's other tests).
        from trainjob.backends.ray.mirror import mirror_filename

        assert not [p for j in facts["ids"] for p in (cluster.temp / "r").glob(f"session_*/logs/{mirror_filename(j)}")]


def test_a_client_that_reaches_only_the_jobs_api(cluster):
    """Issue 15: RayBackendConfig(address="http://...") without gcs_address, run in a network
    namespace whose only way out is a forwarded dashboard port (the GCS port is unreachable from
    there): train, list/get, progress (how stale), logs (follow), events, metrics, stop (graceful,
    with a checkpoint), resume, max_restarts, a secret, result, delete."""
    reason = ray_cluster.netns_unavailable()
    if reason:
        pytest.skip(f"needs a network namespace for the client: {reason}")
    where = ray_cluster.dashboard_only(cluster)
    try:
        code = f"import json, test_ray\nprint(json.dumps(test_ray.jobs_api_scenario({where.dashboard!r}, {cluster.gcs!r}, {str(cluster.home)!r}), default=str))\n"
        facts = ray_cluster.run_in_netns(where.netns, code, timeout=900)
    finally:
        where.stop()
    print(json.dumps({k: facts[k] for k in ("stop_call_s", "delete_s")}), "staleness p50/p95/max:", _p(facts["live"]["staleness"]))
    check_jobs_api_scenario(facts, cluster)


def _p(ages: list[float]) -> str:
    q = lambda f: ages[int(f * (len(ages) - 1))]  # noqa: E731
    return f"{q(0.5):.2f}/{q(0.95):.2f}/{ages[-1]:.2f} s over {len(ages)} polls" if ages else "no polls"

AUTH_CLIENT = """
import json, sys
from trainjob import BackendError, CustomTrainer, RayBackendConfig, TrainerClient
import jobs
c = TrainerClient(RayBackendConfig(**json.loads(sys.argv[1])))
try:
    c.list_jobs()
except BackendError as e:
    print(json.dumps({"error": str(e)}))
    sys.exit(0)
job_id = c.train(CustomTrainer(func=jobs.quick_value, func_args={"x": 4}))
job = c.wait_for_job_completion(job_id, timeout=120, polling_interval=0.2)
out = {"value": c.get_job_result(job_id).return_value, "events": [e.reason for e in c.get_job_events(job_id)]}
out["log"] = "trainjob.backends.ray.driver" in "".join(c.get_job_logs(job_id, step="driver"))
c.delete_job(job_id)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory):
    import secrets

    c = ray_cluster.start_loopback(tmp_path_factory.mktemp("raytokenhome"), auth_token=secrets.token_hex(32))
    yield c
    c.stop()


def test_token_auth_cluster(token_cluster, home):
    """Issue 15: a cluster started with RAY_AUTH_MODE=token works for a client given its token
    (RayBackendConfig(auth_token=...) or $RAY_AUTH_TOKEN), through the GCS or the dashboard
    address, and refuses one without it, or with a wrong one, with a message saying what to give."""
    import subprocess
    import sys

    c = token_cluster

    def client(config: dict, env: dict[str, str] | None = None) -> dict:
        full = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        full.update({"PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")) if p), **(env or {})})
        r = subprocess.run([sys.executable, "-c", AUTH_CLIENT, json.dumps({"home": str(c.home), **config})], env=full, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    dashboard = {"address": c.dashboard, "gcs_address": c.gcs}
    for config in ({"address": c.gcs}, dashboard):
        refused = client(config)["error"]
        assert "uses token authentication" in refused and "auth_token" in refused and "RAY_AUTH_TOKEN" in refused, refused
    wrong = client({**dashboard, "auth_token": "0" * 64})["error"]
    assert "refused this client's token" in wrong, wrong
    assert c.auth_token not in repr(RayBackendConfig(auth_token=c.auth_token))
    for config, env in [({"address": c.gcs, "auth_token": c.auth_token}, None), (dashboard, {"RAY_AUTH_TOKEN": c.auth_token})]:
        ran = client(config, env)
        assert ran["value"] == 4 and ran["log"] and ran["events"][-1] == "Completed", ran


def test_ray_jobs_that_are_not_trainjobs_are_never_touched(ray_client):
    sdk = ray_client.backend.conn.jobs()
    other = sdk.submit_job(entrypoint="python -c 'import time; time.sleep(60)'")
    try:
        for call in (ray_client.get_job, ray_client.stop_job, ray_client.delete_job):
            with pytest.raises(JobNotFoundError):
                call(other)
        assert str(sdk.get_job_status(other)).split(".")[-1] in ("PENDING", "RUNNING")
        assert other not in [j.id for j in ray_client.list_jobs()]
    finally:
        sdk.stop_job(other)
        wait_until(lambda: str(sdk.get_job_status(other)).split(".")[-1] in ("STOPPED", "FAILED", "SUCCEEDED"), timeout=30, what="Ray to stop the other job")
        sdk.delete_job(other)


def test_runtime_is_the_clusters(ray_client, cluster):
    """list_runtimes describes the cluster (its CPUs, its nodes); the packages come from the
    cluster's Python through a Ray job that leaves nothing behind (issue 13)."""
    runtime = ray_client.get_runtime("torch-distributed")
    assert runtime.trainer.image == "ray" and runtime.trainer.device == "cpu" and runtime.trainer.device_count == "2"
    assert runtime.resources["nodes"] == 1 and runtime.resources["cpu"] == 2 and runtime.resources["memory"] > 0
    packages = ray_client.get_runtime_packages(runtime)
    assert any(p.startswith("torch==") for p in packages) and any(p.startswith("ray==") for p in packages), packages[:10]
    # The listing job's Ray record is deleted a moment after it ended (deleted at once, Ray's job
    # manager could bring it back as FAILED); other Ray jobs may come and go meanwhile.
    api = ray_client.backend.conn.api
    wait_until(lambda: not [j for j in api.list() if j.submission_id.startswith("trainjob-packages-")], timeout=15, what="the listing job's record to go")
    time.sleep(2.0)  # and it does not come back
    assert not [j.submission_id for j in api.list() if j.submission_id.startswith("trainjob-packages-")]
    assert not [j.name for j in ray_client.list_jobs() if j.name.startswith("trainjob-packages-")]  # never listed as a job


def test_trainer_command_runs_on_ray(ray_client):
    """Kubeflow's TrainerCommand: a program on every Ray Train worker, with the rank's environment (issue 13)."""
    from trainjob.options import Labels, Name, TrainerArgs, TrainerCommand

    job = ray_client.train(
        trainer=CustomTrainer(command="true", num_procs_per_node=2),
        options=[TrainerCommand(["bash", "-c", 'echo "rank=$RANK of $WORLD_SIZE" "$@"', "-"]), TrainerArgs(["x"]), Name("ray-command"), Labels({"team": "nlp"})],
    )
    assert finish(ray_client, job).status == JobStatus.COMPLETE
    assert job == "ray-command" and ray_client.get_job(job).labels == {"team": "nlp"}
    assert [j.name for j in ray_client.list_jobs(labels={"team": "nlp"})] == ["ray-command"]
    logs = "\n".join(ray_client.get_job_logs(job))
    assert "rank=0 of 2 x" in logs and "rank=1 of 2 x" in logs, logs[-2000:]
    with pytest.raises(ValidationError, match="no other job has"):
        ray_client.train(trainer=CustomTrainer(command="true"), options=[Name("ray-command")])


def test_bad_config_and_unreachable_cluster(monkeypatch):
    with pytest.raises(ValidationError) as info:
        TrainerClient(RayBackendConfig(address="tcp://x:1", installer="conda"))
    assert info.value.fields == ["address", "installer"]
    with pytest.raises(ValidationError):
        TrainerClient(RayBackendConfig(address="no-port-here"))
    t0 = time.monotonic()
    client = TrainerClient(RayBackendConfig(address=f"127.0.0.1:{ray_cluster.free_port()}"))  # nothing listens there
    with pytest.raises(BackendError) as err:
        client.list_jobs()
    assert time.monotonic() - t0 < 15 and "cannot reach the Ray cluster" in str(err.value)
    # A dashboard address alone is the Jobs-API-only mode (issue 15): the GCS is never guessed from
    # it, and a dashboard that does not answer fails the first call, at once or through $RAY_ADDRESS.
    for address, env in ((f"http://127.0.0.1:{ray_cluster.free_port()}", None), ("auto", f"http://127.0.0.1:{ray_cluster.free_port()}")):
        if env:
            monkeypatch.setenv("RAY_ADDRESS", env)
        t0 = time.monotonic()
        with pytest.raises(BackendError) as err:
            TrainerClient(RayBackendConfig(address=address)).list_jobs()
        assert time.monotonic() - t0 < 15 and "cannot reach the Ray cluster" in str(err.value)

def read_initialized() -> dict:
    """Runs in the job: what the initializers put in MODEL_PATH and DATASET_PATH on this rank's node."""
    import json
    import os

    from trainjob import DATASET_PATH, MODEL_PATH

    with open(os.path.join(DATASET_PATH, "train.jsonl")) as f:
        rows = sum(1 for _ in f)
    with open(os.path.join(MODEL_PATH, "config.json")) as f:
        n_layer = json.load(f)["n_layer"]
    return {"model_files": sorted(os.listdir(MODEL_PATH)), "rows": rows, "n_layer": n_layer, "cwd": os.getcwd()}


def test_initializers_run_on_ray(ray_client, hf_cache):
    """The driver runs each step on every node that can host a rank, before Ray Train starts any."""
    env = {"HF_HOME": str(hf_cache)}  # the nodes started before this test's cache existed (HF_HUB_OFFLINE=1 is theirs)
    ok = ray_client.train(
        initializer=Initializer(
            model=HuggingFaceModelInitializer(storage_uri="hf://tiny-org/tiny-gpt2", access_token="hf_" + "y" * 34),
            dataset=HuggingFaceDatasetInitializer(storage_uri="hf://tiny-org/numbers"),
        ),
        trainer=CustomTrainer(func=read_initialized, env=env),
    )
    missing = ray_client.train(  # submitted alongside: it never takes a Ray Train worker
        initializer=Initializer(model=HuggingFaceModelInitializer(storage_uri="hf://tiny-org/not-cached")),
        trainer=CustomTrainer(func=read_initialized, env=env),
    )

    with pytest.raises(RuntimeError, match="model-initializer failed"):
        ray_client.wait_for_job_status(missing, timeout=JOB_TIMEOUT, polling_interval=0.5)
    job = ray_client.get_job(missing)
    assert [(s.name, s.status) for s in job.steps] == [("model-initializer", "Failed"), ("node-0", "Failed")]
    failed = [e.message for e in ray_client.get_job_events(missing) if e.reason == "InitializerFailed"]
    assert len(failed) == 1 and failed[0].startswith("model-initializer: LocalEntryNotFoundError: ") and "HF_HUB_OFFLINE" in failed[0], failed  # the hub's own error
    assert "LocalEntryNotFoundError" in job.message and f"trainjob logs {missing} --step model-initializer" in job.message, job.message
    assert "tiny-org/not-cached" in "\n".join(ray_client.get_job_logs(missing, step="model-initializer"))
    assert ray_client.backend.rank_info(missing) == [] and not events(ray_client, missing, "Started")  # no rank started

    final = ray_client.wait_for_job_status(ok, timeout=JOB_TIMEOUT, polling_interval=0.5)
    value = ray_client.get_job_result(ok).return_value
    assert value["model_files"] == ["config.json", "generation_config.json", "model.safetensors"] and value["rows"] == 24 and value["n_layer"] == 1, value
    assert [(s.name, s.status) for s in final.steps] == [("dataset-initializer", "Complete"), ("model-initializer", "Complete"), ("node-0", "Complete")]
    reasons = [e.reason for e in ray_client.get_job_events(ok)]
    assert reasons.count("InitializerCompleted") == 2 and reasons.index("InitializerCompleted") < reasons.index("Started"), reasons
    assert events(ray_client, ok, "InitializerStarted")[0].data["nodes"] == ["127.0.0.1"]
    log = "\n".join(ray_client.get_job_logs(ok, step="model-initializer"))
    assert "tiny-org/tiny-gpt2" in log and "offline" in log and "3 file(s) in place" in log, log
    assert "hf_yyyy" not in json.dumps(final.spec) and final.spec["env"]["TRAINJOB_MODEL_INITIALIZER_TOKEN"] == "******"
    assert value["cwd"] == str(final.job_dir / "workdir")


# ---- pure translation ------------------------------------------------------------------------
def test_plan_maps_the_spec_to_ray():
    spec = CustomTrainer(
        func=jobs.quick_value, num_nodes=2, num_procs_per_node=2, resources_per_node={"cpu": 4, "memory": "8Gi", "gpu": 2},
        packages_to_install=["peft==0.21.2"], pip_index_urls=["https://a/simple", "https://b/simple"], env={"A": "1", "PYTHONUNBUFFERED": "0"},
    ).job_spec()  # fmt: skip
    assert plan.scaling(spec) == {
        "num_workers": 4, "use_gpu": True, "placement_strategy": "SPREAD",
        "resources_per_worker": {"CPU": 2.0, "GPU": 1.0, "memory": float(4 * 2**30)},
    }  # fmt: skip
    env = plan.runtime_env(spec, {"A": "1", "PYTHONUNBUFFERED": "0"}, "uv")
    assert env["env_vars"]["A"] == "1" and env["env_vars"]["PYTHONUNBUFFERED"] == "0"  # the user's value wins
    assert env["env_vars"]["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0" and "working_dir" not in env
    assert env["env_vars"]["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.5"
    assert env["uv"] == {"packages": ["peft==0.21.2"], "uv_pip_install_options": ["--index-url", "https://a/simple", "--extra-index-url", "https://b/simple", "--no-cache"]}
    assert plan.runtime_env(spec, None, "pip")["pip"]["pip_install_options"][:2] == ["--index-url", "https://a/simple"]
    one_per_node = CustomTrainer(func=jobs.quick_value, num_nodes=3).job_spec()
    assert plan.scaling(one_per_node) == {"num_workers": 3, "use_gpu": False, "resources_per_worker": {"CPU": 1.0}, "placement_strategy": "STRICT_SPREAD"}
    assert plan.scaling(CustomTrainer(func=jobs.quick_value).job_spec())["placement_strategy"] == "STRICT_PACK"
    assert plan.entrypoint("abc123def456", "/opt/my env/python") == "'/opt/my env/python' -m trainjob.backends.ray.driver abc123def456"


def test_script_jobs_ship_their_folder(tmp_path):
    (tmp_path / "train.py").write_text("print(1)\n")
    spec = TransformersTrainer(script=str(tmp_path / "train.py")).job_spec()
    assert plan.working_dir(spec, None) == str(tmp_path)
    assert plan.working_dir(CustomTrainer(func="pkg.mod:main").job_spec(), str(tmp_path)) == str(tmp_path)
    assert plan.working_dir(CustomTrainer(func=jobs.quick_value).job_spec(), None) is None


# ---- several nodes, each in its own network namespace ----------------------------------------
@pytest.fixture(scope="module")
def netns_cluster(tmp_path_factory):
    reason = ray_cluster.netns_unavailable()
    if reason:
        pytest.skip(f"multi-node Ray test skipped: {reason}")
    c = ray_cluster.start_netns(tmp_path_factory.mktemp("rayhome-netns"), nodes=2)
    yield c
    c.stop()


def multinode_scenario(gcs: str, home: str) -> dict:
    """Runs inside the head node's namespace (``run_in_netns``): four 2-node jobs, facts for the test to check."""
    from transformers import AutoModelForCausalLM

    c = TrainerClient(RayBackendConfig(address=gcs, home=home))
    out: dict = {}

    hf = c.train(TransformersTrainer(func=jobs.slow_tiny, func_args={"max_steps": 30, "save_steps": 15, "step_delay": 0.1}, num_nodes=2))
    job, seen = watch_progress(c, hf)
    result = c.get_job_result(hf)
    out["hf"] = {
        "status": job.status.value, "message": job.message,
        "mid_steps": [p["currentStep"] for p in seen if 0 < p["currentStep"] < 30],
        "ranks": {r["rank"]: r["node_ip"] for r in c.backend.rank_info(hf)},
        "world_size": events(c, hf, "TrainBegin")[0].data["world_size"],
        "loss_steps": [m["step"] for m in c.get_job_metrics(hf) if "loss" in m],
        "rank1_log": list(c.get_job_logs(hf, step="rank-1")),
        "node1_log": list(c.get_job_logs(hf, step="node-1")),
        "checkpoint": str(result.checkpoint), "n_layer": AutoModelForCausalLM.from_pretrained(result.checkpoint).config.n_layer,
        "steps": [(s.name, s.device_count) for s in job.steps],
    }  # fmt: skip

    sft = c.train(TransformersTrainer(func=jobs.trl_sft, func_args={"max_steps": 8}, num_nodes=2))
    job = c.wait_for_job_completion(sft, timeout=JOB_TIMEOUT)
    out["sft"] = {
        "status": job.status.value, "progress": c.get_job_progress(sft),
        "ranks": {r["rank"]: r["node_ip"] for r in c.backend.rank_info(sft)},
        "world_size": events(c, sft, "TrainBegin")[0].data["world_size"],
        "loss_steps": [m["step"] for m in c.get_job_metrics(sft) if "loss" in m],
    }  # fmt: skip

    stop = c.train(TransformersTrainer(func=jobs.slow_tiny, func_args={"max_steps": 300, "save_steps": None, "step_delay": 0.1}, num_nodes=2))
    wait_step(c, stop, 6)
    c.stop_job(stop)
    job = finish(c, stop)
    ckpts = list_checkpoints(c.get_job_result(stop).output_dir)
    out["stop"] = {
        "status": job.status.value, "message": job.message, "end": events(c, stop, "TrainEnd")[-1].data,
        "checkpoints": [p.name for p in ckpts], "rng_files": sorted(p.name for p in ckpts[0].glob("rng_state_*.pth")) if ckpts else [],
    }  # fmt: skip

    fail = c.train(CustomTrainer(func=jobs.fail_on_rank, func_args={"rank": 1, "message": "bad batch"}, num_nodes=2))
    job = finish(c, fail)
    out["fail"] = {"status": job.status.value, "error": c.get_job_result(fail).error, "ranks": {r["rank"]: r["node_ip"] for r in c.backend.rank_info(fail)}}
    return out


@pytest.mark.netns
@pytest.mark.timeout(1200)
def test_multinode_cluster_in_network_namespaces(netns_cluster):
    """Two Ray nodes at 10.211.0.1 and 10.211.0.2; the client runs in the first namespace; ranks land on both."""
    head_ns = netns_cluster.netns[0]
    code = (
        "import json, test_ray\n"
        f"print(json.dumps(test_ray.multinode_scenario({netns_cluster.gcs!r}, {str(netns_cluster.home)!r}), default=str))\n"
    )
    with ray_cluster.TrafficWatch(netns_cluster, allowed_prefixes=(f"{ray_cluster.NETNS_SUBNET}.",)) as watch:
        facts = ray_cluster.run_in_netns(head_ns, code, timeout=1100)
    both = ["10.211.0.1", "10.211.0.2"]  # one rank on each node (which rank goes where is Ray's choice)

    hf = facts["hf"]
    assert hf["status"] == "Complete", hf["message"]
    assert sorted(hf["ranks"].values()) == both
    assert hf["world_size"] == 2 and hf["mid_steps"] and hf["loss_steps"] == [5, 10, 15, 20, 25, 30]
    assert hf["checkpoint"].endswith("checkpoint-30") and hf["n_layer"] == 2
    assert hf["steps"] == [["node-0", 1], ["node-1", 1]]
    assert hf["rank1_log"] and hf["rank1_log"] == hf["node1_log"]  # the rank on the second node, read through Ray

    sft = facts["sft"]
    assert sft["status"] == "Complete" and sorted(sft["ranks"].values()) == both
    assert sft["world_size"] == 2 and sft["progress"]["currentStep"] == 8 and sft["loss_steps"] == [2, 4, 6, 8]

    stop = facts["stop"]
    stopped_at = stop["end"]["global_step"]
    assert stop["status"] == "Stopped" and stop["end"]["stopped"] and stopped_at % 5 == 0, stop
    assert stop["checkpoints"] == [f"checkpoint-{stopped_at}"] and stop["rng_files"] == ["rng_state_0.pth", "rng_state_1.pth"]

    fail = facts["fail"]
    assert fail["status"] == "Failed" and (fail["error"]["rank"], fail["error"]["type"]) == (1, "ValueError")
    assert fail["error"]["message"] == "bad batch" and sorted(fail["ranks"].values()) == both

    assert watch.samples >= 5 and not watch.offenders, f"traffic outside loopback and the test namespaces: {watch.offenders}"


@pytest.mark.netns
@pytest.mark.timeout(1200)
def test_multinode_cluster_through_the_jobs_api_alone(netns_cluster):
    """Issue 15 on two nodes: the client in a third namespace whose only way out is a forwarded
    port to the head's dashboard (10.211.0.1:8265); the GCS (10.211.0.1:6390) has no route from
    there. The whole flow, ranks on both nodes."""
    where = ray_cluster.dashboard_only(netns_cluster)
    try:
        code = (
            "import json, test_ray\n"
            f"print(json.dumps(test_ray.jobs_api_scenario({where.dashboard!r}, {netns_cluster.gcs!r}, {str(netns_cluster.home)!r}, num_nodes=2), default=str))\n"
        )
        with ray_cluster.TrafficWatch(netns_cluster, allowed_prefixes=(f"{ray_cluster.NETNS_SUBNET}.",)) as watch:
            facts = ray_cluster.run_in_netns(where.netns, code, timeout=1100)
    finally:
        where.stop()
    print(json.dumps({k: facts[k] for k in ("gcs", "stop_call_s", "delete_s")}), "staleness p50/p95/max:", _p(facts["live"]["staleness"]))
    check_jobs_api_scenario(facts, netns_cluster, num_nodes=2)
    assert sorted(facts["live"]["ranks"].values()) == ["10.211.0.1", "10.211.0.2"]
    assert watch.samples >= 5 and not watch.offenders, f"traffic outside loopback and the test namespaces: {watch.offenders}"

def test_a_four_trial_optimization_runs_its_trials_on_ray(cluster, home):
    """Issue 14: OptimizerClient over the Ray backend; the study lives in this machine's home."""
    import hpo_jobs
    from trainjob.optimizer import OptimizerClient, Search, TrainJobTemplate, TrialConfig
    from trainjob.optimizer.state import LABEL

    oc = OptimizerClient(cluster.config())
    name = oc.optimize(TrainJobTemplate(CustomTrainer(func=hpo_jobs.quadratic)), search_space={"x": Search.uniform(0, 2)},
                       trial_config=TrialConfig(num_trials=4, parallel_trials=2))  # fmt: skip
    job = oc.wait_for_job_status(name, timeout=400, polling_interval=1)
    assert job.status == "Complete" and len(job.trials) == 4
    for t in job.trials:  # each trial a Ray job; its printed loss=(x-1)^2 read from its log through Ray
        assert t.trainjob.backend == "ray" and t.value == pytest.approx((t.parameters["x"] - 1) ** 2, abs=1e-9)
    assert sorted(j.name for j in TrainerClient(cluster.config()).list_jobs(labels={LABEL: name})) == sorted(t.name for t in job.trials)
    assert oc.get_best_results(name).value == min(t.value for t in job.trials)
    oc.delete_job(name)
    assert oc.list_jobs() == []
