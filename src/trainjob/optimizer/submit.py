"""What ``optimize()`` checks and creates: every problem with the arguments at once, then the study,
its records and folder.

Nothing here starts a process (``optimizer.process`` does) or reads an optimization back
(``optimizer.view``). The trial template travels to the optimizer process pickled
(``template.pkl``), the user's own module by value, as ``train()`` sends a function.
"""

from __future__ import annotations

import re
import shutil
import time
from typing import Any

from trainjob.errors import Problem, SerializationError
from trainjob.optimizer import spec, state
from trainjob.optimizer.types import GridSearch, Objective, OptimizationStatus, RandomSearch, TrainJobTemplate, TrialConfig
from trainjob.trainers import CustomTrainer

_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
NAME_MAX = 50  # a trial's job is "<name>-<number>": a job name has at most 63 characters


def new_problems(
    trainer_client: Any, storage: Any, template: Any, trial_config: Any, search_space: Any, objectives: Any, algorithm: Any, early_stopping: Any, name: Any
) -> tuple[dict[str, Any], list[Problem]]:
    """The normalized search space and every problem with a new optimization's arguments."""
    problems = template_problems(trainer_client, template)
    spaces, space_problems = spec.search_space_problems(search_space, algorithm)
    problems += space_problems
    if not isinstance(objectives, (list, tuple)) or not objectives or not all(isinstance(o, Objective) for o in objectives):
        problems.append(Problem("objectives", objectives, 'a non-empty list of Objective(metric=..., direction=...), e.g. [Objective("eval_loss", "minimize")]'))
    if not isinstance(trial_config, TrialConfig):
        problems.append(Problem("trial_config", trial_config, "TrialConfig(num_trials=..., parallel_trials=..., max_failed_trials=...)"))
    problems += spec.algorithm_problems(algorithm) + spec.early_stopping_problems(early_stopping)
    if name is not None and (not isinstance(name, str) or len(name) > NAME_MAX or not _NAME.match(name)):
        problems.append(Problem("name", name, f"lower-case letters, digits and '-', starting with a letter, at most {NAME_MAX} characters"))
    elif name is not None and state.study_id(storage, name) is not None:
        problems.append(Problem("name", name, "a name no other optimization has (delete that one first, or resume=it)"))
    problems += signature_problems(template, spaces)
    if isinstance(algorithm, GridSearch) and not space_problems and spaces and spec.grid_size(spaces) > spec.GRID_LIMIT:
        problems.append(Problem("search_space", f"{spec.grid_size(spaces)} grid points", f"at most {spec.GRID_LIMIT} with GridSearch"))
    return spaces, problems


def resume_problems(
    trainer_client: Any, stored: dict[str, Any], template: Any, trial_config: Any, search_space: Any, objectives: Any, algorithm: Any, early_stopping: Any
) -> list[Problem]:
    """Every problem with what a resume gives anew; the search space and objectives cannot change."""
    problems = []
    if template is not None:
        problems += template_problems(trainer_client, template)
    if search_space is not None:
        spaces, space_problems = spec.search_space_problems(search_space, algorithm)
        problems += space_problems
        if not space_problems and {k: spec.space_to_json(v) for k, v in spaces.items()} != stored["search_space"]:
            problems.append(Problem("search_space", search_space, "the optimization's own search space (it cannot change on resume), or None"))
    if objectives is not None and [spec.objective_to_json(o) for o in objectives] != stored["objectives"]:
        problems.append(Problem("objectives", objectives, "the optimization's own objectives (they cannot change on resume), or None"))
    if trial_config is not None and not isinstance(trial_config, TrialConfig):
        problems.append(Problem("trial_config", trial_config, "TrialConfig(...) or None"))
    return problems + spec.algorithm_problems(algorithm) + spec.early_stopping_problems(early_stopping)


