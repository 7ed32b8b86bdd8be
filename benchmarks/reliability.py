"""Reliability: many short two-process jobs in a row, none may fail for no reason; the store's faults.

    python benchmarks/reliability.py --runs 50
    python benchmarks/reliability.py --runs 20 --baseline 20   # also bare torchrun, for comparison
    python benchmarks/reliability.py --scenario db-lock --runs 3 --lock-seconds 60
    python benchmarks/reliability.py --scenario full-disk --runs 3          # root: mounts a 64 MiB tmpfs
    python benchmarks/reliability.py --scenario full-disk --small-disk DIR  # anyone: DIR on a small file system

``--scenario db-lock``: a tiny GPT-2 job (a step every ~0.5 s) runs while another program holds
the store's write lock (``BEGIN EXCLUSIVE``) for ``--lock-seconds``. Counted: jobs that did not
end Complete, hangs (no end within the timeout), processes of the job still alive after it ended,
and lost records: metric entries the rank wrote but the store lacks, plus a missing final status.

``--scenario full-disk``: the job's disk (TRAINJOB_HOME on a small tmpfs) fills up mid-training;
the checkpoint then fails with ENOSPC. Counted: jobs whose error does not say "no space left on
<mount>", hangs, leaked processes, and lost records: metric entries, the rank's error record, the
last progress, the final status.

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
import re
import shutil
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


# ---- store faults ----------------------------------------------------------------------------
def _tests_on_path() -> None:
    """The fault helpers and training functions the tests use (tests/hazards.py, tests/jobs.py)."""
    tests = str(Path(__file__).resolve().parent.parent / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


def _leftovers(client, job_id: str) -> int:
    """Processes of an ended job still alive: its supervisor, and the launchers and ranks it recorded."""
    from trainjob import contract
    from trainjob.backends.local import procs

    row = client.backend.store.get_job(job_id)
    run_dir = client.get_job(job_id).job_dir / contract.RUN
    deadline = time.monotonic() + 10  # a supervisor that recorded the outcome needs a moment to exit
    while True:
        alive = len(procs.recorded_processes(run_dir / contract.PIDS_DIR)) + procs.is_alive(row.supervisor_pid, row.supervisor_start)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _lost_metrics(client, job_id: str) -> tuple[int, int]:
    """(entries the rank wrote to metrics.jsonl, of which the store lacks)."""
    import hazards

    written = hazards.count_lines(client.get_job(job_id).job_dir / "run" / "metrics.jsonl")
    return written, max(0, written - len(client.get_job_metrics(job_id)))


def _wait_end(client, job_id: str, timeout: float):
    """The job once it ended, or None if it did not end within ``timeout`` (a hang)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get_job(job_id)
        if job.status.is_terminal:
            return job
        time.sleep(0.5)
    return None


def scenario_db_lock(runs: int, lock_seconds: float, timeout: float) -> list[dict]:
    import hazards
    import jobs

    from trainjob import TrainerClient, TransformersTrainer, contract

    out = []
    for i in range(runs):
        with tempfile.TemporaryDirectory() as home:
            os.environ[contract.HOME] = home
            client = TrainerClient()
            steps = int(max(100, lock_seconds * 2.5))  # training outlasts the lock
            job_id = client.train(TransformersTrainer(func=jobs.slow_tiny, func_args={"max_steps": steps, "save_steps": None, "step_delay": 0.4}))
            t0 = time.perf_counter()
            while (client.get_job_progress(job_id) or {}).get("currentStep", 0) < 5 and not client.get_job(job_id).status.is_terminal:
                time.sleep(0.5)
            with hazards.write_lock(Path(home) / "trainjob.db", lock_seconds):
                locked_at = time.time()
            released_at = time.time()
            job = _wait_end(client, job_id, timeout)
            rec = {"run": i + 1, "wall": time.perf_counter() - t0, "hang": job is None}
            rec["ok"] = job is not None and job.status.value == "Complete"
            rec["written"], rec["lost"] = _lost_metrics(client, job_id)
            rec["lost"] += job is None or not any(e.reason in ("Completed", "Failed", "Stopped") for e in client.get_job_events(job_id))
            rec["leaked"] = _leftovers(client, job_id)
            rec["status"] = job.status.value if job else "hang"
            rec["message"] = (job.message or "") if job else ""
            in_lock = sum(locked_at < m["time"] < released_at for m in client.get_job_metrics(job_id))
            log = (client.get_job(job_id).job_dir / "supervisor.log").read_text()
            waits = [float(w) for w in re.findall(r"unlocked after ([0-9.]+)s", log)]
            out.append(rec)
            print(f"  db-lock {i + 1}/{runs}: {rec['status']} in {rec['wall']:.1f}s, {rec['written']} entries logged ({in_lock} while the store was locked), "
                  f"{rec['lost']} lost, {rec['leaked']} leaked process(es); the supervisor's longest wait for the lock: {max(waits, default=0):.1f}s", flush=True)  # fmt: skip
            if job is None:
                client.delete_job(job_id)
            client.backend.store.close()
    return out


