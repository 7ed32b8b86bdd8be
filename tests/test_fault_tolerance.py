"""Fault tolerance and control of local jobs (issue 5), with real jobs, processes and SQLite.

Restart and resume after a rank is killed, the root cause of a failure, partial checkpoints,
graceful stop and resume, a killed supervisor, deletion, and the store under concurrent writers.
Jobs are tiny (a 2-layer GPT-2, tens of steps); ``slow_tiny`` pauses after each step so that the
test can act mid-training.
"""

from __future__ import annotations

import collections
import json
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import jobs
from conftest import wait_until, job_processes
from trainjob import CustomTrainer, JobFailedError, TrainerClient, TransformersTrainer
from trainjob.errors import JobNotFoundError, JobStateError
from trainjob.backends.local.failures import NodeOutcome, collect_failures, parse_torchrun_failures, root_cause
from trainjob.checkpoints import is_complete, latest_complete, list_checkpoints
from trainjob.store import JobRow, Store
from trainjob.types import JobStatus

TERMINAL = {"Complete", "Failed", "Stopped"}
LR = 5e-4  # slow_tiny's learning rate; linear decay, no warmup
STEPS_PER_EPOCH_2_RANKS = 14  # 224 samples / (8 per device * 2 ranks)


# ---- helpers ------------------------------------------------------------------------------


def output_dir(client: TrainerClient, job_id: str) -> Path:
    return client.get_job(job_id).job_dir / "workdir" / "output"


def rank_pid(client: TrainerClient, job_id: str, rank: int) -> int:
    rec = client.get_job(job_id).job_dir / "run" / "pids" / f"rank-{rank}.json"
    return json.loads(wait_until(lambda: rec.exists() and rec.read_text(), what=f"{rec}"))["pid"]


def events(client: TrainerClient, job_id: str, reason: str) -> list:
    return [e for e in client.get_job_events(job_id) if e.reason == reason]


def wait_step(client: TrainerClient, job_id: str, step: int, timeout: float = 120) -> int:
    def reached():
        p = client.get_job_progress(job_id)
        return p is not None and p["currentStep"] >= step and p["currentStep"]

    return wait_until(reached, timeout, interval=0.1, what=f"step {step} of {job_id}")


