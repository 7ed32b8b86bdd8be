"""Cost and freshness of progress tracking.

    python benchmarks/progress.py --runs 5 --steps 600

Interleaved in one run, medians:
- throughput (the Trainer's own ``train_steps_per_second``) with tracking on (supervisor
  collecting at its default rate) vs off; target ratio >= 0.99;
- staleness of ``get_job_progress`` as a client sees it: at each poll (20 Hz), how long ago the
  shown step stopped being the current one (0 if it still is). The true step times come from a
  user callback in the job itself, not from trainjob. Target p95 <= 1 s;
- the rank-0 ``/metrics`` endpoint under a 10 Hz external poller: latency p50/p99 and the
  throughput with that poller running vs without.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ENV, interleave, median, percentile, table  # noqa: E402


def timed_job(max_steps: int, step_log: str | None = None) -> float:
    """Tiny GPT-2 run; optionally records (step, time) of every step on rank 0 (ground truth)."""
    from transformers import TrainerCallback

    from trainjob.demo import train_tiny_gpt2

    class StepClock(TrainerCallback):
        def __init__(self):
            self.rows = []

        def on_step_end(self, args, state, control, **kw):
            self.rows.append((state.global_step, time.time()))

        def on_train_end(self, args, state, control, **kw):
            with open(step_log, "w") as f:
                json.dump(self.rows, f)

    import transformers.trainer as tt

    if step_log:
        tt.DEFAULT_CALLBACKS.append(StepClock)
    metrics = train_tiny_gpt2(max_steps=max_steps, eval_steps=None, save_steps=None, logging_steps=10)
    return metrics["train_steps_per_second"]


def run_job(client, steps: int, tracking: bool, poll_hz: float = 0.0, staleness: list | None = None, latencies: list | None = None) -> float:
    from trainjob import TransformersTrainer

    step_log = tempfile.mktemp(suffix=".json") if staleness is not None else None
    job_id = client.train(TransformersTrainer(func=timed_job, func_args={"max_steps": steps, "step_log": step_log}, enable_progression_tracking=tracking))
    observed: list[tuple[float, int]] = []
    stop = threading.Event()
    poller = None
    if poll_hz:
        poller = threading.Thread(target=_poll_endpoint, args=(client, job_id, poll_hz, stop, latencies), daemon=True)
        poller.start()
    while True:
        job = client.get_job(job_id)
        if staleness is not None:
            p = client.get_job_progress(job_id)
            if p:
                observed.append((time.time(), p["currentStep"]))
        if job.status.is_terminal:
            break
        time.sleep(0.05)
    stop.set()
    if poller:
        poller.join()
    assert job.status == "Complete", client.get_job_result(job_id).error
    sps = client.get_job_result(job_id).return_value
    if staleness is not None and step_log:
        truth = json.load(open(step_log))
        staleness.extend(_ages(observed, truth, steps))
        os.unlink(step_log)
    client.delete_job(job_id)
    return sps


def _ages(observed, truth, max_steps):
    """For each observation (t, step): 0 if ``step`` was still current at t, else t - when step+1 was reached."""
    steps = [s for s, _ in truth]
    times = [t for _, t in truth]
    ages = []
    for t, shown in observed:
        if shown >= max_steps or t > times[-1]:
            continue  # after the end: nothing newer to show
        i = bisect.bisect_right(steps, shown)  # first true step after the shown one
        if i >= len(steps):
            continue
        ages.append(max(0.0, t - times[i]))
    return ages


def _poll_endpoint(client, job_id, hz, stop, latencies):
    backend = client.backend
    url = None
    while not stop.is_set():
        if url is None:
            url = (backend.store.get_job(job_id).extra or {}).get("metrics_endpoint")
        if url:
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    r.read()
                latencies.append(time.perf_counter() - t0)
            except OSError:
                pass
        stop.wait(1 / hz)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=600)
    args = ap.parse_args()
    os.environ.update({k: v for k, v in ENV.items() if k not in os.environ})
    with tempfile.TemporaryDirectory() as home:
        os.environ["TRAINJOB_HOME"] = home
        from trainjob import TrainerClient

        client = TrainerClient()
        staleness: list[float] = []
        latencies: list[float] = []
        s = args.steps
        res = interleave(
            args.runs,
            {
                "tracking off": lambda: run_job(client, s, False),
                "tracking on": lambda: run_job(client, s, True),
                "tracking on + client polling 20 Hz": lambda: run_job(client, s, True, staleness=staleness),
                "tracking on + /metrics poller 10 Hz": lambda: run_job(client, s, True, poll_hz=10, latencies=latencies),
            },
        )
    m = {k: median(v) for k, v in res.items()}
    print()
    print(table([(k, f"{m[k]:.1f}", f"{min(v):.1f}", f"{max(v):.1f}") for k, v in res.items()], ("case", "median steps/s", "min", "max")))
    print()
    off = m["tracking off"]
    rows = [
        ("tracking on / off (steps/s)", f"{m['tracking on'] / off:.3f}", ">= 0.99"),
        ("with client polling store at 20 Hz / off", f"{m['tracking on + client polling 20 Hz'] / off:.3f}", ""),
        ("with /metrics poller at 10 Hz / off", f"{m['tracking on + /metrics poller 10 Hz'] / off:.3f}", ""),
        ("staleness p50 (s)", f"{percentile(staleness, 50):.3f}", ""),
        ("staleness p95 (s)", f"{percentile(staleness, 95):.3f}", "<= 1"),
        ("staleness max (s)", f"{max(staleness):.3f}" if staleness else "-", ""),
        ("/metrics latency p50 (ms)", f"{percentile(latencies, 50) * 1000:.2f}", ""),
        ("/metrics latency p99 (ms)", f"{percentile(latencies, 99) * 1000:.2f}", ""),
    ]
    print(table(rows, ("measure", "value", "target")))
    print(f"\n{len(staleness)} staleness samples, {len(latencies)} endpoint requests")


if __name__ == "__main__":
    main()
