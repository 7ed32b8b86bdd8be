"""What to run and how: ``TransformersTrainer`` and ``CustomTrainer``.

Both are validated when built and report every problem at once, so a bad spec fails in the
submitter's process before anything starts. Names follow the Kubeflow Trainer SDK and its RHAI
``TransformersTrainer``.
"""

from __future__ import annotations

import os
import re
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, Callable

from trainjob.errors import Problem, ValidationError
from trainjob.core.spec import DEFAULT_EXIT_GRACE, DEFAULT_METRICS_PORT, DEFAULT_STOP_GRACE, JobSpec
from trainjob.masking import is_secret_name
from trainjob.resources import Resources, parse_resources

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FUNC_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_MODULE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*$")
_INDEX_SCHEMES = ("http://", "https://", "file://")
REQUIREMENT_EXPECTED = "a PEP 508 requirement such as 'peft', 'peft==0.21.2' or 'pkg @ https://host/pkg.whl'"


@dataclass
class CustomTrainer:
    """Run any training function or script, distributed, with no Trainer instrumentation.

    Exactly one of ``func``, ``script`` or ``module`` says what runs:

    - ``func``: a callable, called as ``func(**func_args)`` on every rank (serialized with
      cloudpickle, so globals it uses travel with it), or an import reference ``"pkg.mod:fn"``;
    - ``script``: a Python file run as ``__main__`` with ``script_args`` as ``sys.argv[1:]``;
    - ``module``: a module run like ``python -m module script_args...``;
    - ``command``: a program run like a container's command on Kubernetes, ``command
      script_args...``, once on every rank with the rank's environment (``RANK``, ``WORLD_SIZE``,
      ``MASTER_ADDR``...); not instrumented (Kubeflow's ``TrainerCommand`` option sets it).

    Ranks run in the job's ``workdir`` folder: relative paths in user code land there.

    Positional arguments are Kubeflow's, in Kubeflow's order: ``CustomTrainer(func, func_args,
    image, packages_to_install, pip_index_urls, num_nodes, resources_per_node, env)``; the rest
    are keyword-only. ``image`` is recorded; the local and Ray backends run the code in their own
    Python environment and warn that the image is not used. ``num_nodes=None`` (Kubeflow's
    default: the runtime's) is one node.
    """

    func: Callable[..., Any] | str | None = None
    func_args: dict[str, Any] | None = None
    image: str | None = None
    packages_to_install: list[str] | None = None
    pip_index_urls: list[str] | None = None
    num_nodes: int | None = 1
    resources_per_node: dict[str, Any] | None = None
    env: dict[str, str] | None = None
    _: KW_ONLY
    script: str | os.PathLike | None = None
    module: str | None = None
    command: str | None = None
    script_args: list[str] | None = None
    num_procs_per_node: int | None = None
    max_restarts: int = 0
    # Ending: every job ends, whatever its code does (see docs/fault-tolerance.md).
    active_deadline_seconds: int | None = None  # Kubeflow's: past it the job fails with reason DeadlineExceeded
    stop_grace_seconds: float = DEFAULT_STOP_GRACE  # a stop (or deadline): time for ranks to save and end before SIGTERM
    exit_grace_seconds: float = DEFAULT_EXIT_GRACE  # once a rank exited with its work done: time the others get to exit
    # Local backend: fork the ranks from the environment's warm process (imports done) when one is
    # ready; False: always start them as fresh processes (docs/warm-start.md).
    warm_start: bool = True

    # Not instrumented: no callback, no endpoint.
    enable_progression_tracking: bool = field(default=False, init=False)
    custom_metrics: dict[str, str] | None = field(default=None, init=False)
    metrics_port: int = field(default=DEFAULT_METRICS_PORT, init=False)

    def __post_init__(self) -> None:
        if self.num_nodes is None:
            self.num_nodes = 1  # Kubeflow's None: the runtime's default, one node here
        problems = self._validate()
        if problems:
            raise ValidationError(problems, type(self).__name__)

    # ---- derived, used by backends ------------------------------------------------------
    @property
    def resources(self) -> Resources:
        return parse_resources(self.resources_per_node)[0]

    @property
    def entrypoint_kind(self) -> str:
        """``"func"``, ``"func_ref"``, ``"script"``, ``"module"`` or ``"command"``."""
        if self.func is not None:
            return "func_ref" if isinstance(self.func, str) else "func"
        if self.command is not None:
            return "command"
        return "script" if self.script is not None else "module"

    def procs_per_node(self) -> int:
        """Ranks per node: explicit ``num_procs_per_node``, else one per requested GPU, else one."""
        if self.num_procs_per_node:
            return self.num_procs_per_node
        return self.resources.gpu or 1

    def job_spec(self, **settings: Any) -> JobSpec:
        """The job's typed spec (``trainjob.core.spec``); ``settings`` set further fields (``name``...)."""
        return JobSpec.from_trainer(self, **settings)

    def to_spec(self, mask_secrets: bool = False) -> dict[str, Any]:
        """A JSON-able description of the job (the function itself is not included): ``job_spec()``
        as the dict ``TrainJob.spec`` shows. With ``mask_secrets``, the form that may be stored and shown."""
        spec = self.job_spec()
        return (spec.shown() if mask_secrets else spec).to_dict()

    # ---- validation ---------------------------------------------------------------------
    def _validate(self) -> list[Problem]:
        p: list[Problem] = []
        self._validate_entrypoint(p)
        if self.image is not None and (not isinstance(self.image, str) or not self.image.strip()):
            p.append(Problem("image", self.image, "a container image reference such as 'pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime', or None"))
        _check_str_list(p, "packages_to_install", self.packages_to_install, "pip requirement strings such as 'trl' or 'peft==0.21.2'")
        for i, req in enumerate(self.packages_to_install or []):
            if isinstance(req, str) and req.strip():
                why = requirement_problem(req)
                if why:
                    p.append(Problem(f"packages_to_install[{i}]", req, f"{REQUIREMENT_EXPECTED}; {why}"))
        _check_str_list(p, "pip_index_urls", self.pip_index_urls, "index URLs such as 'https://pypi.org/simple'")
        for i, url in enumerate(self.pip_index_urls or []):
            if isinstance(url, str) and not url.startswith(_INDEX_SCHEMES):
                p.append(Problem(f"pip_index_urls[{i}]", url, "a URL starting with http://, https:// or file://"))
        _check_int(p, "num_nodes", self.num_nodes, minimum=1)
        if self.num_procs_per_node is not None:
            _check_int(p, "num_procs_per_node", self.num_procs_per_node, minimum=1)
        _check_int(p, "max_restarts", self.max_restarts, minimum=0)
        if self.active_deadline_seconds is not None:
            _check_int(p, "active_deadline_seconds", self.active_deadline_seconds, minimum=1)
        _check_seconds(p, "stop_grace_seconds", self.stop_grace_seconds)
        _check_seconds(p, "exit_grace_seconds", self.exit_grace_seconds)
        if not isinstance(self.warm_start, bool):
            p.append(Problem("warm_start", self.warm_start, "True or False"))
        p.extend(parse_resources(self.resources_per_node)[1])
        self._validate_env(p)
        return p

    def _validate_entrypoint(self, p: list[Problem]) -> None:
        given = [n for n in ("func", "script", "module", "command") if getattr(self, n) is not None]
        if not given:
            p.append(Problem("func", None, "a training function, or script='train.py', or module='pkg.train', or command='program'"))
        elif len(given) > 1:
            p.append(Problem(given[1], getattr(self, given[1]), f"only one of func, script, module, command; {given[0]} is already given"))
        if self.command is not None and (not isinstance(self.command, str) or not self.command.strip()):
            p.append(Problem("command", self.command, "a program name or path, e.g. 'bash' or './train.sh'; its arguments go in script_args"))
        if self.func is not None:
            if isinstance(self.func, str):
                if not _FUNC_REF.match(self.func):
                    p.append(Problem("func", self.func, "a callable or an import reference 'package.module:function'"))
            elif not callable(self.func):
                p.append(Problem("func", self.func, "a callable (the training function)"))
        if self.func_args is not None:
            if not isinstance(self.func_args, dict) or not all(isinstance(k, str) for k in self.func_args):
                p.append(Problem("func_args", self.func_args, "a dict of keyword arguments with str keys"))
            elif self.func is None:
                p.append(Problem("func_args", self.func_args, "only used with func; scripts take script_args"))
        if self.script is not None:
            if not isinstance(self.script, (str, os.PathLike)) or not str(self.script):
                p.append(Problem("script", self.script, "a path to a Python file"))
            else:
                path = Path(self.script).expanduser().resolve()
                if not path.is_file():
                    p.append(Problem("script", str(self.script), f"an existing Python file ({path} does not exist)"))
                else:
                    self.script = str(path)
        if self.module is not None and (not isinstance(self.module, str) or not _MODULE.match(self.module)):
            p.append(Problem("module", self.module, "a dotted module name such as 'mypkg.train'"))
        if self.script_args is not None:
            if isinstance(self.script_args, str):
                p.append(Problem("script_args", self.script_args, "a list of strings (e.g. ['--lr', '1e-4']), not one string"))
            else:
                _check_str_list(p, "script_args", self.script_args, "a list of strings such as ['--lr', '1e-4']", allow_empty_items=True)
            if self.func is not None:
                p.append(Problem("script_args", self.script_args, "only used with script, module or command; functions take func_args"))

    def _validate_env(self, p: list[Problem]) -> None:
        if self.env is None:
            return
        if not isinstance(self.env, dict):
            p.append(Problem("env", self.env, 'a dict of str to str, e.g. {"HF_HUB_OFFLINE": "1"}'))
            return
        for k, v in self.env.items():
            if not isinstance(k, str) or not _ENV_NAME.match(k):
                p.append(Problem(f"env[{k!r}]", v, "a variable name of letters, digits and _ not starting with a digit"))
            elif not isinstance(v, str):
                fix = "" if is_secret_name(k) else f"; write {str(v)!r}"  # the message must not show a secret
                p.append(Problem(f"env[{k!r}]", v, f"a string value (got {type(v).__name__}{fix})"))


