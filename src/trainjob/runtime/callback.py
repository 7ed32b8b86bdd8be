"""The ``TrainerCallback`` that reports a Trainer's progress, metrics and events.

Runs in every rank; only the global rank-0 process reports (the others return at once, so the cost
there is a method call per event). Rank 0 hands progress, every logged entry and events to the
job's sink (``trainjob.runtime.sinks``: files that the local supervisor collects, or Ray's own
channels). The final state is reported at ``on_train_end`` synchronously, so it is recorded even
when the process exits before any HTTP poller could read it. Rank 0 also serves the progress on
``/metrics``.

Cost: a step runs ``on_step_end`` and often ``on_log``; both must stay at a few microseconds and
make no system call, or they slow training (measured in BENCHMARKS.md, guarded by
tests/test_callback_cost.py). So they only note what changed; JSON encoding, the rate and every
write happen in ``_flush``, at most once per ``WRITE_INTERVAL`` while steps are fast, and at
once when a pause is coming (an evaluation, a checkpoint, the end: its flags are set on
``control`` before our ``on_step_end`` runs) or when steps are slower than the interval, so the
reported state is never older than about one interval or one step.

The callback never changes ``TrainerControl`` except to honour a stop request (see ``stopping``).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from transformers.trainer_callback import TrainerCallback

from trainjob import contract
from trainjob.progress import RateWindow, build_progress, categorize, clean_number
from trainjob.runtime import done, pruning, sinks, stopping

WRITE_INTERVAL = 0.25  # seconds between writes (progress, logged entries) while steps are fast


class TrainjobCallback(TrainerCallback):
    """Progress reporting for one Trainer. Added by ``trainjob.runtime.instrument``; never add it by hand."""

    def __init__(self) -> None:
        self.sink = sinks.current()
        self.attempt = int(os.environ.get(contract.ATTEMPT, "0"))
        self.custom_metrics: dict[str, str] = json.loads(os.environ.get(contract.CUSTOM_METRICS) or "{}")
        self.pruning = pruning.current()  # a trial that prunes itself at its evaluations, or None
        self.rate = RateWindow()
        self.train_metrics: dict[str, Any] = {}
        self.eval_metrics: dict[str, Any] = {}
        self.samples_per_step: int | None = None
        self.write_interval = WRITE_INTERVAL
        self._last_write = -math.inf  # monotonic time of the last _flush
        self._last_step_at: float | None = None
        self._step_seconds = 0.0  # how long the latest step took: when the next chance to write comes
        self._pause_follows = False  # evaluation, a save or the end comes after this step
        self._pending: list[dict[str, Any]] = []  # logged entries not yet handed to the sink
        self._stepped = False
        self.progress: dict[str, Any] | None = None

    # ---- Trainer events ---------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        stopping.on_train_begin(args, state)
        if not state.is_world_process_zero:
            return
        self.rate = RateWindow()
        self.rate.add(state.global_step)
        self._stepped = state.global_step > 0
        self._last_step_at = None
        world = max(1, int(getattr(args, "world_size", 1) or 1))
        self.samples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * world
        params = None
        if model is not None:
            try:
                params = sum(p.numel() for p in model.parameters())
            except Exception:  # noqa: BLE001 - exotic models; the count is informative only
                params = None
        self._event(
            "TrainBegin",
            f"{type(model).__name__ if model is not None else 'model'} training starts at step {state.global_step}/{state.max_steps}",
            {
                "model_class": type(model).__name__ if model is not None else None,
                "parameters": params,
                "max_steps": state.max_steps,
                "num_train_epochs": state.num_train_epochs,
                "world_size": world,
                "start_step": state.global_step,
                "output_dir": os.path.abspath(args.output_dir) if args.output_dir else None,
            },
        )
        from trainjob.runtime import server

        server.ensure_started(lambda: self.progress)
        if self._stepped:  # resumed: show where we are at once
            self._flush(state, time.monotonic())

    def on_step_end(self, args, state, control, **kwargs):
        """Per step: a flag read for stops, a clock read, a few comparisons; a write only when due."""
        stopping.on_step_end(state, control)
        if not state.is_world_process_zero:
            return
        now = time.monotonic()
        if self._last_step_at is not None:
            self._step_seconds = now - self._last_step_at
        self._last_step_at = now
        self._stepped = True
        self._pause_follows = bool(
            control.should_evaluate or control.should_save or control.should_training_stop or 0 < state.max_steps <= state.global_step
        )
        if control.should_log:
            return  # on_log comes next in this same step, with the new metrics: it decides
        self._maybe_flush(state, now)

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Keep the entry for the next write (encoding and writing wait for ``_flush``); in a trial
        that prunes itself, report the objective and stop here if the pruner says so."""
        if self.pruning is not None and logs:
            self._prune(self.pruning, state, control, logs)
        if not state.is_world_process_zero or not logs:
            return
        entry = {"step": state.global_step, "epoch": clean_number(state.epoch), "time": time.time(), "attempt": self.attempt}
        entry.update({k: (clean_number(v) if not isinstance(v, str) else v) for k, v in logs.items()})
        self._pending.append(entry)
        train, evals = categorize(logs, self.custom_metrics)
        self.train_metrics.update(train)
        self.eval_metrics.update(evals)
        now = time.monotonic()
        if self._stepped:
            self._maybe_flush(state, now)
        else:
            self._flush(state, now)  # logged before any step (e.g. an evaluation first): nothing to wait for

    def _prune(self, trial: pruning.TrialPruning, state, control, logs: dict[str, Any]) -> None:
        """Every rank: rank 0 reports the objective's value and asks the pruner; all stop together."""
        key = trial.key(logs)
        if key is None:
            return
        why = trial.report(state.global_step, logs[key]) if state.is_world_process_zero else None
        if stopping.any_rank(why is not None):
            stopping.stop_now(control, why or "pruned by the optimizer")
            if state.is_world_process_zero:
                self._event("Pruned", f"{why}: a checkpoint is saved and training ends", {"step": state.global_step, "metric": key, "value": clean_number(logs[key])})

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero:
            return
        clean = {k: clean_number(v) for k, v in (metrics or {}).items()}
        self._flush(state, time.monotonic())
        self._event("Evaluate", f"evaluation at step {state.global_step}", {"step": state.global_step, "metrics": clean})

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        path = os.path.abspath(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))
        self._flush(state, time.monotonic())
        self._event("Save", f"checkpoint saved at step {state.global_step}", {"step": state.global_step, "checkpoint": path})

    def on_train_end(self, args, state, control, **kwargs):
        stopping.on_train_end()
        # Every rank: training is over here, whatever follows (a hang at exit is then not a failure).
        done.mark("train_end", step=state.global_step, completed=bool(state.max_steps) and state.global_step >= state.max_steps)
        if not state.is_world_process_zero:
            return
        finished = bool(state.max_steps) and state.global_step >= state.max_steps
        # Training is over even when it ended early (EarlyStoppingCallback, should_training_stop, a
        # stop request): nothing remains to estimate, the step is where it stopped.
        self._flush(state, time.monotonic(), finished=True)
        self._event(
            "TrainEnd",
            f"training ended at step {state.global_step}/{state.max_steps}",
            {
                "global_step": state.global_step,
                "max_steps": state.max_steps,
                "total_flos": clean_number(state.total_flos),
                "best_metric": clean_number(state.best_metric),
                "best_model_checkpoint": os.path.abspath(state.best_model_checkpoint) if state.best_model_checkpoint else None,
                "completed": finished,
                "stopped": stopping.requested(),
                "stop_reason": stopping.reason(),
                "progress": self.progress,
            },
        )

    # ---- writing -----------------------------------------------------------------------
    def _maybe_flush(self, state, now: float) -> None:
        """Write now if waiting for the next step would leave the reported state older than
        ``write_interval``: the interval is up, the step is slow, or a pause comes next."""
        wait = math.inf if self._pause_follows else self._step_seconds
        if now + wait - self._last_write >= self.write_interval:
            self._flush(state, now)

    def _flush(self, state, now: float, finished: bool = False) -> None:
        """Hand the pending logged entries and (once a step ran) the progress to the sink."""
        if self._pending:
            entries, self._pending = self._pending, []
            sinks.send_metrics(self.sink, entries)
        self._last_write = now
        if not (self._stepped or finished):
            return
        self.rate.add(state.global_step, now)
        self.progress = build_progress(
            step=state.global_step,
            max_steps=state.max_steps,
            epoch=state.epoch,
            num_train_epochs=state.num_train_epochs,
            steps_per_second=self.rate.steps_per_second(),
            samples_per_step=self.samples_per_step,
            train_metrics=self.train_metrics,
            eval_metrics=self.eval_metrics,
            finished=finished,
        )
        self.sink.progress(self.progress)

    def _event(self, reason: str, message: str, data: dict[str, Any]) -> None:
        self.sink.event({"time": time.time(), "reason": reason, "message": message, "data": data, "attempt": self.attempt})
