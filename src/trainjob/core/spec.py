"""``JobSpec``: what a job runs and how, typed and frozen, built once in ``TrainerClient.train()``.

Every layer reads its fields (``spec.tracking.metrics_port``, ``spec.limits.max_restarts``),
never string keys; the defaults below are the only ones. Stores keep it as JSON text
(``to_json``, with a ``version``) and decode it at their boundary (``from_json``), which also
reads the version-less dicts that earlier releases stored, so old jobs still list and show.

Secrets, one rule for every backend: what is stored or shown anywhere (a store row, ``spec.json``,
Ray's job record and runtime_env, ``TrainJob.spec``) is ``spec.split()[0]``, masked
(``masked=True``); the real values of the masked fields (``split()[1]``) are kept apart (the job
folder's ``secrets.json``, the Ray GCS key ``<id>/secrets``) and put back with
``with_secrets(hidden)`` only in the processes that start ranks. A launcher refuses a masked spec
(``require_real``), so ``******`` never reaches a rank as a value.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from trainjob.errors import Problem, ValidationError
from trainjob.masking import join_spec, split_spec
from trainjob.resources import Resources

SPEC_VERSION = 2  # 1: the version-less flat dicts stored before JobSpec; 2: the same keys plus version and masked
DEFAULT_METRICS_PORT = 28080  # RHAI's TransformersTrainer default
DEFAULT_METRICS_HOST = "127.0.0.1"  # rank 0's /metrics binds to loopback unless the backend says otherwise
DEFAULT_STOP_GRACE = 60.0  # seconds ranks get to save and end after a stop or the deadline, before SIGTERM
DEFAULT_EXIT_GRACE = 30.0  # seconds the other ranks get to exit once one exited with its work done
ENTRYPOINT_KINDS = ("func", "func_ref", "script", "module", "command")


class FrozenMap(dict):
    """A ``dict`` that cannot be changed: JSON-able and picklable like a dict, part of a frozen spec."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a JobSpec is frozen: build a new one with dataclasses.replace")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMap, (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=repr)))


def _frozen(value: Mapping[str, Any] | None) -> FrozenMap:
    return FrozenMap(value or {})


@dataclass(frozen=True)
class Entrypoint:
    """What every rank runs: one of ``ENTRYPOINT_KINDS``.

    ``func`` is ``"pkg.mod:fn"`` (a reference, or a callable's name: the callable itself travels
    in the job's payload); ``func_args`` are the arguments' reprs, for showing. ``args`` are a
    script's, module's or command's arguments.
    """

    kind: str
    func: str | None = None
    func_args: FrozenMap | None = None
    script: str | None = None
    module: str | None = None
    command: str | None = None
    args: tuple[str, ...] = ()

    @property
    def is_function(self) -> bool:
        return self.kind in ("func", "func_ref")

    def text(self) -> str:
        """As a user would type it: ``pkg.mod:fn``, ``train.py --lr 1``, ``-m pkg.train``, ``bash x.sh``."""
        args = " ".join(self.args)
        if self.is_function:
            return self.func or "?"
        if self.kind == "script":
            return f"{self.script} {args}".strip()
        if self.kind == "module":
            return f"-m {self.module} {args}".strip()
        if self.kind == "command":
            return f"{self.command} {args}".strip()
        return self.kind or "?"


@dataclass(frozen=True)
class Tracking:
    """Progress tracking: instrument every Trainer (``enabled``), rank 0's endpoint, the hang timeout."""

    enabled: bool = False
    custom_metrics: FrozenMap = field(default_factory=FrozenMap)
    metrics_port: int = DEFAULT_METRICS_PORT
    metrics_host: str = DEFAULT_METRICS_HOST
    progress_timeout: float | None = None  # only meaningful with tracking on


@dataclass(frozen=True)
class Limits:
    """Restarts and deadlines: how a job may fail, be retried, and end."""

    max_restarts: int = 0
    active_deadline_seconds: int | None = None
    stop_grace_seconds: float = DEFAULT_STOP_GRACE
    exit_grace_seconds: float = DEFAULT_EXIT_GRACE


@dataclass(frozen=True)
class Packages:
    """Packages installed for the job, and the indexes they come from (first: ``--index-url``)."""

    install: tuple[str, ...] = ()
    index_urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class WarmStart:
    """Forking ranks from a warm process (local backend): the trainer's wish and the backend's setting."""

    enabled: bool = True  # the trainer's warm_start
    backend_enabled: bool | None = None  # LocalBackendConfig.warm_start; None: not set here
    idle_timeout: float | None = None  # LocalBackendConfig.warm_idle_timeout; None: the default

    @property
    def wanted(self) -> bool:
        return self.enabled and self.backend_enabled is not False


