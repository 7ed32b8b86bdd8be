"""Warm start (issue 16): ranks forked from a warm process, with real jobs, processes and sockets.

One warm process serves the whole module (one trainjob home): starting one costs the imports
(~4 s). Each test makes sure it is ready before the job it wants forked, so an event says
``WarmStart``; a test about cold starts says why it got ``ColdStart``. The rest of the suite runs
with ``TRAINJOB_WARM_START=0`` (conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from conftest import wait_until
from trainjob import CustomTrainer, JobStatus, TransformersTrainer
from trainjob.backends.local.warm import client as warm_client
from trainjob.backends.local.warm import common
from trainjob.backends.local.warm.child import rank_env

HERE = Path(__file__).parent


# ---- pure parts -----------------------------------------------------------------------------------
def test_rank_env_is_what_torchrun_gives_each_worker():
    env = rank_env({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "A": "1", "RANK": "0"}, node_rank=1, local_rank=1, nproc=2, world=4)
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"], env["GROUP_RANK"]) == ("3", "1", "4", "2", "1")
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["A"] == "1"
    assert "TORCHELASTIC_USE_AGENT_STORE" not in env  # rank 0 hosts the store: there is no agent store


def test_key_covers_what_is_read_at_import_and_nothing_per_job():
    base = {"PATH": "/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": "/mine:/submit", "TRAINJOB_SUBMIT_DIR": "/submit", "HOME": "/h"}
    env = common.import_env(base)
    assert env == {"HF_HUB_OFFLINE": "1", "PYTHONPATH": "/mine", "HOME": "/h"}  # the submit folder is the user's code: not in it
    same = dict(base, TRAINJOB_SUBMIT_DIR="/other", PYTHONPATH="/mine:/other", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="true", RANK="3", CUDA_VISIBLE_DEVICES="1")
    assert common.warm_key(sys.executable, same) == common.warm_key(sys.executable, base)
    assert common.warm_key(sys.executable, dict(base, HF_HUB_OFFLINE="0")) != common.warm_key(sys.executable, base)
    assert common.warm_key(sys.executable, dict(base, TRANSFORMERS_VERBOSITY="error")) != common.warm_key(sys.executable, base)
    assert common.warm_key(sys.executable, dict(base, VIRTUAL_ENV="/envs/abc")) != common.warm_key(sys.executable, base)


def test_warm_settings_are_validated():
    from trainjob import LocalBackendConfig, TrainerClient, ValidationError

    with pytest.raises(ValidationError, match="warm_start"):
        TransformersTrainer(func=print, warm_start="no")
    with pytest.raises(ValidationError, match="warm_idle_timeout"):
        TrainerClient(LocalBackendConfig(warm_idle_timeout=0))


# ---- real warm processes ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def warm_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("warmhome")
    saved = {k: os.environ.get(k) for k in ("TRAINJOB_HOME", common.ENABLE_ENV, common.IDLE_ENV)}
    os.environ.update({"TRAINJOB_HOME": str(home), common.ENABLE_ENV: "1", common.IDLE_ENV: "300"})
    yield home
    warm_client.stop_servers(home, wait=15)
    for info in warm_client.list_servers(home):
        if info.pid and info.state != "gone":
            os.kill(info.pid, signal.SIGKILL)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def wclient(warm_home, tmp_path, monkeypatch):
    """A client over the module's home; jobs are submitted from a folder holding the test's user code."""
    from trainjob import TrainerClient

    shutil.copy(HERE / "warm_jobs.py", tmp_path / "warm_jobs.py")
    (tmp_path / "warm_user_module.py").write_text("VALUE = 1\n")
    monkeypatch.chdir(tmp_path)
    c = TrainerClient()
    yield c
    for job in c.list_jobs():
        if not job.status.is_terminal:
            c.delete_job(job.id)


def ready(home: Path) -> warm_client.WarmInfo:
    """Start (or find) the warm process of this environment and wait until it accepts forks."""
    key = warm_client.start_for_current_environment(home, wait=180)
    info = next(i for i in warm_client.list_servers(home) if i.key == key)
    assert info.state == "ready", info
    return info


def events(client, job_id, *reasons):
    return [e for e in client.get_job_events(job_id) if e.reason in reasons]


def run_job(client, trainer, timeout=300):
    """Submit ``trainer`` and wait until the job is Complete; its id."""
    job_id = client.train(trainer)
    client.wait_for_job_status(job_id, {"Complete"}, timeout=timeout, polling_interval=0.2)
    return job_id


@pytest.mark.slow
def test_warm_process_imported_the_stack_and_started_nothing(warm_home):
    info = ready(warm_home)
    status = common.read_status(common.paths(warm_home, info.key)["json"])
    assert {"torch", "transformers", "transformers.trainer", "trainjob.runtime.bootstrap"} <= set(status["imported"])
    assert status["python_threads"] == 1 and status["cuda_initialized"] is False
    # Its native threads are those the imports themselves start (numpy's OpenBLAS pool, pyarrow's
    # jemalloc thread), as in a fresh process that imports the same: torch's OpenMP pool is not started.
    modules = [m for m in status["imported"] if "." not in m or m.startswith(("transformers.", "trainjob."))]
    probe = "import os,importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    fresh = subprocess.run([sys.executable, "-c", probe + "print(len(os.listdir('/proc/self/task')))"], capture_output=True, text=True, check=True)
    after_op = subprocess.run([sys.executable, "-c", probe + "import torch; torch.ones(512,512)@torch.ones(512,512); print(len(os.listdir('/proc/self/task')))"], capture_output=True, text=True, check=True)
    assert len(status["native_threads"]) == int(fresh.stdout.split()[-1]) < int(after_op.stdout.split()[-1])
    assert psutil.Process(info.pid).num_threads() == len(status["native_threads"])  # still none started since
    sock = common.paths(warm_home, info.key)["sock"]
    assert (sock.stat().st_mode & 0o777) == 0o600 and (sock.parent.stat().st_mode & 0o777) == 0o700


@pytest.mark.slow
def test_same_losses_bit_for_bit_as_a_cold_start(wclient, warm_home):
    cold = run_job(wclient, TransformersTrainer(func="warm_jobs:seeded_losses", warm_start=False))
    assert events(wclient, cold, "WarmStart", "ColdStart") == []  # off for this job: nothing changes, nothing said
    ready(warm_home)
    warm = run_job(wclient, TransformersTrainer(func="warm_jobs:seeded_losses"))
    [ev] = events(wclient, warm, "WarmStart", "ColdStart")
    assert ev.reason == "WarmStart", ev.message
    a, b = wclient.get_job_result(cold).return_value, wclient.get_job_result(warm).return_value
    assert len(a["losses"]) == 12 and a["losses"] == b["losses"] and a["train_loss"] == b["train_loss"]
    assert a["threads"] == b["threads"]


@pytest.mark.slow
def test_a_forked_rank_is_a_fresh_process(wclient, warm_home):
    cold_id = run_job(wclient, CustomTrainer(func="warm_jobs:process_report", warm_start=False))
    info = ready(warm_home)
    warm_ids = [run_job(wclient, CustomTrainer(func="warm_jobs:process_report", env={"TOKENIZERS_PARALLELISM": "true"})) for _ in range(2)]
    cold = wclient.get_job_result(cold_id).return_value
    w1, w2 = (wclient.get_job_result(j).return_value for j in warm_ids)
    for j in warm_ids:
        [ev] = events(wclient, j, "WarmStart", "ColdStart")
        assert ev.reason == "WarmStart", ev.message
    for w, job_id in ((w1, warm_ids[0]), (w2, warm_ids[1])):
        assert w["argv"] == cold["argv"] and w["argv"][0].endswith("trainjob/runtime/bootstrap.py")
        assert (w["main_name"], w["main_spec"], w["main_file"]) == (cold["main_name"], cold["main_spec"], cold["main_file"]) == ("__main__", "trainjob.runtime.bootstrap", cold["argv"][0])
        assert w["handlers"] == cold["handlers"] and w["signal_mask"] == cold["signal_mask"] == []
        assert w["sid_is_own"] and w["pid"] != info.pid
        pid_record = json.loads((wclient.get_job(job_id).job_dir / "run" / "pids" / "rank-0.json").read_text())
        assert pid_record["pid"] == w["pid"]
        assert w["tokenizers_parallelism"] == "true" and cold["tokenizers_parallelism"] == os.environ.get("TOKENIZERS_PARALLELISM")
        assert w["cwd"] == str(wclient.get_job(job_id).job_dir / "workdir") == w["sys_path0"]
        assert w["python_threads"] == cold["python_threads"] and w["torch_threads"] == cold["torch_threads"]
        assert w["stdin_is_devnull"] and w["user_module_file"] == cold["user_module_file"]
    # Fresh seeds in every process: two forks of one warm process draw different numbers.
    for k in ("random", "numpy", "torch", "torch_initial_seed"):
        assert w1[k] != w2[k], k


@pytest.mark.slow
def test_user_code_is_imported_fresh_and_nothing_leaks_between_jobs(wclient, warm_home, tmp_path):
    ready(warm_home)
    first = run_job(wclient, CustomTrainer(func="warm_jobs:set_globals", env={"WARM_TEST_MARKER": "job-1"}))
    assert wclient.get_job_result(first).return_value == "set"
    (tmp_path / "warm_user_module.py").write_text("VALUE = 'changed between jobs'\n")
    ready(warm_home)
    second = run_job(wclient, CustomTrainer(func="warm_jobs:process_report"))
    for j in (first, second):
        assert [e.reason for e in events(wclient, j, "WarmStart", "ColdStart")] == ["WarmStart"]
    r = wclient.get_job_result(second).return_value
    assert r["user_module_value"] == "changed between jobs"
    assert r["mark"] == "unset" and r["transformers_leak"] is None and r["env_marker"] is None


@pytest.mark.slow
def test_two_processes_and_two_nodes_from_the_warm_process(wclient, warm_home):
    ready(warm_home)
    for shape in ({"num_procs_per_node": 2}, {"num_nodes": 2}):
        job_id = run_job(wclient, CustomTrainer(func="warm_jobs:ddp_sum", **shape))
        [ev] = events(wclient, job_id, "WarmStart", "ColdStart")
        assert ev.reason == "WarmStart", ev.message
        assert wclient.get_job_result(job_id).return_value == {"sum": 3.0, "world": 2, "rank_env": "0", "local_rank": "0"}
        job = wclient.get_job(job_id)
        assert all(s.status == JobStatus.COMPLETE for s in job.steps) and len(job.steps) == shape.get("num_nodes", 1)
        logs = job.job_dir / "logs" / "attempt-0"
        assert (logs / "rank-0.log").exists() and (logs / "rank-1.log").exists()


@pytest.mark.slow
def test_restart_after_a_failure_and_graceful_stop_from_the_warm_process(wclient, warm_home):
    import jobs

    ready(warm_home)
    job_id = wclient.train(TransformersTrainer(func=jobs.fails_once_at, func_args={"fail_at": 6, "rank": 0, "max_steps": 12, "save_steps": 5}, max_restarts=1))
    job = wclient.wait_for_job_completion(job_id, timeout=300)
    assert job.status == JobStatus.COMPLETE and job.attempt == 1
    assert [e.reason for e in events(wclient, job_id, "WarmStart", "ColdStart")] == ["WarmStart", "WarmStart"]
    restarting = events(wclient, job_id, "Restarting")[0]
    assert restarting.data["step"] == 5  # resumed from checkpoint-5
    failed = events(wclient, job_id, "AttemptFailed")[0]
    assert "injected failure at step 6" in failed.message

    ready(warm_home)
    job_id = wclient.train(TransformersTrainer(func=jobs.slow_tiny, func_args={"max_steps": 400, "save_steps": None, "step_delay": 0.05}))
    wait_until(lambda: (wclient.get_job_progress(job_id) or {}).get("currentStep", 0) >= 3, timeout=120, what="training to start")
    wclient.stop_job(job_id)
    job = _wait_terminal(wclient, job_id)
    assert job.status == JobStatus.STOPPED, job.message
    assert "newest complete checkpoint: checkpoint-" in job.message
    assert [e.reason for e in events(wclient, job_id, "WarmStart", "ColdStart")] == ["WarmStart"]


def _wait_terminal(client, job_id, timeout=120):
    return wait_until(lambda: (lambda j: j if j.status.is_terminal else None)(client.get_job(job_id)), timeout=timeout, what="the job to end")


@pytest.mark.slow
def test_a_killed_warm_process_or_a_stale_socket_means_a_cold_start_with_an_event(wclient, warm_home):
    info = ready(warm_home)
    os.kill(info.pid, signal.SIGKILL)
    wait_until(lambda: not psutil.pid_exists(info.pid) or psutil.Process(info.pid).status() == psutil.STATUS_ZOMBIE, timeout=10, what="the warm process to die")
    sock = common.paths(warm_home, info.key)["sock"]
    assert sock.exists()  # killed: its socket file stays behind
    job_id = run_job(wclient, CustomTrainer(func="warm_jobs:ddp_sum", num_procs_per_node=2))
    [ev] = events(wclient, job_id, "WarmStart", "ColdStart")
    assert ev.reason == "ColdStart" and "stale socket" in ev.message, ev.message
    assert wclient.get_job_result(job_id).return_value["sum"] == 3.0
    # A warm process for the next job was started in the background.
    info2 = ready(warm_home)
    assert info2.pid != info.pid
    # A socket file nobody listens on (e.g. left by a crash), with the lock free: cold, and cleaned up.
    warm_client.stop_servers(warm_home, wait=15)
    import socket as socketlib

    s = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_SEQPACKET)
    address = common.SocketAddress(sock)
    s.bind(address.address)
    address.close()
    s.close()
    job_id = run_job(wclient, CustomTrainer(func="warm_jobs:ddp_sum"))
    [ev] = events(wclient, job_id, "WarmStart", "ColdStart")
    assert ev.reason == "ColdStart" and "stale socket" in ev.message, ev.message


@pytest.mark.slow
def test_a_warm_rank_killed_by_a_signal_reports_it_even_without_the_warm_process(wclient, warm_home):
    import jobs

    info = ready(warm_home)
    job_id = wclient.train(CustomTrainer(func=jobs.sleep_for, func_args={"seconds": 120}))
    pid_file = lambda: wclient.get_job(job_id).job_dir / "run" / "pids" / "rank-0.json"  # noqa: E731
    wait_until(lambda: pid_file().exists(), timeout=60, what="the rank to start")
    os.kill(info.pid, signal.SIGKILL)  # the relay of exit codes is gone: the supervisor's pidfd + exit file take over
    os.kill(json.loads(pid_file().read_text())["pid"], signal.SIGKILL)
    job = _wait_terminal(wclient, job_id)
    assert job.status == JobStatus.FAILED and "SIGKILL" in job.message, job.message


@pytest.mark.slow
def test_global_opt_out_and_cli(wclient, warm_home, monkeypatch):
    from typer.testing import CliRunner

    from trainjob.cli.main import app

    monkeypatch.setenv(common.ENABLE_ENV, "0")
    job_id = run_job(wclient, CustomTrainer(func="warm_jobs:ddp_sum"))
    assert events(wclient, job_id, "WarmStart", "ColdStart") == []
    monkeypatch.setenv(common.ENABLE_ENV, "1")
    runner = CliRunner()
    result = runner.invoke(app, ["warm", "--wait", "180"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["warm", "ls", "-o", "json"])
    assert result.exit_code == 0, result.output
    [record] = [r for r in json.loads(result.stdout) if r["state"] == "ready"]
    assert record["pss_bytes"] > 0 and record["rss_bytes"] >= record["pss_bytes"]
    result = runner.invoke(app, ["warm", "--stop"])
    assert result.exit_code == 0, result.output
    wait_until(lambda: not psutil.pid_exists(record["pid"]) or psutil.Process(record["pid"]).status() == psutil.STATUS_ZOMBIE, timeout=15, what="the warm process to stop")
    assert not common.paths(warm_home, record["key"])["sock"].exists()


@pytest.mark.slow
def test_a_busy_warm_process_means_a_cold_start_and_its_late_fork_is_dropped(wclient, warm_home):
    info = ready(warm_home)
    os.kill(info.pid, signal.SIGSTOP)  # alive, its socket accepts, but it does not answer
    try:
        job_id = run_job(wclient, CustomTrainer(func="warm_jobs:ddp_sum"))
    finally:
        os.kill(info.pid, signal.SIGCONT)
    [ev] = events(wclient, job_id, "WarmStart", "ColdStart")
    assert ev.reason == "ColdStart" and "busy" in ev.message, ev.message
    assert wclient.get_job_result(job_id).return_value["sum"] == 1.0
    log = common.paths(warm_home, info.key)["log"]
    wait_until(lambda: "dropped a fork request" in log.read_text(), timeout=30, what="the stale request to be dropped")
    assert psutil.Process(info.pid).children() == []  # the job did not run twice


@pytest.mark.slow
def test_idle_timeout_ends_the_warm_process(tmp_path):
    home = tmp_path / "idlehome"
    key = warm_client.start_for_current_environment(home, idle=2.0, wait=180)
    status = common.read_status(common.paths(home, key)["json"])
    assert status["state"] == "ready" and status["idle_timeout"] == 2.0
    wait_until(lambda: not psutil.pid_exists(status["pid"]) or psutil.Process(status["pid"]).status() == psutil.STATUS_ZOMBIE, timeout=30, what="the idle warm process to exit")
    assert not common.paths(home, key)["sock"].exists()
    assert [i.key for i in warm_client.list_servers(home)] == []
