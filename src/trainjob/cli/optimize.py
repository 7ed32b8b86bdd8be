"""``trainjob optimize`` (start or resume a hyperparameter optimization), ``trainjob studies``, ``trainjob trials``."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Optional

import typer

from trainjob.cli import common
from trainjob.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_STOPPED, EXIT_USAGE, CliExit, Output, OutputOpt, err, out
from trainjob.cli.render import fmt_age, fmt_num, status_text
from trainjob.errors import Problem, ValidationError
from trainjob.optimizer.records import study_record

OPTIMIZE_HELP = """Start a hyperparameter optimization: trials of a script or a function, each a job.

\b
  trainjob optimize --param lr=loguniform:1e-5:1e-2 --trials 16 --prune median train.py --epochs 1
  trainjob optimize --param learning_rate=loguniform:1e-5:1e-2 --param batch_size=choice:16,32 \\
      --metric eval_loss --parallel 2 --wait mypkg.train:main max_steps=200
  trainjob optimize --resume NAME          # continue one that was stopped or lost its process

trainjob's flags come first: everything after the script or function goes to it. A function receives each value as a keyword argument (typed); a script gets --NAME=VALUE
appended (or ${trialParameters.NAME} in its arguments replaced). --param forms:
uniform:LO:HI, loguniform:LO:HI, int:LO:HI[:STEP], choice:A,B,C (values read as JSON when they
parse). The objective (--metric) is read from what the trial's Trainer logs (eval_ prefix
optional), else from a returned dict or `metric=value` lines it prints. Prints the name; with
--wait shows the trials live and exits 0 (Complete), 1 (Failed) or 3 (Stopped).
"""

_STATUS_EXIT = {"Complete": EXIT_OK, "Failed": EXIT_FAILED, "Stopped": EXIT_STOPPED}
FLAG_FOR_FIELD = {"search_space": "--param", "trial_config.num_trials": "--trials", "TrialConfig.num_trials": "--trials",
                  "TrialConfig.parallel_trials": "--parallel", "TrialConfig.max_failed_trials": "--max-failed",
                  "Objective.metric": "--metric", "Objective.direction": "--direction", "Objective.strategy": "--strategy",
                  "name": "--name"}  # fmt: skip


def parse_param(text: str) -> tuple[str, Any]:
    """``lr=loguniform:1e-5:1e-2`` -> ``("lr", Search.loguniform(1e-5, 1e-2))``; a ``ValidationError`` otherwise."""
    from trainjob.optimizer import Search

    name, sep, spec = text.partition("=")
    kind, _, rest = spec.partition(":")
    expected = "NAME=uniform:LO:HI, NAME=loguniform:LO:HI, NAME=int:LO:HI[:STEP] or NAME=choice:A,B,C"
    if not sep or not name.isidentifier():
        raise ValidationError([Problem("--param", text, expected)], "--param")
    try:
        if kind in ("uniform", "loguniform"):
            lo, hi = rest.split(":")
            return name, getattr(Search, kind)(float(lo), float(hi))
        if kind == "int":
            parts = [int(p) for p in rest.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError(rest)
            return name, Search.integer(*parts)
        if kind == "choice" and rest:
            return name, Search.choice([_value(v) for v in rest.split(",")])
    except ValidationError as e:
        raise ValidationError([Problem("--param", text, p.expected) for p in e.problems], "--param") from None
    except ValueError:
        pass
    raise ValidationError([Problem("--param", text, expected)], "--param")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def optimize(
    target: Annotated[Optional[str], typer.Argument(help="train.py, or pkg.module:function (or with -m, the module's first argument).", show_default=False)] = None,
    args: Annotated[Optional[list[str]], typer.Argument(help="Fixed arguments: for a script, its arguments; for a function, KEY=VALUE keyword arguments.", show_default=False)] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="A searched parameter (repeatable): lr=loguniform:1e-5:1e-2, layers=int:1:4, bs=choice:16,32.", show_default=False)] = None,
    trials: Annotated[int, typer.Option("--trials", "-n", help="Number of trials.")] = 10,
    parallel: Annotated[int, typer.Option("--parallel", help="Trials running at once (they queue when their resources are busy).")] = 1,
    max_failed: Annotated[Optional[int], typer.Option("--max-failed", help="The optimization fails once more trials than this failed (default: only when all do).", show_default=False)] = None,
    metric: Annotated[str, typer.Option("--metric", help="The objective: a metric the trials log (eval_ prefix optional).")] = "eval_loss",
    direction: Annotated[str, typer.Option("--direction", help="minimize or maximize.")] = "minimize",
    strategy: Annotated[str, typer.Option("--strategy", help="A trial's value: its latest or its best logged value.")] = "latest",
    algorithm: Annotated[str, typer.Option("--algorithm", help="random, grid or tpe.")] = "random",
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the random or tpe sampler (repeatable studies).", show_default=False)] = None,
    prune: Annotated[str, typer.Option("--prune", help="Early stopping on live values: none, median or hyperband.")] = "none",
    module: Annotated[Optional[str], typer.Option("--module", "-m", help="Run a module like `python -m MODULE`.", show_default=False)] = None,
    cpu: Annotated[Optional[str], typer.Option("--cpu", help="CPUs per trial: trials wait Queued while they are busy.", show_default=False)] = None,
    gpu: Annotated[Optional[int], typer.Option("--gpu", help="GPUs per trial.", show_default=False)] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="The optimization's name (default 12 random characters).", show_default=False)] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Continue this optimization (adopts running trials, repeats no finished one); --trials raises its budget.", show_default=False)] = None,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Show the trials live until the optimization ends; the exit code is its outcome.")] = False,
    output: OutputOpt = Output.table,
) -> None:
    from trainjob.cli.run import build_trainer
    from trainjob.optimizer import TPE, GridSearch, Hyperband, Median, Objective, OptimizerClient, RandomSearch, TrainJobTemplate, TrialConfig

    oc = OptimizerClient()
    problems: list[Problem] = []
    algorithms = {"random": lambda: RandomSearch(random_state=seed), "grid": GridSearch, "tpe": lambda: TPE(random_state=seed)}
    rules = {"none": lambda: None, "median": Median, "hyperband": Hyperband}
    if algorithm not in algorithms:
        problems.append(Problem("--algorithm", algorithm, "random, grid or tpe"))
    if prune not in rules:
        problems.append(Problem("--prune", prune, "none, median or hyperband"))
    space: dict[str, Any] = {}
    for text in param or []:
        try:
            k, v = parse_param(text)
            space[k] = v
        except ValidationError as e:
            problems += e.problems
    try:
        config = TrialConfig(num_trials=trials, parallel_trials=parallel, max_failed_trials=max_failed)
        objective = Objective(metric, direction, strategy)
    except ValidationError as e:
        problems += e.problems
    if problems:
        raise CliExit(EXIT_USAGE, common.validation_message(ValidationError(problems, "optimization"), FLAG_FOR_FIELD))
    try:
        if resume:
            trials_given = trials != 10 or parallel != 1 or max_failed is not None
            opt = oc.optimize(resume=resume, trial_config=config if trials_given else None)
        else:
            script_args = list(args or [])
            if script_args[:1] == ["--"]:
                script_args = script_args[1:]
            trainer = build_trainer(
                target=target, args=script_args, module=module, nodes=1, procs_per_node=None, cpu=cpu, gpu=gpu, memory=None, pkg=None,
                index_url=None, env=None, max_restarts=0, tracking=True, metrics_port=28080, custom_metric=None,
            )  # fmt: skip
            opt = oc.optimize(
                TrainJobTemplate(trainer=trainer), search_space=space, trial_config=config, objectives=[objective],
                algorithm=algorithms[algorithm](), early_stopping=rules[prune](), name=name,
            )  # fmt: skip
    except ValidationError as e:
        raise CliExit(EXIT_USAGE, common.validation_message(e, FLAG_FOR_FIELD)) from None
    if not wait:
        if output is Output.json:
            common.dump(study_record(oc.get_job(opt)))
        else:
            out.print(opt)
            err.print(f"started optimization {opt}; watch it with: trainjob trials --watch {opt}")
        return
    err.print(f"started optimization {opt}")
    trials_cmd(opt, watch=True, output=output)


def studies(output: OutputOpt = Output.table) -> None:
    """List the optimizations: status, trials done, best value and parameters."""
    from rich.table import Table

    from trainjob.optimizer import OptimizerClient

    records = [study_record(j) for j in OptimizerClient().list_jobs()]
    if output is Output.json:
        common.dump(records)
        return
    if not records:
        err.print("no optimizations; start one with: trainjob optimize --help")
        return
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "STATUS", "TRIALS", "OBJECTIVE", "BEST", "BEST PARAMETERS", "AGE"):
        table.add_column(col)
    for r in records:
        best = r["best_trial"] or {}
        done = sum(1 for t in r["trials"] if t["status"] in ("Complete", "Pruned", "Failed"))
        table.add_row(r["name"], status_text(r["status"]), f"{done}/{r['num_trials']}", f"{r['metric']} ({r['direction']})",
                      fmt_num(best.get("value")), _params(best.get("parameters")), fmt_age(r["created_at"]))  # fmt: skip
    out.print(table)


def trials_cmd(
    name: Annotated[str, typer.Argument(help="The optimization's name.", show_default=False)],
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Redraw until the optimization ends; the exit code is its outcome.")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """The trials of an optimization, best first: status, objective, where a pruned one stopped, parameters, job."""
    from trainjob.optimizer import OptimizerClient

    oc = OptimizerClient()
    if not watch:
        record = study_record(oc.get_job(name))
        common.dump(record) if output is Output.json else out.print(trials_view(record))
        return
    from rich.live import Live

    record = study_record(oc.get_job(name))
    try:
        # -o json: nothing but the final JSON on stdout, so the live table goes to stderr
        with Live(trials_view(record), console=err if output is Output.json else out, refresh_per_second=2, transient=False) as live:
            while record["status"] not in _STATUS_EXIT:
                time.sleep(1.0)
                record = study_record(oc.get_job(name))
                live.update(trials_view(record))
    except KeyboardInterrupt:
        raise CliExit(EXIT_INTERRUPTED, f"stopped watching; optimization {name} goes on") from None
    if output is Output.json:
        common.dump(record)
    raise CliExit(_STATUS_EXIT.get(record["status"], EXIT_FAILED), None if record["status"] == "Complete" else f"optimization {name} {record['status']}: {record['message']}")


def trials_view(record: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    sign = 1 if record["direction"] == "minimize" else -1
    rows = sorted(record["trials"], key=lambda t: (t["value"] is None, sign * (t["value"] or 0), t["number"]))
    best = (record["best_trial"] or {}).get("number")
    table = Table(box=None, header_style="bold")
    for col in ("#", "STATUS", record["metric"].upper(), "STEP", "PARAMETERS", "JOB"):
        table.add_column(col)
    for t in rows:
        status = status_text(t["status"])
        if t["status"] == "Failed" and t["error"]:
            status.append(f" {t['error'].get('type', '')}", style="dim")
        table.add_row(("* " if t["number"] == best else "") + str(t["number"]), status, fmt_num(t["value"]), fmt_num(t["step"]), _params(t["parameters"]), t["name"],
                      style="bold" if t["number"] == best else None)  # fmt: skip
    head = Text(f"{record['name']}  ")
    head.append_text(status_text(record["status"]))
    head.append(f"  {sum(1 for t in record['trials'] if t['status'] in ('Complete', 'Pruned', 'Failed'))}/{record['num_trials']} trials, {record['metric']} ({record['direction']})")
    if record["message"] and record["status"] != "Running":
        head.append(f"  {record['message']}", style="dim")
    return Group(head, table)


def _params(p: dict[str, Any] | None) -> str:
    return " ".join(f"{k}={fmt_num(v)}" for k, v in (p or {}).items()) or "-"
