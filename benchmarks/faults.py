"""Faults a job runner meets, injected for real: does every job end, with a reason, leaving nothing?

    python benchmarks/faults.py                      # every scenario, 3 runs each
    python benchmarks/faults.py --runs 5 --only kill-rank sigstop-rank

Scenarios (each on a tiny GPT-2 ``TransformersTrainer`` unless said otherwise):

- ``kill-rank``: SIGKILL rank 1 of a 2-process job mid-training;
- ``kill-agent``: SIGKILL node-1's torchrun agent of a 2-node job mid-training;
- ``kill-supervisor``: SIGKILL the job's supervisor mid-training (a reader notices);
- ``sigstop-rank``: SIGSTOP rank 0 with ``progress_timeout=10``;
- ``hang-at-exit``: a 2-node function job whose rank 1 keeps a non-daemon thread (exit grace 5 s);
- ``concurrent-submit``: 50 quick jobs submitted from 5 processes at once.

Per scenario: runs, hangs (a job not ended ``--timeout`` seconds after the fault), leaked
processes (any process still running from the job's folder 2 s after it ended), lost records (a
submitted job missing from ``list_jobs`` or, for concurrent submissions, without its value), and
whether every failure's reason names its cause. The exit status is 1 when anything hung, leaked
or was lost.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ENV, table  # noqa: E402

# ---- the jobs (functions of this file travel by value: cloudpickle) ---------------------------


def tiny_job(max_steps: int = 4000):
    from trainjob.demo import train_tiny_gpt2

    return train_tiny_gpt2(max_steps=max_steps, eval_steps=None, save_steps=None, logging_steps=10)


def hang_at_exit():
    import threading

    if int(os.environ.get("RANK", 0)) == 1:
        threading.Thread(target=threading.Event().wait, daemon=False).start()
    return int(os.environ.get("RANK", 0))


def quick_value(x: int):
    return x * 2


# ---- helpers ----------------------------------------------------------------------------------


def leftovers(job_dir: Path) -> int:
    import psutil

    n, needle = 0, str(job_dir)
    for p in psutil.process_iter(["cmdline", "cwd", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if needle in " ".join(p.info["cmdline"] or []) or (p.info["cwd"] or "").startswith(needle):
                n += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return n


def wait_for(pred, timeout: float, interval: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return None


def rank_pid(client, job_id: str, rank: int) -> int | None:
    import json

    f = client.get_job(job_id).job_dir / "run" / "pids" / f"rank-{rank}.json"
    try:
        return json.loads(f.read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def started_training(client, job_id: str, step: int = 3) -> bool:
    p = client.get_job_progress(job_id)
    return bool(p and (p.get("currentStep") or 0) >= step)


def one_fault(client, trainer, inject, expect_status: str, expect_words: tuple[str, ...], timeout: float) -> dict:
    """Submit, wait for training, inject the fault, wait for the end; what happened."""
    job_id = client.train(trainer)
    job_dir = client.get_job(job_id).job_dir
    if not wait_for(lambda: started_training(client, job_id), 180):
        return {"hung": True, "leaked": leftovers(job_dir), "lost": 0, "readable": False, "note": "never started training"}
    inject(job_id)
    t0 = time.monotonic()
    job = wait_for(lambda: (j := client.get_job(job_id)).status.is_terminal and j, timeout)
    if job is None:
        client.delete_job(job_id)
        return {"hung": True, "leaked": leftovers(job_dir), "lost": 0, "readable": False, "note": "did not end"}
    took = time.monotonic() - t0
    time.sleep(2.0)
    leaked = leftovers(job_dir)
    readable = job.status.value == expect_status and all(w in (job.message or "") for w in expect_words)
    lost = 0 if job_id in {j.id for j in client.list_jobs()} else 1
    out = {"hung": False, "leaked": leaked, "lost": lost, "readable": readable, "end_s": took, "note": f"{job.status.value}: {job.message}"}
    client.delete_job(job_id)
    return out


# ---- scenarios --------------------------------------------------------------------------------


def kill_rank(client, runs, timeout):
    from trainjob import TransformersTrainer

    trainer = TransformersTrainer(func=tiny_job, num_procs_per_node=2)
    return [one_fault(client, trainer, lambda j: os.kill(rank_pid(client, j, 1), signal.SIGKILL), "Failed", ("rank 1", "SIGKILL"), timeout) for _ in range(runs)]


def kill_agent(client, runs, timeout):
    from trainjob import TransformersTrainer

    def inject(job_id):
        import json

        rec = json.loads((client.get_job(job_id).job_dir / "run" / "pids" / "node-1.json").read_text())
        os.kill(rec["pid"], signal.SIGKILL)

    trainer = TransformersTrainer(func=tiny_job, num_nodes=2)
    return [one_fault(client, trainer, inject, "Failed", ("node-1",), timeout) for _ in range(runs)]


def kill_supervisor(client, runs, timeout):
    from trainjob import TransformersTrainer

    def inject(job_id):
        os.kill(client.backend.store.get_job(job_id).supervisor_pid, signal.SIGKILL)

    trainer = TransformersTrainer(func=tiny_job, num_procs_per_node=2)
    return [one_fault(client, trainer, inject, "Failed", ("supervisor", "died"), timeout) for _ in range(runs)]


def sigstop_rank(client, runs, timeout):
    from trainjob import TransformersTrainer

    trainer = TransformersTrainer(func=tiny_job, progress_timeout=10)
    return [one_fault(client, trainer, lambda j: os.kill(rank_pid(client, j, 0), signal.SIGSTOP), "Failed", ("ProgressTimeout", "no training step"), timeout) for _ in range(runs)]


def hang_exit(client, runs, timeout):
    from trainjob import CustomTrainer

    rows = []
    for _ in range(runs):
        t0 = time.monotonic()
        job_id = client.train(CustomTrainer(func=hang_at_exit, num_nodes=2, exit_grace_seconds=5))
        job_dir = client.get_job(job_id).job_dir
        job = wait_for(lambda: (j := client.get_job(job_id)).status.is_terminal and j, timeout + 60)
        if job is None:
            client.delete_job(job_id)
            rows.append({"hung": True, "leaked": leftovers(job_dir), "lost": 0, "readable": False, "note": "did not end"})
            continue
        took = time.monotonic() - t0
        time.sleep(2.0)
        warned = [e.message for e in client.get_job_events(job_id) if e.reason == "HungAtExit"]
        ok = job.status.value == "Complete" and bool(warned) and "rank 1" in warned[0]
        rows.append({"hung": False, "leaked": leftovers(job_dir), "lost": 0, "readable": ok, "end_s": took, "note": warned[0] if warned else job.message})
        client.delete_job(job_id)
    return rows


def _submitter(home: str, n: int, base: int, out) -> None:
    os.environ["TRAINJOB_HOME"] = home
    from trainjob import CustomTrainer, TrainerClient

    client = TrainerClient()
    out.put([(client.train(CustomTrainer(func=quick_value, func_args={"x": base + i})), base + i) for i in range(n)])


def concurrent_submit(client, runs, timeout, processes: int = 5, per_process: int = 10):
    """One batch of ``processes * per_process`` jobs, whatever ``--runs`` says (it is 50 runs already)."""
    rows = []
    for _ in range(1):
        ctx = multiprocessing.get_context("spawn")
        q = ctx.Queue()
        ps = [ctx.Process(target=_submitter, args=(os.environ["TRAINJOB_HOME"], per_process, 1000 * k, q)) for k in range(processes)]
        t0 = time.monotonic()
        for p in ps:
            p.start()
        submitted = [x for _ in ps for x in q.get(timeout=300)]
        for p in ps:
            p.join()
        done = wait_for(lambda: all(client.get_job(j).status.is_terminal for j, _ in submitted), timeout + 300, interval=1.0)
        listed = {j.id for j in client.list_jobs()}
        lost = sum(1 for j, _ in submitted if j not in listed)
        wrong = sum(1 for j, x in submitted if j in listed and (client.get_job(j).status.value != "Complete" or client.get_job_result(j).return_value != 2 * x))
        time.sleep(2.0)
        leaked = sum(leftovers(client.get_job(j).job_dir) for j, _ in submitted if j in listed)
        rows.append({"hung": not done, "leaked": leaked, "lost": lost + wrong, "readable": True, "end_s": time.monotonic() - t0, "note": f"{len(submitted)} jobs, {wrong} wrong"})
        for j, _ in submitted:
            if j in listed:
                client.delete_job(j)
    return rows


SCENARIOS = {
    "kill-rank": kill_rank,
    "kill-agent": kill_agent,
    "kill-supervisor": kill_supervisor,
    "sigstop-rank": sigstop_rank,
    "hang-at-exit": hang_exit,
    "concurrent-submit": concurrent_submit,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds a job may take to end after its fault")
    ap.add_argument("--only", nargs="*", choices=list(SCENARIOS), default=None)
    args = ap.parse_args()
    os.environ.update({k: v for k, v in ENV.items() if k not in os.environ})
    rows, bad = [], False
    with tempfile.TemporaryDirectory() as home:
        os.environ["TRAINJOB_HOME"] = home
        from trainjob import TrainerClient

        client = TrainerClient()
        for name in args.only or SCENARIOS:
            results = SCENARIOS[name](client, args.runs, args.timeout)
            for r in results:
                print(f"  {name}: {r}", flush=True)
            hung = sum(r["hung"] for r in results)
            leaked = sum(r["leaked"] for r in results)
            lost = sum(r["lost"] for r in results)
            readable = sum(r["readable"] for r in results)
            ends = sorted(r["end_s"] for r in results if "end_s" in r)
            rows.append((name, len(results), hung, leaked, lost, f"{readable}/{len(results)}", f"{ends[len(ends) // 2]:.1f}" if ends else "-"))
            bad |= bool(hung or leaked or lost)
    print()
    print(table(rows, ("scenario", "runs", "hangs", "leaked processes", "lost records", "reason names the cause", "median s to end")))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
