"""Noticing a local job whose supervisor died: the reader records it Failed, with the reason.

A status is never stuck: every reader of a job (any process: the client, the CLI, the dashboard)
checks that a non-terminal job's supervisor is alive, and if it is not, ends what is left of the
job and records the failure through ``core.state.finish`` (only one reader's record counts).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from trainjob import contract
from trainjob.backends.local import procs
from trainjob.backends.local.jobdir import JobDir
from trainjob.core import state as job_state
from trainjob.store import JobRow, Store
from trainjob.types import JobStatus

SUPERVISOR_START_GRACE = 60.0  # seconds a new job may wait for its supervisor to record itself
LOG_TAIL_LINES = 20  # of the supervisor's log, kept as the failure's traceback


def reconcile(store: Store, home: Path, row: JobRow) -> JobRow:
    """The job's row; a non-terminal job whose supervisor is gone is first recorded Failed, its leftover processes ended.

    The supervisor is identified by pid *and* start time, so a reused pid does not keep a dead job
    "Running". A job whose supervisor has not recorded itself yet (``train()`` inserts the row a
    moment before it spawns the supervisor) gets ``SUPERVISOR_START_GRACE`` seconds before it
    counts as lost. Idempotent: the outcome is recorded once.

    A job whose supervisor runs on another host (TRAINJOB_HOME on a shared disk) is left alone: a
    pid cannot be checked from here, so only a reader on that host can judge it.
    """
    if row.status.is_terminal or elsewhere(row):
        return row
    if row.supervisor_pid is None and time.time() - row.created_at < SUPERVISOR_START_GRACE:
        return row
    if procs.is_alive(row.supervisor_pid, row.supervisor_start):
        return row
    fresh = store.get_job(row.id)  # it may have finished between our two reads
    if fresh is None or fresh.status.is_terminal or elsewhere(fresh):
        return fresh or row
    if fresh.supervisor_pid != row.supervisor_pid and procs.is_alive(fresh.supervisor_pid, fresh.supervisor_start):
        return fresh
    jobdir = JobDir.for_job(home, row.id)
    ended = end_orphans(jobdir)
    if row.supervisor_pid is None:
        msg = f"the job's supervisor never started (submitted {time.time() - row.created_at:.0f}s ago)"
    else:
        msg = f"the job's supervisor (pid {row.supervisor_pid}) died without recording an outcome"
    msg += f"; {ended} leftover process{'es' if ended != 1 else ''} ended" if ended else "; no process of the job was left"
    error = {"type": "SupervisorLost", "message": msg, "rank": None, "traceback": _tail(jobdir.supervisor_log, LOG_TAIL_LINES)}
    job_state.finish(store, row.id, JobStatus.FAILED, msg, error, {})
    return store.get_job(row.id) or row


def end_orphans(jobdir: JobDir) -> int:
    """End the launchers and ranks recorded in ``run/pids/`` (identity checked); how many were alive."""
    alive = {p.pid: p for p in procs.recorded_processes(jobdir.run_dir / contract.PIDS_DIR)}
    if alive:
        # SIGKILL: with no supervisor there is nobody to collect a graceful stop.
        procs.kill_tree(list(alive.values()), grace=2.0, sig=signal.SIGKILL)
    return len(alive)


def elsewhere(row: JobRow) -> bool:
    """True if the job's supervisor was recorded on another host (rows from before hosts were recorded count as local)."""
    return row.supervisor_host is not None and row.supervisor_host != procs.this_host()


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
