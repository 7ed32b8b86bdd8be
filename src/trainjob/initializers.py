"""Initializers: a model and a dataset put in place once per job, before its ranks start.

Kubeflow's types, under the same names: ``train(initializer=Initializer(model=
HuggingFaceModelInitializer(storage_uri="hf://org/name"), dataset=HuggingFaceDatasetInitializer(
storage_uri="hf://datasets-org/name")))``. Each runs as the job's step ``model-initializer`` /
``dataset-initializer`` (with a status in ``TrainJob.steps``, a log for ``get_job_logs(name,
step="model-initializer")`` and events); a failure fails the job with the hub's error.

**Where the files land** (one rule): ``workspace/model`` and ``workspace/dataset`` in the job's
working directory, which is the ranks' current directory, so ``MODEL_PATH`` (``"workspace/model"``)
and ``DATASET_PATH`` (``"workspace/dataset"``) open them from any rank. On Ray, whose nodes do not
share a disk, the driver runs each step once on every node that can host a rank
(``backends/ray/initializers.py``). Kubernetes pods use ``/workspace/model`` and
``/workspace/dataset``.

``storage_uri`` forms: ``hf://org/name[@revision]`` (downloaded with ``huggingface_hub``'s
``snapshot_download``: the HF cache, ``HF_HOME`` and ``HF_HUB_OFFLINE`` are honoured),
``file:///abs/path`` or a plain local path (a folder or a file, copied; files are hard-linked
where possible). S3 initializers build, and ``train()`` refuses them until they are built.
``access_token`` reaches only the job's environment (``TRAINJOB_<STEP>_TOKEN``, masked in
everything shown), never its stored spec.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainjob.errors import Problem, ValidationError

MODEL_PATH = "workspace/model"  # relative to the job's working directory: the ranks' cwd
DATASET_PATH = "workspace/dataset"
DEFAULT_IGNORE_PATTERNS = ["*.msgpack", "*.h5", "*.bin", "*.pt", "*.pth"]  # Kubeflow's, for models
MODEL_STEP, DATASET_STEP = "model-initializer", "dataset-initializer"
STEPS = (DATASET_STEP, MODEL_STEP)
_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _check_uri(kind: str, uri: object, schemes: tuple[str, ...]) -> list[Problem]:
    expected = "'hf://org/name', 'file:///path' or a local path" if "hf" in schemes else "'s3://bucket/path'"
    if not isinstance(uri, str) or not uri.strip():
        return [Problem(f"{kind}.storage_uri", uri, expected)]
    if uri.startswith("hf://"):
        repo = uri[len("hf://"):].partition("@")[0]
        if "hf" not in schemes or not _HF_REPO.match(repo):
            return [Problem(f"{kind}.storage_uri", uri, expected + " (a hub id is 'org/name' or 'name')")]
    elif "://" in uri and not (uri.startswith("file://") and "file" in schemes) and not (uri.startswith("s3://") and "s3" in schemes):
        return [Problem(f"{kind}.storage_uri", uri, expected)]
    elif "s3" in schemes and not uri.startswith("s3://"):
        return [Problem(f"{kind}.storage_uri", uri, expected)]
    return []


def _check_patterns(kind: str, patterns: object) -> list[Problem]:
    if patterns is None:
        return []
    if isinstance(patterns, str) or not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
        return [Problem(f"{kind}.ignore_patterns", patterns, "a list of glob patterns such as ['*.bin', '*.pt']")]
    return []


@dataclass
class _HuggingFaceInitializer:
    """Fields and checks shared by the two HuggingFace initializers (Kubeflow's fields)."""

    storage_uri: str
    ignore_patterns: list[str] | None = None
    access_token: str | None = None

    def __post_init__(self) -> None:
        problems = _check_uri(type(self).__name__, self.storage_uri, ("hf", "file")) + _check_patterns(type(self).__name__, self.ignore_patterns)
        if problems:
            raise ValidationError(problems, type(self).__name__)


@dataclass
class HuggingFaceDatasetInitializer(_HuggingFaceInitializer):
    """A dataset from the HuggingFace Hub (``hf://org/name``), a ``file://`` URI or a local path."""


@dataclass
class HuggingFaceModelInitializer(_HuggingFaceInitializer):
    """A model from the HuggingFace Hub (``hf://org/name``), a ``file://`` URI or a local path.

    ``ignore_patterns`` defaults to Kubeflow's: weights in formats other than safetensors.
    """

    ignore_patterns: list[str] | None = field(default_factory=lambda: list(DEFAULT_IGNORE_PATTERNS))


@dataclass
class S3DatasetInitializer:
    """A dataset in S3-compatible storage (Kubeflow's fields); ``train()`` refuses it until S3 is built."""

    storage_uri: str
    ignore_patterns: list[str] | None = None
    endpoint: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    region: str | None = None
    role_arn: str | None = None

    def __post_init__(self) -> None:
        problems = _check_uri(type(self).__name__, self.storage_uri, ("s3",))
        if problems:
            raise ValidationError(problems, type(self).__name__)


@dataclass
class S3ModelInitializer(S3DatasetInitializer):
    """A model in S3-compatible storage (Kubeflow's fields); ``train()`` refuses it until S3 is built."""

    ignore_patterns: list[str] | None = field(default_factory=lambda: list(DEFAULT_IGNORE_PATTERNS))


@dataclass
class Initializer:
    """What to put in place before the ranks start: a ``dataset`` and/or a ``model``."""

    dataset: HuggingFaceDatasetInitializer | S3DatasetInitializer | None = None
    model: HuggingFaceModelInitializer | S3ModelInitializer | None = None


def plan(initializer: Any, backend: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """``(steps, env)``: the JSON-able steps the backend runs, in order, and the tokens' env vars.

    Raises ``ValidationError`` naming every problem: not an ``Initializer``, an S3 initializer
    (not built yet), a local path that does not exist, or a backend other than local and Ray.
    """
    problems: list[Problem] = []
    if not isinstance(initializer, Initializer):
        raise ValidationError([Problem("initializer", initializer, "Initializer(model=HuggingFaceModelInitializer(...), dataset=HuggingFaceDatasetInitializer(...))")], "train()")
    if backend not in ("local", "ray"):
        raise ValidationError(
            [Problem("initializer", "Initializer", f"None on the {backend} backend (initializers run on the local and Ray backends): download the model or dataset in the training function")],
            "train()",
        )
    steps: list[dict[str, Any]] = []
    env: dict[str, str] = {}
    for step, kind, init, target, repo_type in (
        (DATASET_STEP, "dataset", initializer.dataset, DATASET_PATH, "dataset"),
        (MODEL_STEP, "model", initializer.model, MODEL_PATH, "model"),
    ):
        if init is None:
            continue
        if isinstance(init, S3DatasetInitializer):
            problems.append(Problem(f"initializer.{kind}", type(init).__name__, "a HuggingFace initializer (hf://, file:// or a local path): S3 initializers are not built yet"))
            continue
        if not isinstance(init, _HuggingFaceInitializer):
            problems.append(Problem(f"initializer.{kind}", init, f"a HuggingFace{kind.title()}Initializer(storage_uri=...)"))
            continue
        entry: dict[str, Any] = {"step": step, "target": target, "ignore_patterns": list(init.ignore_patterns or [])}
        uri = init.storage_uri
        if uri.startswith("hf://"):
            repo, _, revision = uri[len("hf://"):].partition("@")
            entry.update(source="hf", repo_id=repo, repo_type=repo_type, revision=revision or None)
        else:
            path = Path(uri[len("file://"):] if uri.startswith("file://") else uri).expanduser().resolve()
            if not path.exists():
                problems.append(Problem(f"initializer.{kind}.storage_uri", uri, f"an existing file or folder ({path} does not exist)"))
                continue
            entry.update(source="path", path=str(path))
        if init.access_token:
            entry["token_env"] = f"TRAINJOB_{kind.upper()}_INITIALIZER_TOKEN"
            env[entry["token_env"]] = init.access_token
        steps.append(entry)
    if problems:
        raise ValidationError(problems, "train() initializer")
    return steps, env
