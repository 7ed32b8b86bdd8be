"""Two-node jobs must always end: TRL's own ``sft.py`` script, many runs in a row.

    python benchmarks/exit_hang.py --runs 20                          # trainjob run --nodes 2 (the default mode)
    python benchmarks/exit_hang.py --mode torchrun --runs 10 --omp1 --monitor 0.1   # bare torchrun, as trainjob launched it before
    python benchmarks/exit_hang.py --mode torchrun --runs 10                        # bare torchrun, torch's defaults

The script is TRL's unchanged ``trl/scripts/sft.py`` (it ends with ``trainer.end()``), on a tiny
GPT-2 saved to a local folder and a local JSON-lines dataset: nothing comes from the hub. Each run
gets ``--timeout`` seconds; a run still going then is a hang (its processes are killed). For the
trainjob mode a hang means the job did not reach a terminal status; a job that ended ``Complete``
after trainjob ended a rank stuck at exit is counted apart ("rescued"), with the frame it hung in.
Leaked processes are counted after every run (any process still running from the job's folder).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ENV, PY, free_port, table  # noqa: E402


def prepare(root: Path) -> tuple[Path, Path]:
    """A tiny GPT-2 + tokenizer saved with ``save_pretrained`` and a JSON-lines text dataset."""
    from trainjob.demo import build_model, build_tokenizer, corpus

    texts = corpus(128)
    tok = build_tokenizer(texts)
    model = build_model(tok)
    model_dir, data_dir = root / "tiny-gpt2", root / "tiny-text"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data_dir.mkdir()
    with open(data_dir / "train.jsonl", "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    return model_dir, data_dir


def sft_script() -> str:
    import trl.scripts.sft as sft

    return sft.__file__


def script_args(model_dir: Path, data_dir: Path, out: Path, steps: int) -> list[str]:
    return [
        "--model_name_or_path", str(model_dir), "--dataset_name", str(data_dir),
        "--max_steps", str(steps), "--per_device_train_batch_size", "4", "--max_length", "32",
        "--logging_steps", "2", "--save_strategy", "no", "--report_to", "none", "--use_cpu",
        "--output_dir", str(out), "--disable_tqdm", "true",
    ]  # fmt: skip


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def leftovers(needle: str) -> int:
    import psutil

    n = 0
    for p in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if needle in " ".join(p.info["cmdline"] or []) or (p.info["cwd"] or "").startswith(needle):
                n += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return n


def run_torchrun(args, model_dir: Path, data_dir: Path, work: Path) -> dict:
    port = free_port()
    env = dict(ENV)
    if args.omp1:
        env["OMP_NUM_THREADS"] = "1"
    procs = []
    t0 = time.monotonic()
    for node in range(2):
        argv = [PY, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", f"--node-rank={node}",
                "--master-addr=127.0.0.1", f"--master-port={port}", "--max-restarts=0"]  # fmt: skip
        if args.monitor is not None:
            argv.append(f"--monitor-interval={args.monitor}")
        argv += [sft_script(), *script_args(model_dir, data_dir, work / f"out-{node}", args.steps)]
        log = open(work / f"node-{node}.log", "wb")
        procs.append(subprocess.Popen(argv, env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    deadline = t0 + args.timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.2)
    hung = any(p.poll() is None for p in procs)
    for p in procs:
        _kill_group(p)
    return {"hung": hung, "ok": not hung and all(p.returncode == 0 for p in procs), "wall": time.monotonic() - t0, "leaked": leftovers(str(work))}


def run_trainjob(args, model_dir: Path, data_dir: Path, work: Path, home: Path) -> dict:
    from trainjob import TrainerClient

    env = {**ENV, "TRAINJOB_HOME": str(home)}
    argv = [PY, "-m", "trainjob.cli.main", "run", "--nodes", "2", sft_script(), *script_args(model_dir, data_dir, Path("out"), args.steps)]
    t0 = time.monotonic()
    out = subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True, check=True).stdout
    job_id = out.strip().split()[-1]
    os.environ["TRAINJOB_HOME"] = str(home)
    client = TrainerClient()
    job = client.get_job(job_id)
    while not job.status.is_terminal and time.monotonic() - t0 < args.timeout:
        time.sleep(0.5)
        job = client.get_job(job_id)
    hung = not job.status.is_terminal
    if hung:
        client.delete_job(job_id)
        return {"hung": True, "ok": False, "wall": time.monotonic() - t0, "leaked": leftovers(str(home / "jobs" / job_id)), "rescued": None}
    wall = time.monotonic() - t0
    time.sleep(1.0)  # the supervisor's own exit
    leaked = leftovers(str(home / "jobs" / job_id))
    hangs = [e for e in client.get_job_events(job_id) if e.reason == "HungAtExit"]
    rescued = hangs[0].message if hangs else None
    result = {"hung": False, "ok": job.status == "Complete", "wall": wall, "leaked": leaked, "rescued": rescued, "status": job.status.value, "message": job.message}
    client.delete_job(job_id)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("trainjob", "torchrun"), default="trainjob")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds after which a run counts as hung")
    ap.add_argument("--omp1", action="store_true", help="torchrun mode: OMP_NUM_THREADS=1")
    ap.add_argument("--monitor", type=float, default=None, help="torchrun mode: --monitor-interval")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir, data_dir = prepare(root)
        rows = []
        for i in range(args.runs):
            work = root / f"run-{i}"
            work.mkdir()
            if args.mode == "torchrun":
                r = run_torchrun(args, model_dir, data_dir, work)
            else:
                r = run_trainjob(args, model_dir, data_dir, work, root / "home")
            rows.append(r)
            print(f"  run {i + 1}/{args.runs}: {json.dumps(r)}", flush=True)
    label = args.mode if args.mode == "trainjob" else f"torchrun omp1={args.omp1} monitor={args.monitor}"
    hung = sum(r["hung"] for r in rows)
    rescued = sum(bool(r.get("rescued")) for r in rows)
    print()
    print(table(
        [(label, len(rows), sum(r["ok"] for r in rows), hung, rescued, sum(r["leaked"] for r in rows), f"{sorted(r['wall'] for r in rows)[len(rows) // 2]:.1f}")],
        ("case", "runs", "ok", "hung", "rank ended at exit", "leaked processes", "median wall s"),
    ))  # fmt: skip
    sys.exit(1 if hung else 0)


if __name__ == "__main__":
    main()
