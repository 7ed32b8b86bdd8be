"""Read and control existing jobs: ls, status, progress, logs, events, metrics, result, wait, stop, delete."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from trainjob.cli import common
from trainjob.cli.common import EXIT_FAILED, EXIT_USAGE, OUTCOME_EXIT, CliExit, JobIdArg, Output, OutputOpt, err, out
from trainjob.core.public_records import event_record, job_record, result_record, runtime_record
from trainjob.cli.render import events_table, job_detail, jobs_table, metrics_table, progress_line, result_view, runtimes_table


LS_DEFAULT_LIMIT = 50


def ls(
    status: Annotated[Optional[list[str]], typer.Option("--status", "-s", help="Only jobs in this status (repeatable or comma-separated): Created, Queued, Running, Complete, Failed, Stopped.", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only job ids, one per line.")] = False,
    label: Annotated[Optional[list[str]], typer.Option("--label", "-l", help="Only jobs with this label KEY=VALUE (repeatable: every one must match).", show_default=False)] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Only jobs whose name matches this glob pattern (e.g. 'sweep-*'), or this exact name.", show_default=False)] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Show the newest N jobs.", min=0)] = LS_DEFAULT_LIMIT,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Show every job, not only the newest.")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """List the newest jobs (50 unless --limit N or --all), oldest of them first, with status, progress, ETA, age and labels."""
    c = common.client()
    labels, problems = common.parse_pairs(label, "--label", "team=nlp")
    if problems:
        raise CliExit(EXIT_USAGE, "error: " + "; ".join(str(p) for p in problems))
    filters = {"status": common.status_filter(status), "labels": labels or None, "name": name}
    shown = None if all_ else limit
    jobs = c.list_jobs(**filters, limit=shown, newest_first=True)
    jobs.reverse()  # the newest last, next to the prompt
    more = 0
    if shown is not None and len(jobs) == shown:
        more = c.count_jobs(**filters) - shown
    if quiet:
        for j in jobs:
            out.print(j.id)
    elif output is Output.json:
        common.dump([job_record(j, c.get_job_progress(j.id)) for j in jobs])
    elif not jobs:
        err.print("no jobs" + (" with that status, label or name" if status or label or name else "; start one with: trainjob demo"))
    else:
        out.print(jobs_table([job_record(j, c.get_job_progress(j.id)) for j in jobs]))
    if more > 0 and output is not Output.json:
        err.print(f"{more} older job{'s' if more != 1 else ''} not shown (--all, or --limit N)")


def status(job: JobIdArg, output: OutputOpt = Output.table) -> None:
    """Show one job: status and why, what it runs, nodes and processes, times, progress, error."""
    c = common.client()
    job_id = common.resolve_job_id(job)
    record = job_record(c.get_job(job_id), c.get_job_progress(job_id))
    if output is Output.json:
        common.dump(record)
        return
    error = c.get_job_result(job_id).error if record["status"] == "Failed" else None
    out.print(job_detail(record, error))


def progress(
    job: JobIdArg,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Redraw a live progress bar (ETA, step, epoch, loss, eval metrics) until the job ends; exit code = its outcome.")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Show a job's live progress: percent, step, epoch, ETA, train and eval metrics.

    With -o json prints the progress JSON (the schema served at rank 0's /metrics), or null
    before the first step or when tracking is off.
    """
    from trainjob.cli.run import follow_job

    c = common.client()
    job_id = common.resolve_job_id(job)
    if watch:
        final = follow_job(job_id, logs=False)
        if output is Output.json:
            common.dump(final.get("progress"))
        raise CliExit(OUTCOME_EXIT.get(final["status"], EXIT_FAILED))
    if output is Output.json:
        common.dump(c.get_job_progress(job_id))
        return
    out.print(progress_line(job_record(c.get_job(job_id), c.get_job_progress(job_id))))


def logs(
    job: JobIdArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming new lines until the job ends.")] = False,
    rank: Annotated[Optional[int], typer.Option("--rank", "-r", help="Only this rank's output (global rank).", show_default=False)] = None,
    node: Annotated[int, typer.Option("--node", "-n", help="This node's output: its ranks (prefixed by rank when there are several) and its launcher.")] = 0,
    supervisor: Annotated[bool, typer.Option("--supervisor", help="The supervisor's log instead (environment setup, launches, restarts).")] = False,
    tail: Annotated[Optional[int], typer.Option("--tail", help="Only the last N lines (before following).", show_default=False)] = None,
    step: Annotated[Optional[str], typer.Option("--step", help="A step by its name (Kubeflow's): node-K, rank-R, supervisor, model-initializer, dataset-initializer.", show_default=False)] = None,
) -> None:
    """Print a job's logs (every attempt, oldest first): node 0 by default."""
    c = common.client()
    job_id = common.resolve_job_id(job)
    if step is None:
        step = "supervisor" if supervisor else (f"rank-{rank}" if rank is not None else f"node-{node}")
    lines = c.get_job_logs(job_id, step=step, follow=follow)
    if tail is not None and not follow:
        from collections import deque

        lines = iter(deque(lines, maxlen=max(0, tail)))
    try:
        for line in lines:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        raise CliExit(130) from None
    except BrokenPipeError:  # `trainjob logs ID | head`
        raise CliExit(0) from None


