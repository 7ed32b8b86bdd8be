"""Watching one attempt of a local job until its nodes exit: failures, hangs and stops.

``Monitor.watch`` is the supervisor's loop while an attempt runs. On each pass it collects what
the ranks reported (``collector``), notes each node's exit, and acts:

- **a failure**: a node exited non-zero, or a rank recorded an exception: the other nodes get
  ``FAILURE_GRACE`` seconds to end on their own, then are ended;
- **a hang** (``hangs``): ranks stuck at exit, or no progress for ``progress_timeout``: their
  stacks go into their logs and they are ended (``HungAtExit``, ``ProgressTimeout``);
- **a stop** (``stop``): ranks inside ``Trainer.train()`` agree on a step, save a checkpoint
  there and end; others (no Trainer, not training yet) get SIGTERM; after ``stop_grace_seconds``
  SIGTERM, ``TERM_GRACE`` later SIGKILL.

Processes are ended through ``nodes.NodeControl``; events go to the store.
"""

from __future__ import annotations

import json
import signal
import sys
import time

from trainjob import contract
from trainjob.backends.local.attempt import Attempt
from trainjob.backends.local.collector import Collector
from trainjob.backends.local.failures import describe_exit
from trainjob.backends.local.hangs import Hang, HangWatch, dump_stacks, work_done
from trainjob.backends.local.jobdir import JobDir
from trainjob.backends.local.nodes import NodeControl
from trainjob.backends.local.stop import StopControl
from trainjob.core.spec import JobSpec
from trainjob.store import Store

FAILURE_GRACE = 3.0  # seconds the other nodes get to exit on their own after one failed
TERM_GRACE = 10.0  # seconds between SIGTERM to the ranks and SIGKILL to what is left
HANG_CHECK_INTERVAL = 1.0  # seconds between looks at the ranks' processes and done markers


