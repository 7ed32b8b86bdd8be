"""How the CLI shows things to a person: rich tables and one-line summaries.

Every function here takes the JSON records of :mod:`trainjob.core.public_records` (the same data
``-o json`` prints) and returns a rich renderable or a string; printing is the caller's job.
"""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime, timezone
from typing import Any, Iterable

from rich.console import Group
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from trainjob.core.public_records import metric_keys
from trainjob.resources import format_bytes

STATUS_STYLE = {
    "Created": "cyan",
    "Queued": "yellow",
    "Running": "bold blue",
    "Complete": "bold green",
    "Failed": "bold red",
    "Stopped": "magenta",
}
# Logged figures that describe the run, not the model: left out of one-line summaries.
_NOISE = ("_runtime", "_samples_per_second", "_steps_per_second", "total_flos")


def print_json(data: Any, file=None) -> None:
    """Machine-readable output: indented JSON, strict (no NaN), nothing else on the stream."""
    print(json.dumps(data, indent=2, allow_nan=False), file=file or sys.stdout)


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def status_cell(job: dict[str, Any]) -> Text:
    """The status for a listing: with the queue position, or a warning when no step came for long."""
    text = status_text(job["status"] + (f" #{job['queue_position']}" if job.get("queue_position") else ""))
    if job.get("no_step_for_seconds"):
        text.append(f" (no step for {fmt_duration(job['no_step_for_seconds'])})", style="bold yellow")
    return text


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def fmt_duration(seconds: float | None) -> str:
    """``45s``, ``3m05s``, ``2h04m``, ``3d02h``; ``-`` when unknown."""
    if seconds is None or (isinstance(seconds, float) and not math.isfinite(seconds)):
        return "-"
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def fmt_age(iso_time: str | None, now: datetime | None = None) -> str:
    t = parse_time(iso_time)
    if t is None:
        return "-"
    now = now or datetime.now(timezone.utc)
    return fmt_duration((now - t).total_seconds()) + " ago"


def fmt_num(v: Any) -> str:
    """Short, readable numbers: ``0.3512``, ``5e-05``, ``1.2e+04``, ``42``."""
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if not math.isfinite(v):
        return str(v)
    return f"{v:.4g}"


