"""Serializing the training function for another process, and loading it there.

cloudpickle captures functions defined in ``__main__`` or a notebook by value, globals they use
included (the seed's module-level ``dataset``). When something cannot be pickled, the error names
it: which global or closure variable, or which argument.
"""

from __future__ import annotations

import importlib
import pickle
from typing import Any, Callable

from trainjob.errors import Problem, SerializationError


def dumps_payload(func: Callable[..., Any], func_args: dict[str, Any] | None) -> bytes:
    """Serialize ``(func, func_args)``; raises ``SerializationError`` naming what could not be."""
    import cloudpickle

    by_value = _local_module(func)
    if by_value is not None:
        cloudpickle.register_pickle_by_value(by_value)
    try:
        return cloudpickle.dumps((func, func_args or {}))
    except Exception as e:  # cloudpickle raises whatever the offending object's reducer raises
        problems = _find_culprits(func, func_args or {}) or [Problem("func", getattr(func, "__name__", func), f"serializable with cloudpickle ({type(e).__name__}: {e})")]
        raise SerializationError(problems, "train()") from e
    finally:
        if by_value is not None:
            cloudpickle.unregister_pickle_by_value(by_value)


def _local_module(func: Any):
    """The function's module when it is the user's own file (not installed), else None.

    Pickled by reference, such a function would need its module importable in every rank, which
    fails when the submitter put its folder on ``sys.path`` by hand (a notebook, a test runner).
    Pickled by value it travels whole, like a function defined in ``__main__``.
    """
    import sys
    import sysconfig

    name = getattr(func, "__module__", None)
    module = sys.modules.get(name or "")
    path = getattr(module, "__file__", None)
    if module is None or name == "__main__" or not path or isinstance(func, str):
        return None
    installed = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    if any(path.startswith(p + "/") for p in installed) or "site-packages" in path:
        return None
    if name.split(".")[0] == "trainjob":
        return None
    return module


def _find_culprits(func: Callable[..., Any], func_args: dict[str, Any]) -> list[Problem]:
    import cloudpickle

    def fails(obj: Any) -> str | None:
        try:
            cloudpickle.dumps(obj)
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return None

    problems = []
    for key, value in func_args.items():
        err = fails(value)
        if err:
            problems.append(Problem(f"func_args[{key!r}]", value, f"a picklable value ({err})"))
    code = getattr(func, "__code__", None)
    fname = getattr(func, "__name__", "func")
    if code is not None:
        cells = zip(code.co_freevars, getattr(func, "__closure__", None) or ())
        for var, cell in cells:
            try:
                value = cell.cell_contents
            except ValueError:
                continue
            err = fails(value)
            if err:
                problems.append(Problem(f"func ({fname}) closure variable {var!r}", value, f"picklable ({err}); create it inside the function instead"))
        g = getattr(func, "__globals__", {})
        for var in code.co_names:
            if var in g:
                err = fails(g[var])
                if err:
                    problems.append(Problem(f"func ({fname}) global {var!r}", g[var], f"picklable ({err}); create it inside the function instead"))
    return problems


def load_payload(data: bytes) -> tuple[Callable[..., Any], dict[str, Any]]:
    return pickle.loads(data)


def resolve_func_ref(ref: str) -> Callable[..., Any]:
    """``"pkg.module:function"`` -> the function (imported in the rank)."""
    module_name, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