@dataclass(frozen=True)
class JobSpec:
    """A job's spec. See the module docstring for the secrets rule and the JSON forms."""

    trainer: str
    entrypoint: Entrypoint
    num_nodes: int = 1
    procs_per_node: int = 1
    num_procs_per_node: int | None = None  # as given; None: one per GPU asked for, else one
    resources: Resources = Resources()
    resources_per_node: FrozenMap | None = None  # as given (Kubernetes-style quantities)
    env: FrozenMap = field(default_factory=FrozenMap)
    image: str | None = None  # recorded; the local and Ray backends do not use it
    tracking: Tracking = Tracking()
    limits: Limits = Limits()
    packages: Packages = Packages()
    warm: WarmStart = WarmStart()
    initializers: tuple[FrozenMap, ...] = ()  # steps of trainjob.initializers.plan, run before the ranks
    name: str | None = None
    resume_from: str | None = None
    submit_dir: str | None = None  # the submitter's working directory (on PYTHONPATH of local ranks)
    masked: bool = False  # True: secrets are masked (the stored/shown form); see with_secrets

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.procs_per_node

    @property
    def device(self) -> str:
        """``"gpu"`` when the job asked for GPUs, else ``"cpu"`` (what a step record shows)."""
        return "gpu" if self.resources.gpu else "cpu"

    # ---- building ----------------------------------------------------------------------
    @classmethod
    def from_trainer(cls, trainer: Any, **settings: Any) -> "JobSpec":
        """The spec of a validated ``CustomTrainer``/``TransformersTrainer``; ``settings`` are
        further fields (``name``, ``resume_from``, ``submit_dir``, ``initializers``...)."""
        func = trainer.func
        func_text = func if isinstance(func, str) or func is None else _callable_name(func)
        func_args = None if trainer.func_args is None else {k: _short_repr(v) for k, v in trainer.func_args.items()}
        tracking = bool(getattr(trainer, "enable_progression_tracking", False))
        spec = cls(
            trainer=type(trainer).__name__,
            entrypoint=Entrypoint(
                kind=trainer.entrypoint_kind,
                func=func_text,
                func_args=None if func_args is None else _frozen(func_args),
                script=None if trainer.script is None else str(trainer.script),
                module=trainer.module,
                command=trainer.command,
                args=tuple(trainer.script_args or ()),
            ),
            num_nodes=int(trainer.num_nodes),
            procs_per_node=trainer.procs_per_node(),
            num_procs_per_node=trainer.num_procs_per_node,
            resources=trainer.resources,
            resources_per_node=None if trainer.resources_per_node is None else _frozen(trainer.resources_per_node),
            env=_frozen(trainer.env),
            image=trainer.image,
            tracking=Tracking(
                enabled=tracking,
                custom_metrics=_frozen(getattr(trainer, "custom_metrics", None)),
                metrics_port=int(getattr(trainer, "metrics_port", DEFAULT_METRICS_PORT)),
                progress_timeout=getattr(trainer, "progress_timeout", None),
            ),
            limits=Limits(trainer.max_restarts, trainer.active_deadline_seconds, float(trainer.stop_grace_seconds), float(trainer.exit_grace_seconds)),
            packages=Packages(tuple(trainer.packages_to_install or ()), tuple(trainer.pip_index_urls or ())),
            warm=WarmStart(enabled=bool(trainer.warm_start)),
        )
        return spec.replace(**settings) if settings else spec

    def replace(self, **changes: Any) -> "JobSpec":
        """A copy with some fields changed (``initializers`` and ``env`` may be plain lists/dicts)."""
        if "initializers" in changes:
            changes["initializers"] = tuple(_frozen(s) for s in changes["initializers"] or ())
        if "env" in changes:
            changes["env"] = _frozen(changes["env"])
        return dataclasses.replace(self, **changes)

    # ---- secrets -----------------------------------------------------------------------
    def split(self) -> tuple["JobSpec", dict[str, Any]]:
        """``(shown, hidden)``: this spec with secrets masked (``masked=True``), and the real
        values of the masked fields (empty when nothing is secret), to keep apart."""
        shown, hidden = split_spec(self.to_dict())
        return JobSpec.from_dict({**shown, "masked": True}), hidden

    def shown(self) -> "JobSpec":
        """This spec as it may be stored and shown (secrets masked)."""
        return self.split()[0]

    def shown_dict(self) -> dict[str, Any]:
        """``shown().to_dict()``, made in one step: what ``TrainJob.spec`` is (masked again on
        every read, so a record stored before the masking rules grew is shown by today's)."""
        return split_spec(self.to_dict())[0]

    def with_secrets(self, hidden: Mapping[str, Any] | None) -> "JobSpec":
        """The real spec, from a stored (masked) one and the values ``split`` kept apart."""
        return JobSpec.from_dict({**join_spec(self.to_dict(), hidden), "masked": False})

    def require_masked(self) -> "JobSpec":
        """This spec, if it is the masked form; a real one must not be stored or shown."""
        if not self.masked:
            raise ValueError(f"the real spec of job {self.name} was about to be stored; store spec.split()[0]")
        return self

    def require_real(self, who: str) -> "JobSpec":
        """This spec, if it carries real values; a masked one must not start ranks."""
        if self.masked:
            raise ValueError(f"{who} was given the masked (stored) spec of job {self.name}; call with_secrets(hidden) first")
        return self

    # ---- JSON --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The flat JSON-able dict that ``TrainJob.spec`` shows (no version, no masked flag)."""
        e, t, lim = self.entrypoint, self.tracking, self.limits
        return {
            "trainer": self.trainer,
            "entrypoint": e.kind,
            "func": e.func,
            "func_args": None if e.func_args is None else dict(e.func_args),
            "image": self.image,
            "packages_to_install": list(self.packages.install) or None,
            "pip_index_urls": list(self.packages.index_urls) or None,
            "num_nodes": self.num_nodes,
            "resources_per_node": None if self.resources_per_node is None else dict(self.resources_per_node),
            "env": dict(self.env),
            "script": e.script,
            "module": e.module,
            "command": e.command,
            "script_args": list(e.args) or None,
            "num_procs_per_node": self.num_procs_per_node,
            "max_restarts": lim.max_restarts,
            "active_deadline_seconds": lim.active_deadline_seconds,
            "stop_grace_seconds": lim.stop_grace_seconds,
            "exit_grace_seconds": lim.exit_grace_seconds,
            "warm_start": self.warm.enabled,
            "enable_progression_tracking": t.enabled,
            "custom_metrics": dict(t.custom_metrics) or None,
            "metrics_port": t.metrics_port,
            "progress_timeout": t.progress_timeout,
            "procs_per_node": self.procs_per_node,
            "resources": self.resources.to_dict(),
            "submit_dir": self.submit_dir,
            "metrics_host": t.metrics_host,
            "warm": {"enabled": self.warm.backend_enabled, "idle_timeout": self.warm.idle_timeout},
            "resume_from": self.resume_from,
            "name": self.name,
            "initializers": [dict(s) for s in self.initializers],
        }

    def to_record(self) -> dict[str, Any]:
        """``to_dict`` with ``version`` and ``masked``: what a store keeps (as JSON)."""
        return {"version": SPEC_VERSION, "masked": self.masked, **self.to_dict()}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_record(), indent=indent, default=str)

    @classmethod
    def from_json(cls, text: str | bytes) -> "JobSpec":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ValidationError([Problem("spec", str(text)[:80], f"a JSON object ({e})")], "JobSpec.from_json") from e
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "JobSpec":
        """A spec from ``to_dict``/``to_json``'s form, or from a version-less dict stored by an
        earlier release (missing fields take the defaults). A version-less dict is taken as the
        stored (masked) form unless it says ``masked``. ``ValidationError`` names every bad field."""
        if not isinstance(data, Mapping):
            raise ValidationError([Problem("spec", data, "a JSON object (a job spec)")], "JobSpec")
        r = _Reader(data)
        version = r.int("version", 1, minimum=1)
        if isinstance(version, int) and version > SPEC_VERSION:
            r.problems.append(Problem("version", version, f"at most {SPEC_VERSION} (the spec was written by a newer trainjob: upgrade it)"))
        kind = r.str("entrypoint", "func")
        if kind not in ENTRYPOINT_KINDS:
            r.problems.append(Problem("entrypoint", kind, f"one of {', '.join(ENTRYPOINT_KINDS)}"))
        res = r.map("resources") or {}
        warm = r.map("warm") or {}
        spec = cls(
            trainer=r.str("trainer", "CustomTrainer"),
            entrypoint=Entrypoint(
                kind=kind,
                func=r.opt_str("func"),
                func_args=None if data.get("func_args") is None else _frozen(r.map("func_args")),
                script=r.opt_str("script"),
                module=r.opt_str("module"),
                command=r.opt_str("command"),
                args=r.strs("script_args"),
            ),
            num_nodes=r.int("num_nodes", 1, minimum=1),
            procs_per_node=r.int("procs_per_node", 1, minimum=1),
            num_procs_per_node=r.opt_int("num_procs_per_node"),
            resources=Resources(cpu=res.get("cpu"), memory=res.get("memory"), gpu=int(res.get("gpu") or 0)),
            resources_per_node=None if data.get("resources_per_node") is None else _frozen(r.map("resources_per_node")),
            env=_frozen(r.map("env")),
            image=r.opt_str("image"),
            tracking=Tracking(
                # absent in a stored dict: on, as every reader before JobSpec took it (the dashboard draws the history)
                enabled=r.bool("enable_progression_tracking", True),
                custom_metrics=_frozen(r.map("custom_metrics")),
                metrics_port=r.int("metrics_port", DEFAULT_METRICS_PORT, minimum=0),
                metrics_host=r.str("metrics_host", DEFAULT_METRICS_HOST),
                progress_timeout=r.opt_float("progress_timeout"),
            ),
            limits=Limits(
                max_restarts=r.int("max_restarts", 0, minimum=0),
                active_deadline_seconds=r.opt_int("active_deadline_seconds"),
                stop_grace_seconds=r.float("stop_grace_seconds", DEFAULT_STOP_GRACE),
                exit_grace_seconds=r.float("exit_grace_seconds", DEFAULT_EXIT_GRACE),
            ),
            packages=Packages(r.strs("packages_to_install"), r.strs("pip_index_urls")),
            warm=WarmStart(
                enabled=r.bool("warm_start", True),
                backend_enabled=warm.get("enabled") if isinstance(warm.get("enabled"), bool) else None,
                idle_timeout=float(warm["idle_timeout"]) if isinstance(warm.get("idle_timeout"), (int, float)) else None,
            ),
            initializers=tuple(_frozen(s) for s in r.list_of_maps("initializers")),
            name=r.opt_str("name"),
            resume_from=r.opt_str("resume_from"),
            submit_dir=r.opt_str("submit_dir"),
            masked=r.bool("masked", "version" not in data),
        )
        if r.problems:
            raise ValidationError(r.problems, "JobSpec")
        return spec


