"""Where progress tracking spends its time: inside the rank, and in the supervisor's collection.

    python benchmarks/progress_breakdown.py --steps 600 --seconds 10

1. Rank: a real tiny GPT-2 run in this process (no supervisor) with trainjob's callback installed
   as a job would have it; each callback method and the pieces it calls are timed with
   ``perf_counter`` (calls, microseconds per call, microseconds per training step, share of a
   step), and each thread's CPU time is read from ``/proc`` (the main thread trains; the
   ``/metrics`` server and the stop-file watcher are the others trainjob adds).
2. Supervisor: a ``Collector`` alternating ``wait`` and ``collect`` as the supervisor's loop does,
   for ``--seconds``, while a thread plays rank 0 through the real ``FileSink`` (progress every
   0.25 s and 13 logged entries a second, as the tiny job logs them), then with nobody writing
   (imports, tracking off, slow steps). Its thread's CPU time (``time.thread_time``) per pass and
   per second.

The wrappers add about a microsecond per call; figures on this 2-core machine vary with load.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).parent))
from common import ENV, table  # noqa: E402


def _timed(owner: Any, name: str, label: str, acc: dict[str, list], clock: Callable[[], float] = time.perf_counter) -> None:
    """Replace ``owner.name`` with a wrapper adding its calls and ``clock`` seconds to ``acc[label]``."""
    original: Callable = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = clock()
        try:
            return original(*args, **kwargs)
        finally:
            entry = acc[label]
            entry[0] += 1
            entry[1] += clock() - t0

    setattr(owner, name, wrapper)


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of each Python thread of this process, by thread name."""
    out = {}
    for t in threading.enumerate():
        try:
            with open(f"/proc/self/task/{t.native_id}/schedstat") as f:
                out[t.name] = int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, TypeError):
            continue
    return out


def rank_breakdown(steps: int) -> None:
    run_dir = tempfile.mkdtemp(prefix="trainjob-breakdown-")
    os.environ.update({"TRAINJOB_RUN_DIR": run_dir, "TRAINJOB_TRACKING": "1", "TRAINJOB_METRICS_PORT": "0"})
    from trainjob.runtime import callback, instrument, sinks, stopping

    instrument.install()
    from trainjob.runtime.callback import TrainjobCallback

    acc: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for owner, name, label in [
        (TrainjobCallback, "on_step_end", "on_step_end"),
        (stopping, "on_step_end", "  stop check (stopping.on_step_end)"),
        (TrainjobCallback, "on_log", "on_log"),
        (TrainjobCallback, "_flush", "_flush (per write, from either)"),
        (callback, "build_progress", "  build_progress"),
        (sinks.FileSink, "progress", "  FileSink.progress (one append)"),
        (sinks, "send_metrics", "  send_metrics (one append)"),
        (TrainjobCallback, "on_train_begin", "on_train_begin"),
        (TrainjobCallback, "on_train_end", "on_train_end"),
    ]:
        _timed(owner, name, label, acc)
    from trainjob.demo import train_tiny_gpt2

    cwd = os.getcwd()
    os.chdir(run_dir)
    try:
        metrics = train_tiny_gpt2(max_steps=steps, eval_steps=None, save_steps=None, logging_steps=10)
    finally:
        os.chdir(cwd)
    step_us = 1e6 / metrics["train_steps_per_second"]
    print(f"\nRank: {steps} steps at {metrics['train_steps_per_second']:.1f} steps/s ({step_us:.0f} us a step)\n")
    rows = [
        (label, n, f"{sec / n * 1e6:.1f}", f"{sec / steps * 1e6:.2f}", f"{100 * sec / steps * 1e6 / step_us:.3f}%")
        for label, (n, sec) in acc.items()
        if n
    ]
    print(table(rows, ("what", "calls", "us per call", "us per step", "share of a step")))
    cpu = _thread_cpu()
    print()
    print(table([(name, f"{sec:.3f}") for name, sec in sorted(cpu.items(), key=lambda kv: -kv[1])], ("thread", "CPU s")))


def collector_breakdown(seconds: float) -> None:
    from trainjob.backends.local import collector as collector_mod
    from trainjob.backends.local.collector import Collector
    from trainjob.progress import build_progress
    from trainjob.runtime.sinks import FileSink
    from trainjob.store import Store
    from trainjob.store.sqlite import JobRow
    from trainjob.types import JobStatus

    home = Path(tempfile.mkdtemp(prefix="trainjob-breakdown-"))
    run_dir = home / "run"
    (run_dir / "errors").mkdir(parents=True)
    store = Store(home / "trainjob.db")
    store.insert_job(JobRow(id="j", name="j", backend="local", status=JobStatus.RUNNING, created_at=time.time(), num_nodes=1, procs_per_node=1, spec={}))
    col = Collector(store, "j", run_dir)
    acc: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])

    _timed(col, "wait", "wait (sleep, select, drain)", acc, time.thread_time)
    _timed(col, "collect", "collect (whole pass)", acc, time.thread_time)
    _timed(col, "_new_lines", "  read new lines (metrics, events)", acc, time.thread_time)
    _timed(col, "_new_progress", "  read the new progress line", acc, time.thread_time)
    _timed(store, "add_reports", "  store.add_reports (one transaction)", acc, time.thread_time)

    def phase(writing: bool) -> tuple[int, float]:
        stop = threading.Event()

        def rank0() -> None:
            sink, step, last = FileSink(run_dir), 0, 0.0
            while not stop.is_set():
                step += 10
                sink.metrics([{"step": step, "time": time.time(), "loss": 3.2, "grad_norm": 1.0, "learning_rate": 5e-4, "epoch": step / 28, "attempt": 0}])
                if time.monotonic() - last >= 0.25:
                    sink.progress(build_progress(step=step, max_steps=10**6, epoch=1.0, num_train_epochs=3, steps_per_second=130.0, samples_per_step=8, train_metrics={"loss": 3.2}, eval_metrics={}))
                    last = time.monotonic()
                stop.wait(1 / 13)

        writer = threading.Thread(target=rank0, daemon=True)
        if writing:
            writer.start()
        acc.clear()
        passes, cpu0, end = 0, time.thread_time(), time.monotonic() + seconds
        while time.monotonic() < end:
            col.wait()
            col.collect(0)
            passes += 1
        cpu = time.thread_time() - cpu0
        stop.set()
        if writing:
            writer.join()
        return passes, cpu

    for writing in (True, False):
        passes, cpu = phase(writing)
        what = "rank 0 writing (progress 4/s, 13 entries/s)" if writing else "nobody writing"
        print(f"\nCollector, {what}: {passes} passes in {seconds:g} s, CPU {cpu * 1e3:.1f} ms = {100 * cpu / seconds:.3f}% of a core, {cpu / passes * 1e6:.0f} us a pass\n")
        print(table([(label, n, f"{sec / max(n, 1) * 1e6:.0f}", f"{sec / seconds * 1e3:.2f}") for label, (n, sec) in acc.items()], ("what", "calls", "CPU us per call", "CPU ms per second")))
    print(f"\n(COLLECT_INTERVAL {collector_mod.COLLECT_INTERVAL} s, IDLE_INTERVAL {collector_mod.IDLE_INTERVAL} s)")
    col.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    os.environ.update({k: v for k, v in ENV.items() if k not in os.environ})
    rank_breakdown(args.steps)
    collector_breakdown(args.seconds)


if __name__ == "__main__":
    main()