def template_problems(trainer_client: Any, template: Any) -> list[Problem]:
    if not isinstance(template, TrainJobTemplate):
        return [Problem("trial_template", template, "TrainJobTemplate(trainer=CustomTrainer(...) or TransformersTrainer(...))")]
    problems = []
    if not isinstance(template.trainer, CustomTrainer):
        problems.append(Problem("trial_template.trainer", template.trainer, "a CustomTrainer(func=...) or TransformersTrainer(func=...)"))
    if template.runtime is not None:
        wanted = getattr(template.runtime, "name", template.runtime)
        known = [rt.name for rt in trainer_client.list_runtimes()]
        if wanted not in known:
            problems.append(Problem("trial_template.runtime", wanted, f"a runtime of this backend: {', '.join(map(repr, known))}"))
    return problems


def signature_problems(template: Any, spaces: dict[str, Any]) -> list[Problem]:
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


def pickle_template(template: TrainJobTemplate, algorithm: Any, early_stopping: Any, backend_config: Any) -> bytes:
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
            {"trainer": trainer, "runtime": template.runtime, "initializer": template.initializer, "backend_config": backend_config, "algorithm": algorithm, "early_stopping": early_stopping}
        )
    except Exception as e:  # whatever a reducer raises
        raise SerializationError([Problem("trial_template", template, f"serializable with cloudpickle ({type(e).__name__}: {e})")], "optimize()") from e
    finally:
        if module is not None:
            cloudpickle.unregister_pickle_by_value(module)


def create(
    storage: Any, files: state.Files, name: str, spaces: dict[str, Any], objectives: list[Objective], trial_config: TrialConfig, algorithm: Any, early_stopping: Any, backend: str, payload: bytes
) -> int:
    """The study with trainjob's records (the spec, status ``Created``), a grid's points enqueued, the
    folder with the pickled template and the first event. Returns the study's id. Whatever fails
    after the study was created undoes it all (``discard``)."""
    import optuna

    optuna.create_study(study_name=name, storage=storage, direction=objectives[0].direction.value)
    try:
        return _fill(storage, files, name, spaces, objectives, trial_config, algorithm, early_stopping, backend, payload)
    except BaseException:
        discard(storage, files, name)
        raise


def discard(storage: Any, files: state.Files, name: str) -> None:
    """Delete a study ``create`` made and its folder."""
    import optuna

    optuna.delete_study(study_name=name, storage=storage)
    shutil.rmtree(files.root, ignore_errors=True)


def _fill(
    storage: Any, files: state.Files, name: str, spaces: dict[str, Any], objectives: list[Objective], trial_config: TrialConfig, algorithm: Any, early_stopping: Any, backend: str, payload: bytes
) -> int:
    import optuna

    sid = storage.get_study_id_from_name(name)
    attrs = {
        state.SPEC_ATTR: {
            "version": 1,
            "search_space": {k: spec.space_to_json(v) for k, v in spaces.items()},
            "objectives": [spec.objective_to_json(o) for o in objectives],
            "trial_config": vars(trial_config).copy(),
            "algorithm": spec.describe_algorithm(algorithm or RandomSearch()),
            "early_stopping": spec.describe_early_stopping(early_stopping),
            "backend": backend,
            "created_at": time.time(),
        },
        "status": OptimizationStatus.CREATED.value,
        "message": None,
    }
    for k, v in attrs.items():
        storage.set_study_user_attr(sid, k, v)
    if isinstance(algorithm, GridSearch):
        study = optuna.load_study(study_name=name, storage=storage)
        for _, point in zip(range(trial_config.num_trials), spec.grid_points(spaces)):
            study.enqueue_trial(point, skip_if_exists=False)
    files.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    files.template.write_bytes(payload)
    state.add_event(files, "Created", f"optimization created: {len(spaces)} parameter(s), {trial_config.num_trials} trial(s), {trial_config.parallel_trials} at once")
    return sid


def new_name() -> str:
    import secrets
    import string

    return secrets.choice(string.ascii_lowercase) + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(11))
