"""Real jobs on the local backend: launch, distribution, lifecycle, logs, results, cleanup."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest

import jobs
from conftest import job_processes, wait_until
from trainjob import CustomTrainer, JobFailedError, JobNotFoundError, JobStateError, JobStatus, TransformersTrainer

pytestmark = pytest.mark.slow


def test_one_process_hf_trainer_job(client):
    job_id = client.train(TransformersTrainer(func=jobs.tiny, func_args={"max_steps": 20, "save_steps": 10, "output_dir": "./output"}), name="tiny")
    assert job_id == "tiny"  # name= is the job's name, its identifier
    job = client.wait_for_job_completion(job_id, timeout=180)
    assert job.status == JobStatus.COMPLETE and job.name == "tiny" and job.attempt == 0
    assert job.started_at and job.finished_at and job.finished_at >= job.started_at
    result = client.get_job_result(job_id)
    # Relative output_dir lands in the job's own folder.
    assert result.output_dir == job.job_dir / "workdir" / "output"
    assert result.checkpoint == result.output_dir / "checkpoint-20"
    assert [p.name for p in result.checkpoints] == ["checkpoint-10", "checkpoint-20"]
    assert result.return_value["train_loss"] > 0  # the function's own return value
    assert result.metrics["train_loss"] == pytest.approx(result.return_value["train_loss"])
    assert result.error is None
    reasons = [e.reason for e in client.get_job_events(job_id)]
    assert reasons[:2] == ["Created", "Started"] and reasons[-2:] == ["NodeExited", "Completed"]
    assert "TrainBegin" in reasons and "TrainEnd" in reasons and reasons.count("Save") == 2
    logs = "\n".join(client.get_job_logs(job_id))
    assert "'train_loss'" in logs


def test_two_node_job_sees_torch_distributed_env(client):
    job_id = client.train(CustomTrainer(func=_distributed_probe, num_nodes=2))
    client.wait_for_job_completion(job_id, timeout=180)
    job = client.get_job(job_id)
    assert [s.name for s in job.steps] == ["node-0", "node-1"]
    assert all(s.status == JobStatus.COMPLETE for s in job.steps)
    value = client.get_job_result(job_id).return_value
    assert value["world_size"] == 2 and value["sum_of_ranks"] == 1 and value["master_addr"] == "127.0.0.1"
    assert value["cwd"] == str(job.job_dir / "workdir")
    ranks = json.loads((job.job_dir / "workdir" / "ranks.json").read_text())
    assert ranks == {"rank": 0, "group_rank": 0, "local_rank": 0}


def _distributed_probe():
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t = torch.tensor([dist.get_rank()])
    dist.all_reduce(t)
    info = {"rank": dist.get_rank(), "group_rank": int(os.environ["GROUP_RANK"]), "local_rank": int(os.environ["LOCAL_RANK"])}
    if dist.get_rank() == 0:
        with open("ranks.json", "w") as f:
            json.dump(info, f)
    return {"world_size": dist.get_world_size(), "sum_of_ranks": int(t.item()), "master_addr": os.environ["MASTER_ADDR"], "cwd": os.getcwd()}


def test_two_node_hf_trainer_ddp(client):
    job_id = client.train(TransformersTrainer(func=jobs.tiny, num_nodes=2, func_args={"max_steps": 20}))
    client.wait_for_job_completion(job_id, timeout=240)
    begin = next(e for e in client.get_job_events(job_id) if e.reason == "TrainBegin")
    assert begin.data["world_size"] == 2
    assert client.get_job_progress(job_id)["currentStep"] == 20
    for step in ("node-0", "node-1", "rank-0", "rank-1"):
        assert any("train_loss" in line for line in client.get_job_logs(job_id, step=step)), step


def test_script_job_with_args(client, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import argparse, json, sys
        from helper_mod import VALUE  # a module next to the script imports like with `python train.py`
        p = argparse.ArgumentParser(); p.add_argument("--lr", type=float); p.add_argument("--steps", type=int)
        a = p.parse_args()
        from trainjob.demo import train_tiny_gpt2
        m = train_tiny_gpt2(max_steps=a.steps, learning_rate=a.lr, eval_steps=None, save_steps=None)
        print("SCRIPT-DONE", VALUE, sys.argv[0].endswith("train.py"), json.dumps(m))
    """))
    (tmp_path / "helper_mod.py").write_text("VALUE = 'helper-ok'\n")
    job_id = client.train(TransformersTrainer(script=str(script), script_args=["--lr", "1e-3", "--steps", "5"]))
    client.wait_for_job_completion(job_id, timeout=180)
    out = "\n".join(client.get_job_logs(job_id))
    assert "SCRIPT-DONE helper-ok True" in out
    assert client.get_job_progress(job_id)["currentStep"] == 5


def test_module_job_and_func_reference(client, tmp_path, monkeypatch):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "entry.py").write_text("import sys\ndef main(x=1):\n    return x * 2\nif __name__ == '__main__':\n    print('MODULE-ARGS', sys.argv[1:])\n")
    monkeypatch.chdir(tmp_path)  # the submit folder is on the ranks' PYTHONPATH
    a = client.train(CustomTrainer(module="mypkg.entry", script_args=["--flag", "v"]))
    b = client.train(CustomTrainer(func="mypkg.entry:main", func_args={"x": 21}))
    client.wait_for_job_completion(a, timeout=120)
    client.wait_for_job_completion(b, timeout=120)
    assert "MODULE-ARGS ['--flag', 'v']" in "\n".join(client.get_job_logs(a))
    assert client.get_job_result(b).return_value == 42


