"""Launch overhead: the same tiny 200-step job as plain python, torchrun and through trainjob.

    python benchmarks/launch.py --runs 5          # issue 2: cold launch overhead
    python benchmarks/launch.py --warm --runs 5   # issue 16: warm start (see warm_main)

Each round runs every case once (interleaved); the table shows medians and the ratios that issue 2
targets: trainjob 1-process wall <= 1.15x plain python, 2-process <= 1.10x torchrun. trainjob's
wall time is what a user waits: from ``train()`` to seeing ``Complete`` (polled every 50 ms).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ENV, PY, free_port, interleave, median, table, time_command  # noqa: E402

JOB = "from trainjob.demo import train_tiny_gpt2 as f; f(max_steps={steps}, eval_steps=50, save_steps=100)"


def plain(steps: int) -> float:
    wall, rc = time_command([PY, "-c", JOB.format(steps=steps)])
    assert rc == 0, f"plain python failed rc={rc}"
    return wall


def torchrun(steps: int, nproc: int, failures: list[int]) -> float:
    script = Path(tempfile.gettempdir()) / "trainjob_bench_job.py"
    script.write_text(JOB.format(steps=steps) + "\n")
    wall, rc = time_command([PY, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1", f"--master-port={free_port()}", str(script)])
    if rc != 0:
        failures.append(rc)  # the known exit crash (FACTS.md): counted, not hidden
    return wall


def trainjob(client, steps: int, nodes: int, procs: int) -> float:
    from trainjob import TransformersTrainer
    from trainjob.demo import train_tiny_gpt2

    t0 = time.perf_counter()
    job_id = client.train(TransformersTrainer(func=train_tiny_gpt2, func_args={"max_steps": steps}, num_nodes=nodes, num_procs_per_node=procs))
    client.wait_for_job_status(job_id, {"Complete"}, timeout=600, polling_interval=0.05)
    wall = time.perf_counter() - t0
    client.delete_job(job_id)
    return wall


# ---- warm start (issue 16) -------------------------------------------------------------------
def timed_job(max_steps: int, stamp: str):
    """The demo job; rank 0 writes the wall-clock time its first training step ended into ``stamp``."""
    from transformers import TrainerCallback

    from trainjob.demo import train_tiny_gpt2

    class FirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1 and os.environ.get("RANK", "0") == "0":
                Path(stamp).write_text(repr(time.time()))

    return train_tiny_gpt2(max_steps=max_steps, eval_steps=50, save_steps=100, callbacks=[FirstStep()])


class RankMemory:
    """Samples the PSS and RSS of a job's ranks (``run/pids/rank-*.json``) while it runs; keeps the peaks."""

    def __init__(self) -> None:
        self.pss: list[int] = []
        self.rss: list[int] = []

    def sample_during(self, run_dir: Path, until) -> None:
        import json
        import threading

        import psutil

        peak: dict[int, tuple[int, int]] = {}

        def loop() -> None:
            while not until():
                for f in (run_dir / "pids").glob("rank-*.json"):
                    try:
                        m = psutil.Process(json.loads(f.read_text())["pid"]).memory_full_info()
                    except (OSError, ValueError, KeyError, psutil.Error):
                        continue
                    old = peak.get(int(f.stem.split("-")[1]), (0, 0))
                    peak[int(f.stem.split("-")[1])] = (max(old[0], m.pss), max(old[1], m.rss))
                time.sleep(0.2)

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        self._thread, self._peak = t, peak

    def finish(self) -> None:
        self._thread.join()
        for pss, rss in self._peak.values():
            self.pss.append(pss)
            self.rss.append(rss)


def plain_timed(steps: int, out: dict) -> float:
    stamp = Path(tempfile.mkstemp(prefix="tj_first_")[1])
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from launch import timed_job; timed_job({steps}, {str(stamp)!r})"
    t0 = time.time()
    wall, rc = time_command([PY, "-c", code])
    assert rc == 0, f"plain python failed rc={rc}"
    out.setdefault("first", []).append(float(stamp.read_text()) - t0)
    stamp.unlink()
    return wall


