"""The local supervisor's initializer steps: each one process, before resources and ranks.

Each step of the spec's ``initializers`` (``trainjob.initializers.plan``) runs
``python -m trainjob.runtime.initialize`` with the job's Python and environment, its output in
``logs/<step>.log`` (``get_job_logs(name, step="model-initializer")``). Its status is kept in the
job row's ``extra["initializers"]`` (``TrainJob.steps``) and told as events
``InitializerStarted``/``InitializerCompleted``/``InitializerFailed``. A failed step fails the job
with the step's last log line (the hub's error) and no rank starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from trainjob.backends.local.jobdir import JobDir
from trainjob.core.spec import JobSpec
from trainjob.errors import BackendError
from trainjob.store import Store

POLL = 0.2  # seconds between checks of a running step (for a stop request)


class InitializerFailed(BackendError):
    """An initializer step could not put its model or dataset in place."""


def log_file(jobdir: JobDir, step: str) -> Path:
    return jobdir.logs_dir / f"{step}.log"


def run_initializers(
    store: Store, job_id: str, jobdir: JobDir, spec: JobSpec, python: str, extra_env: dict[str, str], should_abort: Callable[[], bool]
) -> None:
    """Run every initializer step in order; raises ``InitializerFailed`` for the first that fails.

    A stop request (``should_abort``) ends a running step; the supervisor then records the stop.
    """
    steps = spec.initializers
    if not steps:
        return
    # The ranks' environment without the rank contract: the submitter's, the job's env, the
    # package environment's, and the submit folder on PYTHONPATH.
    env = {**os.environ, **spec.env, **extra_env}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), spec.submit_dir or "") if p)
    statuses = {s["step"]: "Created" for s in steps}
    _record(store, job_id, statuses)
    for step in steps:
        name = step["step"]
        if should_abort():
            return
        statuses[name] = "Running"
        _record(store, job_id, statuses)
        where = step.get("repo_id") or step.get("path")
        store.add_event(job_id, "InitializerStarted", f"{name}: {where} -> {step['target']}", {"step": name})
        started = time.monotonic()
        rc = _run_step(step, jobdir, python, env, should_abort)
        if rc == 0:
            statuses[name] = "Complete"
            _record(store, job_id, statuses)
            store.add_event(job_id, "InitializerCompleted", f"{name}: {step['target']} ready in {time.monotonic() - started:.1f}s", {"step": name})
            continue
        statuses[name] = "Failed"
        _record(store, job_id, statuses)
        last = _last_line(log_file(jobdir, name)).removeprefix(f"[{name}] failed: ") or f"exit code {rc}"
        store.add_event(job_id, "InitializerFailed", f"{name}: {last}", {"step": name})
        raise InitializerFailed(f"{name} failed ({where}): {last}; its log: trainjob logs {job_id} --step {name}")


def _run_step(step: dict[str, Any], jobdir: JobDir, python: str, env: dict[str, str], should_abort: Callable[[], bool]) -> int:
    with open(log_file(jobdir, step["step"]), "ab") as log:
        proc = subprocess.Popen(
            [python, "-m", "trainjob.runtime.initialize", json.dumps(step), str(jobdir.workdir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=jobdir.workdir, env=env,
        )  # fmt: skip
        while True:
            try:
                return proc.wait(timeout=POLL)
            except subprocess.TimeoutExpired:
                if should_abort():
                    proc.kill()
                    return proc.wait()


def _record(store: Store, job_id: str, statuses: dict[str, str]) -> None:
    row = store.get_job(job_id)
    if row is not None:
        store.update_job(job_id, extra={**(row.extra or {}), "initializers": dict(statuses)})


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""
