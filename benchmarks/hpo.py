"""Hyperparameter optimization (issue 14): what pruning saves, what a trial as a job costs, parallel trials.

    python benchmarks/hpo.py --trials 16 --steps 200 --rounds 1
    python benchmarks/hpo.py --cases sequential --trials 16 --steps 100 --rounds 3   # pruning and overhead only

On the tiny GPT-2 of ``trainjob.demo`` (eval every 25 steps), learning rate loguniform(1e-5, 1e-1),
``RandomSearch(random_state=seed)`` so every study draws the same values:

- pruning: ``Median()`` vs no early stopping: training steps spent (each trial's last step) and the
  best eval_loss found; target >= 40% fewer steps, best within 2%;
- overhead: the wall of the sequential study through ``OptimizerClient`` (``optimize`` to
  ``Complete``, the warm process ready beforehand) vs the same trials in this process with
  ``optuna.study.optimize`` (imports done beforehand); target <= 1.3x;
- parallel: ``parallel_trials=2`` vs 1 (no resource requests: both trials share the 2 cores).

Each round runs the cases in a fresh TRAINJOB_HOME, in rotating order; the table shows medians.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ENV, median  # noqa: E402


def trial(learning_rate: float, max_steps: int = 200, eval_steps: int = 25) -> dict:
    """One trial: the tiny GPT-2 at this learning rate; returns the last eval_loss and step."""
    from transformers import TrainerCallback

    from trainjob.demo import train_tiny_gpt2

    seen: dict = {}

    class LastEval(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            seen["eval_loss"] = (metrics or {}).get("eval_loss")

    out = train_tiny_gpt2(max_steps=max_steps, eval_steps=eval_steps, save_steps=None, logging_steps=eval_steps, learning_rate=learning_rate, callbacks=[LastEval()])
    return {"eval_loss": seen.get("eval_loss"), "step": out["global_step"]}


def through_optimizer(trials: int, steps: int, seed: int, prune: bool, parallel: int, cpu: int | None = None) -> dict:
    from trainjob import TrainerClient, TransformersTrainer
    from trainjob.optimizer import Median, Objective, OptimizerClient, RandomSearch, Search, TrainJobTemplate, TrialConfig

    oc, tc = OptimizerClient(), TrainerClient()
    t0 = time.monotonic()
    name = oc.optimize(
        TrainJobTemplate(TransformersTrainer(func=trial, func_args={"max_steps": steps, "eval_steps": 25}, resources_per_node={"cpu": cpu} if cpu else None)),
        search_space={"learning_rate": Search.loguniform(1e-5, 1e-1)},
        objectives=[Objective("eval_loss")],
        trial_config=TrialConfig(num_trials=trials, parallel_trials=parallel),
        algorithm=RandomSearch(random_state=seed),
        early_stopping=Median() if prune else None,
    )
    job = oc.wait_for_job_status(name, timeout=3600)  # wakes when the optimizer process exits
    wall = time.monotonic() - t0
    spent = sum((tc.get_job_progress(t.name) or {}).get("currentStep") or 0 for t in job.trials)
    stages = breakdown(tc, [t.trainjob for t in job.trials if t.trainjob is not None])
    values = [t.value for t in job.trials if t.value is not None and t.status == "Complete"]
    return {"wall": wall, "steps": spent, "best": min(values), "pruned": sum(t.status == "Pruned" for t in job.trials),
            "lrs": [t.parameters["learning_rate"] for t in job.trials], **stages}  # fmt: skip


STAGES = ("submit to Started", "Started to TrainBegin", "training", "TrainEnd to recorded", "recorded to next submit")


def breakdown(tc, jobs: list) -> dict:
    """Where each trial's wall went, from the jobs' own records (medians over the trials, seconds):
    job created -> ``Started`` (the supervisor's process started, its imports, the warm fork asked),
    ``Started`` -> ``TrainBegin`` (the forked rank builds the model and data), ``TrainBegin`` ->
    ``TrainEnd``, ``TrainEnd`` -> the job recorded ended (the rank's exit seen), and from that to the
    next trial's job created (the optimizer records the outcome, asks Optuna, submits)."""
    jobs = sorted(jobs, key=lambda j: j.created_at)
    per: dict[str, list[float]] = {k: [] for k in STAGES}
    for i, j in enumerate(jobs):
        ev = {e.reason: e.time.timestamp() for e in tc.get_job_events(j.name)}
        created, finished = j.created_at.timestamp(), j.finished_at.timestamp() if j.finished_at else None
        if "Started" in ev and "TrainBegin" in ev and "TrainEnd" in ev and finished:
            per["submit to Started"].append(ev["Started"] - created)
            per["Started to TrainBegin"].append(ev["TrainBegin"] - ev["Started"])
            per["training"].append(ev["TrainEnd"] - ev["TrainBegin"])
            per["TrainEnd to recorded"].append(finished - ev["TrainEnd"])
        if finished and i + 1 < len(jobs):
            per["recorded to next submit"].append(jobs[i + 1].created_at.timestamp() - finished)
    return {k: median(v) if v else float("nan") for k, v in per.items()}


def in_process(trials: int, steps: int, seed: int) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=seed))

    def objective(t):
        return trial(t.suggest_float("learning_rate", 1e-5, 1e-1, log=True), steps)["eval_loss"]

    t0 = time.monotonic()
    study.optimize(objective, n_trials=trials)
    return {"wall": time.monotonic() - t0, "steps": trials * steps, "best": study.best_value, "pruned": 0, "lrs": [t.params["learning_rate"] for t in study.trials]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", default="all", help="'all' (the first four), 'sequential' (no pruning, median pruning, one process), 'overhead' (the sequential study and the one-process run) or 'parallel' (sequential vs 2 parallel with 1 CPU each)")
    args = ap.parse_args()
    os.environ.update({k: v for k, v in ENV.items() if k not in os.environ or k in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "TOKENIZERS_PARALLELISM")})
    from trainjob.backends.local.warm import client as warm_client
    from trainjob.demo import train_tiny_gpt2

    train_tiny_gpt2(max_steps=1, eval_steps=None, save_steps=None)  # imports (and torch's first-call costs) out of the in-process timing
    cases = {
        "optimizer, no pruning": lambda: through_optimizer(args.trials, args.steps, args.seed, prune=False, parallel=1),
        "optimizer, median pruning": lambda: through_optimizer(args.trials, args.steps, args.seed, prune=True, parallel=1),
        "optimizer, 2 parallel, no pruning": lambda: through_optimizer(args.trials, args.steps, args.seed, prune=False, parallel=2),
        "one process, optuna.study.optimize": lambda: in_process(args.trials, args.steps, args.seed),
        "optimizer, 2 parallel, 1 CPU each": lambda: through_optimizer(args.trials, args.steps, args.seed, prune=False, parallel=2, cpu=1),
    }
    wanted = {"all": list(cases)[:4], "overhead": ["optimizer, no pruning", "one process, optuna.study.optimize"],
              "sequential": ["optimizer, no pruning", "optimizer, median pruning", "one process, optuna.study.optimize"],
              "parallel": ["optimizer, no pruning", "optimizer, 2 parallel, 1 CPU each"]}[args.cases]  # fmt: skip
    cases = {k: v for k, v in cases.items() if k in wanted}
    results: dict[str, list[dict]] = {k: [] for k in cases}
    names = list(cases)
    for r in range(args.rounds):
        home = Path(tempfile.mkdtemp(prefix="tj-hpo-bench-"))
        os.environ["TRAINJOB_HOME"] = str(home)
        warm_client.start_for_current_environment(home, wait=180)  # every trial forks warm, the first one too
        try:
            for name in names[r % len(names):] + names[: r % len(names)]:
                res = cases[name]()
                results[name].append(res)
                load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
                print(f"round {r + 1} {name}: wall {res['wall']:.1f}s, steps {res['steps']}, best eval_loss {res['best']:.4f}, pruned {res['pruned']} (load average after: {load})", flush=True)
        finally:
            warm_client.stop_servers(home, wait=15)
    same = all(results[n][i]["lrs"] == results[names[0]][i]["lrs"] for n in names for i in range(args.rounds))
    print(f"\n{args.trials} trials x {args.steps} steps, eval every 25, lr loguniform(1e-5, 1e-1), RandomSearch(random_state={args.seed}), "
          f"{args.rounds} round(s), medians; same learning rates in every case: {same}\n")  # fmt: skip
    print("| case | wall (s) | training steps | best eval_loss | pruned |")
    print("|---|---|---|---|---|")
    med = {n: {k: median([x[k] for x in results[n]]) for k in ("wall", "steps", "best", "pruned")} for n in names}
    for n in names:
        m = med[n]
        print(f"| {n} | {m['wall']:.1f} | {m['steps']:.0f} | {m['best']:.4f} | {m['pruned']:.0f} |")
    print("\nper trial, medians (s): | case | " + " | ".join(STAGES) + " |")
    for n in names:
        if STAGES[0] in results[n][0]:
            print(f"| {n} | " + " | ".join(f"{median([x[k] for x in results[n]]):.3f}" for k in STAGES) + " |")
    base = med["optimizer, no pruning"]
    if "optimizer, median pruning" in med:
        pruned = med["optimizer, median pruning"]
        print(f"\npruning: {1 - pruned['steps'] / base['steps']:.0%} fewer steps, best eval_loss {pruned['best'] / base['best'] - 1:+.1%}")
    if "one process, optuna.study.optimize" in med:
        one = med["one process, optuna.study.optimize"]["wall"]
        print(f"overhead: OptimizerClient / one process = {base['wall'] / one:.2f}x ({(base['wall'] - one) / args.trials:.2f} s per trial)")
    for i in range(args.rounds):
        per = [f"round {i + 1}:"]
        if "optimizer, median pruning" in results:
            per.append(f"pruning {1 - results['optimizer, median pruning'][i]['steps'] / results['optimizer, no pruning'][i]['steps']:.1%} fewer steps")
        if "one process, optuna.study.optimize" in results:
            per.append(f"overhead {results['optimizer, no pruning'][i]['wall'] / results['one process, optuna.study.optimize'][i]['wall']:.2f}x")
        print(" ".join(per))
    for case in ("optimizer, 2 parallel, no pruning", "optimizer, 2 parallel, 1 CPU each"):
        if case in med:
            print(f"{case} / sequential = {med[case]['wall'] / base['wall']:.2f}x wall")


if __name__ == "__main__":
    main()
