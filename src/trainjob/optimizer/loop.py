"""The optimizer process: runs one optimization to its end, detached from the client that started it.

``python -m trainjob.optimizer.loop NAME HOME``, started by ``OptimizerClient.optimize`` in its own
session (like a job's supervisor), so it survives the client and its terminal. When a trial's job
ends, and every ``POLL_INTERVAL`` (``QUIET_INTERVAL`` when it has no values to judge), it:

1. watches each running trial's job: new values of the objective metric in the job's metrics
   history are reported to Optuna, and when the pruner says so the job is stopped gracefully
   (``stop_job``: a checkpoint is saved) and the trial ends ``Pruned``; an ended job ends its trial
   (Complete with the objective value, Failed with the job's error, Stopped);
2. ends the optimization when asked to stop (the ``stop`` file), when more than
   ``max_failed_trials`` trials failed, or when ``num_trials`` trials are done;
3. starts new trials (``study.ask``) while fewer than ``parallel_trials`` run. Trials are ordinary
   jobs: the local scheduler queues them when their resources are busy.

Everything it knows is in the study and the jobs' store, none of it in memory only: killed (even
with SIGKILL), it is continued by ``optimize(..., resume=NAME)``, which starts a new one that adopts
the running trials and never repeats a finished one.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from trainjob.errors import JobNotFoundError, TrainJobError
from trainjob.optimizer import spec, state
from trainjob.optimizer.types import OptimizationStatus, TrialConfig, TrialStatus
from trainjob.types import JobStatus

POLL_INTERVAL = 0.5  # seconds between passes while this process judges a running trial's values (pruning)
QUIET_INTERVAL = 2.0  # otherwise (no early stopping, or trials that prune themselves): a trial's end wakes it anyway


def trial_trainer(trainer: Any, params: dict[str, Any]) -> Any:
    """The template's trainer with a trial's values: ``func_args`` entries for a function (typed, as
    sampled); for a script or module, ``${trialParameters.NAME}`` in ``script_args`` is replaced
    (Katib's placeholder), else ``--NAME=VALUE`` is appended."""
    if trainer.func is not None:
        return dataclasses.replace(trainer, func_args={**(trainer.func_args or {}), **params})
    args = list(trainer.script_args or [])
    for k, v in params.items():
        placeholder = f"${{trialParameters.{k}}}"
        if any(placeholder in a for a in args):
            args = [a.replace(placeholder, str(v)) for a in args]
        else:
            args.append(f"--{k}={v}")
    return dataclasses.replace(trainer, script_args=args)


class Loop:
    def __init__(self, name: str, home: Path) -> None:
        import cloudpickle
        import optuna

        from trainjob.client import TrainerClient

        self.name, self.home = name, home
        self.files = state.Files.of(home, name)
        self.template = cloudpickle.loads(self.files.template.read_bytes())
        self.client = TrainerClient(self.template["backend_config"])
        self.storage = state.storage(home)
        sid = state.study_id(self.storage, name)
        if sid is None:
            raise SystemExit(f"no optimization named {name!r} in {home}")
        self.sid = sid
        attrs = self.storage.get_study_user_attrs(sid)
        s = attrs[state.SPEC_ATTR]
        self.spaces = {k: spec.space_from_json(v) for k, v in s["search_space"].items()}
        self.dists = spec.distributions(self.spaces)
        self.objective = s["objectives"][0]
        self.extra_metrics = [o["metric"] for o in s["objectives"][1:]]
        self.config = TrialConfig(**s["trial_config"])
        n = len(self.storage.get_all_trials(sid, deepcopy=False))
        self.study = optuna.load_study(
            study_name=name, storage=self.storage, sampler=spec.sampler(self.template["algorithm"], n), pruner=spec.pruner(self.template["early_stopping"])
        )
        self.prune_in_trial = self._write_pruner()
        self.ending: tuple[OptimizationStatus, str] | None = None
        self.entries: dict[str, list[dict[str, Any]]] = {}  # each watched job's metrics history, read incrementally

    # ---- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        import os

        from trainjob.backends.local import procs

        self._set("loop", {"pid": os.getpid(), "start": procs.start_time(os.getpid()), "host": procs.this_host()})
        self._set("status", OptimizationStatus.RUNNING.value)
        self._set("message", None)
        state.add_event(self.files, "Running", f"optimizer process {os.getpid()} started")
        try:
            while not self.step():
                self._wait()
        except BaseException as e:
            msg = f"the optimizer process failed: {type(e).__name__}: {e}"
            self._finish(OptimizationStatus.FAILED, msg)
            traceback.print_exc()
            raise

    def step(self) -> bool:
        """One pass; True once the optimization has ended."""
        from optuna.trial import TrialState

        for t in self._trials(TrialState.RUNNING):
            self._watch(t)
        trials = self._trials()
        active = [t for t in trials if t.state == TrialState.RUNNING]
        failed = [t for t in trials if t.user_attrs.get("status") == TrialStatus.FAILED.value]
        if self.ending is None and self.files.stop.exists():
            self.ending = (OptimizationStatus.STOPPED, "stopped by the user")
        limit = self.config.max_failed_trials
        if self.ending is None and limit is not None and len(failed) > limit:
            first = failed[0].user_attrs.get("error") or {}
            self.ending = (
                OptimizationStatus.FAILED,
                f"{len(failed)} trials failed, more than max_failed_trials={limit}; first: trial {failed[0].number}: {first.get('type', 'Error')}: {first.get('message', '')}",
            )
        if self.ending is not None:
            if not active:
                self._finish(*self.ending)
                return True
            for t in active:  # ask the running trials to stop (graceful: each saves a checkpoint)
                self._stop_trial_job(t)
            return False
        counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) or t.user_attrs.get("status") == TrialStatus.FAILED.value]
        running = len(active)
        while running < self.config.parallel_trials and len(counted) < self.config.num_trials:
            trial = self.study.ask(self.dists)
            frozen = self.storage.get_trial(trial._trial_id)
            self._submit(frozen)
            running += 1
            counted.append(frozen)
        if running == 0 and len(counted) >= self.config.num_trials:
            done = [t for t in trials if t.state == TrialState.COMPLETE]
            if not done:
                first = failed[0].user_attrs.get("error") if failed else None
                why = f"; first error: {first.get('type')}: {first.get('message')}" if first else ""
                self._finish(OptimizationStatus.FAILED, f"no trial completed ({len(trials)} ran){why}")
            else:
                self._finish(OptimizationStatus.COMPLETE, f"{len(counted)} trials done")
            return True
        return False

    def _wait(self) -> None:
        """Until the next pass, or less when a running trial's job ends first, so the next trial
        starts as soon as the previous one's result is known (not on a poll tick). The pass is due
        after ``POLL_INTERVAL`` when this process must judge a running trial's values itself (early
        stopping, a trial that does not prune itself), else after ``QUIET_INTERVAL``: passes that
        only copy values a trial logged cost it CPU it trains with (~0.06-0.1 s of a 1-s trial on
        2 cores at 0.5 s), and a stop request waits at most that long."""
        from optuna.trial import TrialState

        running = [t for t in self._trials(TrialState.RUNNING) if t.user_attrs.get("submitted")]
        judged_here = self.template["early_stopping"] is not None and any(not t.user_attrs.get("prunes_itself") for t in running)
        interval = POLL_INTERVAL if judged_here or self.ending is not None else QUIET_INTERVAL
        if running:
            self.client.backend.wait_for_any_end([t.user_attrs["job"] for t in running], interval)
        else:
            time.sleep(POLL_INTERVAL)

    # ---- trials -----------------------------------------------------------------------------
    def _write_pruner(self) -> bool:
        """Pickle the pruner for trials that prune themselves; False where they cannot: no early
        stopping, trials not on this machine (Ray), or a pruner that cannot be pickled."""
        import cloudpickle

        if self.template["early_stopping"] is None or self.client.backend.name != "local":
            return False
        try:
            data = cloudpickle.dumps(self.study.pruner)
        except Exception as e:  # noqa: BLE001 - whatever a custom pruner's reducer raises
            print(f"the pruner cannot be pickled ({type(e).__name__}: {e}): trials are judged by this process", file=sys.stderr, flush=True)
            return False
        tmp = self.files.pruner.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(self.files.pruner)
        return True

    def _prunes_itself(self, trainer: Any, t: Any) -> Any:
        """The trainer with ``TRAINJOB_PRUNING`` when the trial can prune itself at its evaluations
        (an instrumented Trainer on this machine, see ``runtime.pruning``); else as it is."""
        import json

        from trainjob import contract

        if not self.prune_in_trial or not getattr(trainer, "enable_progression_tracking", False):
            return trainer
        link = {"storage": state.storage_url(self.home), "study": self.name, "trial_id": t._trial_id, "number": t.number,
                "metric": self.objective["metric"], "pruner": str(self.files.pruner)}  # fmt: skip
        self._trial_attr(t, "prunes_itself", True)
        return dataclasses.replace(trainer, env={**(trainer.env or {}), contract.PRUNING: json.dumps(link)})

    def _submit(self, t: Any) -> None:
        from trainjob.options import Labels, Name

        job = f"{self.name}-{t.number}"
        self._trial_attr(t, "job", job)
        self._trial_attr(t, "status", TrialStatus.CREATED.value)
        resume_from = t.user_attrs.get("resume_from")
        try:
            try:
                self.client.get_job(job)  # submitted by a process that died before it noted it: adopt it
            except JobNotFoundError:
                self.client.train(
                    runtime=self.template["runtime"],
                    initializer=self.template["initializer"],
                    trainer=self._prunes_itself(trial_trainer(self.template["trainer"], dict(t.params)), t),
                    options=[Name(job), Labels({state.LABEL: self.name, state.TRIAL_LABEL: str(t.number)})],
                    resume=resume_from,
                )
        except (TrainJobError, ValueError, OSError) as e:
            error = {"type": type(e).__name__, "message": str(e)}
            self._end_trial(t, TrialStatus.FAILED, error=error)
            return
        self._trial_attr(t, "submitted", True)
        extra = f", continuing {resume_from}" if resume_from else ""
        state.add_event(self.files, "TrialCreated", f"trial {t.number} started as job {job} with {t.params}{extra}", trial=job, data={"parameters": t.params})

    def _watch(self, t: Any) -> None:
        if not t.user_attrs.get("submitted"):
            self._submit(t)
            return
        name = t.user_attrs["job"]
        try:
            job = self.client.get_job(name)
            entries = self.entries.setdefault(name, [])
            entries.extend(self.client.get_job_metrics(name, after=len(entries)))
        except JobNotFoundError:
            self._end_trial(t, TrialStatus.FAILED, error={"type": "JobDeleted", "message": f"the trial's job {name} was deleted"})
            return
        if not job.status.is_terminal and t.user_attrs.get("status") != job.status.value:
            self._trial_attr(t, "status", job.status.value)
        if self.ending is not None and not job.status.is_terminal:
            self._stop_trial_job(t)
        if job.status.is_terminal and t.user_attrs.get("prunes_itself"):
            t = self.storage.get_trial(t._trial_id)  # what its rank 0 wrote up to its end (values, pruned_step)
        series = spec.metric_series(self.objective["metric"], entries)
        pruning = t.user_attrs.get("pruned_step") is not None
        if t.user_attrs.get("prunes_itself") and not job.status.is_terminal:
            pass  # its rank 0 reports each value and asks the pruner (runtime.pruning); after it, values it missed are filled in
        else:
            self._report(t, name, job, series, pruning)
            pruning = t.user_attrs.get("pruned_step") is not None
        if job.status.is_terminal:
            self._finish_trial(t, job.status, entries, series, pruning)

    def _report(self, t: Any, name: str, job: Any, series: list[tuple[int, float]], pruning: bool) -> None:
        """Report the values Optuna does not have yet; while the job runs, stop it if the pruner says so."""
        import optuna

        trial = optuna.trial.Trial(self.study, t._trial_id)
        for step, value in series:
            if step in t.intermediate_values:
                continue
            trial.report(value, step)
            if not pruning and self.ending is None and not job.status.is_terminal and not t.user_attrs.get("prunes_itself") and trial.should_prune():
                self.client.stop_job(name)
                self._trial_attr(t, "pruned_step", step)
                pruning = True
                state.add_event(self.files, "TrialPruning", f"trial {t.number}: {self.objective['metric']}={value:g} at step {step}: stopping its job (a checkpoint is saved)", trial=name, data={"step": step, "value": value})
                break

    def _finish_trial(self, t: Any, status: JobStatus, entries: list[dict], series: list[tuple[int, float]], pruning: bool) -> None:
        import math

        name = t.user_attrs["job"]
        metrics = [spec.summarize(self.objective["metric"], series)]
        for m in self.extra_metrics:
            metrics.append(spec.summarize(m, spec.metric_series(m, entries)))
        self._trial_attr(t, "metrics", [dataclasses.asdict(m) for m in metrics])
        if pruning:
            self._end_trial(t, TrialStatus.PRUNED)
        elif status == JobStatus.COMPLETE:
            value = spec.pick(series, self.objective["direction"], self.objective["strategy"])
            if value is None:
                value = spec.value_from_return(self.objective["metric"], self.client.get_job_result(name).return_value)
                if value is not None:
                    series = [(0, value)]
            if value is None:
                series = spec.stdout_series(self.objective["metric"], list(self.client.get_job_logs(name)))
                value = spec.pick(series, self.objective["direction"], self.objective["strategy"])
            if series:  # a value from the return value or stdout: the trial's metrics say so too
                metrics[0] = spec.summarize(self.objective["metric"], series)
                self._trial_attr(t, "metrics", [dataclasses.asdict(m) for m in metrics])
            if value is None:
                msg = f"the job logged no {self.objective['metric']!r} (nor eval_{self.objective['metric']}): not in its metrics history, return value or stdout (metric=value)"
                self._end_trial(t, TrialStatus.FAILED, error={"type": "ObjectiveNotFound", "message": msg})
            elif math.isnan(value) or math.isinf(value):
                self._end_trial(t, TrialStatus.FAILED, error={"type": "ObjectiveNotFinite", "message": f"{self.objective['metric']} is {value} (training diverged?)"})
            else:
                self._end_trial(t, TrialStatus.COMPLETE, value=value)
        elif status == JobStatus.FAILED:
            self._end_trial(t, TrialStatus.FAILED, error=self.client.get_job_result(name).error or {"type": "JobFailed", "message": f"job {name} failed"})
        else:
            self._end_trial(t, TrialStatus.STOPPED)
            if self.ending is not None and self.ending[0] == OptimizationStatus.STOPPED:
                # A resume runs it again with the same values, continuing from its checkpoint.
                self.study.enqueue_trial(dict(t.params), user_attrs={"resume_from": name}, skip_if_exists=False)

    def _end_trial(self, t: Any, status: TrialStatus, value: float | None = None, error: dict | None = None) -> None:
        from optuna.trial import TrialState

        name = t.user_attrs.get("job")
        if error is not None:
            self._trial_attr(t, "error", error)
        self._trial_attr(t, "status", status.value)
        if status == TrialStatus.COMPLETE:
            self.study.tell(t.number, value)
            msg = f"trial {t.number} complete: {self.objective['metric']}={value:g}"
        elif status == TrialStatus.PRUNED:
            self.study.tell(t.number, state=TrialState.PRUNED)
            msg = f"trial {t.number} pruned at step {t.user_attrs.get('pruned_step')}"
        else:
            self.study.tell(t.number, state=TrialState.FAIL)
            msg = f"trial {t.number} {status.value.lower()}" + (f": {error.get('type')}: {error.get('message')}" if error else "")
        state.add_event(self.files, f"Trial{status.value}", msg, trial=name, data={"value": value, "error": error})

    def _stop_trial_job(self, t: Any) -> None:
        if t.user_attrs.get("stop_requested") or not t.user_attrs.get("submitted"):
            return
        try:
            self.client.stop_job(t.user_attrs["job"])
        except JobNotFoundError:
            pass
        self._trial_attr(t, "stop_requested", True)

    # ---- records ----------------------------------------------------------------------------
    def _trials(self, *states: Any) -> list[Any]:
        return self.storage.get_all_trials(self.sid, deepcopy=False, states=states or None)

    def _trial_attr(self, t: Any, key: str, value: Any) -> None:
        self.storage.set_trial_user_attr(t._trial_id, key, value)
        t.user_attrs[key] = value  # the snapshot in hand sees it too

    def _set(self, key: str, value: Any) -> None:
        self.storage.set_study_user_attr(self.sid, key, value)

    def _finish(self, status: OptimizationStatus, message: str) -> None:
        self._set("status", status.value)
        self._set("message", message)
        self._set("finished_at", time.time())
        state.add_event(self.files, status.value, message)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    name, home = argv[0], Path(argv[1])
    Loop(name, home).run()


if __name__ == "__main__":
    main()
