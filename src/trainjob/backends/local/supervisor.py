"""The detached process that owns one local job: ``python -m trainjob.backends.local.supervisor ID``.

It outlives the client that started it. In order: prepare the job's package environment, wait
for resources, launch the ranks, collect what they report into the store, restart them after a
failure (up to ``max_restarts``, resuming from the last complete checkpoint), honour stop
requests, and record the outcome. Every exit path records a terminal status and releases what it
took; if this process itself is killed, the next reader notices (see ``backend.reconcile``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainjob import contract
from trainjob.backends.local import procs
from trainjob.backends.local.collector import COLLECT_INTERVAL, Collector
from trainjob.backends.local.jobdir import JobDir
from trainjob.backends.local.launcher import plan_launch, free_port
from trainjob.checkpoints import latest_complete, list_checkpoints
from trainjob.store import Store
from trainjob.types import JobStatus

FAILURE_GRACE = 3.0  # seconds the other nodes get to exit on their own after one failed
STOP_GRACE = 300.0  # seconds ranks get to save a checkpoint and end after a stop request
_TORCHRUN_FAILURE = re.compile(r"rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)


@dataclass
class Attempt:
    number: int
    nodes: list[subprocess.Popen] = field(default_factory=list)
    exit_codes: dict[int, int] = field(default_factory=dict)


class Supervisor:
    def __init__(self, job_id: str, home: Path) -> None:
        self.job_id = job_id
        self.home = home
        self.store = Store(home / "trainjob.db")
        self.dir = JobDir.for_job(home, job_id)
        self.spec = self.dir.read_spec()
        self.collector = Collector(self.store, job_id, self.dir.run_dir)
        self.stop_requested = False
        self.python = sys.executable
        self.extra_env: dict[str, str] = {}

    # ---- lifecycle ----------------------------------------------------------------------
    def run(self) -> int:
        procs.become_subreaper()
        signal.signal(signal.SIGTERM, self._on_sigterm)
        job = self.store.get_job(self.job_id)
        if job is None or job.status.is_terminal:
            return 0  # deleted or stopped before we started
        self.store.update_job(self.job_id, supervisor_pid=os.getpid(), supervisor_start=procs.start_time(os.getpid()))
        status, message, error = JobStatus.FAILED, None, None
        release = None
        try:
            self._prepare_environment()
            release = self._acquire_resources()
            if self._stop_file_present():
                return self._finish(JobStatus.STOPPED, "stopped before it started", None)
            status, message, error = self._run_attempts()
        except Exception as e:  # noqa: BLE001 - anything here must still end the job with a reason
            import traceback

            error = {"type": type(e).__name__, "message": str(e), "traceback": traceback.format_exc(), "rank": None}
            status, message = JobStatus.FAILED, f"supervisor error: {type(e).__name__}: {e}"
            print(traceback.format_exc(), file=sys.stderr, flush=True)
        finally:
            if release is not None:
                release()
        return self._finish(status, message, error)

    def _prepare_environment(self) -> None:
        """Build (or reuse) the job's package environment. See ``envs``."""
        from trainjob.backends.local import envs

        prepared = envs.prepare_for_job(self.spec, self.store, self.job_id, self.dir)
        if prepared is not None:
            self.python, self.extra_env = prepared.python, prepared.env

    def _acquire_resources(self):
        """Wait in the local scheduler until the job's CPUs/GPUs/memory are free. Returns a release callable."""
        from trainjob.backends.local import scheduler

        grant = scheduler.acquire(self.store, self.job_id, self.spec, should_abort=self._stop_file_present)
        self.extra_env.update(grant.env)
        return grant.release

    def _run_attempts(self) -> tuple[JobStatus, str | None, dict | None]:
        max_restarts = int(self.spec.get("max_restarts") or 0)
        attempt_no = int(self.spec.get("first_attempt") or 0)
        resume = bool(self.spec.get("resume_from"))
        first_error = None
        while True:
            attempt = self._launch(attempt_no, resume=resume or attempt_no > 0)
            ok = self._monitor(attempt)
            self.collector.collect(attempt.number)
            if self.stop_requested or self._stop_file_present():
                return JobStatus.STOPPED, "stopped on request", None
            if ok:
                return JobStatus.COMPLETE, None, None
            error = self._root_cause(attempt)
            first_error = first_error or error
            self.store.add_event(self.job_id, "AttemptFailed", _describe_error(error, attempt.number), {"attempt": attempt.number, "error": error})
            if attempt_no - int(self.spec.get("first_attempt") or 0) >= max_restarts:
                msg = _describe_error(first_error, None)
                if max_restarts:
                    msg += f" (after {max_restarts} restart{'s' if max_restarts != 1 else ''})"
                return JobStatus.FAILED, msg, first_error
            attempt_no += 1
            ckpt = latest_complete(self._output_dir())
            self.store.add_event(
                self.job_id,
                "Restarting",
                f"restart {attempt_no}/{max_restarts}" + (f", resuming from {ckpt.name}" if ckpt else ", no checkpoint yet: from the start"),
                {"attempt": attempt_no, "checkpoint": str(ckpt) if ckpt else None},
            )
            self._clear_attempt_files()

    def _launch(self, number: int, resume: bool) -> Attempt:
        log_dir = self.dir.attempt_logs(number)
        log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        plans = plan_launch(
            self.spec,
            job_id=self.job_id,
            job_dir=self.dir.root,
            attempt=number,
            base_env=self.spec.get("base_env") or os.environ,
            python=self.python,
            master_port=free_port(),
            metrics_host=self.spec.get("metrics_host") or "127.0.0.1",
            extra_env=self.extra_env,
            resume=resume,
        )
        attempt = Attempt(number)
        for plan in plans:
            with open(plan.log_file, "ab") as log:
                attempt.nodes.append(
                    subprocess.Popen(plan.argv, env=plan.env, cwd=plan.cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                )
        steps = [
            {"name": f"node-{p.node_rank}", "status": "Running", "pid": n.pid, "device": "gpu" if self.spec["resources"].get("gpu") else "cpu", "device_count": int(self.spec["procs_per_node"])}
            for p, n in zip(plans, attempt.nodes)
        ]
        self.store.transition(self.job_id, JobStatus.RUNNING, attempt=number, steps=steps, message=None, queue_position=None)
        world = int(self.spec["num_nodes"]) * int(self.spec["procs_per_node"])
        self.store.add_event(
            self.job_id,
            "Started",
            f"attempt {number}: {world} rank{'s' if world != 1 else ''} on {len(plans)} node{'s' if len(plans) != 1 else ''}" + (" (resuming)" if resume else ""),
            {"attempt": number, "world_size": world, "pids": [n.pid for n in attempt.nodes], "resume": resume},
        )
        return attempt

    def _monitor(self, attempt: Attempt) -> bool:
        """Collect until every node exits. True when all exited 0."""
        failed_at: float | None = None
        stop_deadline: float | None = None
        while len(attempt.exit_codes) < len(attempt.nodes):
            time.sleep(COLLECT_INTERVAL)
            self.collector.collect(attempt.number)
            for i, node in enumerate(attempt.nodes):
                if i in attempt.exit_codes:
                    continue
                rc = node.poll()
                if rc is None:
                    continue
                attempt.exit_codes[i] = rc
                self._record_node_exit(attempt, i, rc)
                if rc != 0 and failed_at is None:
                    failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > FAILURE_GRACE:
                self._end_nodes(attempt, "another node failed")
            if (self.stop_requested or self._stop_file_present()) and stop_deadline is None:
                stop_deadline = time.monotonic() + (STOP_GRACE if self.spec.get("enable_progression_tracking") else 0)
                self.store.add_event(self.job_id, "Stopping", "stop requested: ranks save a checkpoint at the same step, then end")
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                self._end_nodes(attempt, "stop grace period over")
        self._reap_orphans()
        return all(rc == 0 for rc in attempt.exit_codes.values())

    def _end_nodes(self, attempt: Attempt, why: str) -> None:
        import psutil

        alive = [psutil.Process(n.pid) for i, n in enumerate(attempt.nodes) if i not in attempt.exit_codes and n.poll() is None]
        if alive:
            procs.kill_tree(alive, grace=5.0)
        self._reap_orphans()

    def _reap_orphans(self) -> None:
        """End ranks left behind by a dead agent (re-parented to us as subreaper, or recorded in pids/)."""
        import psutil

        me = psutil.Process()
        children = [c for c in me.children(recursive=True)]
        for f in (self.dir.run_dir / contract.PIDS_DIR).glob("rank-*.json"):
            try:
                rec = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            p = procs.process(rec.get("pid"), rec.get("start"))
            if p is not None and p.pid not in {c.pid for c in children}:
                children.append(p)
        if children:
            procs.kill_tree(children, grace=2.0)

    def _record_node_exit(self, attempt: Attempt, node: int, rc: int) -> None:
        desc = "exited 0" if rc == 0 else (f"killed by signal {-rc}" if rc < 0 else f"exited with code {rc}")
        self.store.add_event(self.job_id, "NodeExited", f"node-{node} {desc}", {"attempt": attempt.number, "node": node, "exit_code": rc})
        job = self.store.get_job(self.job_id)
        if job and job.steps:
            steps = [dict(s) for s in job.steps]
            if node < len(steps):
                steps[node]["status"] = "Complete" if rc == 0 else "Failed"
                steps[node]["exit_code"] = rc
                self.store.update_job(self.job_id, steps=steps)

    # ---- errors ------------------------------------------------------------------------
    def _root_cause(self, attempt: Attempt) -> dict[str, Any]:
        """The first failure of this attempt: the earliest rank error, else a signal, else a node's exit."""
        errors = []
        for f in (self.dir.run_dir / contract.ERRORS_DIR).glob("rank-*.json"):
            try:
                errors.append(json.loads(f.read_text()))
            except (OSError, ValueError):
                continue
        if errors:
            first = min(errors, key=lambda e: e.get("time", 0))
            first["attempt"] = attempt.number
            return first
        for node, rc in sorted(attempt.exit_codes.items()):
            if rc == 0:
                continue
            tail = self._log_tail(attempt.number, node)
            rank, code = None, rc
            m = _TORCHRUN_FAILURE.search(tail)
            if m:
                rank, code = int(m.group(1)), int(m.group(2))
            if code < 0:
                sig = -code
                name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
                msg = f"killed by {name}" + (" (out of memory?)" if sig == signal.SIGKILL else "")
                return {"rank": rank, "type": "Signal", "message": msg, "exit_code": code, "traceback": tail, "attempt": attempt.number}
            return {"rank": rank, "type": "ExitCode", "message": f"exited with code {code}", "exit_code": code, "traceback": tail, "attempt": attempt.number}
        return {"rank": None, "type": "Unknown", "message": "the job failed without an error record", "attempt": attempt.number}

    def _log_tail(self, attempt: int, node: int, lines: int = 30) -> str:
        path = self.dir.attempt_logs(attempt) / f"node-{node}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _clear_attempt_files(self) -> None:
        for sub in (contract.ERRORS_DIR, contract.PIDS_DIR):
            for f in (self.dir.run_dir / sub).glob("*.json"):
                f.unlink(missing_ok=True)
        (self.dir.run_dir / contract.RESULT_FILE).unlink(missing_ok=True)

    # ---- outcome -----------------------------------------------------------------------
    def _output_dir(self) -> str | None:
        begin = self.collector.last_event.get("TrainBegin")
        if begin and begin["data"].get("output_dir"):
            return begin["data"]["output_dir"]
        job = self.store.get_job(self.job_id)
        return (job.extra or {}).get("output_dir") if job else None

    def _finish(self, status: JobStatus, message: str | None, error: dict | None) -> int:
        self.collector.collect(self._attempt_no())
        result = self._result()
        changed = self.store.transition(self.job_id, status, message=message, error=error, result=result)
        if changed:
            reason = {JobStatus.COMPLETE: "Completed", JobStatus.FAILED: "Failed", JobStatus.STOPPED: "Stopped"}[status]
            self.store.add_event(self.job_id, reason, message or f"job {status.value.lower()}", {"error": error} if error else {})
        return 0 if status == JobStatus.COMPLETE else 1

    def _attempt_no(self) -> int:
        job = self.store.get_job(self.job_id)
        return job.attempt if job else 0

    def _result(self) -> dict[str, Any]:
        from trainjob.progress import merge_latest

        output_dir = self._output_dir()
        end = (self.collector.last_event.get("TrainEnd") or {}).get("data", {})
        train, evals = merge_latest(self.store.metrics(self.job_id), self.spec.get("custom_metrics"))
        ckpt = latest_complete(output_dir)
        return {
            "metrics": {**train, **evals},
            "checkpoint": str(ckpt) if ckpt else None,
            "best_checkpoint": end.get("best_model_checkpoint"),
            "checkpoints": [str(p) for p in list_checkpoints(output_dir)],
            "output_dir": output_dir or str(self.dir.workdir),
            "log_dir": str(self.dir.logs_dir),
            "global_step": end.get("global_step"),
        }

    # ---- stop --------------------------------------------------------------------------
    def _on_sigterm(self, signum: int, frame: Any) -> None:
        # Preemption or `kill`: the same graceful stop as stop_job().
        self.stop_requested = True
        try:
            (self.dir.run_dir / contract.STOP_FILE).touch()
        except OSError:
            pass

    def _stop_file_present(self) -> bool:
        return (self.dir.run_dir / contract.STOP_FILE).exists()


def _describe_error(error: dict | None, attempt: int | None) -> str:
    if not error:
        return "failed"
    where = f"rank {error['rank']}: " if error.get("rank") is not None else ""
    pre = f"attempt {attempt}: " if attempt is not None else ""
    return f"{pre}{where}{error.get('type')}: {error.get('message')}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.umask(0o077)
    job_id, home = argv[0], Path(argv[1])
    return Supervisor(job_id, home).run()


if __name__ == "__main__":
    sys.exit(main())
