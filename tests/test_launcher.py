"""The launch plan is a pure function of the spec: the exact commands and environments."""

from __future__ import annotations

from pathlib import Path

from trainjob import TransformersTrainer
from trainjob.backends.local.launcher import plan_launch


def _spec(**kw):
    return TransformersTrainer(func="pkg.mod:train", **kw).job_spec(submit_dir="/submit")


def _plan(spec, **kw):
    args = dict(job_id="abcdefghijkl", job_dir=Path("/h/jobs/abcdefghijkl"), attempt=0, base_env={"PATH": "/bin", "PYTHONPATH": "/mine"},
                python="/py", master_port=29555, cpus=2)  # fmt: skip
    args.update(kw)
    return plan_launch(spec, **args)


def test_one_process_runs_bootstrap_directly():
    [node] = _plan(_spec())
    assert node.argv == ["/py", "-m", "trainjob.runtime.bootstrap"]
    env = node.env
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == ("0", "1", "0", "127.0.0.1")
    assert env["PYTHONPATH"] == "/mine:/submit"  # the user's own PYTHONPATH is kept, the submit folder appended
    assert env["PATH"] == "/bin" and env["GLOO_SOCKET_IFNAME"] == "lo"
    assert env["TRAINJOB_TRACKING"] == "1" and env["TRAINJOB_METRICS_PORT"] == "28080" and env["TRAINJOB_RESUME"] == "0"
    assert "OMP_NUM_THREADS" not in env
    assert node.cwd == Path("/h/jobs/abcdefghijkl/workdir")
    assert node.log_file == Path("/h/jobs/abcdefghijkl/logs/attempt-0/node-0.log")


def test_two_nodes_get_one_torchrun_agent_each_on_loopback():
    nodes = _plan(_spec(num_nodes=2, env={"A": "1"}, enable_progression_tracking=False), attempt=2, resume=True)
    assert [n.node_rank for n in nodes] == [0, 1]
    for n in nodes:
        assert n.argv[:3] == ["/py", "-m", "torch.distributed.run"]
        assert "--nnodes=2" in n.argv and "--nproc-per-node=1" in n.argv and f"--node-rank={n.node_rank}" in n.argv
        assert "--master-addr=127.0.0.1" in n.argv and "--master-port=29555" in n.argv and "--max-restarts=0" in n.argv
        assert n.argv[-2:] == ["-m", "trainjob.runtime.bootstrap"]
        assert n.env["A"] == "1" and n.env["TRAINJOB_TRACKING"] == "0" and n.env["TRAINJOB_RESUME"] == "1"
        assert n.env["OMP_NUM_THREADS"] == "1"  # 2 ranks share 2 CPUs
        assert n.log_file.parent.name == "attempt-2"


def test_user_env_wins_over_defaults_but_not_over_the_contract():
    [node] = _plan(_spec(env={"OMP_NUM_THREADS": "7", "HF_HUB_DISABLE_TELEMETRY": "0", "TRAINJOB_JOB_ID": "spoof"}, num_procs_per_node=2))
    assert node.env["OMP_NUM_THREADS"] == "7" and node.env["HF_HUB_DISABLE_TELEMETRY"] == "0"
    assert node.env["TRAINJOB_JOB_ID"] == "abcdefghijkl"
    assert "--nproc-per-node=2" in node.argv