def interesting(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """A metrics dict without runtime/throughput bookkeeping (what a person looks at)."""
    return {k: v for k, v in (metrics or {}).items() if not any(k.endswith(n) for n in _NOISE)}


def progress_summary(progress: dict[str, Any] | None) -> str:
    """``step 450/1000  epoch 1/3  loss 0.35  lr 5e-05  eval_loss 0.42  4.2 samples/s  ETA 3 minutes``."""
    if not progress:
        return ""
    parts = []
    step, total = progress.get("currentStep"), progress.get("totalSteps")
    if step is not None:
        parts.append(f"step {step}/{total if total else '?'}")
    if progress.get("totalEpochs"):
        parts.append(f"epoch {progress.get('currentEpoch') or 0}/{progress['totalEpochs']}")
    train = progress.get("trainMetrics") or {}
    for key, label in (("loss", "loss"), ("learning_rate", "lr")):
        if train.get(key) is not None:
            parts.append(f"{label} {fmt_num(train[key])}")
    for k, v in interesting(progress.get("evalMetrics")).items():
        if v is not None:
            parts.append(f"{k} {fmt_num(v)}")
    if train.get("throughput_samples_sec") is not None:
        parts.append(f"{fmt_num(train['throughput_samples_sec'])} samples/s")
    if progress.get("estimatedRemainingTimeSummary") and progress.get("progressPercentage") != 100:
        parts.append(f"ETA {progress['estimatedRemainingTimeSummary']}")
    return "  ".join(parts)


def progress_line(job: dict[str, Any], width: int = 30) -> Group:
    """A bar with percent and ETA, then the figures: what ``progress --watch`` redraws."""
    p = job.get("progress") or {}
    pct = p.get("progressPercentage")
    head = Table.grid(padding=(0, 1))
    head.add_row(
        Text(job["id"], style="bold"),
        status_text(job["status"] + (f" #{job['queue_position']} in queue" if job.get("queue_position") else "")),
        ProgressBar(total=100, completed=pct or 0, width=width, pulse=pct is None and job["status"] == "Running"),
        Text(f"{pct:>3d}%" if pct is not None else "  -%"),
        Text(f"ETA {fmt_duration(p.get('estimatedRemainingSeconds'))}" if p.get("estimatedRemainingSeconds") is not None and not job["is_terminal"] else ""),
    )
    summary = progress_summary(p) if p else ("waiting for the first step..." if not job["is_terminal"] else "no progress recorded")
    return Group(head, Text("  " + summary, style="dim" if not p else ""))


def jobs_table(jobs: Iterable[dict[str, Any]]) -> Table:
    t = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("NAME", "STATUS", "PROGRESS", "STEP", "LOSS", "ETA", "AGE", "RUNTIME", "LABELS"):
        t.add_column(col, no_wrap=col in ("NAME", "STATUS", "AGE"), overflow="fold")
    now = datetime.now(timezone.utc)
    for j in jobs:
        p = j.get("progress") or {}
        pct = p.get("progressPercentage")
        step = p.get("currentStep")
        t.add_row(
            j["id"],
            status_cell(j),
            f"{pct}%" if pct is not None else "-",
            f"{step}/{p.get('totalSteps') or '?'}" if step is not None else "-",
            fmt_num((p.get("trainMetrics") or {}).get("loss")),
            fmt_duration(p.get("estimatedRemainingSeconds")) if not j["is_terminal"] else "-",
            fmt_age(j["created_at"], now),
            fmt_duration(j["runtime_seconds"]),
            escape(pairs_text(j.get("labels"))),
        )
    return t


def pairs_text(pairs: dict[str, str] | None) -> str:
    """Labels or annotations as ``k=v,k2=v2`` (empty when there are none)."""
    return ",".join(f"{k}={v}" for k, v in (pairs or {}).items())


def runtimes_table(runtimes: Iterable[dict[str, Any]]) -> Table:
    t = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("NAME", "FRAMEWORK", "DEVICE", "COUNT", "IMAGE", "RESOURCES"):
        t.add_column(col, no_wrap=col == "NAME", overflow="fold")
    for r in runtimes:
        res = r.get("resources") or {}
        shown = ", ".join(f"{k} {format_bytes(v) if k == 'memory' else v}" for k, v in res.items() if v)
        t.add_row(r["name"], r["framework"], r["device"], str(r["device_count"]), r["image"], shown)
    return t


def job_detail(job: dict[str, Any], error: dict[str, Any] | None = None) -> Group:
    spec = job.get("spec") or {}
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    res = spec.get("resources") or {}
    asked = ", ".join(f"{k}={v}" for k, v in res.items() if v) or "no explicit request"
    rows: list[tuple[str, Any]] = [
        ("name", escape(job["name"])),
        ("labels", escape(pairs_text(job.get("labels"))) or None),
        ("annotations", escape(pairs_text(job.get("annotations"))) or None),
        ("status", status_cell({**job, "queue_position": None})),
        ("message", escape(job["message"]) if job.get("message") else None),
        ("queue position", job.get("queue_position")),
        ("runs", escape(job["entrypoint"])),
        ("trainer", spec.get("trainer")),
        ("backend", job["backend"]),
        ("nodes", f"{job['num_nodes']} x {job['procs_per_node']} process(es)"),
        ("resources / node", asked),
        ("packages", ", ".join(spec.get("packages_to_install") or []) or None),
        ("attempt", f"{job['attempt']} (max restarts {spec.get('max_restarts', 0)})"),
        ("created", f"{job['created_at']} ({fmt_age(job['created_at'])})"),
        ("started", job.get("started_at")),
        ("finished", job.get("finished_at")),
        ("runtime", fmt_duration(job.get("runtime_seconds"))),
        ("progress", progress_summary(job.get("progress")) or None),
        ("job folder", job.get("job_dir")),
    ]
    for k, v in rows:
        if v is not None and v != "":
            t.add_row(k, v if isinstance(v, Text) else str(v))
    for s in job.get("steps") or []:
        pids = ",".join(str(p) for p in s["pids"]) or "-"
        t.add_row(s["name"], Text.assemble(status_text(s["status"]), f"  {s['device_count']} x {s['device']}  pid {pids}"))
    parts: list[Any] = [t]
    if error:
        parts.append(error_text(error))
    return Group(*parts)


def error_text(error: dict[str, Any]) -> Text:
    where = f" on rank {error['rank']}" if error.get("rank") is not None else ""
    out = Text(f"\nerror{where}: {error.get('type', 'Error')}: {error.get('message', '')}\n", style="red")
    if error.get("hint"):
        out.append(f"hint: {error['hint']}\n", style="yellow")
    if error.get("traceback"):
        out.append(str(error["traceback"]).rstrip() + "\n", style="dim")
    return out


def events_table(events: Iterable[dict[str, Any]], created_at: str | None = None) -> Table:
    t = Table(box=None, header_style="bold", pad_edge=False)
    t.add_column("TIME", no_wrap=True)
    t.add_column("+", no_wrap=True, justify="right")
    t.add_column("REASON", no_wrap=True)
    t.add_column("MESSAGE", overflow="fold")
    start = parse_time(created_at)
    for e in events:
        at = parse_time(e["time"])
        rel = f"{(at - start).total_seconds():.1f}s" if at and start else ""
        style = "red" if e["reason"] in ("Failed", "RankFailed") else ("green" if e["reason"] == "Completed" else "")
        t.add_row(at.astimezone().strftime("%H:%M:%S") if at else "-", rel, Text(e["reason"], style=style or "bold"), escape(e["message"]))
    return t


def metrics_table(entries: list[dict[str, Any]]) -> Table:
    keys = [k for k in metric_keys(entries) if not any(k.endswith(n) for n in _NOISE) and k != "train_loss"]
    t = Table(box=None, header_style="bold", pad_edge=False)
    t.add_column("STEP", justify="right")
    t.add_column("EPOCH", justify="right")
    for k in keys:
        t.add_column(k.upper(), justify="right")
    for e in entries:
        if not any(k in e for k in keys):
            continue
        t.add_row(str(e.get("step", "-")), fmt_num(e.get("epoch")), *(fmt_num(e.get(k)) if k in e else "" for k in keys))
    return t


def result_view(result: dict[str, Any]) -> Group:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    t.add_row("job", result["job_id"])
    t.add_row("status", status_text(result["status"]))
    for key in ("checkpoint", "best_checkpoint", "output_dir", "log_dir"):
        if result.get(key):
            t.add_row(key.replace("_", " "), result[key])
    if len(result.get("checkpoints") or []) > 1:
        t.add_row("checkpoints", "\n".join(result["checkpoints"]))
    if result.get("return_value") is not None:
        t.add_row("return value", escape(json.dumps(result["return_value"], indent=None)))
    parts: list[Any] = [t]
    metrics = result.get("metrics") or {}
    if metrics:
        m = Table(box=None, header_style="bold", pad_edge=False, title="final metrics", title_justify="left", title_style="bold")
        m.add_column("METRIC")
        m.add_column("VALUE", justify="right")
        for k, v in metrics.items():
            m.add_row(k, fmt_num(v))
        parts.append(Text(""))
        parts.append(m)
    if result.get("error"):
        parts.append(error_text(result["error"]))
    return Group(*parts)