def events(job: JobIdArg, output: OutputOpt = Output.table) -> None:
    """A job's timeline: created, started, evaluations, checkpoints, restarts, exits, outcome."""
    c = common.client()
    job_id = common.resolve_job_id(job)
    records = [event_record(e) for e in c.get_job_events(job_id)]
    if output is Output.json:
        common.dump(records)
    else:
        out.print(events_table(records, job_record(c.get_job(job_id))["created_at"]))


def metrics(
    job: JobIdArg,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write the curves (loss, eval loss, learning rate, other eval metrics) to this PNG file.", show_default=False, dir_okay=False)] = None,
    tail: Annotated[Optional[int], typer.Option("--tail", "--last", "-n", help="Only the last N entries (read alone: cheap on a history of millions).", show_default=False, min=0)] = None,
    output: OutputOpt = Output.table,
) -> None:
    """The entries the job's Trainers logged (loss, learning rate, eval metrics...), by step: every one, or the last N."""
    c = common.client()
    job_id = common.resolve_job_id(job)
    if tail is None:
        entries = c.get_job_metrics(job_id)
    else:
        entries = c.get_job_metrics(job_id, after=max(0, c.count_job_metrics(job_id) - tail)) if tail else []
    if plot is not None:
        from trainjob.plot import NoMetricsError, plot_metrics

        try:
            written = plot_metrics(entries, plot, title=_title(c.get_job(job_id)))
        except NoMetricsError as e:
            raise CliExit(EXIT_FAILED, f"error: {e}") from None
        except ImportError as e:
            raise CliExit(EXIT_FAILED, f"error: --plot needs matplotlib: pip install 'trainjob[dashboard]' ({e})") from None
        err.print(f"wrote {written}")
    if output is Output.json:
        from trainjob.core.public_records import jsonable

        common.dump(jsonable(entries))
    elif plot is None:
        if not entries:
            from trainjob.core.spec import JobSpec

            err.print("no metrics logged yet" + ("" if JobSpec.from_dict(c.get_job(job_id).spec).tracking.enabled else " (progress tracking is off for this job)"))
        else:
            out.print(metrics_table(entries))


def result(job: JobIdArg, output: OutputOpt = Output.table) -> None:
    """What a job produced: final metrics, checkpoints, output and log folders, return value, error."""
    c = common.client()
    job_id = common.resolve_job_id(job)
    record = result_record(c.get_job_result(job_id))
    if output is Output.json:
        common.dump(record)
    else:
        if record["status"] not in OUTCOME_EXIT:
            err.print(f"job {job_id} is {record['status']}: the result is not final yet")
        out.print(result_view(record))


