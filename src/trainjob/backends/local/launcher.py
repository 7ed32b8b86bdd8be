"""Spec -> the exact commands and environments that start a local job's ranks.

Pure: nothing runs here, so tests assert on the launch plan itself. One process runs directly
(torchrun would add ~1 s of agent start-up for nothing); more run under ``torch.distributed.run``,
one agent per node, with a static rendezvous on loopback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from trainjob import contract
from trainjob.core.rank_env import LOOPBACK, rank_env
from trainjob.core.spec import JobSpec


@dataclass(frozen=True)
class NodeLaunch:
    """How to start one node's agent (or its only rank)."""

    node_rank: int
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_file: Path


def plan_launch(
    spec: JobSpec,
    *,
    job_id: str,
    job_dir: Path,
    attempt: int,
    base_env: Mapping[str, str],
    python: str,
    master_port: int,
    metrics_host: str = LOOPBACK,
    extra_env: Mapping[str, str] | None = None,
    resume: bool = False,
    cpus: int | None = None,
) -> list[NodeLaunch]:
    """The launch plan of every node of a job.

    The environment is the submitter's (``base_env``) plus the job's ``env``, plus the trainjob
    contract variables; the user's own ``PYTHONPATH`` is kept and their submit folder appended so
    modules next to their code import as they would with ``python train.py``.
    """
    spec.require_real("plan_launch")  # the ranks get the real env values and arguments
    nnodes, nproc, world = spec.num_nodes, spec.procs_per_node, spec.world_size
    run_dir = job_dir / contract.RUN
    logs = job_dir / contract.LOGS / f"attempt-{attempt}"

    env = dict(base_env)
    env.update(spec.env)
    env.update(extra_env or {})
    submit_dir = spec.submit_dir or ""
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), submit_dir) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # Keep all distributed traffic on loopback (gloo otherwise picks the host's interface).
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if world > 1 and cpus:
        # All ranks share this machine: without this each would start one thread per core
        # (torchrun only does so for several ranks per agent, not for several agents).
        env.setdefault("OMP_NUM_THREADS", str(max(1, cpus // world)))
    env.update(rank_env(spec, job_id=job_id, job_dir=job_dir, attempt=attempt, resume=resume, run_dir=run_dir, metrics_host=metrics_host, submit_dir=submit_dir))
    env.update({"MASTER_ADDR": LOOPBACK, "MASTER_PORT": str(master_port)})

    plans = []
    for node in range(nnodes):
        node_env = dict(env)
        if world == 1:
            node_env.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "0", "NODE_RANK": "0"})
            argv = [python, "-m", "trainjob.runtime.bootstrap"]
        else:
            node_env["NODE_RANK"] = str(node)
            argv = [
                python, "-m", "torch.distributed.run",
                f"--nnodes={nnodes}",
                f"--nproc-per-node={nproc}",
                f"--node-rank={node}",
                f"--master-addr={LOOPBACK}",
                f"--master-port={master_port}",
                "--max-restarts=0",  # restarts are the supervisor's: whole job, with resume
                "--monitor-interval=0.1",
                "-m", "trainjob.runtime.bootstrap",
            ]  # fmt: skip
        plans.append(NodeLaunch(node, argv, node_env, job_dir / contract.WORKDIR, logs / f"node-{node}.log"))
    return plans

