"""A live progress bar for a waiting client: step, ETA, loss; terminal or notebook (rich handles both)."""

from __future__ import annotations

from typing import Any

from trainjob.types import TrainJob


class ProgressDisplay:
    """Context manager that renders a job's progress each time ``update`` is called."""

    def __init__(self, job_id: str) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.job_id = job_id
        self._progress = Progress(
            TextColumn("[bold]{task.fields[job]}[/] {task.fields[status]}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("step {task.completed:.0f}/{task.fields[total_txt]}"),
            TextColumn("{task.fields[extra]}"),
            TimeElapsedColumn(),
            transient=False,
        )
        self._task = self._progress.add_task("train", total=None, job=job_id, status="", total_txt="?", extra="")

    def __enter__(self) -> "ProgressDisplay":
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, job: TrainJob, progress: dict[str, Any] | None) -> None:
        fields: dict[str, Any] = {"status": job.status.value}
        if job.queue_position:
            fields["status"] += f" (#{job.queue_position} in queue)"
        if progress:
            total = progress.get("totalSteps")
            fields["total_txt"] = total if total else "?"
            fields["extra"] = describe(progress)
            self._progress.update(self._task, completed=progress.get("currentStep") or 0, total=total, **fields)
        else:
            self._progress.update(self._task, **fields)


def describe(progress: dict[str, Any]) -> str:
    """One line: epoch, loss, eval loss, ETA (what a user glances at)."""
    parts = []
    if progress.get("totalEpochs"):
        parts.append(f"epoch {progress.get('currentEpoch') or 0}/{progress['totalEpochs']}")
    train = progress.get("trainMetrics") or {}
    if train.get("loss") is not None:
        parts.append(f"loss {train['loss']:.4g}")
    evals = progress.get("evalMetrics") or {}
    if evals.get("eval_loss") is not None:
        parts.append(f"eval_loss {evals['eval_loss']:.4g}")
    if progress.get("estimatedRemainingTimeSummary"):
        parts.append(f"ETA {progress['estimatedRemainingTimeSummary']}")
    return "  ".join(parts)