def scenario_full_disk(runs: int, small_disk: str | None, timeout: float, leave: int) -> list[dict]:
    import contextlib

    import hazards

    from trainjob import TrainerClient, TransformersTrainer, contract

    if small_disk is None and hazards.tmpfs_unavailable():
        raise SystemExit(f"full-disk: skipped: {hazards.tmpfs_unavailable()} (or give --small-disk DIR, a folder on a small file system you can fill)")
    out = []
    for i in range(runs):
        with contextlib.ExitStack() as stack:
            if small_disk:
                home = Path(small_disk) / f"tjhome-{os.getpid()}-{i}"
                home.mkdir(parents=True)
            else:
                home = stack.enter_context(hazards.tmpfs(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "tjhome", "64m"))
            os.environ[contract.HOME] = str(home)
            client = TrainerClient()
            stack.callback(client.backend.store.close)
            t0 = time.perf_counter()
            job_id = client.train(TransformersTrainer(func=hazards.tiny_until_disk_full, func_args={"leave": leave}))
            job = _wait_end(client, job_id, timeout)
            run_dir = client.get_job(job_id).job_dir / "run"
            rec = {"run": i + 1, "wall": time.perf_counter() - t0, "hang": job is None}
            rec["message"] = (job.message or "") if job else ""
            rec["ok"] = job is not None and job.status.value == "Failed" and "no space left on" in rec["message"]
            rec["written"], lost = _lost_metrics(client, job_id)
            error_kept = (run_dir / "errors" / "rank-0.json").exists()
            try:
                progress_kept = client.get_job_progress(job_id) == hazards.last_record(run_dir / contract.PROGRESS_FILE)
            except ValueError:
                progress_kept = False
            final_kept = job is not None and any(e.reason == "Failed" for e in client.get_job_events(job_id))
            rec["lost"] = lost + (not error_kept) + (not progress_kept) + (not final_kept)
            rec["leaked"] = _leftovers(client, job_id)
            log = (client.get_job(job_id).job_dir / "supervisor.log").read_text()
            reserve = home / "trainjob.db.reserve"
            held = reserve.stat().st_blocks * 512 if reserve.exists() else 0
            rec["reserve_used"] = "released the space reserve" in log or held < 2 * 2**20  # its log may not fit on the disk
            rec["free_after"] = shutil.disk_usage(home).free
            rec["status"] = job.status.value if job else "hang"
            out.append(rec)
            print(
                f"  full-disk {i + 1}/{runs}: {rec['status']} in {rec['wall']:.1f}s: {rec['message'][:110]!r}; "
                f"error record {'kept' if error_kept else 'LOST'}, progress {'kept' if progress_kept else 'LOST'}, "
                f"{lost} of {rec['written']} entries lost, store reserve {'used' if rec['reserve_used'] else 'not needed'}, "
                f"{rec['free_after'] // 1024} KiB free after, {rec['leaked']} leaked",
                flush=True,
            )
            if job is None:
                client.delete_job(job_id)
    return out


def report_faults(name: str, results: list[dict]) -> int:
    n = len(results)
    ok = sum(r["ok"] for r in results)
    print()
    print(f"{name}: {n} run(s), {ok} as expected, {sum(r['hang'] for r in results)} hang(s), "
          f"{sum(r['leaked'] for r in results)} leaked process(es), {sum(r['lost'] for r in results)} lost record(s) "
          f"(of {sum(r['written'] for r in results)} metric entries logged)")  # fmt: skip
    print(f"  wall per job: median {statistics.median(r['wall'] for r in results):.1f}s, max {max(r['wall'] for r in results):.1f}s")
    for r in results:
        if not r["ok"]:
            print(f"  run {r['run']}: {r['status']}: {r['message']}")
    return 0 if ok == n and not any(r["lost"] or r["leaked"] for r in results) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=("jobs", "db-lock", "full-disk"), default="jobs", help="what to run (default: many short jobs)")
    ap.add_argument("--runs", type=int, default=None, help="jobs to run (default 50 for 'jobs', 3 for the store-fault scenarios)")
    ap.add_argument("--lock-seconds", type=float, default=60.0, help="db-lock: how long the other program holds the write lock (default 60)")
    ap.add_argument("--leave-bytes", type=int, default=384 * 1024, help="full-disk: bytes left free when the disk fills (default 384 KiB: the checkpoint does not fit; 0: completely full)")
    ap.add_argument("--small-disk", metavar="DIR", help="full-disk: put TRAINJOB_HOME under DIR (a small file system) instead of mounting a tmpfs")
    ap.add_argument("--timeout", type=float, default=600.0, help="store-fault scenarios: a job not ended after this many seconds is a hang")
    ap.add_argument("--layout", choices=("procs", "nodes"), default="procs", help="2 ranks on 1 node, or 2 nodes of 1 rank")
    ap.add_argument("--baseline", type=int, default=0, metavar="N", help="also run N bare torchrun runs without destroy_process_group()")
    args = ap.parse_args()
    if args.runs is None:
        args.runs = 50 if args.scenario == "jobs" else 3
    if args.runs < 1:
        ap.error(f"--runs must be at least 1, got {args.runs}")
    os.environ.update({k: v for k, v in ENV.items() if k not in os.environ})
    if args.scenario != "jobs":
        _tests_on_path()
        if args.scenario == "db-lock":
            return report_faults(f"db-lock ({args.lock_seconds:g} s write lock held by another program during each job)", scenario_db_lock(args.runs, args.lock_seconds, args.timeout))
        where = f"under {args.small_disk}" if args.small_disk else "on a 64 MiB tmpfs"
        return report_faults(f"full-disk (TRAINJOB_HOME {where} fills mid-training, {args.leave_bytes} bytes left)",
                             scenario_full_disk(args.runs, args.small_disk, args.timeout, args.leave_bytes))  # fmt: skip
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
