"""Tell the launcher that this rank's work is done, before the process tries to exit.

A rank can hang after its work is finished (torch's gloo process group deadlocks in its
destructor now and then, a user thread that never ends keeps the interpreter alive). The local
supervisor then needs to know whether the work was done to decide between ``Complete`` with a
warning and ``Failed``. Each rank records its milestones in ``run/done/rank-N.json``:

- ``train_end``: a ``Trainer`` on this rank reached ``on_train_end`` (``completed`` says whether it
  ran to ``max_steps``); written by the progress callback, so only when tracking is on;
- ``returned``: the job's function (or script, or module) returned without an exception;
  written by ``bootstrap`` on every rank.

Runs in rank processes only. Writing is best effort: a missing marker only makes the supervisor
more careful, never less.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from trainjob import contract


def mark(stage: str, **data: Any) -> None:
    """Record ``stage`` for this rank (merged with what earlier calls recorded)."""
    run_dir = os.environ.get(contract.RUN_DIR)
    if not run_dir:
        return  # not launched by the local supervisor (e.g. a Ray worker): nobody reads it
    rank = int(os.environ.get("RANK", "0") or 0)
    path = Path(run_dir) / contract.DONE_DIR / f"rank-{rank}.json"
    try:
        record = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        record = {}
    record[stage] = {"time": time.time(), **data}
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        contract.write_json_atomic(path, record)
    except OSError:
        pass
