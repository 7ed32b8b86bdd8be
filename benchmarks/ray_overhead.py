"""Ray overhead: the same tiny job through trainjob on Ray and through bare Ray Train, on one cluster.

    python benchmarks/ray_overhead.py --runs 3 [--steps 200] [--address HOST:PORT]

Without ``--address`` a one-node Ray cluster is started on loopback for the run (2 CPUs, as the
tests do) and ended after it. Each round runs every case once (interleaved, so drift hits all
alike; each round starts with a different case, and the script waits a few seconds between cases
so one case's teardown is not billed to the next); the table shows medians. Cases, each the tiny
GPT-2 of ``trainjob.demo`` on 2 Ray Train workers (DDP):

- ``bare ray train``: a new process that does ``ray.init(address)`` and
  ``TorchTrainer(...).fit()`` (what a Ray user runs); wall from process start to exit;
- ``trainjob (client process)``: a client that is already running calls ``train()`` and waits
  until it sees ``Complete`` (polled every 50 ms): what a notebook user waits;
- ``trainjob (new process)``: the same from a new Python process (imports included), comparable
  to the bare case process for process;
- ``trainjob jobs-api (client process)``: the client case with ``address`` the dashboard URL and
  no ``gcs_address`` (Jobs-API-only mode, issue 15): submit by package upload, reads through the
  driver's state mirror, ``delete_job`` through a relay job (outside the timed part).

``--cases`` picks some of them (comma-separated names as above); the default runs all.

Target (issue 7): trainjob <= 1.10x bare Ray Train wall time. Both the ratio of the medians and
the median of each round's own ratio are printed: on a noisy machine the second pairs runs made
under the same load. The breakdown of a trainjob run
comes from its own events (submission -> driver -> ranks -> first step -> end).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from common import PY, interleave, median, table  # noqa: E402

SETTLE = 3.0  # seconds between cases
MILESTONES = ("Queued", "Started", "TrainBegin", "TrainEnd", "Completed")

BARE = """
import shutil, sys, tempfile
import ray
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
ray.init(address={address!r}, logging_level="WARNING")
def loop(config):
    from trainjob.demo import train_tiny_gpt2
    train_tiny_gpt2(max_steps=config["steps"], output_dir=config["out"])
out = tempfile.mkdtemp(prefix="bare-")
TorchTrainer(loop, train_loop_config={{"steps": {steps}, "out": out}}, scaling_config=ScalingConfig(num_workers=2),
             run_config=RunConfig(storage_path=out)).fit()