@dataclass
class TransformersTrainer(CustomTrainer):
    """Run HuggingFace ``Trainer``/TRL code with zero changes, instrumented for live progress.

    With ``enable_progression_tracking=True`` (the default) every ``transformers.Trainer`` the
    code builds, TRL's included, reports progress, metrics, events and checkpoints; rank 0 also
    serves the progress JSON at ``GET /metrics`` on ``metrics_port``. With ``False`` nothing is
    injected. ``custom_metrics`` maps a logged name to an exposed name; an exposed name starting
    with ``eval_`` goes to ``evalMetrics``, others to ``trainMetrics``.

    Positional arguments are RHAI's: ``TransformersTrainer(func, func_args, packages_to_install,
    pip_index_urls, num_nodes, resources_per_node, env, enable_progression_tracking,
    custom_metrics, metrics_port)``; ``image`` is keyword-only here.
    """

    image: str | None = field(default=None, kw_only=True)
    enable_progression_tracking: bool = True
    custom_metrics: dict[str, str] | None = None
    metrics_port: int = DEFAULT_METRICS_PORT
    # Seconds without a completed training step (ranks alive) after which the attempt fails with
    # the ranks' stacks in their logs; max_restarts then retries. None: never.
    progress_timeout: float | None = None

    def _validate(self) -> list[Problem]:
        p = super()._validate()
        if not isinstance(self.enable_progression_tracking, bool):
            p.append(Problem("enable_progression_tracking", self.enable_progression_tracking, "True or False"))
        if self.custom_metrics is not None:
            if not isinstance(self.custom_metrics, dict) or not all(
                isinstance(k, str) and k and isinstance(v, str) and v for k, v in self.custom_metrics.items()
            ):
                p.append(Problem("custom_metrics", self.custom_metrics, 'a dict of logged name -> exposed name, e.g. {"my_f1": "eval_custom_f1"}'))
        if isinstance(self.metrics_port, bool) or not isinstance(self.metrics_port, int) or not 1024 <= self.metrics_port <= 65535:
            p.append(Problem("metrics_port", self.metrics_port, "an int port between 1024 and 65535"))
        if self.command is not None and self.enable_progression_tracking:
            p.append(Problem("command", self.command, "a Python script or module with TransformersTrainer (a command's processes cannot be instrumented), or CustomTrainer(command=...), or enable_progression_tracking=False"))
        if self.progress_timeout is not None:
            _check_seconds(p, "progress_timeout", self.progress_timeout)
            if self.enable_progression_tracking is False:
                p.append(Problem("progress_timeout", self.progress_timeout, "None when enable_progression_tracking=False (steps are only seen with tracking on)"))
        return p


