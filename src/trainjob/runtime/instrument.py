"""Add trainjob's callback to every ``transformers.Trainer`` a rank builds, TRL's included.

Every Trainer subclass (SFT, DPO, GRPO, KTO, Reward...) runs ``transformers.Trainer.__init__``,
which reads the module global ``transformers.trainer.DEFAULT_CALLBACKS`` each time. So appending
our callback class there once reaches them all, with no change to user code. To keep process start
fast, transformers is not imported here: an import hook does the append the moment the user's code
imports ``transformers.trainer``. This is the one place trainjob touches another library's state.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

_TARGET = "transformers.trainer"
_wanted = {"callback": False, "resume": False}


def install(callback: bool = True, resume: bool = False) -> None:
    """Idempotent: instrument now if transformers.trainer is loaded, else when it gets imported.

    ``callback``: add the progress callback to every Trainer. ``resume``: make every
    ``Trainer.train()`` called without ``resume_from_checkpoint`` resume from the newest complete
    checkpoint in its ``output_dir`` (used when a job is restarted or resumed).
    """
    _wanted["callback"] |= callback
    _wanted["resume"] |= resume
    module = sys.modules.get(_TARGET)
    if module is not None:
        _apply(module)
        return
    if not any(isinstance(f, _TrainerImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TrainerImportHook())


def _apply(module: ModuleType) -> None:
    if _wanted["callback"]:
        _add_callback(module)
    if _wanted["resume"]:
        _add_auto_resume(module)


def _add_auto_resume(module: ModuleType) -> None:
    """Make ``Trainer.train()`` resume from the newest *complete* checkpoint in its ``output_dir``.

    Installed only in a restarted or resumed job (``TRAINJOB_RESUME=1``), so user code needs no
    ``resume_from_checkpoint``. ``None`` (the default) and ``True`` both mean "the newest complete
    one": HF's own ``True`` takes the highest-numbered folder even when it was cut short by a
    kill mid-save, and then fails to load it. An explicit path, or ``False``, is left alone.
    Every subclass (TRL's trainers) goes through ``transformers.Trainer.train``, so patching it
    once reaches them all; idempotent.
    """
    trainer_cls = module.Trainer
    if getattr(trainer_cls.train, "_trainjob_auto_resume", False):
        return
    original = trainer_cls.train

    @functools.wraps(original)
    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint is None or resume_from_checkpoint is True:
            from trainjob.checkpoints import checkpoint_step, latest_complete, list_checkpoints

            output_dir = self.args.output_dir
            ckpt = latest_complete(output_dir)
            if ckpt is not None:
                skipped = [p.name for p in list_checkpoints(output_dir) if (checkpoint_step(p) or 0) > (checkpoint_step(ckpt) or 0)]
                _report_resume(ckpt, skipped)
                resume_from_checkpoint = str(ckpt)
            elif resume_from_checkpoint is True:
                resume_from_checkpoint = None  # nothing complete to resume from: start fresh, as a new job would
        return original(self, resume_from_checkpoint, *args, **kwargs)

    train._trainjob_auto_resume = True  # type: ignore[attr-defined]
    trainer_cls.train = train


def _report_resume(ckpt, skipped: list[str]) -> None:
    """Say in the rank's log, and (rank 0) in the job's events, where training resumes from."""
    import os
    import time

    note = f" (skipped incomplete {', '.join(skipped)})" if skipped else ""
    print(f"[trainjob] resuming from {ckpt}{note}", flush=True)
    if os.environ.get("RANK", "0") != "0":
        return
    from trainjob import contract
    from trainjob.checkpoints import checkpoint_step
    from trainjob.runtime import sinks

    sinks.current().event(
        {
            "time": time.time(),
            "reason": "Resuming",
            "message": f"resuming from {ckpt.name}{note}",
            "data": {"checkpoint": os.path.abspath(ckpt), "step": checkpoint_step(ckpt), "skipped": skipped},
            "attempt": int(os.environ.get(contract.ATTEMPT, "0")),
        }
    )


def installed() -> bool:
    """True if the callback is in DEFAULT_CALLBACKS (or will be, once transformers.trainer loads)."""
    module = sys.modules.get(_TARGET)
    if module is None:
        return any(isinstance(f, _TrainerImportHook) for f in sys.meta_path)
    from trainjob.runtime.callback import TrainjobCallback

    return TrainjobCallback in module.DEFAULT_CALLBACKS


def _add_callback(module: ModuleType) -> None:
    from trainjob.runtime.callback import TrainjobCallback

    if TrainjobCallback not in module.DEFAULT_CALLBACKS:
        module.DEFAULT_CALLBACKS.append(TrainjobCallback)


class _TrainerImportHook(importlib.abc.MetaPathFinder):
    """Finds ``transformers.trainer`` through the other finders and runs ``_add_callback`` after it executes."""

    def find_spec(self, fullname, path, target=None):  # type: ignore[override]
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec):
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        _apply(module)
        # Done: later imports are plain sys.modules lookups; leave the import system as it was.
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TrainerImportHook)]

    def __getattr__(self, name: str):  # get_code, get_source, is_package... for tools that ask
        return getattr(self._inner, name)
