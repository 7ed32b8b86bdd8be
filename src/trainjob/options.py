"""Options of ``TrainerClient.train(options=[...])``: Kubeflow Trainer SDK's, under the same names.

``from kubeflow.trainer.options import Name, Labels`` becomes ``from trainjob.options import Name,
Labels``. Each option is validated when it is built (a ``ValidationError``, which is a
``ValueError``) and says which backends it applies to; ``train()`` refuses one that does not
apply to its backend, naming the backend.

- ``Name("my-job")``: the job's name, which is its identifier everywhere (``get_job("my-job")``,
  ``trainjob logs my-job``): DNS-1035 (``^[a-z]([-a-z0-9]*[a-z0-9])?$``), at most 63 characters,
  unique among the backend's jobs. Without it a job gets 12 random characters.
- ``Labels({...})``, ``Annotations({...})``: stored with the job, shown by ``trainjob ls``/``status``
  and the dashboard; ``list_jobs(labels={...})`` and ``trainjob ls -l key=value`` filter on labels.
- ``ActiveDeadlineSeconds(n)``: the trainer's ``active_deadline_seconds``: after ``n`` seconds of
  running the job saves a checkpoint and ends ``Failed`` with reason ``DeadlineExceeded``.
- ``TrainerCommand([...])``/``TrainerArgs([...])``: run a command instead of a function, on every
  rank, as with torchrun: ``["python", "train.py", ...]`` runs the file as a script and
  ``["python", "-m", "pkg.train", ...]`` the module (both instrumented by ``TransformersTrainer``),
  any other program (``["bash", "train.sh"]``) as a process of the rank, with its environment
  (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...). ``TrainerArgs`` gives (or replaces) the
  command's arguments.
- ``RuntimePatch(...)``: Kubernetes only (it patches a ``TrainingRuntime``); refused here.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from trainjob.errors import Problem, ValidationError

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
NAME_MAX = 63
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
ALL_BACKENDS = ("local", "ray", "kubernetes")
LAUNCHERS = ("torchrun", "torch.distributed.run", "accelerate", "deepspeed", "mpirun")  # they would start ranks inside ranks
NAME_EXPECTED = "a DNS-1035 name: lower-case letters, digits and '-', starting with a letter, not ending with '-', at most 63 characters (e.g. 'fine-tune-1')"


def name_problem(name: object, field: str = "Name") -> Problem | None:
    """Why ``name`` cannot name a job, or None when it can (DNS-1035, at most 63 characters)."""
    if not isinstance(name, str) or len(name) > NAME_MAX or not DNS_1035.match(name):
        return Problem(field, name, NAME_EXPECTED)
    return None


class Option:
    """Base of every option: which backends it applies to, and how it changes a submission."""

    backends: ClassVar[tuple[str, ...]] = ALL_BACKENDS

    def apply(self, sub: "Submission") -> None:  # pragma: no cover - every option overrides it
        raise NotImplementedError


@dataclass(frozen=True)
class Name(Option):
    """The job's name (its identifier): DNS-1035, at most 63 characters, unique. Every backend."""

    name: str

    def __post_init__(self) -> None:
        problem = name_problem(self.name)
        if problem:
            raise ValidationError([problem], "Name")

    def apply(self, sub: "Submission") -> None:
        sub.name = self.name


def _check_metadata(kind: str, values: object, check_value: bool) -> None:
    """Raise one ``ValidationError`` naming every bad key and value of Labels/Annotations."""
    if not isinstance(values, dict):
        raise ValidationError([Problem(kind, values, 'a dict of str to str, e.g. {"team": "nlp"}')], kind)
    problems = []
    for k, v in values.items():
        prefix, _, base = k.rpartition("/") if isinstance(k, str) else ("", "", "")
        if not isinstance(k, str) or not base or len(base) > 63 or not _LABEL_NAME.match(base) or (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix))):
            problems.append(Problem(f"{kind}[{k!r}]", v, "a key like 'team' or 'example.com/team': letters, digits, '-', '_', '.', at most 63 characters, an optional DNS prefix"))
        elif not isinstance(v, str):
            problems.append(Problem(f"{kind}[{k!r}]", v, f"a string value (write {str(v)!r})"))
        elif check_value and (len(v) > 63 or not _LABEL_NAME.match(v)):
            problems.append(Problem(f"{kind}[{k!r}]", v, "a label value: at most 63 letters, digits, '-', '_', '.', starting and ending with a letter or digit (or empty)"))
    if problems:
        raise ValidationError(problems, kind)