def torchrun_timed(steps: int, nproc: int, failures: list[int], out: dict) -> float:
    stamp = Path(tempfile.mkstemp(prefix="tj_first_")[1])
    script = Path(tempfile.gettempdir()) / "trainjob_bench_timed.py"
    script.write_text(f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\nfrom launch import timed_job\ntimed_job({steps}, {str(stamp)!r})\n")
    t0 = time.time()
    wall, rc = time_command([PY, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1", f"--master-port={free_port()}", str(script)])
    if rc != 0:
        failures.append(rc)  # the known exit crash (FACTS.md): counted, not hidden
    out.setdefault("first", []).append(float(stamp.read_text()) - t0)
    stamp.unlink()
    return wall


def trainjob_timed(client, home: Path, steps: int, warm: bool, procs: int, out: dict, memory: RankMemory | None = None) -> float:
    from trainjob import TransformersTrainer
    from trainjob.backends.local.warm import client as warm_client

    if warm:
        # Not timed: make sure the warm process is ready (the first job of an environment starts it cold).
        warm_client.start_for_current_environment(home, wait=180)
    stamp = Path(tempfile.mkstemp(prefix="tj_first_")[1])
    t0 = time.time()
    trainer = TransformersTrainer(func=timed_job, func_args={"max_steps": steps, "stamp": str(stamp)}, num_procs_per_node=procs, warm_start=warm)
    job_id = client.train(trainer)
    if memory is not None:
        done = [False]
        memory.sample_during(client.get_job(job_id).job_dir / "run", lambda: done[0])
    client.wait_for_job_status(job_id, {"Complete"}, timeout=600, polling_interval=0.05)
    wall = time.time() - t0
    if memory is not None:
        done[0] = True
        memory.finish()
    reasons = [e.reason for e in client.get_job_events(job_id) if e.reason in ("WarmStart", "ColdStart")]
    if warm and reasons != ["WarmStart"]:
        out.setdefault("cold_fallbacks", []).append(reasons)
    out.setdefault("first", []).append(float(stamp.read_text()) - t0)
    stamp.unlink()
    client.delete_job(job_id)
    return wall


def warm_main(runs: int) -> None:
    """Issue 16: submit -> first step and whole-job wall, warm vs plain python vs cold, and memory.

    Cases, interleaved (rotated) in each round: the demo job (200 steps) and a 20-step job as
    plain ``python``, trainjob cold (``warm_start=False``) and trainjob warm; a 2-process job as
    ``torchrun --nproc-per-node=2`` and trainjob warm. "first step" is from launch (the
    ``train()`` call, or the process start) to the wall-clock time rank 0's first step ended.
    """
    import psutil

    from trainjob import TrainerClient
    from trainjob.backends.local.warm import client as warm_client

    with tempfile.TemporaryDirectory() as home_dir:
        home = Path(home_dir)
        os.environ["TRAINJOB_HOME"] = home_dir
        client = TrainerClient()
        failures: list[int] = []
        extra: dict[str, dict] = {}
        mem = {"cold rank": RankMemory(), "warm rank": RankMemory(), "warm 2-proc rank": RankMemory()}

        def case(name, fn):
            extra[name] = {}
            return lambda: fn(extra[name])

        cases = {
            "python 200": case("python 200", lambda o: plain_timed(200, o)),
            "trainjob cold 200": case("trainjob cold 200", lambda o: trainjob_timed(client, home, 200, False, 1, o, mem["cold rank"])),
            "trainjob warm 200": case("trainjob warm 200", lambda o: trainjob_timed(client, home, 200, True, 1, o, mem["warm rank"])),
            "python 20": case("python 20", lambda o: plain_timed(20, o)),
            "trainjob cold 20": case("trainjob cold 20", lambda o: trainjob_timed(client, home, 20, False, 1, o)),
            "trainjob warm 20": case("trainjob warm 20", lambda o: trainjob_timed(client, home, 20, True, 1, o)),
            "torchrun 2 procs 200": case("torchrun 2 procs 200", lambda o: torchrun_timed(200, 2, failures, o)),
            "trainjob warm 2 procs 200": case("trainjob warm 2 procs 200", lambda o: trainjob_timed(client, home, 200, True, 2, o, mem["warm 2-proc rank"])),
        }
        load_before = os.getloadavg()
        res = interleave(runs, cases, rotate=True)
        load_after = os.getloadavg()
        servers = [i for i in warm_client.list_servers(home) if i.state == "ready"]
        warm_client.stop_servers(home, wait=15)
    m = {k: median(v) for k, v in res.items()}
    first = {k: median(extra[k]["first"]) for k in res}
    rows = [(k, f"{first[k]:.2f}", f"{m[k]:.2f}", f"{min(v):.2f}", f"{max(v):.2f}") for k, v in res.items()]
    print()
    print(table(rows, ("case", "median first step s", "median wall s", "wall min", "wall max")))
    print()
    ratios = [
        ("first step: warm 200 (s)", first["trainjob warm 200"], "<= 1.0"),
        ("first step: python / warm (200)", first["python 200"] / first["trainjob warm 200"], ">= 4"),
        ("first step: cold / warm (200)", first["trainjob cold 200"] / first["trainjob warm 200"], ""),
        ("wall: warm / python (200 steps)", m["trainjob warm 200"] / m["python 200"], "<= 0.6"),
        ("wall: warm / python (20 steps)", m["trainjob warm 20"] / m["python 20"], ""),
        ("wall: warm 2 procs / torchrun 2 procs", m["trainjob warm 2 procs 200"] / m["torchrun 2 procs 200"], "<= 0.7"),
    ]
    print(table([(n, f"{r:.3f}", t) for n, r, t in ratios], ("ratio", "value", "target")))
    mib = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
    print()
    mem_rows = [(i.key, mib(i.pss_bytes or 0), mib(i.rss_bytes or 0)) for i in servers]
    print(table(mem_rows or [("-", "-", "-")], ("warm process (after the runs)", "PSS", "RSS")))
    print()
    rank_rows = [(k, mib(median(r.pss)), mib(median(r.rss)), str(len(r.pss))) for k, r in mem.items() if r.pss]
    print(table(rank_rows, ("rank (peak while training)", "median PSS", "median RSS", "samples")))
    fallbacks = {k: v["cold_fallbacks"] for k, v in extra.items() if v.get("cold_fallbacks")}
    print(f"\nwarm runs that started cold instead: {fallbacks or 'none'}")
    print(f"torchrun runs that exited non-zero: {len(failures)} {failures}")
    print(f"load average (1/5/15 min) before: {' '.join(f'{x:.2f}' for x in load_before)}, after: {' '.join(f'{x:.2f}' for x in load_after)}; {psutil.cpu_count()} CPUs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warm", action="store_true", help="the warm-start benchmark of issue 16 instead")
    args = ap.parse_args()
    if args.warm:
        os.environ.update({k: v for k, v in ENV.items() if k not in os.environ})
        warm_main(args.runs)
        return
    os.environ.update({k: v for k, v in ENV.items() if k not in os.environ})
    with tempfile.TemporaryDirectory() as home:
        os.environ["TRAINJOB_HOME"] = home
        from trainjob import TrainerClient

        client = TrainerClient()
        failures: list[int] = []
        s = args.steps
        res = interleave(
            args.runs,
            {
                "python": lambda: plain(s),
                "trainjob 1 proc": lambda: trainjob(client, s, 1, 1),
                "torchrun 1 proc": lambda: torchrun(s, 1, failures),
                "torchrun 2 procs": lambda: torchrun(s, 2, failures),
                "trainjob 2 procs (1 node)": lambda: trainjob(client, s, 1, 2),
                "trainjob 2 nodes": lambda: trainjob(client, s, 2, 1),
            },
        )
    m = {k: median(v) for k, v in res.items()}
    rows = [(k, f"{m[k]:.2f}", f"{min(v):.2f}", f"{max(v):.2f}") for k, v in res.items()]
    print()
    print(table(rows, ("case", "median wall s", "min", "max")))
    print()
    ratios = [
        ("trainjob 1 proc / python", m["trainjob 1 proc"] / m["python"], "<= 1.15"),
        ("trainjob 2 procs / torchrun 2 procs", m["trainjob 2 procs (1 node)"] / m["torchrun 2 procs"], "<= 1.10"),
        ("trainjob 2 nodes / torchrun 2 procs", m["trainjob 2 nodes"] / m["torchrun 2 procs"], "<= 1.10"),
    ]
    print(table([(n, f"{r:.3f}", t) for n, r, t in ratios], ("ratio", "value", "target")))
    print(f"\ntorchrun runs that exited non-zero: {len(failures)} {failures}")


if __name__ == "__main__":
    main()
