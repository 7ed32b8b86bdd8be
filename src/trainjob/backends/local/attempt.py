"""One attempt of a local job: the nodes it launched, how they exited, and why it failed.

``Attempt`` is what the supervisor knows of one launch; ``root_cause`` reads what the attempt
left in the job folder (the ranks' error records, the node logs) and names the failure that
caused the others (``failures``); ``clear_attempt_files`` forgets a failed attempt's run state
before the next one starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from trainjob import contract
from trainjob.backends.local.failures import NodeOutcome, collect_failures, summarize
from trainjob.backends.local.hangs import Hang
from trainjob.backends.local.jobdir import JobDir

LOG_SCAN_BYTES = 64 * 1024  # torchrun's failure summary is at the end of a node log


@dataclass
class Attempt:
    """One launch of all of a job's nodes."""

    number: int
    nodes: list[subprocess.Popen] = field(default_factory=list)
    ranks: list[tuple[int, ...]] = field(default_factory=list)  # the global ranks of each node
    exit_codes: dict[int, int] = field(default_factory=dict)
    exit_times: dict[int, float] = field(default_factory=dict)
    ended: set[int] = field(default_factory=set)  # nodes the supervisor ended itself
    ending_since: float | None = None  # when it started ending them (wall clock)
    hang: Hang | None = None  # ranks the supervisor ended as hung (see ``hangs``)
    hang_error: dict[str, Any] | None = None  # the attempt's failure when the hang is one


def root_cause(job_dir: JobDir, attempt: Attempt, world: int, extra_errors: Iterable[dict[str, Any]], output_dir: str | None) -> dict[str, Any]:
    """The first failure of this attempt that was not caused by another (see ``failures``).

    ``extra_errors``: failures the supervisor saw itself (nodes ended for exceeding their memory
    limit); ``output_dir``: checked, with the job folder, for a full disk (named as the cause).
    """
    errors = []
    for f in (job_dir.run_dir / contract.ERRORS_DIR).glob("rank-*.json"):
        try:
            errors.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue
    errors.extend(extra_errors)
    logs = job_dir.attempt_logs(attempt.number)
    nodes = [
        NodeOutcome(
            node=i,
            exit_code=rc,
            time=attempt.exit_times.get(i, time.time()),
            ranks=attempt.ranks[i],
            log=read_tail(logs / f"node-{i}.log", LOG_SCAN_BYTES),
            ended_by_supervisor=i in attempt.ended,
        )
        for i, rc in sorted(attempt.exit_codes.items())
    ]
    found = collect_failures(errors, nodes, world, attempt.ending_since, rank_log_tail=lambda r: _last_lines(read_tail(logs / f"rank-{r}.log", 8192), 20))
    return summarize(found, attempt.number, disk_paths=(job_dir.root, output_dir))


def clear_attempt_files(job_dir: JobDir) -> None:
    """Forget a failed attempt's run state (its logs stay in ``logs/attempt-K/``).

    The next rank 0 may serve ``/metrics`` on another port: the endpoint file goes too (the
    caller's collector must read it again).
    """
    for sub in (contract.ERRORS_DIR, contract.PIDS_DIR, contract.DONE_DIR):
        for f in (job_dir.run_dir / sub).glob("*.json"):
            f.unlink(missing_ok=True)
    (job_dir.run_dir / contract.RESULT_FILE).unlink(missing_ok=True)
    (job_dir.run_dir / contract.ENDPOINT_FILE).unlink(missing_ok=True)


def read_tail(path: Path, nbytes: int) -> str:
    """The last ``nbytes`` of a file as text; empty if it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - nbytes))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _last_lines(text: str, n: int) -> str:
    return "\n".join(text.splitlines()[-n:])