def test_globals_travel_with_the_function(client):
    dataset = [3, 4, 5]  # the seed's pattern: a module-level dataset the function refers to

    def train():
        return sum(dataset)

    job_id = client.train(CustomTrainer(func=train))
    client.wait_for_job_completion(job_id, timeout=120)
    assert client.get_job_result(job_id).return_value == 12


def test_failing_job_reports_first_failing_rank(client):
    job_id = client.train(CustomTrainer(func=jobs.fail_on_rank, func_args={"rank": 1, "message": "bad batch"}, num_nodes=2))
    t0 = time.monotonic()
    with pytest.raises(JobFailedError) as info:
        client.wait_for_job_completion(job_id, timeout=120)
    assert time.monotonic() - t0 < 60  # rank 0 sleeps 30 s: it is ended, not waited for
    err = info.value.error
    assert err["rank"] == 1 and err["type"] == "ValueError" and err["message"] == "bad batch"
    assert "fail_on_rank" in err["traceback"]
    assert "on rank 1: ValueError: bad batch" in str(info.value)
    job = client.get_job(job_id)
    assert job.status == JobStatus.FAILED and "ValueError: bad batch" in job.message
    assert job_processes(job.job_dir) == []


def test_renamed_argument_gets_a_hint(client):
    job_id = client.train(CustomTrainer(func=_old_style_args))
    with pytest.raises(JobFailedError) as info:
        client.wait_for_job_completion(job_id, timeout=120)
    assert info.value.error["hint"] == "use eval_strategy= (renamed in transformers)"


def _old_style_args():
    from transformers import TrainingArguments

    TrainingArguments(output_dir="o", evaluation_strategy="steps")


def test_follow_logs_streams_while_running(client):
    job_id = client.train(CustomTrainer(func=_ticker, func_args={"n": 6}))
    seen = []
    t0 = time.monotonic()
    for line in client.get_job_logs(job_id, follow=True):
        seen.append((time.monotonic() - t0, line))
    lines = [l for _, l in seen]
    assert [l for l in lines if l.startswith("tick")] == [f"tick {i}" for i in range(6)]
    # Streamed, not dumped at the end: the first tick arrived well before the last.
    first = next(t for t, l in seen if l == "tick 0")
    last = next(t for t, l in seen if l == "tick 5")
    assert last - first > 1.5
    assert client.get_job(job_id).status == JobStatus.COMPLETE


def _ticker(n):
    for i in range(n):
        print(f"tick {i}", flush=True)
        time.sleep(0.5)


def test_delete_running_job_leaves_nothing(client, home):
    job_id = client.train(TransformersTrainer(func=jobs.tiny, func_args={"max_steps": 100000}, num_nodes=2))
    client.wait_for_job_status(job_id, {"Running"}, timeout=60, polling_interval=0.2)
    wait_until(lambda: client.get_job_progress(job_id) is not None, 90, what='first progress')
    job_dir = client.get_job(job_id).job_dir
    assert job_processes(job_dir)
    client.delete_job(job_id)
    time.sleep(0.5)
    assert job_processes(job_dir) == []
    assert not job_dir.exists()
    with pytest.raises(JobNotFoundError):
        client.get_job(job_id)
    assert client.list_jobs() == []


def test_store_readable_from_another_process_and_private(client, home):
    job_id = client.train(CustomTrainer(func=jobs.report_env, env={"HF_TOKEN": "hf_secret", "MY_SETTING": "v"}))
    client.wait_for_job_completion(job_id, timeout=120)
    code = (
        "from trainjob import TrainerClient; c = TrainerClient(); "
        f"j = c.get_job('{job_id}'); print(j.status.value, len(c.list_jobs()), j.spec['env'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True).stdout
    assert out.strip() == "Complete 1 {'HF_TOKEN': '******', 'MY_SETTING': 'v'}"
    job = client.get_job(job_id)
    assert "hf_secret" not in json.dumps(job.spec)
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(job.job_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(home / "trainjob.db").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(job.job_dir / "spec.json").st_mode) == 0o600


def test_job_env_is_submitter_env_plus_env(client, monkeypatch):
    monkeypatch.setenv("FROM_SUBMITTER", "yes")
    job_id = client.train(CustomTrainer(func=_read_env, func_args={"names": ["FROM_SUBMITTER", "EXTRA", "PATH"]}, env={"EXTRA": "1"}))
    client.wait_for_job_completion(job_id, timeout=120)
    value = client.get_job_result(job_id).return_value
    assert value["FROM_SUBMITTER"] == "yes" and value["EXTRA"] == "1" and value["PATH"]


def _read_env(names):
    return {n: os.environ.get(n) for n in names}


def test_list_and_filter(client):
    a = client.train(CustomTrainer(func=jobs.report_env))
    client.wait_for_job_completion(a, timeout=120)
    b = client.train(CustomTrainer(func=jobs.fail_on_rank))
    with pytest.raises(JobFailedError):
        client.wait_for_job_completion(b, timeout=120)
    assert [j.id for j in client.list_jobs()] == [a, b]
    # Waiting for a status an ended job can no longer reach returns at once, saying how it ended.
    with pytest.raises(JobStateError, match="ended Complete without reaching Running"):
        client.wait_for_job_status(a, {"Running"}, timeout=5)
    with pytest.raises(JobFailedError):
        client.wait_for_job_status(b, {"Running"}, timeout=5)
    assert [j.id for j in client.list_jobs(status="Failed")] == [b]
    assert [j.id for j in client.list_jobs(status={"Complete", "Failed"})] == [a, b]