shutil.rmtree(out, ignore_errors=True)
"""

TRAINJOB = """
import json
from trainjob import RayBackendConfig, TrainerClient, TransformersTrainer
from trainjob.demo import train_tiny_gpt2
c = TrainerClient(RayBackendConfig(address={address!r}, home={home!r}))
job_id = c.train(TransformersTrainer(func=train_tiny_gpt2, func_args={{"max_steps": {steps}}}, num_procs_per_node=2))
c.wait_for_job_status(job_id, {{"Complete"}}, timeout=900, polling_interval=0.05)
print("MILESTONES", json.dumps([(e.reason, e.time.timestamp()) for e in c.get_job_events(job_id)]))
c.delete_job(job_id)
"""


def run_process(code: str, env: dict[str, str], phases: list[dict[str, float]] | None = None) -> float:
    wall0 = time.time()
    t0 = time.perf_counter()
    r = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"benchmark process failed (rc={r.returncode}):\n{r.stderr[-3000:]}")
    for line in r.stdout.splitlines():
        if phases is not None and line.startswith("MILESTONES "):
            phases.append(_first_of(json.loads(line.split(" ", 1)[1]), wall0))
    settle()
    return wall


def settle() -> None:
    """Let the processes of the case just measured end before the next case starts (2 cores)."""
    time.sleep(SETTLE)


def trainjob_in_client(client, steps: int, phases: list[dict[str, float]]) -> float:
    from trainjob import TransformersTrainer
    from trainjob.demo import train_tiny_gpt2

    t0 = time.perf_counter()
    wall0 = time.time()
    job_id = client.train(TransformersTrainer(func=train_tiny_gpt2, func_args={"max_steps": steps}, num_procs_per_node=2))
    client.wait_for_job_status(job_id, {"Complete"}, timeout=900, polling_interval=0.05)
    wall = time.perf_counter() - t0
    phases.append(_first_of([(e.reason, e.time.timestamp()) for e in client.get_job_events(job_id)], wall0))
    client.delete_job(job_id)
    settle()
    return wall


def _first_of(events: list[tuple[str, float]], t0: float) -> dict[str, float]:
    """Seconds from ``t0`` to the first of each milestone event."""
    first: dict[str, float] = {}
    for reason, at in events:
        first.setdefault(reason, at - t0)
    return {k: first[k] for k in MILESTONES if k in first}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--address", help="an existing cluster's GCS host:port (default: start one on loopback)")
    ap.add_argument("--cases", help="comma-separated case names to run besides 'bare ray train' (default: all)")
    args = ap.parse_args()

    cluster = None
    home = tempfile.mkdtemp(prefix="tj-ray-bench-")
    if args.address:
        address = args.address
    else:
        import ray_cluster

        print("starting a one-node Ray cluster on loopback ...", flush=True)
        cluster = ray_cluster.start_loopback(Path(home))
        address = cluster.gcs
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    try:
        from trainjob import RayBackendConfig, TrainerClient

        client = TrainerClient(RayBackendConfig(address=address, home=home))
        client.list_jobs()  # connect to the cluster before timing
        dashboard = client.backend.conn.dashboard
        jobs_api = TrainerClient(RayBackendConfig(address=dashboard, home=home))  # no gcs_address: Jobs-API-only mode
        jobs_api.list_jobs()
        phases: dict[str, list[dict[str, float]]] = {"client process": [], "new process": [], "jobs-api": []}
        s = args.steps
        cases = {
            "bare ray train": lambda: run_process(BARE.format(address=address, steps=s), env),
            "trainjob (client process)": lambda: trainjob_in_client(client, s, phases["client process"]),
            "trainjob (new process)": lambda: run_process(TRAINJOB.format(address=address, home=home, steps=s), env, phases["new process"]),
            "trainjob jobs-api (client process)": lambda: trainjob_in_client(jobs_api, s, phases["jobs-api"]),
        }
        if args.cases:
            cases = {k: v for k, v in cases.items() if k in args.cases.split(",") or k == "bare ray train"}
        res = interleave(args.runs, cases, rotate=True)
    finally:
        if cluster is not None:
            cluster.stop()
        import shutil

        shutil.rmtree(home, ignore_errors=True)
    m = {k: median(v) for k, v in res.items()}
    print()
    print(table([(k, f"{m[k]:.2f}", f"{min(v):.2f}", f"{max(v):.2f}") for k, v in res.items()], ("case", "median wall s", "min", "max")))
    print()
    bare = res["bare ray train"]
    rows = []
    for case in [k for k in res if k != "bare ray train"]:
        paired = median([t / b for t, b in zip(res[case], bare)])  # each round's ratio: both ran under the same machine load
        rows.append((f"{case} / bare ray train", f"{m[case] / m['bare ray train']:.3f}", f"{paired:.3f}", "<= 1.10"))
    print(table(rows, ("ratio", "of medians", "median of per-round ratios", "target")))
    print()
    print("trainjob milestones, median seconds after train() (client process) or after the process started (new process):")
    shown = {k: ps for k, ps in phases.items() if ps}
    rows = [(k, *(f"{median([p[k] for p in ps if k in p]):.2f}" if any(k in p for p in ps) else "-" for ps in shown.values())) for k in MILESTONES]
    print(table(rows, ("event", *shown)))


if __name__ == "__main__":
    main()
