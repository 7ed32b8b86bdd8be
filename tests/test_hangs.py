"""No job runs for ever: ranks hung at exit or mid-training, deadlines, stops of hung jobs, a
supervisor that is interrupted. Real jobs, real signals, real processes."""

from __future__ import annotations

import faulthandler
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from conftest import job_processes, wait_until

from trainjob import CustomTrainer, TransformersTrainer
from trainjob.backends.local.hangs import HangWatch, top_native_frame, top_python_frame, work_done

import jobs


# ---- the verdicts, as pure decisions ----------------------------------------------------------
def test_exit_grace_starts_when_a_rank_exits_with_its_work_done():
    w = HangWatch(world=2, exit_grace=30, progress_timeout=None)
    done = {0: {"returned": {}}}
    assert w.check(1.0, {0: True, 1: True}, done, False, False) is None  # both alive: nothing to say
    assert w.check(2.0, {0: False, 1: True}, done, False, False) is None  # grace starts now
    assert w.exit_since == 2.0 and "rank 0 exited" in w.exit_cause
    assert w.check(31.9, {0: False, 1: True}, done, False, False) is None
    hang = w.check(32.0, {0: False, 1: True}, done, False, False)
    assert hang is not None and hang.kind == "exit" and hang.ranks == (1,)
    assert not work_done(done, 2) and work_done({**done, 1: {"train_end": {}}}, 2)


def test_a_rank_that_failed_does_not_start_the_exit_grace():
    w = HangWatch(world=2, exit_grace=1, progress_timeout=None)
    assert w.check(5.0, {0: False, 1: True}, {}, False, False) is None  # rank 0 died without its work done
    assert w.exit_since is None


def test_one_process_kept_alive_after_returning_is_hung_at_exit():
    w = HangWatch(world=1, exit_grace=10, progress_timeout=None)
    assert w.check(1.0, {0: True}, {0: {"returned": {}}}, False, False) is None
    hang = w.check(11.0, {0: True}, {0: {"returned": {}}}, False, False)
    assert hang is not None and hang.kind == "exit" and "returned from the job's function" in hang.why


def test_progress_timeout_counts_from_the_start_of_training_then_from_the_newest_step():
    w = HangWatch(world=1, exit_grace=30, progress_timeout=10)
    alive = {0: True}
    w.observe(False, None, 0.0)
    assert w.check(50.0, alive, {}, False, False) is None  # loading a model may take any time
    w.observe(True, None, 50.0)
    assert w.check(59.0, alive, {}, False, False) is None
    w.observe(True, 3, 59.0)
    assert w.check(68.0, alive, {}, False, False) is None  # 9 s since step 3
    w.observe(True, 3, 68.0)  # the same step again is no progress
    hang = w.check(69.5, alive, {}, False, False)
    assert hang is not None and hang.kind == "stalled" and "last was step 3" in hang.why
    assert w.check(100.0, alive, {}, False, True) is None  # training ended: the exit grace's business


