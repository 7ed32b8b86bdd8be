"""``OptimizerClient``: hyperparameter optimization with Kubeflow's names, on Optuna, trials as jobs.

The facade: checks and creation are in ``optimizer.submit``, the optimizer process seen from
outside in ``optimizer.process``, the records read back as ``OptimizationJob`` in ``optimizer.view``;
the optimizer process itself is ``optimizer.loop``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from trainjob import contract
from trainjob.client import TrainerClient
from trainjob.config import LocalBackendConfig
from trainjob.errors import JobFailedError, JobNotFoundError, JobStateError, JobTimeoutError, Problem, ValidationError
from trainjob.optimizer import process, spec, state, submit, view
from trainjob.optimizer.types import GridSearch, Objective, OptimizationJob, OptimizationStatus, Result, TrialConfig, TrainJobTemplate
from trainjob.types import Event


class OptimizerClient:
    """Hyperparameter optimization: a study whose trials are trainjob jobs (Kubeflow's ``OptimizerClient``).

    ``backend_config``: where the trials run, as for ``TrainerClient`` (``None``: this machine). The
    study is an Optuna SQLite storage under ``$TRAINJOB_HOME`` (``LocalBackendConfig(home=...)``
    when given), driven by a detached optimizer process per optimization.
    """

    def __init__(self, backend_config: Any = None) -> None:
        self.trainer_client = TrainerClient(backend_config)
        self.backend_config = self.trainer_client.backend_config
        cfg = self.backend_config
        self.home = Path(cfg.home).expanduser() if isinstance(cfg, LocalBackendConfig) and cfg.home else contract.home()

    @property
    def _storage(self) -> Any:
        return state.storage(self.home)

    # ---- submit ----------------------------------------------------------------------------------
    def optimize(
        self,
        trial_template: TrainJobTemplate | None = None,
        *,
        trial_config: TrialConfig | None = None,
        search_space: dict[str, Any] | None = None,
        objectives: list[Objective] | None = None,
        algorithm: Any = None,
        early_stopping: Any = None,
        resume: str | None = None,
        name: str | None = None,
    ) -> str:
        """Start an optimization and return its name at once (Kubeflow's signature, plus trainjob's).

        Every trial is a job running ``trial_template``'s trainer with the sampled values as
        ``func_args`` entries, typed (a script gets ``--name=value``). ``objectives``: default
        ``[Objective("loss", "minimize")]``; ``algorithm``: ``RandomSearch()`` (default),
        ``GridSearch()``, ``TPE()`` or any Optuna sampler; ``early_stopping``: ``None`` (default),
        ``Median()``, ``Hyperband()``, ``SuccessiveHalving()`` or any Optuna pruner, applied at every
        value of the objective a running trial logs. trainjob's keywords: ``name`` (default 12
        random characters), and ``resume``: the name of an ended or interrupted optimization to
        continue: running trials are adopted, finished ones kept; ``trial_config`` (more trials),
        ``trial_template``, ``algorithm`` and ``early_stopping`` may be given anew. Every problem
        with the arguments is reported at once, before anything is created.
        """
        if resume is not None:
            return self._resume(resume, trial_template, trial_config, search_space, objectives, algorithm, early_stopping)
        objectives = [Objective()] if objectives is None else objectives
        trial_config = TrialConfig() if trial_config is None else trial_config
        spaces, problems = submit.new_problems(self.trainer_client, self._storage, trial_template, trial_config, search_space, objectives, algorithm, early_stopping, name)
        if problems:
            raise ValidationError(problems, "optimize()")
        assert trial_template is not None
        payload = submit.pickle_template(trial_template, algorithm, early_stopping, self.backend_config)
        if isinstance(algorithm, GridSearch):
            trial_config = TrialConfig(min(trial_config.num_trials, spec.grid_size(spaces)), trial_config.parallel_trials, trial_config.max_failed_trials)
        name = name or submit.new_name()
        files = state.Files.of(self.home, name)
        sid = submit.create(self._storage, files, name, spaces, objectives, trial_config, algorithm, early_stopping, self.trainer_client.backend.name, payload)
        try:
            process.start(self.home, self._storage, name, sid, files)
        except BaseException:
            submit.discard(self._storage, files, name)
            raise
        return name

    def _resume(self, name: str, template: Any, trial_config: Any, search_space: Any, objectives: Any, algorithm: Any, early_stopping: Any) -> str:
        import cloudpickle

        sid = self._sid(name)
        attrs = self._storage.get_study_user_attrs(sid)
        status = self._reconcile(name, sid, attrs)
        if not status.is_terminal:
            raise JobStateError(f"optimization {name} is {status.value}: its optimizer process runs; stop it (stop_job) before resuming")
        s = dict(attrs[state.SPEC_ATTR])
        problems = submit.resume_problems(self.trainer_client, s, template, trial_config, search_space, objectives, algorithm, early_stopping)
        if problems:
            raise ValidationError(problems, "optimize(resume=...)")
        files = state.Files.of(self.home, name)
        old = cloudpickle.loads(files.template.read_bytes())
        payload = submit.pickle_template(
            template or TrainJobTemplate(old["trainer"], old["runtime"], old["initializer"]),
            algorithm if algorithm is not None else old["algorithm"],
            early_stopping if early_stopping is not None else old["early_stopping"],
            self.backend_config,
        )
        files.template.write_bytes(payload)
        if trial_config is not None:
            s["trial_config"] = vars(trial_config).copy()
            self._storage.set_study_user_attr(sid, state.SPEC_ATTR, s)
        files.stop.unlink(missing_ok=True)
        self._storage.set_study_user_attr(sid, "status", OptimizationStatus.CREATED.value)
        self._storage.set_study_user_attr(sid, "message", "resumed")
        state.add_event(files, "Resumed", f"resumed (it was {status.value})")
        process.start(self.home, self._storage, name, sid, files)
        return name

    # ---- read --------------------------------------------------------------------------------------
    def list_jobs(self) -> list[OptimizationJob]:
        """Every optimization, oldest first."""
        names = [s.study_name for s in self._storage.get_all_studies() if state.SPEC_ATTR in s.user_attrs]
        return sorted((self.get_job(n) for n in names), key=lambda j: j.creation_timestamp)

    def get_job(self, name: str) -> OptimizationJob:
        """The optimization's spec, status and trials (each with its values, status, metrics, job)."""
        sid = self._sid(name)
        status = self._reconcile(name, sid, self._storage.get_study_user_attrs(sid))
        return view.optimization_job(self._storage, self.trainer_client, name, sid, status)

    def get_best_results(self, name: str) -> Result | None:
        """The best completed trial's parameters and metrics; None before any trial completed."""
        best = self.get_job(name).best_trial
        if best is None:
            return None
        return Result(parameters=dict(best.parameters), metrics=list(best.metrics), trial_name=best.name, value=best.value)

    def get_job_logs(self, name: str, trial_name: str | None = None, follow: bool = False) -> Iterator[str]:
        """Log lines of one trial's job (rank 0): ``trial_name`` (a ``Trial.name``), else the best
        trial's, else the first trial's. ``follow=True`` streams until that job ends."""
        job = self.get_job(name)
        if trial_name is None:
            chosen = job.best_trial or next((t for t in job.trials if t.trainjob is not None), None)
            if chosen is None:
                return iter(())
            trial_name = chosen.name
        elif trial_name not in {t.name for t in job.trials}:
            known = ", ".join(t.name for t in job.trials) or "none yet"
            raise ValidationError([Problem("trial_name", trial_name, f"a trial of {name}: {known}")], "get_job_logs()")
        return self.trainer_client.get_job_logs(trial_name, follow=follow)

    def get_job_events(self, name: str) -> list[Event]:
        """What happened to the optimization and its trials (created, pruned, failed...), in order."""
        self._sid(name)
        return state.read_events(state.Files.of(self.home, name), name)

    def wait_for_job_status(
        self,
        name: str,
        status: set[str] = frozenset({OptimizationStatus.COMPLETE.value}),
        timeout: float = 3600,
        polling_interval: float = 2,
        callbacks: list[Callable[[OptimizationJob], None]] | None = None,
    ) -> OptimizationJob:
        """Block until the optimization reaches one of ``status``; an end it can no longer leave
        raises (``JobFailedError`` when Failed or Stopped, ``JobStateError`` when Complete unwanted),
        ``JobTimeoutError`` after ``timeout`` seconds.

        Each look reads the optimization's status only (the whole ``OptimizationJob``, every trial's
        job included, is built for ``callbacks`` and for the answer), and between looks it waits on
        the optimizer process, so the end is seen the moment that process exits, not up to
        ``polling_interval`` later."""
        allowed = {s.value for s in OptimizationStatus}
        wanted = {str(getattr(s, "value", s)) for s in ([status] if isinstance(status, str) else status)}
        problems = []
        if not wanted or not wanted <= allowed:
            problems.append(Problem("status", sorted(wanted), f"a subset of {sorted(allowed)}"))
        if isinstance(polling_interval, bool) or not isinstance(polling_interval, (int, float)) or polling_interval <= 0:
            problems.append(Problem("polling_interval", polling_interval, "a positive number of seconds"))
        if problems:
            raise ValidationError(problems, "wait_for_job_status()")
        deadline = time.monotonic() + timeout
        sid = self._sid(name)
        while True:
            attrs = self._storage.get_study_user_attrs(sid)
            current = self._reconcile(name, sid, attrs)
            if callbacks or current.value in wanted or current.is_terminal:
                job = self.get_job(name)
                for cb in callbacks or ():
                    cb(job)
                current = job.status
                if current.value in wanted:
                    return job
                if current == OptimizationStatus.COMPLETE:
                    raise JobStateError(f"optimization {name} ended Complete without reaching {', '.join(sorted(wanted))}")
                if current.is_terminal:
                    raise JobFailedError(name, current.value, {"type": f"Optimization{current.value}", "message": job.message or ""})
            if time.monotonic() >= deadline:
                raise JobTimeoutError(name, sorted(wanted), current.value, timeout)
            process.wait(attrs, max(0.0, min(polling_interval, deadline - time.monotonic())))

    # ---- control ------------------------------------------------------------------------------------
    def stop_job(self, name: str) -> None:
        """Stop the optimization: running trials are stopped gracefully (each saves a checkpoint), no new
        one starts, and it ends Stopped. ``optimize(resume=name)`` later runs the stopped trials again
        with the same values, from their checkpoints. Returns at once; a no-op on an ended one."""
        sid = self._sid(name)
        files = state.Files.of(self.home, name)
        if self._reconcile(name, sid, self._storage.get_study_user_attrs(sid)).is_terminal:
            return
        if not files.stop.exists():
            files.stop.touch()
            state.add_event(files, "StopRequested", "stop requested by the user")

    def delete_job(self, name: str) -> None:
        """End the optimizer process, delete every trial's job (processes and files), the study and its folder."""
        import optuna

        sid = self._sid(name)
        process.kill(self._storage.get_study_user_attrs(sid))  # first, so it starts no trial meanwhile
        for t in self._storage.get_all_trials(sid, deepcopy=False):
            job = t.user_attrs.get("job")
            if job:
                try:
                    self.trainer_client.delete_job(job)
                except JobNotFoundError:
                    pass
        optuna.delete_study(study_name=name, storage=self._storage)
        shutil.rmtree(state.Files.of(self.home, name).root, ignore_errors=True)

    # ---- helpers ------------------------------------------------------------------------------------
    def _sid(self, name: str) -> int:
        sid = state.study_id(self._storage, name) if isinstance(name, str) else None
        if sid is None:
            raise JobNotFoundError(name)
        return sid

    def _reconcile(self, name: str, sid: int, attrs: dict[str, Any]) -> OptimizationStatus:
        return process.reconcile(self.home, self._storage, name, sid, attrs)

