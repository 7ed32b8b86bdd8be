"""``OptimizerClient``: hyperparameter optimization with Kubeflow's names, on Optuna, trials as jobs."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from trainjob import contract
from trainjob.client import TrainerClient
from trainjob.config import LocalBackendConfig
from trainjob.errors import JobFailedError, JobNotFoundError, JobStateError, JobTimeoutError, Problem, SerializationError, ValidationError
from trainjob.optimizer import spec, state
from trainjob.optimizer.types import (
    GridSearch,
    Hyperband,
    Median,
    Objective,
    OptimizationJob,
    OptimizationStatus,
    RandomSearch,
    Result,
    SuccessiveHalving,
    TPE,
    Trial,
    TrialConfig,
    TrialStatus,
    TrainJobTemplate,
)
from trainjob.trainers import CustomTrainer
from trainjob.types import Event

_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
NAME_MAX = 50  # a trial's job is "<name>-<number>": a job name has at most 63 characters
LOOP_START_GRACE = 60.0  # seconds a new optimization may wait for its optimizer process to record itself
_ALGORITHMS = {"random": RandomSearch, "grid": GridSearch, "tpe": TPE}
_RULES = {"median": Median, "hyperband": Hyperband, "successive_halving": SuccessiveHalving}


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
        problems = self._template_problems(trial_template)
        spaces, space_problems = spec.search_space_problems(search_space, algorithm)
        problems += space_problems
        if not isinstance(objectives, (list, tuple)) or not objectives or not all(isinstance(o, Objective) for o in objectives):
            problems.append(Problem("objectives", objectives, 'a non-empty list of Objective(metric=..., direction=...), e.g. [Objective("eval_loss", "minimize")]'))
        if not isinstance(trial_config, TrialConfig):
            problems.append(Problem("trial_config", trial_config, "TrialConfig(num_trials=..., parallel_trials=..., max_failed_trials=...)"))
        problems += spec.algorithm_problems(algorithm) + spec.early_stopping_problems(early_stopping)
        if name is not None and (not isinstance(name, str) or len(name) > NAME_MAX or not _NAME.match(name)):
            problems.append(Problem("name", name, f"lower-case letters, digits and '-', starting with a letter, at most {NAME_MAX} characters"))
        elif name is not None and state.study_id(self._storage, name) is not None:
            problems.append(Problem("name", name, "a name no other optimization has (delete that one first, or resume=it)"))
        problems += _signature_problems(trial_template, spaces)
        if isinstance(algorithm, GridSearch) and not space_problems and spaces and spec.grid_size(spaces) > spec.GRID_LIMIT:
            problems.append(Problem("search_space", f"{spec.grid_size(spaces)} grid points", f"at most {spec.GRID_LIMIT} with GridSearch"))
        if problems:
            raise ValidationError(problems, "optimize()")
        assert trial_template is not None
        payload = self._pickle(trial_template, algorithm, early_stopping)
        if isinstance(algorithm, GridSearch):
            trial_config = TrialConfig(min(trial_config.num_trials, spec.grid_size(spaces)), trial_config.parallel_trials, trial_config.max_failed_trials)
        name = name or _new_name()
        import optuna

        files = state.Files.of(self.home, name)
        created = False
        try:
            optuna.create_study(study_name=name, storage=self._storage, direction=objectives[0].direction.value)
            created = True
            sid = self._storage.get_study_id_from_name(name)
            attrs = {
                state.SPEC_ATTR: {
                    "version": 1,
                    "search_space": {k: spec.space_to_json(v) for k, v in spaces.items()},
                    "objectives": [spec.objective_to_json(o) for o in objectives],
                    "trial_config": vars(trial_config).copy(),
                    "algorithm": spec.describe_algorithm(algorithm or RandomSearch()),
                    "early_stopping": spec.describe_early_stopping(early_stopping),
                    "backend": self.trainer_client.backend.name,
                    "created_at": time.time(),
                },
                "status": OptimizationStatus.CREATED.value,
                "message": None,
            }
            for k, v in attrs.items():
                self._storage.set_study_user_attr(sid, k, v)
            if isinstance(algorithm, GridSearch):
                study = optuna.load_study(study_name=name, storage=self._storage)
                for _, point in zip(range(trial_config.num_trials), spec.grid_points(spaces)):
                    study.enqueue_trial(point, skip_if_exists=False)
            files.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            files.template.write_bytes(payload)
            state.add_event(files, "Created", f"optimization created: {len(spaces)} parameter(s), {trial_config.num_trials} trial(s), {trial_config.parallel_trials} at once")
            self._start_loop(name, sid, files)
        except BaseException:
            if created:
                optuna.delete_study(study_name=name, storage=self._storage)
            shutil.rmtree(files.root, ignore_errors=True)
            raise
        return name

    def _template_problems(self, template: Any) -> list[Problem]:
        if not isinstance(template, TrainJobTemplate):
            return [Problem("trial_template", template, "TrainJobTemplate(trainer=CustomTrainer(...) or TransformersTrainer(...))")]
        problems = []
        if not isinstance(template.trainer, CustomTrainer):
            problems.append(Problem("trial_template.trainer", template.trainer, "a CustomTrainer(func=...) or TransformersTrainer(func=...)"))
        if template.runtime is not None:
            wanted = getattr(template.runtime, "name", template.runtime)
            known = [rt.name for rt in self.trainer_client.list_runtimes()]
            if wanted not in known:
                problems.append(Problem("trial_template.runtime", wanted, f"a runtime of this backend: {', '.join(map(repr, known))}"))
        return problems

    def _pickle(self, template: TrainJobTemplate, algorithm: Any, early_stopping: Any) -> bytes:
        """The template, algorithm and rule for the optimizer process (the user's own module by value,
        as ``train()`` does); a function that cannot travel is a ``SerializationError`` now."""
        import cloudpickle

        from trainjob.payload import _local_module, dumps_payload

        trainer = template.trainer
        if trainer.func is not None and not isinstance(trainer.func, str):
            dumps_payload(trainer.func, trainer.func_args)  # names the culprit if it cannot be pickled
        module = _local_module(trainer.func) if trainer.func is not None and not isinstance(trainer.func, str) else None
        if module is not None:
            cloudpickle.register_pickle_by_value(module)
        try:
            return cloudpickle.dumps(
                {"trainer": trainer, "runtime": template.runtime, "initializer": template.initializer, "backend_config": self.backend_config, "algorithm": algorithm, "early_stopping": early_stopping}
            )
        except Exception as e:  # whatever a reducer raises
            raise SerializationError([Problem("trial_template", template, f"serializable with cloudpickle ({type(e).__name__}: {e})")], "optimize()") from e
        finally:
            if module is not None:
                cloudpickle.unregister_pickle_by_value(module)

    def _start_loop(self, name: str, sid: int, files: state.Files) -> None:
        from trainjob.backends.local import procs

        env = dict(os.environ)
        env[contract.HOME] = str(self.home)
        argv = [sys.executable, "-m", "trainjob.optimizer.loop", name, str(self.home)]
        # cwd stays the caller's: trials record it as their submit folder
        pid, start = procs.start_detached(argv, log=files.log, env=env)
        self._storage.set_study_user_attr(sid, "loop", {"pid": pid, "start": start, "host": procs.this_host()})

    def _resume(self, name: str, template: Any, trial_config: Any, search_space: Any, objectives: Any, algorithm: Any, early_stopping: Any) -> str:
        import cloudpickle

        sid = self._sid(name)
        attrs = self._storage.get_study_user_attrs(sid)
        status = self._reconcile(name, sid, attrs)
        if not status.is_terminal:
            raise JobStateError(f"optimization {name} is {status.value}: its optimizer process runs; stop it (stop_job) before resuming")
        s = dict(attrs[state.SPEC_ATTR])
        problems = []
        if template is not None:
            problems += self._template_problems(template)
        if search_space is not None:
            spaces, space_problems = spec.search_space_problems(search_space, algorithm)
            problems += space_problems
            if not space_problems and {k: spec.space_to_json(v) for k, v in spaces.items()} != s["search_space"]:
                problems.append(Problem("search_space", search_space, "the optimization's own search space (it cannot change on resume), or None"))
        if objectives is not None and [spec.objective_to_json(o) for o in objectives] != s["objectives"]:
            problems.append(Problem("objectives", objectives, "the optimization's own objectives (they cannot change on resume), or None"))
        if trial_config is not None and not isinstance(trial_config, TrialConfig):
            problems.append(Problem("trial_config", trial_config, "TrialConfig(...) or None"))
        problems += spec.algorithm_problems(algorithm) + spec.early_stopping_problems(early_stopping)
        if problems:
            raise ValidationError(problems, "optimize(resume=...)")
        files = state.Files.of(self.home, name)
        old = cloudpickle.loads(files.template.read_bytes())
        payload = self._pickle(
            template or TrainJobTemplate(old["trainer"], old["runtime"], old["initializer"]),
            algorithm if algorithm is not None else old["algorithm"],
            early_stopping if early_stopping is not None else old["early_stopping"],
        )
        files.template.write_bytes(payload)
        if trial_config is not None:
            s["trial_config"] = vars(trial_config).copy()
            self._storage.set_study_user_attr(sid, state.SPEC_ATTR, s)
        files.stop.unlink(missing_ok=True)
        self._storage.set_study_user_attr(sid, "status", OptimizationStatus.CREATED.value)
        self._storage.set_study_user_attr(sid, "message", "resumed")
        state.add_event(files, "Resumed", f"resumed (it was {status.value})")
        self._start_loop(name, sid, files)
        return name

    # ---- read --------------------------------------------------------------------------------------
    def list_jobs(self) -> list[OptimizationJob]:
        """Every optimization, oldest first."""
        names = [s.study_name for s in self._storage.get_all_studies() if state.SPEC_ATTR in s.user_attrs]
        return sorted((self.get_job(n) for n in names), key=lambda j: j.creation_timestamp)

    def get_job(self, name: str) -> OptimizationJob:
        """The optimization's spec, status and trials (each with its values, status, metrics, job)."""
        from optuna.trial import TrialState

        from trainjob.backends.records import utc

        sid = self._sid(name)
        attrs = self._storage.get_study_user_attrs(sid)
        status = self._reconcile(name, sid, attrs)
        attrs = self._storage.get_study_user_attrs(sid)
        s = attrs[state.SPEC_ATTR]
        objectives = [Objective(**o) for o in s["objectives"]]
        trials = [self._trial(t, objectives[0]) for t in self._storage.get_all_trials(sid, deepcopy=False) if t.state != TrialState.WAITING]
        return OptimizationJob(
            name=name,
            search_space={k: spec.space_from_json(v) for k, v in s["search_space"].items()},
            objectives=objectives,
            algorithm=_rebuild(s["algorithm"], _ALGORITHMS),
            trial_config=TrialConfig(**s["trial_config"]),
            trials=trials,
            creation_timestamp=utc(s["created_at"]),
            status=status,
            early_stopping=_rebuild(s["early_stopping"], _RULES) if s.get("early_stopping") else None,
            message=attrs.get("message"),
            best_trial=_best(trials, objectives[0]),
        )

    def _trial(self, t: Any, objective: Objective) -> Trial:
        from optuna.trial import TrialState

        job_name = t.user_attrs.get("job")
        job = None
        if job_name:
            try:
                job = self.trainer_client.get_job(job_name)
            except JobNotFoundError:
                job = None
        recorded = TrialStatus(t.user_attrs.get("status", TrialStatus.CREATED.value))
        status = recorded if recorded.is_terminal or job is None else TrialStatus(job.status.value)
        steps = sorted(t.intermediate_values.items())
        value = t.value if t.state == TrialState.COMPLETE else (steps[-1][1] if steps and t.state == TrialState.PRUNED else None)
        from trainjob.optimizer.types import Metric

        metrics = [Metric(**m) for m in t.user_attrs.get("metrics") or []] or ([spec.summarize(objective.metric, steps)] if steps else [])
        return Trial(
            name=job_name or f"trial-{t.number}",
            parameters=dict(t.params),
            trainjob=job,
            metrics=metrics,
            number=t.number,
            status=status,
            value=None if value is None or math.isnan(value) else value,
            step=t.user_attrs.get("pruned_step") if status == TrialStatus.PRUNED else (steps[-1][0] if steps else None),
            error=t.user_attrs.get("error"),
        )

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
        ``JobTimeoutError`` after ``timeout`` seconds."""
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
        while True:
            job = self.get_job(name)
            for cb in callbacks or ():
                cb(job)
            if job.status.value in wanted:
                return job
            if job.status == OptimizationStatus.COMPLETE:
                raise JobStateError(f"optimization {name} ended Complete without reaching {', '.join(sorted(wanted))}")
            if job.status.is_terminal:
                raise JobFailedError(name, job.status.value, {"type": f"Optimization{job.status.value}", "message": job.message or ""})
            if time.monotonic() >= deadline:
                raise JobTimeoutError(name, sorted(wanted), job.status.value, timeout)
            time.sleep(max(0.0, min(polling_interval, deadline - time.monotonic())))

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

        from trainjob.backends.local import procs

        sid = self._sid(name)
        attrs = self._storage.get_study_user_attrs(sid)
        loop = attrs.get("loop") or {}
        p = procs.process(loop.get("pid"), loop.get("start")) if loop.get("host") in (None, procs.this_host()) else None
        if p is not None:
            procs.kill_tree([p], grace=2.0, sig=signal.SIGKILL)  # first, so it starts no trial meanwhile
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
        """The recorded status; one whose optimizer process is gone is recorded Failed, saying how to resume."""
        from trainjob.backends.local import procs

        status = OptimizationStatus(attrs.get("status", OptimizationStatus.CREATED.value))
        if status.is_terminal:
            return status
        loop = attrs.get("loop") or {}
        if loop.get("host") not in (None, procs.this_host()) or procs.is_alive(loop.get("pid"), loop.get("start")):
            return status
        if not loop.get("pid") and time.time() - attrs[state.SPEC_ATTR]["created_at"] < LOOP_START_GRACE:
            return status
        fresh = self._storage.get_study_user_attrs(sid)  # it may have finished between the two reads
        if OptimizationStatus(fresh.get("status", "Created")).is_terminal:
            return OptimizationStatus(fresh["status"])
        msg = f"its optimizer process (pid {loop.get('pid')}) ended before the optimization did; continue it with optimize(..., resume={name!r}) or `trainjob optimize --resume {name}`"
        self._storage.set_study_user_attr(sid, "status", OptimizationStatus.FAILED.value)
        self._storage.set_study_user_attr(sid, "message", msg)
        state.add_event(state.Files.of(self.home, name), "OptimizerLost", msg)
        return OptimizationStatus.FAILED


def _signature_problems(template: Any, spaces: dict[str, Any]) -> list[Problem]:
    """A searched name the trial function cannot take would fail every trial: say so now."""
    import inspect

    func = getattr(getattr(template, "trainer", None), "func", None)
    if not callable(func):
        return []
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return []
    takes = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return [
        Problem(f"search_space[{name!r}]", spaces[name], f"a keyword argument of {getattr(func, '__name__', 'the function')}(): it takes {', '.join(takes) or 'none'}")
        for name in spaces
        if name not in takes
    ]


def _new_name() -> str:
    import secrets
    import string

    return secrets.choice(string.ascii_lowercase) + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(11))


def _rebuild(desc: dict[str, Any], known: dict[str, type]) -> Any:
    """An algorithm or rule from its stored description (a custom Optuna one stays a description)."""
    desc = dict(desc)
    cls = known.get(desc.pop("name", ""))
    if cls is None:
        return desc
    try:
        return cls(**desc)
    except TypeError:
        return desc


def _best(trials: list[Trial], objective: Objective) -> Trial | None:
    done = [t for t in trials if t.status == TrialStatus.COMPLETE and t.value is not None]
    if not done:
        return None
    sign = 1 if objective.direction.value == "minimize" else -1
    return min(done, key=lambda t: (sign * t.value, t.number))