class Monitor:
    """Watches the attempts of one job for its supervisor (see the module docstring)."""

    def __init__(
        self, store: Store, job_id: str, job_dir: JobDir, spec: JobSpec, collector: Collector, nodes: NodeControl, stop: StopControl, python: str
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.job_dir = job_dir
        self.spec = spec
        self.world = spec.world_size
        self.collector = collector
        self.nodes = nodes
        self.stop = stop
        self.python = python  # the job's interpreter: it reads the hung ranks' stacks

    def watch(self, attempt: Attempt) -> bool:
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
                self.nodes.end_nodes(attempt, "another node failed", signal.SIGKILL)
            if failed_at is None and stop_phase is None and attempt.hang is None and time.monotonic() >= next_hang_check:
                next_hang_check = time.monotonic() + HANG_CHECK_INTERVAL
                hang = self._check_hang(attempt, watch)
                if hang is not None:
                    self._end_hung(attempt, hang)
                    continue
            if stop_phase is None and self.stop.stopping():
                stop_grace = self.spec.limits.stop_grace_seconds
                if tracking and self.in_training(attempt):
                    stop_phase, deadline = "graceful", time.monotonic() + stop_grace
                    self.store.add_event(self.job_id, "Stopping", f"{self.stop.reason()}: the ranks agree on a step, save a checkpoint there and end")
                else:
                    # No Trainer to save a checkpoint (a CustomTrainer, or not training yet): end the ranks now.
                    stop_phase, deadline = "term", time.monotonic() + TERM_GRACE
                    self.store.add_event(self.job_id, "Stopping", f"{self.stop.reason()}: no Trainer is training, so the ranks get SIGTERM now")
                    self.nodes.signal_ranks(attempt, signal.SIGTERM)
            elif stop_phase == "graceful" and time.monotonic() > deadline:
                stop_phase, deadline = "term", time.monotonic() + TERM_GRACE
                self.store.add_event(self.job_id, "Stopping", f"the ranks did not end within stop_grace_seconds={stop_grace:g} of the stop request: SIGTERM")
                self.nodes.signal_ranks(attempt, signal.SIGTERM)
            elif stop_phase == "term" and time.monotonic() > deadline:
                stop_phase = "kill"
                self.nodes.end_nodes(attempt, f"still running {TERM_GRACE:g}s after SIGTERM", signal.SIGKILL)
        self.nodes.reap_orphans(attempt)
        return all(rc == 0 for rc in attempt.exit_codes.values())

    def _rank_failed(self) -> bool:
        """True once a rank of this attempt recorded an exception (``errors/rank-N.json``)."""
        return any((self.job_dir.run_dir / contract.ERRORS_DIR).glob("rank-*.json"))

    # ---- hangs -------------------------------------------------------------------------
    def _done_markers(self) -> dict[int, dict]:
        """``run/done/rank-N.json``: what each rank recorded of its work being done (``runtime.done``)."""
        out: dict[int, dict] = {}
        for f in (self.job_dir.run_dir / contract.DONE_DIR).glob("rank-*.json"):
            try:
                out[int(f.stem.split("-", 1)[1])] = json.loads(f.read_text())
            except (OSError, ValueError, IndexError):
                continue
        return out

    def _check_hang(self, attempt: Attempt, watch: HangWatch) -> Hang | None:
        now = time.monotonic()
        progress = self.collector.progress
        watch.observe(self.in_training(attempt) or self.training_ended(attempt), progress.get("currentStep") if progress else None, now)
        ranks = self.nodes.rank_processes()
        return watch.check(
            now,
            alive={r: p is not None for r, p in ranks.items()},
            done=self._done_markers(),
            node_exited_ok=any(rc == 0 for rc in attempt.exit_codes.values()),
            training_ended=self.training_ended(attempt),
        )

    def _end_hung(self, attempt: Attempt, hang: Hang) -> None:
        """Write the hung ranks' stacks into their logs, record where they hang, end the attempt.

        At exit, with every rank's work recorded done, the attempt counts as a success (a warning
        event says which rank was ended and where it hung); otherwise it fails with that reason.
        """
        ranks = self.nodes.rank_processes()
        logs = self.job_dir.attempt_logs(attempt.number)
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
        self.nodes.kill(attempt, [p for r, p in ranks.items() if r in frames and p is not None], signal.SIGKILL, grace=2.0)
        # The launchers are left: node-0's torchrun agent waits in its exit barrier for minutes.
        self.nodes.end_nodes(attempt, f"{reason}: the supervisor ended hung ranks", signal.SIGKILL)

    def training_ended(self, attempt: Attempt) -> bool:
        """True once rank 0 of this attempt reported TrainEnd after its TrainBegin."""
        begin = self.collector.last_event.get("TrainBegin")
        end = self.collector.last_event.get("TrainEnd")
        if not begin or not end or end.get("attempt", attempt.number) != attempt.number:
            return False
        return end.get("time", 0) >= begin.get("time", 0)

    def in_training(self, attempt: Attempt) -> bool:
        """True while rank 0 of this attempt is inside ``Trainer.train()`` (it reported TrainBegin, not yet TrainEnd)."""
        begin = self.collector.last_event.get("TrainBegin")
        if not begin or begin.get("attempt", attempt.number) != attempt.number:
            return False
        end = self.collector.last_event.get("TrainEnd")
        return not (end and end.get("attempt", attempt.number) == attempt.number and end.get("time", 0) >= begin.get("time", 0))


    def _record_node_exit(self, attempt: Attempt, node: int, rc: int) -> None:
        self.store.add_event(self.job_id, "NodeExited", f"node-{node} {describe_exit(rc)}", {"attempt": attempt.number, "node": node, "exit_code": rc})
        job = self.store.get_job(self.job_id)
        if job and job.steps:
            steps = [dict(s) for s in job.steps]
            if node < len(steps):
                steps[node]["status"] = "Complete" if rc == 0 else "Failed"
                steps[node]["exit_code"] = rc
                self.store.update_job(self.job_id, steps=steps)
