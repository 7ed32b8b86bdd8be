"""Cost and freshness of progress tracking.

    python benchmarks/progress.py --runs 5 --steps 600

Rounds are interleaved (each round runs every case once, the order rotating from round to round)
so that drift on a noisy 2-core machine hits every case alike. For each round the script prints the
throughput ratio of each case to "tracking off" in the same round; the headline figure is the
median of those per-round ratios (a ratio of medians mixes rounds). Measured:
- throughput (the Trainer's own ``train_steps_per_second``) with tracking on (supervisor
  collecting at its default rate) vs off; target: median per-round ratio >= 0.99;
- staleness of ``get_job_progress`` as a client sees it: at each poll (20 Hz), how long ago the
  shown step stopped being the current one (0 if it still is). The true step times come from a
  user callback in the job itself, not from trainjob. Target p95 <= 1 s;
- the supervisor's CPU time per job (all its threads, from ``/proc``, sampled at each poll until
  it exits), its share of a core while the job is Running (rank start and outcome included) and
  while training (from the first stored progress to the last before the final step: collecting);
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


def cpu_seconds(pid: int) -> float | None:
    """CPU time of every thread of ``pid`` so far (Linux ``/proc``, nanosecond resolution); None once it is gone."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


def run_job(
    client,
    steps: int,
    tracking: bool,
    poll_hz: float = 0.0,
    staleness: list | None = None,
    latencies: list | None = None,
    supervisor: list | None = None,
) -> float:
    """One job; returns its steps/s. ``supervisor`` gets, for the job's supervisor process: (CPU
    seconds of the whole job, CPU seconds while Running, Running wall seconds, CPU seconds while
    the stored step moves, those wall seconds). Running also covers the ranks' start and the
    recording of the outcome; "while training" is the steady state of collecting."""
    from trainjob import TransformersTrainer

    step_log = tempfile.mktemp(suffix=".json") if staleness is not None else None
    job_id = client.train(TransformersTrainer(func=timed_job, func_args={"max_steps": steps, "step_log": step_log}, enable_progression_tracking=tracking))
    observed: list[tuple[float, int]] = []
    stop = threading.Event()
    poller = None
    if poll_hz:
        poller = threading.Thread(target=_poll_endpoint, args=(client, job_id, poll_hz, stop, latencies), daemon=True)
        poller.start()
    pid = None
    cpu_last = cpu_run0 = None
    t_run0 = t_last = 0.0
    training: list[tuple[float, float]] = []  # (time, supervisor CPU) while the stored step moves below the last
    while True:
        job = client.get_job(job_id)
        row = client.backend.store.get_job(job_id)
        pid = pid or row.supervisor_pid
        if pid is not None:
            cpu = cpu_seconds(pid)
            if cpu is not None:
                cpu_last, t_last = cpu, time.monotonic()
                if cpu_run0 is None and job.status == "Running":
                    cpu_run0, t_run0 = cpu, t_last
                if row.progress and (row.progress.get("currentStep") or 0) < steps:
                    training.append((t_last, cpu))
        if staleness is not None:
            p = client.get_job_progress(job_id)
            if p:
                observed.append((time.time(), p["currentStep"]))
        if job.status.is_terminal:
            break
        time.sleep(0.05)
    if supervisor is not None and cpu_last is not None and cpu_run0 is not None:
        (t0, c0), (t1, c1) = (training[0], training[-1]) if len(training) > 1 else ((0.0, 0.0), (0.0, 0.0))
        supervisor.append((cpu_last, cpu_last - cpu_run0, t_last - t_run0, c1 - c0, t1 - t0))
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
    off, on, store20, http10 = "tracking off", "tracking on", "tracking on + client polling 20 Hz", "tracking on + /metrics poller 10 Hz"
    staleness: list[float] = []
    latencies: list[float] = []
    sup: dict[str, list] = {k: [] for k in (off, on, store20, http10)}
    with tempfile.TemporaryDirectory() as home:
        os.environ["TRAINJOB_HOME"] = home
        from trainjob import TrainerClient

        client = TrainerClient()
        s = args.steps
        res = interleave(
            args.runs,
            {
                off: lambda: run_job(client, s, False, supervisor=sup[off]),
                on: lambda: run_job(client, s, True, supervisor=sup[on]),
                store20: lambda: run_job(client, s, True, staleness=staleness, supervisor=sup[store20]),
                http10: lambda: run_job(client, s, True, poll_hz=10, latencies=latencies, supervisor=sup[http10]),
            },
            rotate=True,
        )
    ratios = {k: [v / b for v, b in zip(res[k], res[off])] for k in (on, store20, http10)}
    print()
    print(table([(k, f"{median(v):.1f}", f"{min(v):.1f}", f"{max(v):.1f}") for k, v in res.items()], ("case", "median steps/s", "min", "max")))
    print()
    print(
        table(
            [(r + 1, *(f"{res[k][r]:.1f}" for k in res), *(f"{ratios[k][r]:.3f}" for k in ratios)) for r in range(args.runs)],
            ("round", "off", "on", "on+20Hz", "on+/metrics", "on/off", "on+20Hz/off", "on+/metrics/off"),
        )
    )
    print()
    print(
        table(
            [
                (
                    k,
                    f"{median([j[0] for j in v]):.3f}",
                    f"{100 * median([j[1] / j[2] for j in v if j[2] > 0]):.2f}%",
                    f"{100 * median([j[3] / j[4] for j in v if j[4] > 0]):.2f}%" if any(j[4] > 0 for j in v) else "-",
                )
                for k, v in sup.items()
                if v
            ],
            ("supervisor (median per job)", "CPU s, whole job", "share of a core while Running", "while training (collecting)"),
        )
    )
    print()
    rows = [
        ("tracking on / off (median of per-round ratios)", f"{median(ratios[on]):.3f}", ">= 0.99"),
        ("client polling store at 20 Hz / off (same)", f"{median(ratios[store20]):.3f}", ""),
        ("/metrics poller at 10 Hz / off (same)", f"{median(ratios[http10]):.3f}", ""),
        ("staleness p50 (s)", f"{percentile(staleness, 50):.3f}", ""),
        ("staleness p95 (s)", f"{percentile(staleness, 95):.3f}", "<= 1"),
        ("staleness max (s)", f"{max(staleness):.3f}" if staleness else "-", ""),
        ("/metrics latency p50 (ms)", f"{percentile(latencies, 50) * 1000:.2f}", ""),
        ("/metrics latency p99 (ms)", f"{percentile(latencies, 99) * 1000:.2f}", ""),
    ]
    print(table(rows, ("measure", "value", "target")))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"\n{len(staleness)} staleness samples, {len(latencies)} endpoint requests" + (f"; load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}" if load else ""))


if __name__ == "__main__":
    main()
