"""``trainjob run`` (submit a script, a module or a function) and ``trainjob demo``."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from trainjob.cli import common
from trainjob.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, OUTCOME_EXIT, CliExit, Output, OutputOpt, err, out
from trainjob.cli.live import JobWatcher
from trainjob.core.public_records import job_record, result_record
from trainjob.cli.render import fmt_duration, fmt_num, interesting, status_text
from trainjob.core.spec import DEFAULT_EXIT_GRACE, DEFAULT_METRICS_PORT, DEFAULT_STOP_GRACE
from trainjob.errors import Problem, ValidationError
from trainjob.trainers import TransformersTrainer

_FUNC_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")

# Trainer field -> the flag that sets it, so validation errors name what the user typed.
FLAG_FOR_FIELD = {
    "num_nodes": "--nodes",
    "num_procs_per_node": "--procs-per-node",
    "resources_per_node['cpu']": "--cpu",
    "resources_per_node['memory']": "--memory",
    "resources_per_node['gpu']": "--gpu",
    "packages_to_install": "--pkg",
    "pip_index_urls": "--index-url",
    "env": "--env",
    "max_restarts": "--max-restarts",
    "custom_metrics": "--custom-metric",
    "metrics_port": "--metrics-port",
    "script": "SCRIPT",
    "module": "-m",
    "func": "TARGET",
    "func_args": "KEY=VALUE",
    "name": "--name",
    "Name": "--name",
    "Labels": "--label",
    "Annotations": "--annotation",
    "progress_timeout": "--progress-timeout",
    "active_deadline_seconds": "--deadline",
    "stop_grace_seconds": "--stop-grace",
    "exit_grace_seconds": "--exit-grace",
}

RUN_HELP = """Submit a training job: a script, a module (-m) or a function reference.

\b
  trainjob run train.py --lr 1e-4          # a script; what follows it goes to the script
  trainjob run -m mypkg.train -- --epochs 2  # a module, like python -m
  trainjob run mypkg.train:main max_steps=50 # a function, called as main(max_steps=50)
  trainjob run --nodes 2 --procs-per-node 2 --follow train.py

