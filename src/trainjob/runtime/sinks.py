"""Where rank 0 sends what it reports: progress, logged entries, events.

The default ``FileSink`` writes the run folder that the local supervisor collects. Other backends
register their own sink (e.g. one that talks to a Ray actor) with ``set_current`` before user code
runs; the callback does not know which one it has.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Protocol

from trainjob import contract


class Sink(Protocol):
    def progress(self, progress: dict[str, Any]) -> None: ...
    def metric(self, entry: dict[str, Any]) -> None: ...
    def event(self, event: dict[str, Any]) -> None: ...


class FileSink:
    """``progress.json`` (replaced atomically), ``metrics.jsonl`` and ``events.jsonl`` (appended)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)

    def progress(self, progress: dict[str, Any]) -> None:
        try:
            contract.write_json_atomic(self.run_dir / contract.PROGRESS_FILE, progress)
        except OSError:
            pass  # the run folder vanished (job deleted): keep training, nothing to report to

    def metric(self, entry: dict[str, Any]) -> None:
        self._append(contract.METRICS_FILE, entry)

    def event(self, event: dict[str, Any]) -> None:
        self._append(contract.EVENTS_FILE, event)

    def _append(self, name: str, record: dict[str, Any]) -> None:
        line = dumps_line(record)
        try:
            # One write() of one line with O_APPEND: a reader never sees half a line followed by another.
            fd = os.open(self.run_dir / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError:
            pass


def dumps_line(record: dict[str, Any]) -> str:
    """One JSON line; NaN/inf anywhere in it become null (JSON has no NaN)."""
    try:
        return json.dumps(record, default=str, allow_nan=False) + "\n"
    except ValueError:
        return json.dumps(_denan(record), default=str) + "\n"


def _denan(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _denan(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_denan(x) for x in v]
    return v


_current: Sink | None = None


def set_current(sink: Sink) -> None:
    global _current
    _current = sink


def current() -> Sink:
    """The sink set for this process, else a ``FileSink`` on ``$TRAINJOB_RUN_DIR``."""
    global _current
    if _current is None:
        _current = FileSink(os.environ.get(contract.RUN_DIR) or ".")
    return _current
