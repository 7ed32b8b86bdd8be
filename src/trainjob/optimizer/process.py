"""The optimizer process seen from outside: start it detached, tell whether it still runs, wait for it, end it.

One optimizer process (``optimizer.loop``) drives each optimization, recorded in the study as
``loop``: pid, start time and host (a pid means nothing on another host, and alone it can be
reused). A reader that finds a running optimization whose process is gone records it ``Failed``,
saying how to continue it (``reconcile``), as a job's reader does for a lost supervisor.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from trainjob import contract
from trainjob.optimizer import state
from trainjob.optimizer.types import OptimizationStatus

START_GRACE = 60.0  # seconds a new optimization may wait for its optimizer process to record itself


def start(home: Path, storage: Any, name: str, sid: int, files: state.Files) -> None:
    """Start the optimizer process in its own session and record it at once (no window without an owner)."""
    from trainjob.backends.local import procs

    env = dict(os.environ)
    env[contract.HOME] = str(home)
    argv = [sys.executable, "-m", "trainjob.optimizer.loop", name, str(home)]
    # cwd stays the caller's: trials record it as their submit folder
    pid, started = procs.start_detached(argv, log=files.log, env=env)
    storage.set_study_user_attr(sid, "loop", {"pid": pid, "start": started, "host": procs.this_host()})


def reconcile(home: Path, storage: Any, name: str, sid: int, attrs: dict[str, Any]) -> OptimizationStatus:
    """The recorded status; one whose optimizer process is gone is recorded Failed, saying how to resume."""
    from trainjob.backends.local import procs

    status = OptimizationStatus(attrs.get("status", OptimizationStatus.CREATED.value))
    if status.is_terminal:
        return status
    loop = attrs.get("loop") or {}
    if loop.get("host") not in (None, procs.this_host()) or procs.is_alive(loop.get("pid"), loop.get("start")):
        return status
    if not loop.get("pid") and time.time() - attrs[state.SPEC_ATTR]["created_at"] < START_GRACE:
        return status
    fresh = storage.get_study_user_attrs(sid)  # it may have finished between the two reads
    if OptimizationStatus(fresh.get("status", "Created")).is_terminal:
        return OptimizationStatus(fresh["status"])
    msg = f"its optimizer process (pid {loop.get('pid')}) ended before the optimization did; continue it with optimize(..., resume={name!r}) or `trainjob optimize --resume {name}`"
    storage.set_study_user_attr(sid, "status", OptimizationStatus.FAILED.value)
    storage.set_study_user_attr(sid, "message", msg)
    state.add_event(state.Files.of(home, name), "OptimizerLost", msg)
    return OptimizationStatus.FAILED


def kill(attrs: dict[str, Any]) -> None:
    """SIGKILL the optimizer process (and anything it started that is still its child), if it runs here."""
    from trainjob.backends.local import procs

    loop = attrs.get("loop") or {}
    p = procs.process(loop.get("pid"), loop.get("start")) if loop.get("host") in (None, procs.this_host()) else None
    if p is not None:
        procs.kill_tree([p], grace=2.0, sig=signal.SIGKILL)


def wait(attrs: dict[str, Any], timeout: float) -> None:
    """Return when the optimizer process exits (it does right after recording the end), at the
    latest after ``timeout`` seconds; a process on another host is not watched: a plain sleep."""
    from trainjob.backends.local import procs

    loop = attrs.get("loop") or {}
    if loop.get("pid") and loop.get("host") in (None, procs.this_host()):
        procs.wait_any_exit([(loop["pid"], loop.get("start"))], timeout)
    else:
        time.sleep(timeout)