Everything after the script path (or after --) is passed to the script untouched, so put
trainjob's flags before it. Prints the job id; with --follow, streams the logs and a progress
line until the job ends and exits 0 (Complete), 1 (Failed) or 3 (Stopped). An invalid spec
exits 2 and starts nothing.
"""


def run(
    target: Annotated[Optional[str], typer.Argument(help="train.py, or pkg.module:function, or (with -m) the first argument of the module.", show_default=False)] = None,
    args: Annotated[Optional[list[str]], typer.Argument(help="Arguments for the script/module; KEY=VALUE keyword arguments for a function (VALUE read as JSON when it parses, else a string).", show_default=False)] = None,
    module: Annotated[Optional[str], typer.Option("--module", "-m", help="Run a module like `python -m MODULE`; all positional arguments go to it.", show_default=False)] = None,
    nodes: Annotated[int, typer.Option("--nodes", help="Number of nodes (local: process groups on this machine, real rendezvous).")] = 1,
    procs_per_node: Annotated[Optional[int], typer.Option("--procs-per-node", help="Processes (ranks) per node. Default: one per requested GPU, else 1.", show_default=False)] = None,
    cpu: Annotated[Optional[str], typer.Option("--cpu", help="CPUs per node: 2, 0.5 or 500m.", show_default=False)] = None,
    gpu: Annotated[Optional[int], typer.Option("--gpu", help="GPUs per node.", show_default=False)] = None,
    memory: Annotated[Optional[str], typer.Option("--memory", help="Memory per node: 16Gi, 512Mi, 16G or bytes.", show_default=False)] = None,
    pkg: Annotated[Optional[list[str]], typer.Option("--pkg", help="A pip requirement to install for this job (repeatable): --pkg peft --pkg 'trl==1.16.0'.", show_default=False)] = None,
    index_url: Annotated[Optional[list[str]], typer.Option("--index-url", help="Package index URL (repeatable): the first is the index, the others extra indexes.", show_default=False)] = None,
    env: Annotated[Optional[list[str]], typer.Option("--env", "-e", help="Environment variable for the job, KEY=VALUE, or KEY alone to pass this shell's value (keeps a secret out of `ps`). Repeatable. Secrets are masked in everything trainjob shows.", show_default=False)] = None,
    max_restarts: Annotated[int, typer.Option("--max-restarts", help="Restart after a failure up to N times, resuming from the last complete checkpoint.")] = 0,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Turn progress tracking off: nothing is injected into the job, no metrics endpoint.")] = False,
    name: Annotated[Optional[str], typer.Option("--name", help="The job's name, its identifier (Kubeflow's Name option): lower-case letters, digits and '-', starting with a letter, at most 63 characters, unique. Default: 12 random characters.", show_default=False)] = None,
    label: Annotated[Optional[list[str]], typer.Option("--label", "-l", help="A label KEY=VALUE (repeatable); `trainjob ls -l KEY=VALUE` lists the jobs that carry it.", show_default=False)] = None,
    annotation: Annotated[Optional[list[str]], typer.Option("--annotation", help="An annotation KEY=VALUE (repeatable): stored and shown with the job.", show_default=False)] = None,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="Port of rank 0's progress endpoint (GET /metrics); 1024-65535.")] = DEFAULT_METRICS_PORT,
    custom_metric: Annotated[Optional[list[str]], typer.Option("--custom-metric", help="Expose a logged value: LOGGED=EXPOSED (repeatable); an EXPOSED name starting with eval_ counts as an eval metric.", show_default=False)] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Id of a stopped or failed job to continue from its newest complete checkpoint.", show_default=False)] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream logs and progress until the job ends; the exit code is its outcome.")] = False,
    progress_timeout: Annotated[Optional[float], typer.Option("--progress-timeout", help="Fail the attempt (stacks in the rank logs) when no training step completes for this many seconds after training began; --max-restarts retries it. Default: off.", show_default=False)] = None,
    deadline: Annotated[Optional[int], typer.Option("--deadline", help="active_deadline_seconds: past this many seconds from submission the job saves a checkpoint and fails with DeadlineExceeded.", show_default=False)] = None,
    stop_grace: Annotated[float, typer.Option("--stop-grace", help="Seconds ranks get to save and end after a stop or the deadline, before SIGTERM.")] = DEFAULT_STOP_GRACE,
    exit_grace: Annotated[float, typer.Option("--exit-grace", help="Seconds the other ranks get to exit once one exited with its work done; then they are ended as hung.")] = DEFAULT_EXIT_GRACE,
    output: OutputOpt = Output.table,
) -> None:
    script_args = list(args or [])
    if script_args[:1] == ["--"]:
        script_args = script_args[1:]
    trainer = build_trainer(
        target=target, args=script_args, module=module, nodes=nodes, procs_per_node=procs_per_node, cpu=cpu, gpu=gpu,
        memory=memory, pkg=pkg, index_url=index_url, env=env, max_restarts=max_restarts, tracking=not no_progress,
        metrics_port=metrics_port, custom_metric=custom_metric,
        lifecycle={"progress_timeout": progress_timeout, "active_deadline_seconds": deadline, "stop_grace_seconds": stop_grace, "exit_grace_seconds": exit_grace},
    )  # fmt: skip
    c = common.client()
    if resume:
        resume = common.resolve_job_id(resume)
    try:
        job_id = c.train(trainer=trainer, options=metadata_options(name, label, annotation), resume=resume)
    except ValidationError as e:
        raise CliExit(EXIT_USAGE, common.validation_message(e, FLAG_FOR_FIELD)) from None
    if not follow:
        if output is Output.json:
            common.dump(job_record(c.get_job(job_id)))
        else:
            out.print(job_id)
            err.print(f"submitted job {job_id}; follow it with: trainjob logs -f {job_id}  |  trainjob progress --watch {job_id}")
        return
    err.print(f"submitted job {job_id}")
    final = follow_job(job_id, logs=True)
    if output is Output.json:
        common.dump(final)
    raise CliExit(OUTCOME_EXIT.get(final["status"], 1))


def metadata_options(name: str | None, label: list[str] | None, annotation: list[str] | None) -> list[Any]:
    """``--name``/``--label``/``--annotation`` flags -> ``[Name(...), Labels(...), Annotations(...)]``;
    every problem of the three is reported at once (exit 2)."""
    from trainjob.options import Annotations, Labels, Name, name_problem

    labels, problems = common.parse_pairs(label, "--label", "team=nlp")
    problem = name_problem(name) if name is not None else None
    if problem:
        problems.insert(0, problem)
    annotations, p = common.parse_pairs(annotation, "--annotation", "owner=ana")
    problems += p
    options: list[Any] = [Name(name)] if name is not None and problem is None else []
    for cls, values in ((Labels, labels), (Annotations, annotations)):
        if values:
            try:
                options.append(cls(values))
            except ValidationError as e:
                problems += e.problems
    if problems:
        raise CliExit(EXIT_USAGE, common.validation_message(ValidationError(problems, "job metadata"), FLAG_FOR_FIELD))
    return options


def build_trainer(
    *, target: str | None, args: list[str], module: str | None, nodes: int, procs_per_node: int | None, cpu: str | None,
    gpu: int | None, memory: str | None, pkg: list[str] | None, index_url: list[str] | None, env: list[str] | None,
    max_restarts: int, tracking: bool, metrics_port: int, custom_metric: list[str] | None,
    lifecycle: dict[str, Any] | None = None,
) -> TransformersTrainer:  # fmt: skip
    """Flags -> a validated ``TransformersTrainer``; every problem (flags and spec) is reported at once."""
    problems: list[Problem] = []
    env_vars, p = _env_pairs(env)
    problems += p
    customs, p = common.parse_pairs(custom_metric, "--custom-metric", "my_f1=eval_custom_f1")
    problems += p
    resources: dict[str, Any] = {}
    if cpu is not None:
        resources["cpu"] = cpu
    if gpu is not None:
        resources["gpu"] = gpu
    if memory is not None:
        resources["memory"] = memory
    kw: dict[str, Any] = {}
    if module:
        kw["module"] = module
        kw["script_args"] = ([target] if target is not None else []) + args
    elif target is None:
        problems.append(Problem("TARGET", None, "a script (train.py), a function reference (pkg.module:function) or -m MODULE"))
    elif _FUNC_REF.match(target) and not Path(target).exists():
        kw["func"] = target
        func_args, p = _func_args(args)
        problems += p
        if func_args:
            kw["func_args"] = func_args
    elif _DOTTED.match(target) and not target.endswith(".py") and not Path(target).exists():
        problems.append(Problem("TARGET", target, f"no file {target!r} here; to run a module use -m {target}, a function: {target}:NAME"))
    else:
        kw["script"] = target
        kw["script_args"] = args
    trainer_problems: list[Problem] = []
    trainer = None
    try:
        trainer = TransformersTrainer(
            num_nodes=nodes,
            num_procs_per_node=procs_per_node,
            resources_per_node=resources or None,
            packages_to_install=pkg or None,
            pip_index_urls=index_url or None,
            env=env_vars or None,
            max_restarts=max_restarts,
            enable_progression_tracking=tracking,
            metrics_port=metrics_port,
            custom_metrics=customs or None,
            **{k: v for k, v in (lifecycle or {}).items() if v is not None},
            **kw,
        )
    except ValidationError as e:
        trainer_problems = e.problems
    if "func" not in kw and "script" not in kw and "module" not in kw:
        trainer_problems = [p for p in trainer_problems if p.field != "func"]  # already said: TARGET is wrong
    problems += trainer_problems
    if problems or trainer is None:
        raise CliExit(EXIT_USAGE, common.validation_message(ValidationError(problems, "job"), FLAG_FOR_FIELD))
    return trainer


def _env_pairs(values: list[str] | None) -> tuple[dict[str, str], list[Problem]]:
    """``--env K=V`` as given, ``--env K`` with this process's value of K (so a secret need not be
    typed on a command line that others can read with ``ps``)."""
    given = [v for v in values or [] if "=" in v]
    pairs, problems = common.parse_pairs(given, "--env", "HF_HUB_OFFLINE=1")
    for name in (v for v in values or [] if "=" not in v):
        if name in os.environ:
            pairs[name] = os.environ[name]
        else:
            problems.append(Problem("--env", name, f"KEY=VALUE, or KEY alone for a variable set here ({name} is not set in this shell)"))
    return pairs, problems


def _func_args(args: list[str]) -> tuple[dict[str, Any], list[Problem]]:
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for a in args:
        key, sep, raw = a.partition("=")
        if not sep or not key.isidentifier():
            problems.append(Problem("KEY=VALUE", a, "a keyword argument for the function, e.g. max_steps=50 or name='\"x\"'"))
            continue
        try:
            values[key] = json.loads(raw)
        except ValueError:
            values[key] = raw
    return values, problems


def follow_job(job_id: str, logs: bool) -> dict[str, Any]:
    """Show the job until it ends and print a one-line outcome; Ctrl-C detaches (exit 130)."""
    console = out if out.is_terminal else err
    watcher = JobWatcher(common.client(), job_id, console, logs=logs)
    try:
        final = watcher.run()
    except KeyboardInterrupt:
        raise CliExit(EXIT_INTERRUPTED, f"\ndetached: job {job_id} keeps running (trainjob stop {job_id} to stop it)") from None
    print_outcome(final)
    return final


def print_outcome(job: dict[str, Any]) -> None:
    p = job.get("progress") or {}
    line = status_text(job["status"])
    line.append(f"  job {job['id']} after {fmt_duration(job.get('runtime_seconds'))}")
    if p.get("currentStep") is not None:
        line.append(f", step {p['currentStep']}/{p.get('totalSteps') or '?'}")
    loss = (p.get("trainMetrics") or {}).get("loss")
    if loss is not None:
        line.append(f", loss {fmt_num(loss)}")
    if job.get("message"):
        line.append(f"\n  {job['message']}")
    err.print(line)
    if job["status"] == "Failed":
        err.print(f"  details: trainjob status {job['id']}  |  trainjob logs {job['id']}")


def demo(
    steps: Annotated[int, typer.Option("--steps", help="Training steps (the tiny GPT-2 runs ~50-90 steps/s on 2 CPU cores).")] = 200,
    name: Annotated[Optional[str], typer.Option("--name", help="The job's name (its identifier). Default: demo-<6 random characters>.", show_default=False)] = None,
    logs: Annotated[bool, typer.Option("--logs", help="Also stream the job's logs.")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Train a tiny GPT-2 (built locally, nothing downloaded) as a job, with a live progress bar.

    Shows what trainjob does in ~15 seconds: submits trainjob.demo:train_tiny_gpt2, draws its
    progress (step, ETA, loss, eval loss) until it ends, then prints its result. Exit code as for
    run --follow.
    """
    trainer = TransformersTrainer(func="trainjob.demo:train_tiny_gpt2", func_args={"max_steps": steps}, env={"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
    c = common.client()
    if name is None:
        from trainjob.core.names import new_job_id

        name = f"demo-{new_job_id()[:6]}"
    try:
        job_id = c.train(trainer, name=name)
    except ValidationError as e:
        raise CliExit(EXIT_USAGE, common.validation_message(e, FLAG_FOR_FIELD)) from None
    err.print(f"submitted job {job_id}: a 2-layer GPT-2 for {steps} steps (trainjob.demo:train_tiny_gpt2)")
    final = follow_job(job_id, logs=logs)
    result = result_record(c.get_job_result(job_id))
    if output is Output.json:
        common.dump({"job": final, "result": result})
    else:
        metrics = interesting(result.get("metrics"))
        shown = {k: metrics[k] for k in ("loss", "eval_loss", "train_loss", "learning_rate") if k in metrics}
        if shown:
            out.print("final metrics: " + "  ".join(f"{k} {fmt_num(v)}" for k, v in shown.items()))
        if result.get("checkpoint"):
            out.print(f"checkpoint:    {result['checkpoint']}")
        out.print(f"\nnext: trainjob metrics {job_id} --plot curves.png  |  trainjob dashboard  |  trainjob ls")
    raise CliExit(OUTCOME_EXIT.get(final["status"], 1))