@dataclass
class CustomTrainerContainer:
    """Kubeflow's trainer that runs a container image's own command.

    Accepted so Kubeflow code imports and builds unchanged; the local and Ray backends cannot
    run a container and refuse it in ``train()`` (run the same code with ``CustomTrainer``, or a
    script with ``options=[TrainerCommand([...])]``).
    """

    image: str
    num_nodes: int | None = None
    resources_per_node: dict[str, Any] | None = None
    env: dict[str, str] | None = None


@dataclass
class BuiltinTrainer:
    """Kubeflow's built-in trainer (a ``TorchTuneConfig`` run by a TorchTune image).

    Accepted so Kubeflow code imports and builds unchanged; no trainjob backend runs TorchTune
    recipes yet, so ``train()`` refuses it.
    """

    config: Any


def requirement_problem(req: str) -> str | None:
    """Why ``req`` is not one PEP 508 requirement (``packaging``'s words), or None when it is one.

    Installer options (``-e .``, ``--index-url``), shell text (``"x; rm -rf /"``), several
    requirements in one string and bare paths are all refused: each entry becomes one line of a
    requirements file, and only a requirement may be there.
    """
    from packaging.requirements import InvalidRequirement, Requirement

    if "\n" in req or "\r" in req:
        return "one requirement per entry (it contains a line break)"
    try:
        Requirement(req)
    except InvalidRequirement as e:
        return f"not a requirement: {str(e).splitlines()[0]}"
    return None


def _check_int(p: list[Problem], name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        p.append(Problem(name, value, f"an int >= {minimum}"))
    elif value < minimum:
        p.append(Problem(name, value, f"an int >= {minimum}"))


def _check_seconds(p: list[Problem], name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value != value or value == float("inf"):
        p.append(Problem(name, value, "a number of seconds > 0, e.g. 60"))


def _check_str_list(p: list[Problem], name: str, value: object, expected: str, allow_empty_items: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        p.append(Problem(name, value, f"a list of {expected}"))
        return
    for i, item in enumerate(value):
        if not isinstance(item, str) or (not allow_empty_items and not item.strip()):
            p.append(Problem(f"{name}[{i}]", item, f"a non-empty string ({expected})"))