def test_stack_frames_are_found_in_real_dumps(tmp_path):
    code = textwrap.dedent(
        """
        import faulthandler, sys, threading, time
        def waiting_here():
            faulthandler.dump_traceback(sys.stdout, all_threads=True)
        threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
        waiting_here()
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert top_python_frame(out) == "waiting_here (<string>:4)"
    native = textwrap.dedent(
        """\
        Thread 4392 (idle): "MainThread"
            0x7f24804a3f16 (libc.so.6)
            std::thread::join (libstdc++.so.6.0.30)
            c10d::ProcessGroupGloo::~ProcessGroupGloo (libtorch_cpu.so)
            c10d::Reducer::~Reducer (libtorch_cpu.so)
            <module> (trl/scripts/sft.py:145)
        Thread 4411 (idle): "tqdm_monitor"
            Event.wait (threading.py:629)
        """
    )  # the shape of `py-spy dump --native` for the gloo deadlock at exit (shared/FACTS.md)
    assert top_native_frame(native) == "c10d::ProcessGroupGloo::~ProcessGroupGloo (reached from <module> (trl/scripts/sft.py:145))"


# ---- real jobs ------------------------------------------------------------------------------
def _wait_end(client, job_id, timeout=180):
    return wait_until(lambda: (j := client.get_job(job_id)).status.is_terminal and j, timeout=timeout, what=f"job {job_id} to end")


def _reasons(client, job_id):
    return [e.reason for e in client.get_job_events(job_id)]


def _no_processes_left(job):
    wait_until(lambda: not [p for p in job_processes(job.job_dir) if p.status() != psutil.STATUS_ZOMBIE], timeout=15, what="the job's processes to end")


@pytest.mark.slow
def test_two_node_job_whose_rank_hangs_at_exit_completes_with_a_warning(client):
    t0 = time.monotonic()
    job_id = client.train(CustomTrainer(func=jobs.hang_at_exit, num_nodes=2, exit_grace_seconds=3))
    job = _wait_end(client, job_id)
    assert job.status == "Complete", job.message
    assert time.monotonic() - t0 < 120  # not torchrun's 300 s exit barrier
    hung = [e for e in client.get_job_events(job_id) if e.reason == "HungAtExit"]
    assert len(hung) == 1 and "rank 1" in hung[0].message and "_shutdown" in hung[0].message, hung
    log = "\n".join(client.get_job_logs(job_id, step="rank-1"))
    assert "most recent call first" in log  # faulthandler wrote the rank's Python stacks
    assert "in _shutdown" in log.split("most recent call first", 1)[1]
    assert client.get_job_result(job_id).return_value == 0
    _no_processes_left(job)


@pytest.mark.slow
def test_a_rank_that_never_finishes_its_work_fails_the_job_with_the_reason(client):
    job_id = client.train(CustomTrainer(func=jobs.never_returns_on, func_args={"rank": 1}, num_nodes=2, exit_grace_seconds=3))
    job = _wait_end(client, job_id)
    assert job.status == "Failed"
    assert "HungAtExit" in job.message and "rank 1" in job.message and "was not recorded done" in job.message
    assert "never_returns_on" in job.message  # the frame it was in
    _no_processes_left(job)


@pytest.mark.slow
def test_progress_timeout_fails_a_stalled_attempt_and_the_restart_completes(client):
    job_id = client.train(TransformersTrainer(func=jobs.tiny, func_args={"max_steps": 60, "logging_steps": 5}, progress_timeout=6, max_restarts=1))
    wait_until(lambda: (p := client.get_job_progress(job_id)) and p["currentStep"] > 0, timeout=120, what="a first step")
    rank0 = psutil.Process(client.get_job(job_id).steps[0].pids[0])
    rank0.suspend()  # SIGSTOP: alive, but no step will ever complete
    job = _wait_end(client, job_id)
    assert job.status == "Complete", job.message
    reasons = _reasons(client, job_id)
    assert reasons.index("ProgressTimeout") < reasons.index("Restarting")
    stalled = next(e for e in client.get_job_events(job_id) if e.reason == "ProgressTimeout")
    assert "no training step completed for" in stalled.message and "progress_timeout=6s" in stalled.message
    assert "rank 0 was in " in stalled.message  # its stacks could be read although it was stopped
    assert not psutil.pid_exists(rank0.pid) or rank0.status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow
def test_active_deadline_fails_the_job_with_deadline_exceeded(client):
    job_id = client.train(TransformersTrainer(func=jobs.tiny, func_args={"max_steps": 100000, "save_steps": 10**6}, active_deadline_seconds=15))
    job = _wait_end(client, job_id, timeout=120)
    assert job.status == "Failed"
    assert job.message.startswith("DeadlineExceeded: the job ran past active_deadline_seconds=15"), job.message
    events = client.get_job_events(job_id)
    assert events[-1].reason == "DeadlineExceeded"
    stopping = next(e for e in events if e.reason == "Stopping")
    result = client.get_job_result(job_id)
    if "agree on a step" in stopping.message:  # training had begun: the ranks saved where they were
        assert result.checkpoint is not None and "checkpoint" in job.message
    else:
        assert "no Trainer is training" in stopping.message
    _no_processes_left(job)


@pytest.mark.slow
def test_stop_of_a_job_hung_mid_training_takes_its_stop_grace_not_minutes(client):
    job_id = client.train(TransformersTrainer(func=jobs.tiny_hanging, func_args={"max_steps": 100000, "hang_at_step": 3}, stop_grace_seconds=2))
    wait_until(lambda: any(e.reason == "TrainBegin" for e in client.get_job_events(job_id)), timeout=120, what="training to begin")
    time.sleep(1.0)
    t0 = time.monotonic()
    client.stop_job(job_id)
    job = _wait_end(client, job_id, timeout=90)
    took = time.monotonic() - t0
    assert job.status == "Stopped"
    assert took < 60  # stop grace 2 s + SIGTERM grace 10 s + slack for a loaded machine; was 310 s
    assert any("stop_grace_seconds=2" in e.message for e in client.get_job_events(job_id))
    _no_processes_left(job)


@pytest.mark.slow
def test_sigint_to_the_supervisor_ends_every_process_before_the_job_is_failed(client, home):
    job_id = client.train(CustomTrainer(func=jobs.sleep_for, num_procs_per_node=2))
    wait_until(lambda: len(list((home / "jobs" / job_id / "run" / "pids").glob("rank-*.json"))) == 2, timeout=120, what="two ranks")
    job = client.get_job(job_id)
    row = client.backend.store.get_job(job_id)
    os.kill(row.supervisor_pid, signal.SIGINT)
    job = _wait_end(client, job_id, timeout=60)
    assert job.status == "Failed"
    assert job.message.startswith("supervisor interrupted (SIGINT)") and "processes of the job ended" in job.message
    assert not [p for p in job_processes(job.job_dir) if p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_delete_of_an_ended_job_ends_the_processes_recorded_for_it(client, home):
    job_id = client.train(CustomTrainer(func=jobs.report_env))
    job = _wait_end(client, job_id)
    assert job.status == "Complete"
    # A process still recorded for the job after it ended (as a rank whose launcher lost it would
    # be). Not a child of this test (sh starts it in the background and exits), like a real orphan.
    pid = int(subprocess.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True, check=True).stdout)
    stray = psutil.Process(pid)
    try:
        from trainjob import contract

        contract.write_json_atomic(home / "jobs" / job_id / "run" / "pids" / "rank-0.json", {"pid": pid, "start": stray.create_time()})
        client.delete_job(job_id)
        wait_until(lambda: not stray.is_running() or stray.status() == psutil.STATUS_ZOMBIE, timeout=10, what="the recorded process to end")
    finally:
        if stray.is_running():
            stray.kill()