def assert_no_processes(job_dir: Path, timeout: float = 10) -> None:
    """No process of the job is left (the supervisor may take a moment to exit after recording the end)."""
    deadline = time.monotonic() + timeout
    while job_processes(job_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [(p.pid, p.info.get("cmdline")) for p in job_processes(job_dir)]
    assert not left, f"processes of {job_dir.name} still alive {timeout}s after it ended: {left}"


def finish(client: TrainerClient, job_id: str, timeout: float = 180):
    return client.wait_for_job_status(job_id, TERMINAL, timeout=timeout, polling_interval=0.25)


# ---- 1. restart and resume ----------------------------------------------------------------
def test_killed_rank_restarts_from_last_checkpoint(client):
    """SIGKILL one rank of a 2-node job after a checkpoint: the job restarts all ranks, resumes, completes."""
    max_steps = 40
    trainer = TransformersTrainer(func=jobs.slow_tiny, func_args={"max_steps": max_steps, "save_steps": 10, "step_delay": 0.1}, num_nodes=2, max_restarts=1)
    job_id = client.train(trainer)
    out = output_dir(client, job_id)
    ckpt = wait_until(lambda: latest_complete(out), what="the first complete checkpoint")
    saved_step = int(ckpt.name.split("-")[1])
    os.kill(rank_pid(client, job_id, 1), signal.SIGKILL)

    job = client.wait_for_job_completion(job_id, timeout=180)
    assert job.status == JobStatus.COMPLETE and job.attempt == 1

    # The failure names the killed rank and the signal, not the peer that failed because of it.
    failed = events(client, job_id, "AttemptFailed")
    assert len(failed) == 1
    error = failed[0].data["error"]
    assert (error["rank"], error["type"], error["signal"]) == (1, "Signal", "SIGKILL"), error
    restart = events(client, job_id, "Restarting")
    assert len(restart) == 1 and restart[0].data["attempt"] == 1
    resumed_from = restart[0].data["step"]
    assert resumed_from is not None and resumed_from >= saved_step

    # The second attempt started from that checkpoint, not from step 0.
    begins = events(client, job_id, "TrainBegin")
    assert [b.data["start_step"] for b in begins] == [0, resumed_from]
    resuming = events(client, job_id, "Resuming")
    assert len(resuming) == 1 and resuming[0].data["step"] == resumed_from

    # The metrics history continues: attempt-1 entries come after the checkpoint, with the LR
    # schedule and the epoch counter where an uninterrupted run would have them.
    history = [m for m in client.get_job_metrics(job_id) if "loss" in m]
    first, second = [m for m in history if m["attempt"] == 0], [m for m in history if m["attempt"] == 1]
    assert first and second
    assert min(m["step"] for m in second) > resumed_from
    assert max(m["step"] for m in second) == max_steps
    for m in second:
        assert m["learning_rate"] == pytest.approx(LR * (1 - (m["step"] - 1) / max_steps), rel=1e-6), m
        assert m["epoch"] == pytest.approx(m["step"] / STEPS_PER_EPOCH_2_RANKS, abs=1e-6), m
    assert second[0]["loss"] < first[0]["loss"]  # a restart from scratch would start high again

    result = client.get_job_result(job_id)
    assert result.return_value["global_step"] == max_steps
    assert result.checkpoint is not None and result.checkpoint.name == f"checkpoint-{max_steps}"
    logs = client.get_job(job_id).job_dir / "logs"
    assert (logs / "attempt-0" / "rank-1.log").exists() and (logs / "attempt-1" / "rank-1.log").exists()
    assert_no_processes(job.job_dir)


def test_partial_newest_checkpoint_is_skipped(client):
    """A restart resumes from the newest *complete* checkpoint, skipping one cut short or mislabelled."""
    trainer = TransformersTrainer(func=jobs.slow_tiny, func_args={"max_steps": 20, "save_steps": 5, "step_delay": 0.1}, max_restarts=1)
    job_id = client.train(trainer)
    out = output_dir(client, job_id)
    good = wait_until(lambda: latest_complete(out), what="a complete checkpoint")
    pid = rank_pid(client, job_id, 0)
    # Newer than the good one: no trainer_state.json (killed mid-save), and one whose state names another step.
    partial = out / f"checkpoint-{int(good.name.split('-')[1]) + 3}"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 100)
    mislabelled = out / f"checkpoint-{int(good.name.split('-')[1]) + 4}"
    mislabelled.mkdir()
    (mislabelled / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    os.kill(pid, signal.SIGKILL)

    job = client.wait_for_job_completion(job_id, timeout=180)
    assert job.attempt == 1
    resuming = events(client, job_id, "Resuming")
    assert len(resuming) == 1
    assert resuming[0].data["checkpoint"] == str(good)
    assert set(resuming[0].data["skipped"]) >= {partial.name, mislabelled.name}
    begins = events(client, job_id, "TrainBegin")
    assert begins[-1].data["start_step"] == int(good.name.split("-")[1])
    assert client.get_job_result(job_id).return_value["global_step"] == 20


def test_checkpoint_completeness_rules(tmp_path):
    for name, state in [("checkpoint-5", {"global_step": 5}), ("checkpoint-10", {"global_step": 10}), ("checkpoint-15", None), ("checkpoint-20", {"global_step": 19})]:
        d = tmp_path / name
        d.mkdir()
        if state is not None:
            (d / "trainer_state.json").write_text(json.dumps(state))
    (tmp_path / "checkpoint-25").mkdir()
    (tmp_path / "checkpoint-25" / "trainer_state.json").write_text('{"global_st')  # torn write
    (tmp_path / "checkpoint-x").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-5", "checkpoint-10", "checkpoint-15", "checkpoint-20", "checkpoint-25"]
    assert [is_complete(p) for p in list_checkpoints(tmp_path)] == [True, True, False, False, False]
    assert latest_complete(tmp_path).name == "checkpoint-10"
    assert latest_complete(tmp_path / "missing") is None and latest_complete(None) is None


# ---- 2. root cause when restarts run out ----------------------------------------------------
def test_exception_root_cause_after_restarts_exhausted(client):
    """Rank 1 raises while rank 0 sits in all_reduce: Failed with rank 1's error, not rank 0's peer error."""
    job_id = client.train(CustomTrainer(func=jobs.raise_in_collective, func_args={"rank": 1, "message": "bad batch"}, num_nodes=2, max_restarts=1))
    with pytest.raises(JobFailedError) as info:
        client.wait_for_job_completion(job_id, timeout=180)
    assert info.value.error["rank"] == 1 and info.value.error["type"] == "ValueError"
    assert "bad batch" in info.value.error["message"] and "bad batch" in str(info.value)
    job = client.get_job(job_id)
    assert job.status == JobStatus.FAILED and job.attempt == 1
    assert "rank 1: ValueError: bad batch" in job.message
    failed = events(client, job_id, "AttemptFailed")
    assert [e.data["attempt"] for e in failed] == [0, 1]
    assert all(e.data["error"]["rank"] == 1 for e in failed)
    assert len(events(client, job_id, "Restarting")) == 1
    assert_no_processes(job.job_dir)


def test_signal_root_cause(client):
    """Rank 1 is SIGKILLed while rank 0 sits in all_reduce: the cause is rank 1's signal."""
    job_id = client.train(CustomTrainer(func=jobs.die_on_rank, func_args={"rank": 1, "sig": int(signal.SIGKILL)}, num_procs_per_node=2))
    job = finish(client, job_id)
    assert job.status == JobStatus.FAILED
    error = client.get_job_result(job_id).error
    assert (error["rank"], error["type"], error["signal"], error["exit_code"]) == (1, "Signal", "SIGKILL", -9), error
    assert "rank 1" in job.message and "SIGKILL" in job.message
    # rank 0 failed too (a closed connection, or SIGTERM from torchrun): recorded as a consequence.
    assert any(o.startswith("rank 0:") for o in error.get("other_failures", [])), error


def test_failure_is_kept_when_the_supervisor_ends_the_nodes(client):
    """A peer that ignores SIGTERM keeps torchrun waiting; the supervisor ends the node and the job still Fails."""
    start = time.monotonic()
    job_id = client.train(CustomTrainer(func=jobs.stubborn_peer, func_args={"fail_rank": 1, "message": "disk full"}, num_procs_per_node=2))
    job = finish(client, job_id, timeout=120)
    assert time.monotonic() - start < 25  # torchrun alone would wait 30 s for the stubborn rank
    assert job.status == JobStatus.FAILED, job.message
    error = client.get_job_result(job_id).error
    assert (error["rank"], error["type"], error["message"]) == (1, "ValueError", "disk full")
    assert events(client, job_id, "EndingNodes")
    assert "killed by SIGKILL" in events(client, job_id, "NodeExited")[0].message
    assert_no_processes(job.job_dir)


def test_failing_function_never_hangs_a_waiter(client):
    job_id = client.train(CustomTrainer(func=jobs.fail_on_rank, func_args={"rank": 0, "message": "no data"}))
    start = time.monotonic()
    with pytest.raises(JobFailedError) as info:
        client.wait_for_job_completion(job_id, timeout=60)
    assert time.monotonic() - start < 60
    assert info.value.status == "Failed" and info.value.error["type"] == "ValueError" and info.value.error["rank"] == 0
    assert "no data" in client.get_job(job_id).message


def test_root_cause_ranking_on_torchrun_output():
    """The ranking itself, on the failure summary torchrun prints (copied from a real run)."""
    summary = """torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
trainjob.runtime.bootstrap FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-21_05:48:18
  host      : localhost
  rank      : 3 (local_rank: 1)
  exitcode  : -15 (pid: 8493)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 8493
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-21_05:48:16
  host      : localhost
  rank      : 2 (local_rank: 0)
  exitcode  : -9 (pid: 8491)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 8491
============================================================"""
    parsed = parse_torchrun_failures(summary)
    assert [(p["rank"], p["local_rank"], p["exit_code"]) for p in parsed] == [(2, 0, -9), (3, 1, -15)]
    t = parsed[0]["time"]
    peer_error = {"rank": 0, "type": "RuntimeError", "message": "[pair.cc:553] Connection closed by peer [127.0.0.1]:1", "time": t - 5, "traceback": ""}
    nodes = [NodeOutcome(0, 1, t, (0, 1)), NodeOutcome(1, 1, t, (2, 3), log=summary)]
    cause = root_cause(collect_failures([peer_error], nodes, world_size=4))
    assert (cause.rank, cause.signal) == (2, "SIGKILL")  # earlier peer error and the SIGTERMed sibling rank lower
    own_error = {"rank": 1, "type": "ValueError", "message": "bad", "time": t + 30, "traceback": ""}
    assert root_cause(collect_failures([peer_error, own_error], nodes, world_size=4)).rank == 1  # an exception of its own ranks first


def test_a_killed_launcher_is_the_cause_of_its_ranks_peer_errors():
    """kill -9 of node-1's torchrun agent: its rank dies with it, rank 1's and rank 0's collectives
    fail with peer errors, and node-1 prints no summary. The cause is the launcher."""
    t = time.time()
    peer_errors = [
        {"rank": r, "type": "RuntimeError", "message": "[pair.cc:537] Read error [127.0.0.1]:4489: Connection reset by peer", "time": t + r, "traceback": ""}
        for r in (0, 1)
    ]
    nodes = [NodeOutcome(0, 1, t + 4, (0,)), NodeOutcome(1, -9, t + 2, (1,), log="")]
    cause = root_cause(collect_failures(peer_errors, nodes, world_size=2))
    assert (cause.node, cause.type, cause.signal) == (1, "NodeLost", "SIGKILL"), cause
    assert cause.describe() == "node-1: NodeLost: node-1's launcher killed by SIGKILL"


# ---- 3. graceful stop and resume ------------------------------------------------------------
def test_stop_saves_at_the_same_step_then_resume_runs_to_the_end(client):
    max_steps = 40
    trainer = TransformersTrainer(func=jobs.slow_tiny, func_args={"max_steps": max_steps, "save_steps": None, "step_delay": 0.1}, num_procs_per_node=2)
    job_id = client.train(trainer)
    wait_step(client, job_id, 6)
    client.stop_job(job_id)
    job = client.wait_for_job_status(job_id, {"Stopped"}, timeout=120, polling_interval=0.25)
    end = events(client, job_id, "TrainEnd")[-1].data
    stopped_at = end["global_step"]
    assert end["stopped"] and 0 < stopped_at < max_steps and stopped_at % 5 == 0  # agreed at a check step
    assert f"at step {stopped_at}" in job.message

    # One checkpoint, at the stopped step, holding the state of both ranks.
    ckpts = list_checkpoints(output_dir(client, job_id))
    assert [c.name for c in ckpts] == [f"checkpoint-{stopped_at}"] and is_complete(ckpts[0])
    assert (ckpts[0] / "rng_state_0.pth").exists() and (ckpts[0] / "rng_state_1.pth").exists()
    assert client.get_job_result(job_id).checkpoint == ckpts[0]
    assert_no_processes(job.job_dir)

    # A stop on an ended job changes nothing.
    n_events = len(client.get_job_events(job_id))
    client.stop_job(job_id)
    assert client.get_job(job_id).status == JobStatus.STOPPED and len(client.get_job_events(job_id)) == n_events

    resumed = client.train(trainer, resume=job_id)
    assert client.wait_for_job_completion(resumed, timeout=180).status == JobStatus.COMPLETE
    assert events(client, resumed, "TrainBegin")[0].data["start_step"] == stopped_at
    assert client.get_job_result(resumed).return_value["global_step"] == max_steps
    assert min(m["step"] for m in client.get_job_metrics(resumed) if "loss" in m) > stopped_at
    # The new job shares the checkpoint's files (hard links), and leaves the old job's as they were.
    name = f"checkpoint-{stopped_at}"
    old_weights, new_weights = output_dir(client, job_id) / name / "model.safetensors", output_dir(client, resumed) / name / "model.safetensors"
    assert old_weights.stat().st_ino == new_weights.stat().st_ino
    assert [c.name for c in list_checkpoints(output_dir(client, job_id))] == [name]


def test_sigterm_to_supervisor_is_a_graceful_stop(client):
    trainer = TransformersTrainer(func=jobs.slow_tiny, func_args={"max_steps": 200, "save_steps": None, "step_delay": 0.05})
    job_id = client.train(trainer)
    wait_step(client, job_id, 3)
    os.kill(client.backend.store.get_job(job_id).supervisor_pid, signal.SIGTERM)
    job = client.wait_for_job_status(job_id, {"Stopped"}, timeout=120, polling_interval=0.25)
    assert "SIGTERM" in job.message
    stopped_at = events(client, job_id, "TrainEnd")[-1].data["global_step"]
    assert 3 <= stopped_at < 200
    assert [c.name for c in list_checkpoints(output_dir(client, job_id))] == [f"checkpoint-{stopped_at}"]
    assert_no_processes(job.job_dir)


def test_sigterm_to_a_rank_stops_training_with_a_checkpoint(client):
    job_id = client.train(TransformersTrainer(func=jobs.slow_tiny, func_args={"max_steps": 200, "save_steps": None, "step_delay": 0.05}))
    wait_step(client, job_id, 3)
    os.kill(rank_pid(client, job_id, 0), signal.SIGTERM)
    job = client.wait_for_job_status(job_id, {"Stopped"}, timeout=120, polling_interval=0.25)
    assert "SIGTERM" in job.message
    stopped_at = events(client, job_id, "TrainEnd")[-1].data["global_step"]
    assert [c.name for c in list_checkpoints(output_dir(client, job_id))] == [f"checkpoint-{stopped_at}"]


def test_stop_custom_trainer_ends_ranks_with_sigterm(client):
    job_id = client.train(CustomTrainer(func=jobs.sleep_for, func_args={"seconds": 300}, num_procs_per_node=2))
    wait_until(lambda: len(list((client.get_job(job_id).job_dir / "run" / "pids").glob("rank-*.json"))) == 2, what="both ranks")
    start = time.monotonic()
    client.stop_job(job_id)
    job = client.wait_for_job_status(job_id, {"Stopped"}, timeout=60, polling_interval=0.25)
    assert time.monotonic() - start < 8  # no grace period for code that cannot save at an agreed step
    assert any("SIGTERM" in e.message for e in events(client, job_id, "Stopping"))
    assert_no_processes(job.job_dir)


def test_stop_before_training_starts(client):
    job_id = client.train(TransformersTrainer(func=jobs.slow_tiny, func_args={"max_steps": 50}))
    client.stop_job(job_id)  # still Created/starting: no Trainer yet
    job = client.wait_for_job_status(job_id, {"Stopped"}, timeout=60, polling_interval=0.25)
    assert job.status == JobStatus.STOPPED
    assert_no_processes(job.job_dir)


def test_stop_queued_job(client):
    """A job waiting for CPUs that another job holds is stopped without ever launching."""
    holder = client.train(CustomTrainer(func=jobs.sleep_for, func_args={"seconds": 120}, resources_per_node={"cpu": os.cpu_count()}))
    client.wait_for_job_status(holder, {"Running"}, timeout=60, polling_interval=0.25)
    queued = client.train(CustomTrainer(func=jobs.sleep_for, func_args={"seconds": 120}, resources_per_node={"cpu": os.cpu_count()}))
    client.wait_for_job_status(queued, {"Queued"}, timeout=60, polling_interval=0.25)
    client.stop_job(queued)
    job = client.wait_for_job_status(queued, {"Stopped"}, timeout=60, polling_interval=0.25)
    assert job.message == "stopped before it started" and not events(client, queued, "Started")
    assert client.get_job(holder).status == JobStatus.RUNNING
    client.delete_job(holder)


def test_resume_needs_an_ended_job(client):
    running = client.train(CustomTrainer(func=jobs.sleep_for, func_args={"seconds": 60}))
    with pytest.raises(JobStateError, match="stop it first"):
        client.train(CustomTrainer(func=jobs.sleep_for), resume=running)
    with pytest.raises(JobNotFoundError):
        client.train(CustomTrainer(func=jobs.sleep_for), resume="nosuchjob000")
    assert [j.id for j in client.list_jobs()] == [running]  # nothing was created by the refused calls
    client.delete_job(running)


# ---- 4. a supervisor that dies, a job that is deleted ------------------------------------
def test_killed_supervisor_is_noticed_by_the_next_reader(client, home):
    job_id = client.train(TransformersTrainer(func=jobs.slow_tiny, func_args={"max_steps": 400, "save_steps": None, "step_delay": 0.1}, num_nodes=2))
    wait_step(client, job_id, 2)
    job_dir = client.get_job(job_id).job_dir
    assert len(job_processes(job_dir)) >= 5  # supervisor, 2 torchrun agents, 2 ranks
    os.kill(client.backend.store.get_job(job_id).supervisor_pid, signal.SIGKILL)
    time.sleep(0.5)
    # Another process reads first: it records the failure and ends the orphans.
    code = f"from trainjob import TrainerClient; j = TrainerClient().get_job({job_id!r}); print(j.status.value); print(j.message)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={**os.environ, "TRAINJOB_HOME": str(home)})
    status, message = out.stdout.splitlines()[:2]
    assert status == "Failed", out.stderr
    assert "supervisor" in message and "died" in message and "4 leftover processes ended" in message
    assert_no_processes(job_dir, timeout=1)
    job = client.get_job(job_id)
    assert job.status == JobStatus.FAILED and client.get_job_result(job_id).error["type"] == "SupervisorLost"
    assert len(events(client, job_id, "Failed")) == 1


def test_delete_running_job_leaves_nothing(client, home):
    job_id = client.train(TransformersTrainer(func=jobs.slow_tiny, func_args={"max_steps": 400, "step_delay": 0.1}, num_nodes=2))
    wait_step(client, job_id, 2)
    job_dir = client.get_job(job_id).job_dir
    client.delete_job(job_id)
    assert_no_processes(job_dir, timeout=1)
    assert not job_dir.exists()
    assert job_id not in [j.id for j in client.list_jobs()]
    with sqlite3.connect(home / "trainjob.db") as db:
        for table, col in (("jobs", "id"), ("events", "job_id"), ("metric_chunks", "job_id")):  # the history (store v6)
            assert db.execute(f"SELECT COUNT(*) FROM {table} WHERE {col} = ?", (job_id,)).fetchone()[0] == 0


# ---- 5. the store under concurrency ---------------------------------------------------------
def _submit_five(k: int, tests_dir: str, queue) -> None:
    sys.path.insert(0, tests_dir)
    import jobs as j

    client = TrainerClient()
    out = []
    for i in range(5):
        value = 100 * k + i
        out.append((client.train(CustomTrainer(func=j.quick_value, func_args={"x": value})), value))
        client.list_jobs()  # readers run reconcile() while other processes insert rows
    queue.put(out)


def test_concurrent_submissions_from_four_processes(client):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_submit_five, args=(k, str(Path(__file__).parent), queue)) for k in range(4)]
    for p in procs:
        p.start()
    submitted = [item for _ in procs for item in queue.get(timeout=120)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(submitted) == 20 and len({j for j, _ in submitted}) == 20
    for job_id, value in submitted:
        job = finish(client, job_id, timeout=240)
        assert job.status == JobStatus.COMPLETE, (job_id, job.message)
        assert client.get_job_result(job_id).return_value == value
    assert len(client.list_jobs()) == 20


def _write_rows(path: str, worker: int, n: int, queue) -> None:
    try:
        store = Store(path)
        job_id = f"w{worker:011d}"
        store.insert_job(JobRow(id=job_id, name=job_id, backend="local", status=JobStatus.CREATED, created_at=time.time(), num_nodes=1, procs_per_node=1, spec={}))
        for i in range(n):
            store.add_event(job_id, "Tick", f"event {i}", {"i": i})
            store.add_metrics(job_id, 0, [{"step": i, "time": time.time(), "loss": 1 / (i + 1)}, {"step": i, "time": time.time(), "grad_norm": 1.0}])
            store.update_job(job_id, progress={"currentStep": i})
            store.transition(job_id, JobStatus.RUNNING)
            store.list_jobs()
        queue.put(None)
    except BaseException as e:  # noqa: BLE001 - reported to the test
        queue.put(f"{type(e).__name__}: {e}")


def test_store_with_many_concurrent_writers(tmp_path):
    path, workers, n = str(tmp_path / "t.db"), 6, 150
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_write_rows, args=(path, w, n, queue)) for w in range(workers)]
    for p in procs:
        p.start()
    problems = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert problems == [None] * workers
    store = Store(path)
    for w in range(workers):
        job_id = f"w{w:011d}"
        assert len(store.events(job_id)) == n
        assert [m["step"] for m in store.metrics(job_id)] == [i for i in range(n) for _ in (0, 1)]
        assert store.get_job(job_id).progress == {"currentStep": n - 1}


def _write_batches_forever(path: str) -> None:
    store = Store(path)
    store.insert_job(JobRow(id="crashy000000", name="c", backend="local", status=JobStatus.RUNNING, created_at=time.time(), num_nodes=1, procs_per_node=1, spec={}))
    batch = 0
    while True:
        store.add_metrics("crashy000000", 0, [{"step": batch, "time": time.time(), "i": i, "pad": "x" * 500} for i in range(50)])
        batch += 1


def test_store_survives_a_writer_killed_mid_write(tmp_path):
    path = str(tmp_path / "t.db")
    ctx = mp.get_context("spawn")
    for _ in range(3):
        p = ctx.Process(target=_write_batches_forever, args=(path,))
        p.start()
        wait_until(lambda: Path(path).exists() and Store(path).metrics("crashy000000"), timeout=60, what="first batch")
        time.sleep(0.3)
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        per_batch = collections.Counter((m["attempt"], m["step"]) for m in Store(path).metrics("crashy000000"))
        assert per_batch and all(count % 50 == 0 for count in per_batch.values()), per_batch  # all of a batch or none
        Store(path).delete_job("crashy000000")
