"""Graceful stop: every rank saves a checkpoint at the same step, then training ends.

A stop is requested by the supervisor (the ``stop`` file in the run folder) or by SIGTERM to a
rank. Ranks must agree on the step, or some would save step 120 and others step 121 and the
collective save would hang; so the decision is an all-reduce (MAX) of each rank's flag, taken at
the same global steps on every rank (every ``CHECK_EVERY`` steps, to keep the cost per step at a
fraction of a collective). With one process the flag is read at every step.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from trainjob import contract

CHECK_EVERY = 5

_requested = False
_agreed = False
_training = False


def request() -> None:
    """Mark this rank as asked to stop."""
    global _requested
    _requested = True


def _on_sigterm(signum: int, frame: object) -> None:
    # Inside trainer.train(): stop gracefully at the next agreed step. Elsewhere there is no
    # step to agree on, so SIGTERM keeps its usual meaning; and a second SIGTERM does too (a
    # launcher ending the ranks after another one failed must not wait for a save that cannot
    # happen).
    if _training and not _requested:
        request()
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def requested() -> bool:
    """True once a stop was agreed (or, single-process, asked for) in this process."""
    return _agreed or _requested


def install_signal_handler() -> None:
    """Turn SIGTERM (preemption) into a graceful stop. Called by bootstrap, main thread only."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def _stop_file() -> Path | None:
    run_dir = os.environ.get(contract.RUN_DIR)
    return Path(run_dir) / contract.STOP_FILE if run_dir else None


def _local_flag() -> bool:
    if _requested:
        return True
    f = _stop_file()
    return bool(f and f.exists())


def on_train_begin(args) -> None:
    global _agreed, _training
    _agreed = False
    _training = True


def on_train_end() -> None:
    global _training
    _training = False


def on_step_end(args, state, control) -> None:
    """Set ``should_save`` and ``should_training_stop`` on every rank at the same step when asked."""
    global _agreed
    if _agreed:
        return
    world = int(getattr(args, "world_size", 1) or 1)
    if world <= 1:
        stop = _local_flag()
    else:
        if state.global_step % CHECK_EVERY != 0:
            return
        stop = _all_agree(_local_flag())
    if stop:
        _agreed = True
        control.should_save = True
        control.should_training_stop = True


def _all_agree(flag: bool) -> bool:
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_initialized():
        return flag
    import torch

    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
