"""Training runtimes: what ``TrainerClient.list_runtimes()`` describes (Kubeflow's ``Runtime``).

A trainjob backend has one runtime, ``torch-distributed`` (Kubeflow's default name): ranks run
torch (``torch.distributed.run`` locally, Ray Train's ``TorchTrainer`` on Ray) in the backend's
Python environment, plus a job's own ``packages_to_install``. What it offers is detected, never
configured: the local runtime's device is ``gpu`` with the GPUs this machine has
(``CUDA_VISIBLE_DEVICES`` honoured), else ``cpu`` with its CPUs; Ray's is the cluster's totals.
"""

from __future__ import annotations

from typing import Any

from trainjob.types import Runtime, RuntimeKind, RuntimeTrainer, TrainerType

DEFAULT_RUNTIME = "torch-distributed"
FRAMEWORK = "torch"


def local_runtime() -> Runtime:
    """This machine's ``torch-distributed`` runtime (cheap: no package scan, no torch import)."""
    from trainjob.resources import local_capacity

    cap = local_capacity()
    return _runtime("local", {"cpu": cap.cpus, "memory": cap.memory, "gpu": len(cap.gpus), "nodes": 1})


def ray_runtime(totals: dict[str, float], nodes: int) -> Runtime:
    """The Ray cluster's ``torch-distributed`` runtime from its resource totals (Ray's key names)."""
    return _runtime("ray", {"cpu": totals.get("CPU", 0), "memory": int(totals.get("memory", 0)), "gpu": int(totals.get("GPU", 0)), "nodes": nodes})


def _runtime(image: str, resources: dict[str, Any]) -> Runtime:
    gpus = int(resources.get("gpu") or 0)
    device, count = ("gpu", gpus) if gpus else ("cpu", resources.get("cpu") or 0)
    trainer = RuntimeTrainer(
        trainer_type=TrainerType.CUSTOM_TRAINER,
        framework=FRAMEWORK,
        image=image,
        num_nodes=1,
        device=device,
        device_count=f"{count:g}" if isinstance(count, float) else str(count),
    )
    return Runtime(name=DEFAULT_RUNTIME, trainer=trainer, kind=RuntimeKind.TRAINING_RUNTIME, resources=resources)


def installed_packages() -> list[str]:
    """``name==version`` of every distribution in this Python environment, sorted by name."""
    from importlib import metadata

    seen: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata.get("Name")
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={dist.version}"
    return [seen[k] for k in sorted(seen)]


if __name__ == "__main__":  # the Ray backend's package listing runs this on the cluster
    print("\n".join(installed_packages()))
