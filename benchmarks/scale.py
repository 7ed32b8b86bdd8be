"""Scale: reads stay as cheap with 100,000 jobs and a million-entry history as with a few.

    python benchmarks/scale.py                  # 1k/10k/100k jobs, 10k/100k/1M entries (~3 min)
    python benchmarks/scale.py --jobs 1000 10000 --entries 10000 100000   # a shorter run

One run fills a fresh TRAINJOB_HOME (a temporary folder) step by step: ended jobs inserted
through ``Store.insert_jobs`` (what ``train()`` writes, without the processes), a job's history
through ``Store.add_metrics`` in batches (what the collector writes). At each size it times, as
the median of several calls on a fresh ``TrainerClient``: ``list_jobs()`` (every job), a page
(``list_jobs(limit=50, newest_first=True)``), ``get_job``, ``trainjob ls`` (a new process, import
included: the wall time a user waits) and, for histories, ``get_job_metrics`` (every entry), a poll
with nothing new (``get_job_metrics(after=count)``), the dashboard's first view
(``get_job_metrics_series``), its HTTP poll (``/api/jobs/{id}/metrics?after=count``, server time),
the first render of the job page in Chromium (where Debian's chromium and playwright are
installed; navigation start to the loss curve drawn) and the store's size per million entries. Each table ends with the growth of each read from the
smallest size to the largest: 1.0 means the read does not grow with the store.
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
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trainjob import TrainerClient  # noqa: E402
from trainjob.config import LocalBackendConfig  # noqa: E402
from trainjob.store import JobRow, Store  # noqa: E402
from trainjob.types import JobStatus  # noqa: E402

SPEC = {
    "trainer": "TransformersTrainer", "entrypoint": "func", "func": "train:main", "func_args": {"lr": "0.001", "epochs": "3"},
    "image": None, "packages_to_install": ["peft"], "pip_index_urls": None, "num_nodes": 1, "resources_per_node": {"cpu": 2},
    "env": {"WANDB_MODE": "offline"}, "script": None, "module": None, "command": None, "script_args": None, "num_procs_per_node": None,
    "max_restarts": 0, "active_deadline_seconds": None, "stop_grace_seconds": 60.0, "exit_grace_seconds": 30.0, "warm_start": True,
    "enable_progression_tracking": True, "custom_metrics": None, "metrics_port": 28080, "progress_timeout": None, "procs_per_node": 1,
    "resources": {"cpu": 2, "memory": None, "gpu": 0}, "submit_dir": "/home/user/project", "metrics_host": "127.0.0.1",
    "warm": {"enabled": True, "idle_timeout": 600}, "resume_from": None, "initializers": [],
}  # fmt: skip
PROGRESS = {"progressPercentage": 100, "estimatedRemainingSeconds": 0, "currentStep": 1000, "totalSteps": 1000, "currentEpoch": 3, "totalEpochs": 3,
            "trainMetrics": {"loss": 0.35, "learning_rate": 0.0, "throughput_samples_sec": 42.0}, "evalMetrics": {"eval_loss": 0.42}}  # fmt: skip
STATUSES = (JobStatus.COMPLETE, JobStatus.COMPLETE, JobStatus.COMPLETE, JobStatus.FAILED, JobStatus.STOPPED)


def add_jobs(store: Store, start: int, stop: int, t0: float) -> None:
    rows = []
    for i in range(start, stop):
        status = STATUSES[i % len(STATUSES)]
        created = t0 + i
        rows.append(
            JobRow(
                id=f"job-{i:07d}", name=f"job-{i:07d}", backend="local", status=status, created_at=created, started_at=created + 2,
                finished_at=created + 60, num_nodes=1, procs_per_node=1, spec=SPEC, progress=PROGRESS, progress_at=created + 60,
                steps=[{"name": "node-0", "status": status.value}], labels={"team": ("nlp", "cv", "rl")[i % 3], "sweep": f"s{i // 100}"},
                result={"metrics": {"train_loss": 0.35}} if status == JobStatus.COMPLETE else None,
                message=None if status == JobStatus.COMPLETE else "the job ended with exit code 1",
            )
        )  # fmt: skip
        if len(rows) == 5000:
            store.insert_jobs(rows)
            rows = []
    store.insert_jobs(rows)


def add_history(store: Store, job_id: str, start: int, stop: int) -> None:
    batch = []
    for i in range(start, stop):
        step = i + 1
        entry: dict[str, Any] = {"loss": 2.0 / (1 + i / 5000) + 0.05 * ((i * 7919) % 13) / 13, "grad_norm": 1.0 + (i % 17) / 17, "learning_rate": 5e-5 * (1 - i / 2_000_000), "epoch": i / 10_000, "step": step, "time": 1.8e9 + i * 0.05}
        if step % 1000 == 0:
            entry = {"eval_loss": entry["loss"] + 0.1, "eval_accuracy": 0.8, "epoch": entry["epoch"], "step": step, "time": entry["time"]}
        batch.append(entry)
        if len(batch) == 10_000:
            store.add_metrics(job_id, 0, batch)
            batch = []
    store.add_metrics(job_id, 0, batch)


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm: SQLite's page cache, imports
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def cli_ms(home: Path, args: list[str], runs: int) -> float:
    env = {**os.environ, "TRAINJOB_HOME": str(home)}
    argv = [sys.executable, "-m", "trainjob.cli.main", *args]
    quiet = {"env": env, "check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run(argv, **quiet)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, **quiet)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def server_poll_ms(client: TrainerClient, job_id: str, after: int, runs: int) -> float:
    """The dashboard's poll with nothing new: the server's own time (ASGI app in-process, no socket)."""
    from starlette.testclient import TestClient

    from trainjob.dashboard.server import DashboardConfig, create_app

    with TestClient(create_app(client, DashboardConfig(no_auth=True)), base_url="http://127.0.0.1") as http:
        url = f"/api/jobs/{job_id}/metrics?after={after}"
        assert http.get(url).json()["entries"] == []
        return median_ms(lambda: http.get(url), runs)


class Page:
    """The dashboard (`trainjob dashboard --no-auth`, a real process) and a headless Chromium
    (Debian's, driven by Playwright): the first render of a job page, from navigation start
    until its loss curve is drawn. None where chromium or playwright is missing."""

    def __init__(self, home: Path) -> None:
        import shutil

        self.proc = self.browser = self.pw = None
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            return
        if chromium is None:
            return
        env = {**os.environ, "TRAINJOB_HOME": str(home)}
        self.proc = subprocess.Popen([sys.executable, "-m", "trainjob.cli.main", "dashboard", "--port", "0", "--no-auth"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.url = self.proc.stdout.readline().strip()
        self.pw = sync_playwright().start()
        self.browser = self.pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-extensions"])

    def first_render_ms(self, job_id: str, runs: int) -> float | None:
        if self.browser is None:
            return None
        times = []
        for _ in range(runs + 1):
            page = self.browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{self.url}jobs/{job_id}")
            page.wait_for_function("() => +(document.querySelector('path[data-key=loss]')?.dataset.points || 0) > 0", timeout=120_000)
            times.append(page.evaluate("() => performance.now()"))
            page.close()
        return statistics.median(times[1:])  # the first load fills the browser's cache of the static files

    def close(self) -> None:
        if self.browser is not None:
            self.browser.close()
            self.pw.stop()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()


def table(title: str, rows: list[dict[str, Any]], key: str) -> None:
    cols = [c for c in rows[0] if c != key]
    print(f"\n{title}\n| {key} | " + " | ".join(cols) + " |")
    print("|---:|" + "---:|" * len(cols))
    fmt = lambda v: "-" if v is None else f"{v:.2f}" if v < 10 else f"{v:.0f}"  # noqa: E731
    for r in rows:
        print(f"| {r[key]:,} | " + " | ".join(fmt(r[c]) for c in cols) + " |")
    first, last = rows[0], rows[-1]
    growth = " | ".join(f"x{last[c] / first[c]:.1f}" if first[c] and last[c] is not None else "-" for c in cols)
    print(f"| growth {first[key]:,} -> {last[key]:,} | {growth} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--entries", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="trainjob-scale-") as tmp:
        home = Path(tmp)
        store = Store(home / "trainjob.db")
        t0 = time.time() - 10 * max(args.jobs)
        jobs_rows, have = [], 0
        for n in sorted(args.jobs):
            add_jobs(store, have, n, t0)
            have = n
            client = TrainerClient(LocalBackendConfig(home=str(home)))
            some = f"job-{n // 2:07d}"
            jobs_rows.append(
                {
                    "jobs": n,
                    "list_jobs() ms": median_ms(lambda: client.list_jobs(), max(3, args.runs // 2)),
                    "newest 50 ms": median_ms(lambda: client.list_jobs(limit=50, newest_first=True), args.runs),
                    "status=Failed, newest 50 ms": median_ms(lambda: client.list_jobs(status="Failed", limit=50, newest_first=True), args.runs),
                    "label team=cv, newest 50 ms": median_ms(lambda: client.list_jobs(labels={"team": "cv"}, limit=50, newest_first=True), args.runs),
                    "get_job ms": median_ms(lambda: client.get_job(some), args.runs * 20),
                    "`trainjob ls` wall ms": cli_ms(home, ["ls"], args.runs),
                }
            )
        table(f"Jobs (median of {args.runs} calls; `trainjob ls`: a new process, the newest 50)", jobs_rows, "jobs")

        job = "job-0000000"
        hist_rows, have = [], 0
        page = Page(home)
        empty = store.compact()[1]  # the store with its jobs and no history, write-ahead log folded in
        for n in sorted(args.entries):
            add_history(store, job, have, n)
            have = n
            size = store.compact()[1]
            client = TrainerClient(LocalBackendConfig(home=str(home)))
            hist_rows.append(
                {
                    "entries": n,
                    "get_job_metrics ms": median_ms(lambda: client.get_job_metrics(job), max(3, args.runs // 2)),
                    "tail 100 ms": median_ms(lambda: client.get_job_metrics(job, after=n - 100), args.runs),
                    "poll, nothing new ms": median_ms(lambda: client.get_job_metrics(job, after=n), args.runs * 4),
                    "series (2,000 pts) ms": median_ms(lambda: client.get_job_metrics_series(job), args.runs),
                    "HTTP poll, server ms": server_poll_ms(client, job, n, args.runs * 4),
                    "first render, Chromium ms": page.first_render_ms(job, args.runs),
                    "store MB": size / 2**20,
                }
            )
        page.close()
        table(f"History of one job (median of {args.runs} calls; store MB: the whole store, {max(args.jobs):,} jobs included)", hist_rows, "entries")
        per_million = (size - empty) / 2**20 / (have / 1e6)
        store.delete_job(job)
        after = store.compact()[1]  # what `trainjob prune` does after deleting
        print(f"\nstore size per 1M entries: {per_million:.0f} MB (its growth while {have:,} entries were added); deleting the job and compacting took the store from {size / 2**20:.0f} MB back to {after / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