class _Reader:
    """Typed reads of a spec dict; a bad value becomes a ``Problem`` naming its field."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.problems: list[Problem] = []

    def _bad(self, name: str, expected: str, default: Any) -> Any:
        self.problems.append(Problem(name, self.data.get(name), expected))
        return default

    def str(self, name: str, default: str) -> str:
        v = self.data.get(name)
        if v is None:
            return default
        return v if isinstance(v, str) else self._bad(name, "a string", default)

    def opt_str(self, name: str) -> str | None:
        v = self.data.get(name)
        return v if v is None or isinstance(v, str) else self._bad(name, "a string or null", None)

    def int(self, name: str, default: int, minimum: int) -> int:
        v = self.data.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            # An earlier release could store a numeric string; read it the way its int() casts did.
            if isinstance(v, str) and v.strip().isdigit() and int(v) >= minimum:
                return int(v)
            return self._bad(name, f"an integer >= {minimum}", default)
        return v

    def opt_int(self, name: str) -> int | None:
        return None if self.data.get(name) is None else self.int(name, 0, minimum=1)

    def float(self, name: str, default: float) -> float:
        v = self.data.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            return self._bad(name, "a number of seconds > 0", default)
        return float(v)

    def opt_float(self, name: str) -> float | None:
        return None if self.data.get(name) is None else self.float(name, 1.0)

    def bool(self, name: str, default: bool) -> bool:
        v = self.data.get(name)
        if v is None:
            return default
        return v if isinstance(v, bool) else self._bad(name, "true or false", default)

    def map(self, name: str) -> dict[str, Any]:
        v = self.data.get(name)
        if v is None:
            return {}
        return dict(v) if isinstance(v, Mapping) else self._bad(name, "an object (a dict)", {})

    def strs(self, name: str) -> tuple[str, ...]:
        v = self.data.get(name)
        if v is None:
            return ()
        if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
            return tuple(v)
        return self._bad(name, "a list of strings", ())

    def list_of_maps(self, name: str) -> list[Mapping[str, Any]]:
        v = self.data.get(name)
        if v is None:
            return []
        if isinstance(v, (list, tuple)) and all(isinstance(x, Mapping) for x in v):
            return list(v)
        return self._bad(name, "a list of objects", [])


def _callable_name(f: Any) -> str:
    return f"{getattr(f, '__module__', '?')}:{getattr(f, '__qualname__', repr(f))}"


def _short_repr(v: object) -> str:
    r = repr(v)
    return r if len(r) <= 200 else r[:197] + "..."


