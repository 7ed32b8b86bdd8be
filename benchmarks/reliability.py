"""Reliability: many short two-process jobs in a row, none may fail for no reason.

    python benchmarks/reliability.py --runs 50
    python benchmarks/reliability.py --runs 20 --baseline 20   # also bare torchrun, for comparison

Each job is a quick ``torch.distributed`` function (init gloo, all-reduce, return the sum) run as a
``CustomTrainer`` with two ranks: ``--layout procs`` (default) puts both on one node, ``nodes``
runs two single-rank nodes (two torchrun agents). Any job that does not end ``Complete`` with the
right value is a spurious failure; failures whose error is SIGABRT or whose logs show
``terminate called without an active exception`` are the known torchrun exit crash (FACTS.md: about
1 run in 4 when the process group is not destroyed at exit; trainjob's bootstrap destroys it).

``--baseline N`` also runs the same function N times under bare ``torchrun`` *without*
``destroy_process_group()``, to show the crash rate trainjob avoids. The exit status is 1 when
any trainjob job failed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ENV, PY, free_port  # noqa: E402

EXIT_CRASH = "terminate called without an active exception"


def allreduce_sum() -> float:
    """Each rank contributes rank + 1; with two ranks every rank gets 3.0."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t = torch.tensor([dist.get_rank() + 1.0])
    dist.all_reduce(t)
    return float(t.item())


BASELINE_SCRIPT = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([dist.get_rank() + 1.0])
dist.all_reduce(t)
assert t.item() == 3.0
# no destroy_process_group(): the way most scripts end
"""


def run_trainjob(runs: int, layout: str) -> dict:
    from trainjob import CustomTrainer, TrainerClient
    from trainjob.errors import JobFailedError

    client = TrainerClient()
    trainer = CustomTrainer(func=allreduce_sum, num_nodes=2 if layout == "nodes" else 1, num_procs_per_node=1 if layout == "nodes" else 2)
    walls, failures, crashes = [], [], 0
    for i in range(runs):
        t0 = time.perf_counter()
        job_id = client.train(trainer)
        try:
            client.wait_for_job_completion(job_id, timeout=300, polling_interval=0.05)
            value = client.get_job_result(job_id).return_value
            if value != 3.0:
                failures.append((job_id, f"wrong value {value!r}"))
        except JobFailedError as e:
            logs = "\n".join(client.get_job_logs(job_id, step="node-0"))
            crash = e.error.get("signal") == "SIGABRT" or EXIT_CRASH in logs
            crashes += crash
            failures.append((job_id, ("exit crash: " if crash else "") + f"{e.error.get('type')}: {e.error.get('message')}"))
        walls.append(time.perf_counter() - t0)
        status = "ok" if not failures or failures[-1][0] != job_id else "FAILED " + failures[-1][1]
        print(f"  trainjob {i + 1}/{runs}: {walls[-1]:.2f}s {status}", flush=True)
        client.delete_job(job_id)
    return {"runs": runs, "failures": failures, "crashes": crashes, "walls": walls}


def run_baseline(runs: int) -> dict:
    crashes, failures, walls = 0, 0, []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "allreduce.py"
        script.write_text(BASELINE_SCRIPT)
        for i in range(runs):
            argv = [PY, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1", f"--master-port={free_port()}", str(script)]
            t0 = time.perf_counter()
            out = subprocess.run(argv, cwd=tmp, env=ENV, capture_output=True, text=True)
            walls.append(time.perf_counter() - t0)
            crash = out.returncode != 0 and (EXIT_CRASH in out.stdout + out.stderr or "SIGABRT" in out.stdout + out.stderr)
            crashes += crash
            failures += out.returncode != 0
            print(f"  torchrun {i + 1}/{runs}: {walls[-1]:.2f}s rc={out.returncode}{' (exit crash)' if crash else ''}", flush=True)
    return {"runs": runs, "failures": failures, "crashes": crashes, "walls": walls}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=50, help="two-process trainjob jobs to run in a row (default 50)")
    ap.add_argument("--layout", choices=("procs", "nodes"), default="procs", help="2 ranks on 1 node, or 2 nodes of 1 rank")
    ap.add_argument("--baseline", type=int, default=0, metavar="N", help="also run N bare torchrun runs without destroy_process_group()")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error(f"--runs must be at least 1, got {args.runs}")
    os.environ.update({k: v for k, v in ENV.items() if k not in os.environ})
    with tempfile.TemporaryDirectory() as home:
        os.environ["TRAINJOB_HOME"] = home
        tj = run_trainjob(args.runs, args.layout)
    base = run_baseline(args.baseline) if args.baseline else None

    n, bad = tj["runs"], len(tj["failures"])
    print()
    print(f"trainjob, 2 ranks ({args.layout}): {n} jobs, {n - bad} Complete with the right value, {bad} spurious failure(s)")
    print(f"  exit-crash-free rate: {(n - tj['crashes']) / n:.1%} ({tj['crashes']} exit crash(es))")
    print(f"  wall per job (submit -> Complete): median {statistics.median(tj['walls']):.2f}s, max {max(tj['walls']):.2f}s")
    for job_id, why in tj["failures"]:
        print(f"  failed {job_id}: {why}")
    if base:
        m = base["runs"]
        print(f"bare torchrun, 2 procs, no destroy_process_group(): {m} runs, {base['failures']} non-zero exit(s)")
        print(f"  exit-crash-free rate: {(m - base['crashes']) / m:.1%} ({base['crashes']} exit crash(es))")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