@dataclass(frozen=True)
class Labels(Option):
    """Labels of the job (Kubernetes label syntax): stored, shown, and filtered on by ``list_jobs(labels=...)``."""

    labels: dict[str, str]

    def __post_init__(self) -> None:
        _check_metadata("Labels", self.labels, check_value=True)

    def apply(self, sub: "Submission") -> None:
        sub.labels.update(self.labels)


@dataclass(frozen=True)
class Annotations(Option):
    """Annotations of the job (keys as labels, values any string): stored and shown."""

    annotations: dict[str, str]

    def __post_init__(self) -> None:
        _check_metadata("Annotations", self.annotations, check_value=False)

    def apply(self, sub: "Submission") -> None:
        sub.annotations.update(self.annotations)


@dataclass(frozen=True)
class ActiveDeadlineSeconds(Option):
    """Seconds the job may run; after them it saves a checkpoint and fails with reason ``DeadlineExceeded``."""

    seconds: int

    def __post_init__(self) -> None:
        if isinstance(self.seconds, bool) or not isinstance(self.seconds, int) or self.seconds < 1:
            raise ValidationError([Problem("ActiveDeadlineSeconds", self.seconds, "an int >= 1 (seconds)")], "ActiveDeadlineSeconds")

    def apply(self, sub: "Submission") -> None:
        sub.changes["active_deadline_seconds"] = self.seconds


def _check_str_list(kind: str, values: object, what: str) -> None:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
        raise ValidationError([Problem(kind, values, f"a list of strings, e.g. {what}")], kind)


@dataclass(frozen=True)
class TrainerCommand(Option):
    """Run this command on every rank instead of a function.

    ``["python", "train.py", "--lr", "1e-4"]`` (a script, as ``python train.py``),
    ``["python", "-m", "pkg.train", ...]`` (a module) or any other program (``["bash",
    "train.sh"]``, run with the rank's environment). Launchers (``torchrun``, ``accelerate``...)
    are refused: trainjob itself starts the ranks, so their prefixes are not needed.
    """

    command: list[str]

    def __post_init__(self) -> None:
        _check_str_list("TrainerCommand", self.command, "['python', 'train.py', '--lr', '1e-4']")
        parse_command(self.command)

    def apply(self, sub: "Submission") -> None:
        sub.command = list(self.command)


@dataclass(frozen=True)
class TrainerArgs(Option):
    """Arguments after the command (as Kubernetes puts ``args`` after ``command``), or, with no
    ``TrainerCommand``, the trainer's ``script``/``module``/``command`` arguments (replaced)."""

    args: list[str]

    def __post_init__(self) -> None:
        _check_str_list("TrainerArgs", self.args, "['--lr', '1e-4']")

    def apply(self, sub: "Submission") -> None:
        sub.args = list(self.args)


@dataclass(frozen=True)
class RuntimePatch(Option):
    """Kubeflow's patch of a Kubernetes ``TrainingRuntime``; it has no meaning off Kubernetes."""

    backends: ClassVar[tuple[str, ...]] = ("kubernetes",)
    training_runtime_spec: Any = None
    manager: str = "trainer.kubeflow.org/kubeflow-sdk"

    def apply(self, sub: "Submission") -> None:  # pragma: no cover - refused before it is applied
        raise NotImplementedError


