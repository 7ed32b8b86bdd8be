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
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainjob import contract
from trainjob.backends.local import procs
from trainjob.backends.local.collector import Collector
from trainjob.backends.local.failures import NodeOutcome, collect_failures, describe_exit, summarize
from trainjob.backends.local.hangs import Hang, HangWatch, dump_stacks, work_done
from trainjob.backends.local.jobdir import JobDir
from trainjob.backends.local.launcher import plan_launch
from trainjob.backends.local.warm import client as warm_start
from trainjob.checkpoints import checkpoint_step, latest_complete, list_checkpoints
from trainjob.core import events
from trainjob.core.outcome import after_failure, deadline_passed, result_record, stop_reason, stopped_outcome
from trainjob.core.rank_env import free_port
from trainjob.resources import local_capacity
from trainjob.errors import TrainJobError
from trainjob.store import Store
from trainjob.types import JobStatus

FAILURE_GRACE = 3.0  # seconds the other nodes get to exit on their own after one failed
TERM_GRACE = 10.0  # seconds between SIGTERM to the ranks and SIGKILL to what is left
HANG_CHECK_INTERVAL = 1.0  # seconds between looks at the ranks' processes and done markers
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


class Supervisor:
    def __init__(self, job_id: str, home: Path) -> None:
        self.job_id = job_id
        self.home = home
        self.store = Store(home / "trainjob.db")
        self.dir = JobDir.for_job(home, job_id)
        self.spec = self.dir.read_spec()
        self.collector = Collector(self.store, job_id, self.dir.run_dir)
        self.stop_requested = False  # set by SIGTERM to this process
        self.python = sys.executable
        self.extra_env: dict[str, str] = {}
        self.grant = None  # the scheduler's Grant, once resources are acquired
        self.world = self.spec.world_size
        self.attempt: Attempt | None = None  # the attempt whose processes run now
        self.deadline_exceeded = False  # active_deadline_seconds passed: the stop that follows is a failure
        self.created_at = time.time()  # replaced by the job's creation time in run()

    # ---- lifecycle ----------------------------------------------------------------------
    def run(self) -> int:
        procs.become_subreaper()
        signal.signal(signal.SIGTERM, self._on_sigterm)
        job = self.store.get_job(self.job_id)
        if job is None or job.status.is_terminal:
            return 0  # deleted or stopped before we started
        self.created_at = job.created_at
        self.store.update_job(self.job_id, supervisor_pid=os.getpid(), supervisor_start=procs.start_time(os.getpid()))
        status, message, error = JobStatus.FAILED, None, None
        release = None
        try:
            self._prepare_environment()
            self._run_initializers()
            release = self._acquire_resources()
            if self._stopping():
                status, message, error = self._stopped_outcome("before it started") if self.deadline_exceeded else (JobStatus.STOPPED, "stopped before it started", None)
            else:
                status, message, error = self._run_attempts()
        except TrainJobError as e:  # an expected failure whose message is for the user (a package install failed...)
            error = {"type": type(e).__name__, "message": str(e), "traceback": "", "rank": None}
            status, message = JobStatus.FAILED, f"{type(e).__name__}: {e}"
            print(message, file=sys.stderr, flush=True)
        except BaseException as e:  # noqa: BLE001 - anything (SIGINT's KeyboardInterrupt too) still ends the job with a reason
            import traceback

            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
            what = "interrupted (SIGINT)" if isinstance(e, KeyboardInterrupt) else f"error: {type(e).__name__}: {e}"
            ended = self._end_all_processes()
            error = {"type": type(e).__name__, "message": str(e) or what, "traceback": traceback.format_exc(), "rank": None}
            status = JobStatus.FAILED
            message = f"supervisor {what}; " + (f"{ended} process{'es' if ended != 1 else ''} of the job ended" if ended else "no process of the job was left")
            print(traceback.format_exc(), file=sys.stderr, flush=True)
        finally:
            if release is not None:
                release()
        return self._finish(status, message, error)

    def _end_all_processes(self) -> int:
        """End every process of the job (agents, ranks, installers): the supervisor is giving up.

        All of them are descendants of this process (a subreaper), and ranks are also recorded
        in ``run/pids/``. Returns how many were alive.
        """
        import psutil

        found = {c.pid: c for c in psutil.Process().children(recursive=True)}
        for p in self._recorded("*.json"):
            found.setdefault(p.pid, p)
        if not found:
            return 0
        if self.attempt is not None:
            self._kill(self.attempt, list(found.values()), signal.SIGKILL, grace=5.0)
        else:
            procs.kill_tree(list(found.values()), grace=5.0, sig=signal.SIGKILL)
        return len(found)

    def _prepare_environment(self) -> None:
        """Build (or reuse) the job's package environment. See ``envs``."""
        from trainjob.backends.local import envs

        prepared = envs.prepare_for_job(self.spec, self.store, self.job_id, self.dir)
        if prepared is not None:
            self.python, self.extra_env = prepared.python, prepared.env

    def _run_initializers(self) -> None:
        """The job's model/dataset initializer steps, before resources and ranks. See ``initializers``."""
        from trainjob.backends.local.initializers import run_initializers

        run_initializers(self.store, self.job_id, self.dir, self.spec, self.python, self.extra_env, self._stopping)

    def _acquire_resources(self):
        """Wait in the local scheduler until the job's CPUs/GPUs/memory are free. Returns a release callable."""
        from trainjob.backends.local import scheduler

        grant = scheduler.acquire(self.store, self.job_id, self.spec, should_abort=self._stopping, wake_dirs=[self.dir.run_dir])
        self.extra_env.update(grant.env)
        self.grant = grant
        return grant.release

    def _run_attempts(self) -> tuple[JobStatus, str | None, dict | None]:
        """Launch, and relaunch after a failure up to ``max_restarts`` times; the job's outcome.

        Every relaunch (and the first launch of a job created with ``resume=``) sets
        ``TRAINJOB_RESUME=1``, so each ``Trainer.train()`` continues from the newest complete
        checkpoint in its ``output_dir``.
        """
        max_restarts = self.spec.limits.max_restarts
        resume = bool(self.spec.resume_from)
        first_error: dict | None = None
        cause: str | None = None
        attempt_no = 0
        while True:
            if self._stopping():  # a stop that came while the previous attempt was being cleaned up
                return self._stopped_outcome(f"before attempt {attempt_no}")
            attempt = self._launch(attempt_no, resume=resume or attempt_no > 0, restarted_after=cause)
            ok = self._monitor(attempt)
            self.collector.collect(attempt.number)
            if attempt.hang is not None:
                # The supervisor ended hung ranks: the attempt's outcome is its verdict, not their exit codes.
                ok = attempt.hang_error is None
            outcome = self._stop_outcome(attempt, ok)
            if outcome is not None:
                return outcome
            if ok:
                return JobStatus.COMPLETE, None, None
            error = attempt.hang_error or self._root_cause(attempt)
            self._event(events.attempt_failed(error, attempt.number))
            then = after_failure(attempt_no, max_restarts, error, first_error)
            first_error, cause = dict(then.first_error), then.cause
            if not then.restart:
                return JobStatus.FAILED, then.message, first_error
            attempt_no = then.next_attempt
            ckpt = latest_complete(self._output_dir())
            self._event(events.restarting(attempt_no, max_restarts, cause, ckpt, checkpoint_step(ckpt) if ckpt else None))
            self._clear_attempt_files()

    def _launch(self, number: int, resume: bool, restarted_after: str | None = None) -> Attempt:
        log_dir = self.dir.attempt_logs(number)
        log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        plans = plan_launch(
            self.spec,
            job_id=self.job_id,
            job_dir=self.dir.root,
            attempt=number,
            base_env=os.environ,
            python=self.python,
            master_port=free_port(),
            metrics_host=self.spec.tracking.metrics_host,
            extra_env=self.extra_env,
            resume=resume,
            cpus=local_capacity().cpus,
        )
        attempt = Attempt(number)
        self.attempt = attempt
        nproc = self.spec.procs_per_node
        # Warm start (backends/local/warm): the nodes forked from the environment's warm process, or None: cold.
        warm = warm_start.start_nodes(plans, spec=self.spec, home=self.home, python=self.python, run_dir=self.dir.run_dir, attempt=number)
        for i, plan in enumerate(plans):
            if warm.nodes is not None:
                proc = warm.nodes[i]
            else:
                with open(plan.log_file, "ab") as log:
                    proc = subprocess.Popen(plan.argv, env=plan.env, cwd=plan.cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            attempt.nodes.append(proc)
            attempt.ranks.append(tuple(range(plan.node_rank * nproc, (plan.node_rank + 1) * nproc)))
            # Recorded for readers: if this supervisor dies, reconcile() ends the launchers too.
            contract.write_json_atomic(
                self.dir.run_dir / contract.PIDS_DIR / f"node-{plan.node_rank}.json", {"pid": proc.pid, "start": procs.start_time(proc.pid)}
            )
        steps = [
            {"name": f"node-{p.node_rank}", "status": "Running", "pid": n.pid, "device": self.spec.device, "device_count": nproc}
            for p, n in zip(plans, attempt.nodes)
        ]
        message = f"attempt {number}: restarted after {restarted_after}" if restarted_after else None
        self.store.transition(self.job_id, JobStatus.RUNNING, attempt=number, steps=steps, message=message, queue_position=None)
        self._event(events.started(number, self.world, events.on_nodes(len(plans)), resume, pids=[n.pid for n in attempt.nodes]))
        if warm.reason:
            self.store.add_event(self.job_id, warm.reason, warm.message, warm.data)
        return attempt

    def _monitor(self, attempt: Attempt) -> bool:
        """Collect until every node exits; end the others after a failure; carry out a stop. True when all exited 0."""
        failed_at: float | None = None
        stop_phase: str | None = None  # None -> "graceful" -> "term" -> "kill"
        deadline = 0.0
        tracking = self.spec.tracking.enabled
        watch = HangWatch(
            world=self.world,
            exit_grace=self.spec.limits.exit_grace_seconds,
            progress_timeout=self.spec.tracking.progress_timeout if tracking else None,
        )
        next_hang_check = 0.0
        while len(attempt.exit_codes) < len(attempt.nodes):
            self.collector.wait(attempt.nodes)  # woken early by a report, a node's exit or a stop request
            self.collector.collect(attempt.number)
            for i, node in enumerate(attempt.nodes):
                if i in attempt.exit_codes:
                    continue
                rc = node.poll()
                if rc is None:
                    continue
                attempt.exit_codes[i] = rc
                attempt.exit_times[i] = time.time()
                self._record_node_exit(attempt, i, rc)
                if rc != 0 and failed_at is None:
                    failed_at = time.monotonic()
            if len(attempt.exit_codes) == len(attempt.nodes):
                break
            if failed_at is None and self._rank_failed():
                # A rank raised; its launcher may wait a long time for the siblings to end
                # (torchrun gives them 30 s after SIGTERM): count the failure from now.
                failed_at = time.monotonic()
            if failed_at is not None and attempt.ending_since is None and time.monotonic() - failed_at > FAILURE_GRACE:
                self._end_nodes(attempt, "another node failed", signal.SIGKILL)
            if failed_at is None and stop_phase is None and attempt.hang is None and time.monotonic() >= next_hang_check:
                next_hang_check = time.monotonic() + HANG_CHECK_INTERVAL
                hang = self._check_hang(attempt, watch)
                if hang is not None:
                    self._end_hung(attempt, hang)
                    continue
            if stop_phase is None and self._stopping():
                stop_grace = self.spec.limits.stop_grace_seconds
                if tracking and self._in_training(attempt):
                    stop_phase, deadline = "graceful", time.monotonic() + stop_grace
                    self.store.add_event(self.job_id, "Stopping", f"{self._stop_reason()}: the ranks agree on a step, save a checkpoint there and end")
                else:
                    # No Trainer to save a checkpoint (a CustomTrainer, or not training yet): end the ranks now.
                    stop_phase, deadline = "term", time.monotonic() + TERM_GRACE
                    self.store.add_event(self.job_id, "Stopping", f"{self._stop_reason()}: no Trainer is training, so the ranks get SIGTERM now")
                    self._signal_ranks(attempt, signal.SIGTERM)
            elif stop_phase == "graceful" and time.monotonic() > deadline:
                stop_phase, deadline = "term", time.monotonic() + TERM_GRACE
                self.store.add_event(self.job_id, "Stopping", f"the ranks did not end within stop_grace_seconds={stop_grace:g} of the stop request: SIGTERM")
                self._signal_ranks(attempt, signal.SIGTERM)
            elif stop_phase == "term" and time.monotonic() > deadline:
                stop_phase = "kill"
                self._end_nodes(attempt, f"still running {TERM_GRACE:g}s after SIGTERM", signal.SIGKILL)
        self._reap_orphans(attempt)
        return all(rc == 0 for rc in attempt.exit_codes.values())

    def _rank_failed(self) -> bool:
        """True once a rank of this attempt recorded an exception (``errors/rank-N.json``)."""
        return any((self.dir.run_dir / contract.ERRORS_DIR).glob("rank-*.json"))

    # ---- hangs ---------------------------------------------------------------------------
    def _rank_processes(self) -> dict[int, Any]:
        """Each rank that recorded itself in ``run/pids/``: its live process, or None once it ended."""
        out: dict[int, Any] = {}
        for f in (self.dir.run_dir / contract.PIDS_DIR).glob("rank-*.json"):
            try:
                rank = int(f.stem.split("-", 1)[1])
                rec = json.loads(f.read_text())
            except (OSError, ValueError, IndexError):
                continue
            out[rank] = procs.process(rec.get("pid"), rec.get("start"))
        return out

    def _done_markers(self) -> dict[int, dict]:
        """``run/done/rank-N.json``: what each rank recorded of its work being done (``runtime.done``)."""
        out: dict[int, dict] = {}
        for f in (self.dir.run_dir / contract.DONE_DIR).glob("rank-*.json"):
            try:
                out[int(f.stem.split("-", 1)[1])] = json.loads(f.read_text())
            except (OSError, ValueError, IndexError):
                continue
        return out

    def _check_hang(self, attempt: Attempt, watch: HangWatch) -> Hang | None:
        now = time.monotonic()
        progress = self.collector.progress
        watch.observe(self._in_training(attempt) or self._training_ended(attempt), progress.get("currentStep") if progress else None, now)
        ranks = self._rank_processes()
        return watch.check(
            now,
            alive={r: p is not None for r, p in ranks.items()},
            done=self._done_markers(),
            node_exited_ok=any(rc == 0 for rc in attempt.exit_codes.values()),
            training_ended=self._training_ended(attempt),
        )

    def _end_hung(self, attempt: Attempt, hang: Hang) -> None:
        """Write the hung ranks' stacks into their logs, record where they hang, end the attempt.

        At exit, with every rank's work recorded done, the attempt counts as a success (a warning
        event says which rank was ended and where it hung); otherwise it fails with that reason.
        """
        ranks = self._rank_processes()
        logs = self.dir.attempt_logs(attempt.number)
        frames: dict[int, str | None] = {}
        for r in hang.ranks:
            p = ranks.get(r)
            if p is not None:
                frames[r] = dump_stacks(p.pid, logs / f"rank-{r}.log", self.python)
        where = "; ".join(f"rank {r} was in {f}" if f else f"rank {r}: no stack could be read" for r, f in frames.items())
        logs_named = ", ".join(f"rank-{r}.log" for r in frames)
        done = self._done_markers()
        if hang.kind == "exit":
            finished = work_done(done, self.world)
            reason = "HungAtExit"
            message = f"{hang.why}; ended {'them' if len(frames) > 1 else 'it'}: {where} (stacks in {logs_named})"
            if finished:
                message += "; every rank had finished its work, so the job completes"
            else:
                missing = [r for r in range(self.world) if not done.get(r)]
                attempt.hang_error = {
                    "type": "HungAtExit",
                    "message": f"{hang.why}: {where}; the work of rank(s) {', '.join(map(str, missing))} was not recorded done "
                    "(no Trainer reached the end of training and the function did not return)",
                    "rank": missing[0] if missing else None,
                    "traceback": "",
                }
        else:
            reason = "ProgressTimeout"
            message = f"{hang.why}; {where} (stacks in {logs_named})"
            attempt.hang_error = {"type": "ProgressTimeout", "message": message, "rank": None, "traceback": ""}
        attempt.hang = hang
        self.store.add_event(
            self.job_id, reason, message, {"attempt": attempt.number, "ranks": list(frames), "frames": {str(r): f for r, f in frames.items()}, "kind": hang.kind}
        )
        print(f"trainjob supervisor: {reason}: {message}", file=sys.stderr, flush=True)
        self._kill(attempt, [p for r, p in ranks.items() if r in frames and p is not None], signal.SIGKILL, grace=2.0)
        # The launchers are left: node-0's torchrun agent waits in its exit barrier for minutes.
        self._end_nodes(attempt, f"{reason}: the supervisor ended hung ranks", signal.SIGKILL)

    def _training_ended(self, attempt: Attempt) -> bool:
        """True once rank 0 of this attempt reported TrainEnd after its TrainBegin."""
        begin = self.collector.last_event.get("TrainBegin")
        end = self.collector.last_event.get("TrainEnd")
        if not begin or not end or end.get("attempt", attempt.number) != attempt.number:
            return False
        return end.get("time", 0) >= begin.get("time", 0)

    def _in_training(self, attempt: Attempt) -> bool:
        """True while rank 0 of this attempt is inside ``Trainer.train()`` (it reported TrainBegin, not yet TrainEnd)."""
        begin = self.collector.last_event.get("TrainBegin")
        if not begin or begin.get("attempt", attempt.number) != attempt.number:
            return False
        end = self.collector.last_event.get("TrainEnd")
        return not (end and end.get("attempt", attempt.number) == attempt.number and end.get("time", 0) >= begin.get("time", 0))

    def _signal_ranks(self, attempt: Attempt, sig: int) -> None:
        """Send ``sig`` to every rank (not to torchrun's agents: they would tear the ranks down on their own terms)."""
        import psutil

        targets: dict[int, psutil.Process] = {}
        for i, node in enumerate(attempt.nodes):
            if i in attempt.exit_codes:
                continue
            try:
                p = psutil.Process(node.pid)
                ranks = [p] if self.world == 1 else p.children()
            except psutil.NoSuchProcess:
                continue
            targets.update({r.pid: r for r in ranks})
        for r in self._recorded("rank-*.json"):
            targets.setdefault(r.pid, r)
        for p in targets.values():
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass

    def _end_nodes(self, attempt: Attempt, why: str, sig: int = signal.SIGKILL) -> None:
        """End every node still running (and its ranks), recording that the supervisor did it."""
        import psutil

        alive = {i: n for i, n in enumerate(attempt.nodes) if i not in attempt.exit_codes and n.poll() is None}
        if not alive:
            return
        if attempt.ending_since is None:
            attempt.ending_since = time.time()
        attempt.ended.update(alive)
        self.store.add_event(
            self.job_id, "EndingNodes", f"ending {', '.join(f'node-{i}' for i in alive)}: {why}", {"attempt": attempt.number, "nodes": sorted(alive), "signal": signal.Signals(sig).name}
        )
        found: dict[int, psutil.Process] = {}
        for n in alive.values():
            try:
                root = psutil.Process(n.pid)
                found[root.pid] = root
                found.update({c.pid: c for c in root.children(recursive=True)})
            except psutil.NoSuchProcess:
                continue
        self._kill(attempt, list(found.values()), sig, grace=5.0)
        self._reap_orphans(attempt)

    def _kill(self, attempt: Attempt, targets, sig: int, grace: float) -> None:
        """Signal ``targets``, wait up to ``grace``, SIGKILL what is left.

        The attempt's node processes are waited for through their ``Popen`` objects, never by
        psutil: psutil would reap them and ``Popen.poll()`` would then report exit code 0 for a
        node that was killed (the supervisor would call a failed attempt a success).
        """
        import psutil

        own = {n.pid: n for n in attempt.nodes}
        for p in targets:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        deadline = time.monotonic() + grace
        others = [p for p in targets if p.pid not in own]
        _, left = psutil.wait_procs(others, timeout=grace)
        for p in left:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        for pid, node in own.items():
            if node.returncode is not None or pid not in {p.pid for p in targets}:
                continue
            try:
                node.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        psutil.wait_procs(left, timeout=2)

    def _recorded(self, pattern: str):
        """Live processes recorded in ``run/pids/`` matching ``pattern`` (identity checked: pid + start time)."""
        return procs.recorded_processes(self.dir.run_dir / contract.PIDS_DIR, pattern)

    def _reap_orphans(self, attempt: Attempt) -> None:
        """End ranks left behind by a dead agent (re-parented to us as subreaper, or recorded in pids/)."""
        import psutil

        own = {n.pid for n in attempt.nodes if n.returncode is None}  # still to be polled: see _kill
        found = {c.pid: c for c in psutil.Process().children(recursive=True) if c.pid not in own}
        for p in self._recorded("*.json"):
            if p.pid not in own:
                found.setdefault(p.pid, p)
        if found:
            self._kill(attempt, list(found.values()), signal.SIGTERM, grace=2.0)

    def _record_node_exit(self, attempt: Attempt, node: int, rc: int) -> None:
        self.store.add_event(self.job_id, "NodeExited", f"node-{node} {describe_exit(rc)}", {"attempt": attempt.number, "node": node, "exit_code": rc})
        job = self.store.get_job(self.job_id)
        if job and job.steps:
            steps = [dict(s) for s in job.steps]
            if node < len(steps):
                steps[node]["status"] = "Complete" if rc == 0 else "Failed"
                steps[node]["exit_code"] = rc
                self.store.update_job(self.job_id, steps=steps)

    # ---- errors ------------------------------------------------------------------------
    def _root_cause(self, attempt: Attempt) -> dict[str, Any]:
        """The first failure of this attempt that was not caused by another (see ``failures``)."""
        errors = []
        for f in (self.dir.run_dir / contract.ERRORS_DIR).glob("rank-*.json"):
            try:
                errors.append(json.loads(f.read_text()))
            except (OSError, ValueError):
                continue
        errors.extend(self.grant.limit_errors() if self.grant else [])  # nodes ended for exceeding their memory limit
        nodes = [
            NodeOutcome(
                node=i,
                exit_code=rc,
                time=attempt.exit_times.get(i, time.time()),
                ranks=attempt.ranks[i],
                log=self._read_tail(self.dir.attempt_logs(attempt.number) / f"node-{i}.log", LOG_SCAN_BYTES),
                ended_by_supervisor=i in attempt.ended,
            )
            for i, rc in sorted(attempt.exit_codes.items())
        ]
        logs = self.dir.attempt_logs(attempt.number)
        found = collect_failures(
            errors, nodes, self.world, attempt.ending_since, rank_log_tail=lambda r: _last_lines(self._read_tail(logs / f"rank-{r}.log", 8192), 20)
        )
        return summarize(found, attempt.number, disk_paths=(self.dir.root, self._output_dir()))  # a full disk is named

    @staticmethod
    def _read_tail(path: Path, nbytes: int) -> str:
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - nbytes))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _clear_attempt_files(self) -> None:
        """Forget the failed attempt's run state (its logs stay in logs/attempt-K/)."""
        for sub in (contract.ERRORS_DIR, contract.PIDS_DIR, contract.DONE_DIR):
            for f in (self.dir.run_dir / sub).glob("*.json"):
                f.unlink(missing_ok=True)
        (self.dir.run_dir / contract.RESULT_FILE).unlink(missing_ok=True)
        # The next rank 0 may serve /metrics on another port: let the collector read it again.
        (self.dir.run_dir / contract.ENDPOINT_FILE).unlink(missing_ok=True)
        self.collector.forget_endpoint()

    # ---- stop --------------------------------------------------------------------------
    def _stop_outcome(self, attempt: Attempt, ok: bool) -> tuple[JobStatus, str, None] | None:
        """``Stopped`` with a message if this attempt ended because of a stop; None otherwise.

        A stop that came too late to matter (training already finished, every rank exited 0) is
        a completion. Ranks that stopped training because one of them got SIGTERM (preemption of
        a rank, not a stop request) also count as stopped: they saved a checkpoint to resume from.
        """
        end = self.collector.last_event.get("TrainEnd")
        end = end if end and end.get("attempt", attempt.number) == attempt.number else None
        data = (end or {}).get("data") or {}
        ckpt = latest_complete(self._output_dir())
        where = (f" at step {data['global_step']}" if data.get("global_step") is not None else "") + (
            f"; newest complete checkpoint: {ckpt.name}" if ckpt else "; no checkpoint was saved"
        )
        if self._stopping():
            if ok and data.get("completed"):
                return None
            return self._stopped_outcome(where)
        if ok and data.get("stopped") and not data.get("completed"):
            why = data.get("stop_reason") or "a rank received SIGTERM (preemption?)"  # or it stopped itself (pruned)
            return JobStatus.STOPPED, f"{why} and training stopped{where}", None
        return None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        # Preemption or `kill`: the same graceful stop as stop_job(). No store writes here: the
        # main thread may be inside one; the monitor loop records the stop on its next pass.
        self.stop_requested = True
        try:
            (self.dir.run_dir / contract.STOP_FILE).touch()
        except OSError:
            pass

    def _stop_file_present(self) -> bool:
        return (self.dir.run_dir / contract.STOP_FILE).exists()

    def _stopping(self) -> bool:
        return self.stop_requested or self._stop_file_present() or self._deadline_passed()

    def _deadline_passed(self) -> bool:
        if not self.deadline_exceeded:
            self.deadline_exceeded = deadline_passed(self.spec.limits.active_deadline_seconds, self.created_at, time.time())
        return self.deadline_exceeded

    def _stop_reason(self) -> str:
        how = "by SIGTERM to the supervisor" if self.stop_requested else "on request"
        return stop_reason(self.deadline_exceeded, self.spec.limits.active_deadline_seconds, how)

    def _stopped_outcome(self, where: str) -> tuple[JobStatus, str, dict | None]:
        return stopped_outcome(self._stop_reason(), where, self.deadline_exceeded)

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
            self._event(events.ended(status, message, error))
        return 0 if status == JobStatus.COMPLETE else 1

    def _event(self, event: events.LifecycleEvent) -> None:
        self.store.add_event(self.job_id, event.reason, event.message, event.data)

    def _attempt_no(self) -> int:
        job = self.store.get_job(self.job_id)
        return job.attempt if job else 0

    def _result(self) -> dict[str, Any]:
        output_dir = self._output_dir()
        ckpt = latest_complete(output_dir)
        return result_record(
            metrics=self.store.metrics(self.job_id),
            custom_metrics=self.spec.tracking.custom_metrics,
            train_end=(self.collector.last_event.get("TrainEnd") or {}).get("data"),
            checkpoint=str(ckpt) if ckpt else None,
            checkpoints=[str(p) for p in list_checkpoints(output_dir)],
            output_dir=output_dir or str(self.dir.workdir),
            log_dir=str(self.dir.logs_dir),
        )

def _last_lines(text: str, n: int) -> str:
    return "\n".join(text.splitlines()[-n:])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.umask(0o077)
    job_id, home = argv[0], Path(argv[1])
    return Supervisor(job_id, home).run()


if __name__ == "__main__":
    sys.exit(main())