def wait(
    job: JobIdArg,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Give up after this many seconds (exit 1); default: wait forever.", show_default=False)] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Wait until a job ends, quietly; exit 0 Complete, 1 Failed (or timeout), 3 Stopped."""
    import time

    c = common.client()
    job_id = common.resolve_job_id(job)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            j = c.get_job(job_id)
            if j.status.is_terminal:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise CliExit(EXIT_FAILED, f"job {job_id} is still {j.status.value} after {timeout:g}s")
            time.sleep(0.5)
    except KeyboardInterrupt:
        raise CliExit(130) from None
    record = job_record(j, c.get_job_progress(job_id))
    if output is Output.json:
        common.dump(record)
    else:
        out.print(f"{job_id} {record['status']}")
    raise CliExit(OUTCOME_EXIT.get(record["status"], EXIT_FAILED))


def stop(
    jobs: Annotated[list[str], typer.Argument(help="Job id(s) (unique prefixes or names).", show_default=False)],
    wait_: Annotated[bool, typer.Option("--wait", help="Wait until each job has saved its checkpoint and ended.")] = False,
) -> None:
    """Stop jobs gracefully: every rank saves a checkpoint at the same step, then the job is Stopped.

    A stopped job can be continued later with: trainjob run --resume ID ...
    """
    c = common.client()
    ids = [common.resolve_job_id(j) for j in jobs]
    for job_id in ids:
        was = c.get_job(job_id).status
        c.stop_job(job_id)
        err.print(f"{job_id}: already {was.value}, nothing to stop" if was.is_terminal else f"{job_id}: stop requested")
    if wait_:
        for job_id in ids:
            final = c.wait_for_job_status(job_id, {"Complete", "Failed", "Stopped"}, timeout=None, polling_interval=0.5)
            out.print(f"{job_id} {final.status.value}")


def delete(
    jobs: Annotated[list[str], typer.Argument(help="Job id(s) (unique prefixes or names).", show_default=False)],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (needed when not on a terminal).")] = False,
) -> None:
    """Delete jobs: end their processes if they run, remove their records, logs and checkpoints."""
    c = common.client()
    found = [c.get_job(common.resolve_job_id(j)) for j in jobs]
    if not yes:
        if not sys.stdin.isatty():
            raise CliExit(EXIT_USAGE, "error: delete removes the jobs' checkpoints and logs; pass --yes to confirm (stdin is not a terminal)")
        listing = ", ".join(f"{j.id} ({j.status.value})" for j in found)
        if not typer.confirm(f"Delete {listing} with their files?", default=False, err=True):
            raise CliExit(EXIT_FAILED, "nothing deleted")
    for j in found:
        c.delete_job(j.id)
        err.print(f"{j.id}: deleted")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` (or plain seconds) -> seconds; ValueError otherwise."""
    t = text.strip().lower()
    unit = _UNITS.get(t[-1:]) if t else None
    number = t[:-1] if unit else t
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"--older-than {text!r}: give a number and a unit, e.g. 30d, 12h, 90m, 45s, 2w") from None
    if value < 0 or value != value:
        raise ValueError(f"--older-than {text!r}: an age cannot be negative")
    return value * (unit or 1)


def prune(
    older_than: Annotated[Optional[str], typer.Option("--older-than", help="Only jobs that ended longer ago than this: 30d, 12h, 90m, 45s, 2w.", show_default=False)] = None,
    keep_last: Annotated[Optional[int], typer.Option("--keep-last", help="Keep the newest N ended jobs (of --status, if given), whatever their age.", show_default=False, min=0)] = None,
    status: Annotated[Optional[list[str]], typer.Option("--status", "-s", help="Only jobs in this ended status (repeatable or comma-separated): Complete, Failed, Stopped.", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (needed when not on a terminal).")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Remove ended jobs (records, metrics history, logs and checkpoints), keeping the store small.

    A job that has not ended (Created, Queued, Running) is never removed. Give --older-than,
    --keep-last or both: e.g. `trainjob prune --older-than 30d --keep-last 100`. Reports the space
    freed; the store gives deleted pages back to the disk (incremental vacuum).
    """
    from trainjob.resources import format_bytes

    if older_than is None and keep_last is None:
        raise CliExit(EXIT_USAGE, "error: give --older-than AGE, --keep-last N or both (prune never removes every job by default)")
    try:
        age = parse_age(older_than) if older_than is not None else None
    except ValueError as e:
        raise CliExit(EXIT_USAGE, f"error: {e}") from None
    c = common.client()
    plan = c.prune_jobs(older_than=age, keep_last=keep_last, status=common.status_filter(status), dry_run=True)
    if not plan.names:
        if output is Output.json:
            common.dump({"pruned": [], "files_bytes": 0, "store_bytes_before": None, "store_bytes_after": None})
        else:
            err.print("nothing to prune")
        return
    if dry_run:
        if output is Output.json:
            common.dump({"pruned": plan.names, "files_bytes": plan.files_bytes, "dry_run": True})
        else:
            for name in plan.names:
                out.print(name)
            err.print(f"would remove {len(plan.names)} job(s), {format_bytes(plan.files_bytes)} of job folders (dry run: nothing removed)")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise CliExit(EXIT_USAGE, f"error: prune removes {len(plan.names)} job(s) with their checkpoints and logs; pass --yes to confirm (stdin is not a terminal)")
        if not typer.confirm(f"Remove {len(plan.names)} ended job(s) ({format_bytes(plan.files_bytes)} of files)?", default=False, err=True):
            raise CliExit(EXIT_FAILED, "nothing removed")
    done = c.prune_jobs(older_than=age, keep_last=keep_last, status=common.status_filter(status))
    before, after = done.store_bytes or (None, None)
    if output is Output.json:
        common.dump({"pruned": done.names, "files_bytes": done.files_bytes, "store_bytes_before": before, "store_bytes_after": after})
        return
    store = f"; store {format_bytes(before)} -> {format_bytes(after)}" if before is not None else ""
    err.print(f"removed {len(done.names)} job(s): {format_bytes(done.files_bytes)} of job folders freed{store}")


def _title(job) -> str:
    return job.id if job.name == job.id else f"{job.name} ({job.id})"


def runtimes(
    packages: Annotated[bool, typer.Option("--packages", help="Also list each runtime's Python packages (name==version).")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """List the training runtimes (Kubeflow's list_runtimes): framework, device and what the backend has."""
    c = common.client()
    records = [runtime_record(rt, c.get_runtime_packages(rt) if packages else None) for rt in c.list_runtimes()]
    if output is Output.json:
        common.dump(records)
        return
    out.print(runtimes_table(records))
    for r in records:
        if r.get("packages") is not None:
            out.print(f"\n{r['name']} packages:")
            for line in r["packages"]:
                out.print(f"  {line}")
