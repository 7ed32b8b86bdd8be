"""Package environments: how long a job waits for its ``packages_to_install``.

Runs real jobs that ask for the same packages (default: ``peft``, which needs torch, transformers
and accelerate, all in the base environment) and measures, in one run:

- trainjob, first job: build the layered environment with uv, uv's cache cold;
- trainjob, a new environment with uv's cache warm (after ``prune_envs``);
- trainjob, repeat jobs: the environment is a cache hit (target: <= 0.5 s);
- baseline: ``python -m venv`` + ``pip install`` of the same packages into a new venv (what a
  per-job venv costs: torch & co. are installed again), torch pinned to the base's build;
- baseline: ``uv venv`` + ``uv pip install`` into a new venv, not layered (cold uv cache), the
  same pin.

Every installer uses this machine's pip settings (indexes, find-links), as trainjob does.
Environment-ready times are the ``EnvironmentReady`` events' own figures.

    python benchmarks/envs.py [--packages peft] [--repeats 5] [--no-baselines]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import median, table  # noqa: E402


def report_versions(packages: list[str]) -> dict[str, str]:
    """The job: which version of each asked-for distribution it sees, and where torch comes from."""
    import importlib.metadata as md
    import re

    import torch

    names = [re.split(r"[<>=!~\[; @]", p, maxsplit=1)[0] for p in packages]
    return {**{n: md.version(n) for n in names}, "torch": torch.__file__}


def _ready_seconds(client, job_id: str) -> tuple[float, bool]:
    (e,) = [e for e in client.get_job_events(job_id) if e.reason == "EnvironmentReady"]
    return float(e.data["seconds"]), bool(e.data["cached"])


def _run_job(client, trainer) -> tuple[float, bool, float]:
    """(environment ready seconds, cache hit, submit -> Running seconds) of one real job."""
    t0 = time.perf_counter()
    job = client.train(trainer)
    client.wait_for_job_status(job, {"Running", "Complete"}, timeout=900, polling_interval=0.05)
    to_running = time.perf_counter() - t0
    client.wait_for_job_completion(job, timeout=900)
    seconds, cached = _ready_seconds(client, job)
    return seconds, cached, to_running


def _timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{out.stdout[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packages", nargs="+", default=["peft"])
    ap.add_argument("--repeats", type=int, default=5, help="repeat jobs (cache hits)")
    ap.add_argument("--no-baselines", action="store_true", help="skip the pip and plain-uv baselines")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tj-bench-envs-"))
    os.environ["TRAINJOB_HOME"] = str(work / "home")
    os.environ["UV_CACHE_DIR"] = str(work / "uv-cache")  # cold for the first build
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from trainjob import CustomTrainer, TrainerClient
    from trainjob.backends.local import envcache, envs

    client = TrainerClient()
    trainer = CustomTrainer(func=report_versions, func_args={"packages": args.packages}, packages_to_install=args.packages)
    rows = []
    try:
        print(f"trainjob, first job ({' '.join(args.packages)}), uv cache cold ...", flush=True)
        first, cached, first_running = _run_job(client, trainer)
        assert not cached
        rows.append(("trainjob: first job, new environment (uv cache cold)", f"{first:.2f}", f"{first_running:.2f}", 1))
        hits, runnings = [], []
        for i in range(args.repeats):
            s, cached, r = _run_job(client, trainer)
            assert cached, "a repeat job rebuilt its environment"
            hits.append(s)
            runnings.append(r)
            print(f"  repeat {i + 1}/{args.repeats}: environment ready in {s:.4f}s", flush=True)
        rows.append(("trainjob: repeat job, cache hit (median)", f"{median(hits):.4f}", f"{median(runnings):.2f}", len(hits)))
        rows.append(("trainjob: repeat job, cache hit (max)", f"{max(hits):.4f}", f"{max(runnings):.2f}", len(hits)))
        (env_info,) = envcache.list_envs(os.environ["TRAINJOB_HOME"])
        envcache.prune_envs(os.environ["TRAINJOB_HOME"])
        warm, cached, warm_running = _run_job(client, trainer)
        assert not cached
        rows.append(("trainjob: new environment, uv cache warm", f"{warm:.2f}", f"{warm_running:.2f}", 1))

        if not args.no_baselines:
            # Pin torch to the base's build, as a careful user would: unpinned, both installers take
            # the newest torch from the registry with its CUDA libraries (gigabytes; measured here:
            # 138 s with pip, 32 s with uv, 5.5 GB each), which says more about torch than installers.
            import torch

            pins = work / "constraints.txt"
            pins.write_text(f"torch=={torch.__version__}\n")
            env = dict(os.environ)
            print(f"baseline: python -m venv + pip install (torch=={torch.__version__}) ...", flush=True)
            venv = work / "pip-venv"
            t_venv = _timed([sys.executable, "-m", "venv", str(venv)], env)
            t_pip = _timed([str(venv / "bin" / "pip"), "install", "--quiet", "-c", str(pins), *args.packages], env)
            rows.append(("baseline: python -m venv + pip install", f"{t_venv + t_pip:.2f}", "-", 1))
            print("baseline: uv venv + uv pip install (not layered, uv cache cold) ...", flush=True)
            plan = envs.plan_for(args.packages, None)
            index_args, index_env = plan.index_options()
            uv_env = {**env, **index_env, "UV_CACHE_DIR": str(work / "uv-cache-baseline")}
            uvenv = work / "uv-venv"
            t_uv = _timed([envs.find_uv(), "venv", "--quiet", "--python", sys.executable, str(uvenv)], uv_env)
            uv_install = [envs.find_uv(), "pip", "install", "--quiet", "--python", str(uvenv / "bin" / "python"), *index_args, "-c", str(pins), *args.packages]
            t_uv += _timed(uv_install, uv_env)
            rows.append(("baseline: uv venv + uv pip install, not layered (uv cache cold)", f"{t_uv:.2f}", "-", 1))
            sizes = f"; full pip venv {_du(venv) / 2**20:.0f} MiB, full uv venv {_du(uvenv) / 2**20:.0f} MiB"
        else:
            sizes = ""
    finally:
        for j in client.list_jobs():
            if not j.status.is_terminal:
                client.delete_job(j.id)
    print()
    print(table(rows, ("case", "environment ready (s)", "submit -> Running (s)", "runs")))
    print(f"\nlayered environment: {env_info.size_bytes / 2**20:.1f} MiB on disk{sizes}")
    print(f"(work folder {work}; removed)")
    shutil.rmtree(work, ignore_errors=True)


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


if __name__ == "__main__":
    main()