def parse_command(command: list[str]) -> dict[str, Any]:
    """``TrainerCommand``'s list as trainer fields: ``{"script": path}`` or ``{"module": name}``, plus ``script_args``."""
    expected = "['python', 'train.py', ...] or ['python', '-m', 'pkg.train', ...]"
    if not command:
        raise ValidationError([Problem("TrainerCommand", command, f"a Python command: {expected}")], "TrainerCommand")
    head, rest = command[0], list(command[1:])
    program = os.path.basename(head)
    if re.fullmatch(r"python(\d+(\.\d+)?)?", program):
        if rest[:1] == ["-m"] and len(rest) >= 2 and rest[1] not in LAUNCHERS:
            return {"module": rest[1], "script_args": rest[2:]}
        if rest and rest[0].endswith(".py"):
            return {"script": rest[0], "script_args": rest[1:]}
    elif head.endswith(".py"):
        return {"script": head, "script_args": rest}
    elif head.strip() and program not in LAUNCHERS:
        return {"command": head, "script_args": rest}
    raise ValidationError(
        [Problem("TrainerCommand", command, f"a command such as {expected} or ['bash', 'train.sh']: not a launcher ({', '.join(LAUNCHERS)}): trainjob starts the ranks itself")],
        "TrainerCommand",
    )


@dataclass
class Submission:
    """What ``train()`` submits once its options are applied (internal: backends read it)."""

    trainer: Any
    name: str | None = None
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)
    command: list[str] | None = None
    args: list[str] | None = None
    changes: dict[str, Any] = dataclasses.field(default_factory=dict)


def apply_options(options: list[Any] | None, trainer: Any, backend: str) -> Submission:
    """Apply ``options`` to a submission of ``trainer`` (None: the command must say what runs).

    Every problem is reported at once: options that are not trainjob options, options that do
    not apply to ``backend``, and a command that conflicts with the trainer's function.
    """
    from trainjob.trainers import CustomTrainer, CustomTrainerContainer

    sub = Submission(trainer=trainer)
    problems: list[Problem] = []
    if options is None:
        options = []
    if not isinstance(options, (list, tuple)):
        raise ValidationError([Problem("options", options, "a list of options, e.g. [Name('my-job'), Labels({'team': 'nlp'})]")], "train()")
    for i, opt in enumerate(options):
        if not isinstance(opt, Option):
            problems.append(Problem(f"options[{i}]", opt, "an option from trainjob.options: Name, Labels, Annotations, ActiveDeadlineSeconds, TrainerCommand, TrainerArgs"))
        elif backend not in opt.backends:
            problems.append(Problem(f"options[{i}]", type(opt).__name__, f"an option the {backend} backend supports; {type(opt).__name__} applies only on: {', '.join(opt.backends)}"))
        else:
            opt.apply(sub)
    if problems:
        raise ValidationError(problems, "train() options")
    if sub.command is not None or sub.args is not None:
        entry: dict[str, Any] = parse_command(sub.command) if sub.command is not None else {}
        if sub.args is not None:  # as on Kubernetes: the command's own words, then the args
            entry["script_args"] = list(entry.get("script_args") or []) + list(sub.args)
        if isinstance(trainer, CustomTrainerContainer) and sub.command is not None:
            # Kubeflow's pairing: the container's command, here run in the backend's environment
            # (CustomTrainer's image warning says the image is not used).
            c = trainer
            trainer = CustomTrainer(image=c.image, num_nodes=c.num_nodes, resources_per_node=c.resources_per_node, env=c.env, **entry)
        elif trainer is None:
            if sub.command is None:
                raise ValidationError([Problem("options", "TrainerArgs", "TrainerArgs with a command to pass them to: add TrainerCommand([...]) or give a trainer with script=/module=")], "train() options")
            trainer = CustomTrainer(**entry)
        elif isinstance(trainer, CustomTrainer):
            if trainer.func is not None:
                what = "TrainerCommand replaces" if sub.command is not None else "TrainerArgs are a command's arguments, not"
                raise ValidationError([Problem("options", "TrainerCommand" if sub.command is not None else "TrainerArgs", f"no command options with a function trainer ({what} the training function; functions take func_args): drop func, or the option")], "train() options")
            if sub.command is not None:
                for key in ("script", "module", "command"):
                    entry.setdefault(key, None)
            trainer = dataclasses.replace(trainer, **entry)
    if sub.changes and trainer is not None:
        trainer = dataclasses.replace(trainer, **sub.changes)
    sub.trainer = trainer
    return sub
