"""Backends: where jobs run. ``create_backend`` builds one from its config, importing it lazily."""

from __future__ import annotations

import importlib

from trainjob.backends.base import Backend
from trainjob.errors import BackendError


def create_backend(config: object) -> Backend:
    """Instantiate the backend a config names (``config.backend_path`` = ``"module:Class"``)."""
    path = getattr(type(config), "backend_path", None)
    if not isinstance(path, str):
        raise BackendError(
            f"backend_config={config!r} is not a backend config; use LocalBackendConfig() or "
            "RayBackendConfig(address=...)"
        )
    module_name, _, cls_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        extra = module_name.split(".")[2] if module_name.count(".") >= 2 else "?"
        raise BackendError(
            f"{type(config).__name__} needs an optional dependency that is missing ({e.name or e}); "
            f"install it with: pip install 'trainjob[{extra}]'"
        ) from e
    return getattr(module, cls_name)(config)


__all__ = ["Backend", "create_backend"]
