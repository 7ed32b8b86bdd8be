"""What a queued job costs while it waits, and how soon it starts once resources are released.

    python benchmarks/queue_wait.py --runs 3 --window 20

Each round, in a fresh TRAINJOB_HOME: job A takes every CPU of this machine
(``resources_per_node={"cpu": <all>}``) and sleeps; job B asks for the same and is ``Queued``
behind it. Measured:
- the CPU time B's supervisor uses during ``--window`` seconds of waiting (all its threads, from
  ``/proc/PID/task/*/schedstat``, in nanoseconds), as a share of one core;
- how often that supervisor wakes up meanwhile (its voluntary context switches per second);
- the time from the end of A's rank (it sleeps until a set time) to B's ``ResourcesAssigned``
  event: A's supervisor sees the exit and releases, B's wakes and finds its lease granted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from common import median  # noqa: E402


def hold_until(until: float) -> None:
    time.sleep(max(0.0, until - time.time()))


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far (nanoseconds: finer than psutil's clock ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def one_round(window: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="tjqueue-") as home:
        os.environ["TRAINJOB_HOME"] = home
        from trainjob import CustomTrainer, JobStatus, TrainerClient

        client = TrainerClient()
        cpus = os.cpu_count() or 1
        until = time.time() + window + 8.0  # A's rank ends then, and A releases every CPU
        a = client.train(CustomTrainer(func=hold_until, func_args={"until": until}, resources_per_node={"cpu": cpus}))
        client.wait_for_job_status(a, {"Running"}, timeout=60, polling_interval=0.1)
        b = client.train(CustomTrainer(func=hold_until, func_args={"until": 0.0}, resources_per_node={"cpu": cpus}))
        client.wait_for_job_status(b, {"Queued"}, timeout=60, polling_interval=0.1)
        time.sleep(1.0)  # past the first passes and the Queued event
        sup = psutil.Process(client.backend.store.get_job(b).supervisor_pid)
        t0, c0, w0 = time.monotonic(), cpu_ns(sup.pid), sup.num_ctx_switches().voluntary
        time.sleep(window)
        c1, t1, w1 = cpu_ns(sup.pid), time.monotonic(), sup.num_ctx_switches().voluntary
        cpu = (c1 - c0) / 1e9
        assert client.get_job(b).status == JobStatus.QUEUED and time.time() < until
        client.wait_for_job_completion(b, timeout=120)
        granted = next(e for e in client.get_job_events(b) if e.reason == "ResourcesAssigned")
        start_latency = granted.time.timestamp() - until
        return {"cpu_share_pct": 100 * cpu / (t1 - t0), "cpu_ms": 1000 * cpu, "wakeups_per_s": (w1 - w0) / (t1 - t0), "start_after_holder_ends_s": start_latency}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--window", type=float, default=20.0, help="seconds of waiting measured per round")
    args = ap.parse_args()
    rows = [one_round(args.window) for _ in range(args.runs)]
    for i, r in enumerate(rows):
        print(f"round {i}: " + ", ".join(f"{k}={v:.4f}" for k, v in r.items()), flush=True)
    for k in rows[0]:
        print(f"median {k}: {median([r[k] for r in rows]):.4f}")


if __name__ == "__main__":
    main()
