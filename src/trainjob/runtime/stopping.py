"""Graceful stop: every rank saves a checkpoint at the same step, then training ends.

A stop is requested by the supervisor (the ``stop`` file in the run folder), by Ray's stop key
(``backends.ray.worker.StopWatcher`` calls ``request``) or by SIGTERM to a rank. None of them is
looked for at every step: a signal handler or a background thread sets a flag, and a step only
reads that flag (a step must cost microseconds and make no system call, see the callback).

- The ``stop`` file is watched by a daemon thread (``_StopFileWatcher``) that checks it every
  ``STOP_POLL`` seconds while a ``Trainer`` trains, so a stop is noticed within that time.
- Ranks must agree on the step, or some would save step 120 and others step 121 and the
  collective save would hang; so with several ranks the decision is an all-reduce (MAX) of each
  rank's flag, taken at the same global steps on every rank. Those check steps are multiples of
  ``CHECK_EVERY``; the distance to the next one is agreed in that same all-reduce (the smallest
  of the ranks' proposals), each rank proposing as many steps as it ran in about
  ``CHECK_SECONDS``. So fast steps pay one collective a second instead of one every five steps
  (a collective is a synchronisation point: measured at 3-7 ms each in a 2-rank gloo job on 2
  cores), and slow steps are still checked every ``CHECK_EVERY`` steps.
- With one process there is nothing to agree on: the flag is read at every step.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from trainjob import contract

CHECK_EVERY = 5  # steps: check steps are multiples of this, on every rank
CHECK_SECONDS = 1.0  # aim for one stop all-reduce about this often while steps are fast
STOP_POLL = 0.25  # seconds between checks of the stop file by the watcher thread

_requested = False  # asked by request() or SIGTERM
_stop_file_seen = False  # the watcher thread found the supervisor's stop file
_agreed = False
_reason: str | None = None  # why training stopped early when the rank itself decided it (pruning)
_training = False
_world = 1
_next_check = CHECK_EVERY  # the next global step at which the ranks all-reduce their flags
_last_check: tuple[float, int] = (0.0, 0)  # (monotonic time, step) of the previous check
_watcher: _StopFileWatcher | None = None


def request() -> None:
    """Mark this rank as asked to stop (thread-safe: it only sets a flag)."""
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


def reason() -> str | None:
    """Why this rank stopped training itself (``stop_now``), or None."""
    return _reason


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any: one all-reduce, which every rank must call at
    the same point (one process: ``flag`` itself)."""
    return _all_agree(flag, CHECK_EVERY)[0]


def stop_now(control, why: str) -> None:
    """Stop at this step, saving a checkpoint, as an agreed stop does; ``why`` goes into ``TrainEnd``.
    Every rank must call it at the same step (see ``any_rank``)."""
    global _agreed, _reason
    _agreed, _reason = True, why
    control.should_save = True
    control.should_training_stop = True


def requested() -> bool:
    """True once a stop was agreed (or, single-process, asked for) in this process."""
    return _agreed or _requested


def install_signal_handler() -> None:
    """Turn SIGTERM (preemption) into a graceful stop. Called by bootstrap, main thread only."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def _stop_file() -> Path | None:
    run_dir = os.environ.get(contract.RUN_DIR)
    return Path(run_dir) / contract.STOP_FILE if run_dir else None


class _StopFileWatcher:
    """A daemon thread that checks the supervisor's stop file every ``interval`` seconds and, once
    it is there, sets the flag that the next step reads. It ends when the file is found or
    ``close`` is called (training ended)."""

    def __init__(self, path: Path, interval: float = STOP_POLL) -> None:
        self.path, self.interval = path, interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainjob-stop-file", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        global _stop_file_seen
        while True:
            if self.path.exists():
                _stop_file_seen = True
                return
            if self._done.wait(self.interval):
                return

    def close(self) -> None:
        self._done.set()


def on_train_begin(args, state) -> None:
    """Reset the agreement for this ``Trainer.train()``, plan the first check step, watch the stop file."""
    global _agreed, _reason, _training, _world, _next_check, _last_check, _stop_file_seen, _watcher
    _agreed, _reason = False, None
    _training = True
    _stop_file_seen = False
    _world = max(1, int(getattr(args, "world_size", 1) or 1))
    step = int(state.global_step or 0)
    _next_check = (step // CHECK_EVERY + 1) * CHECK_EVERY
    _last_check = (time.monotonic(), step)
    path = _stop_file()
    if path is not None:
        if _watcher is not None:
            _watcher.close()
        _watcher = _StopFileWatcher(path)


def on_train_end() -> None:
    global _training, _watcher
    _training = False
    if _watcher is not None:
        _watcher.close()
        _watcher = None


def on_step_end(state, control) -> None:
    """Set ``should_save`` and ``should_training_stop`` on every rank at the same step when asked.

    Between check steps this reads module globals only: no system call, no collective.
    """
    global _agreed, _next_check, _last_check
    if _agreed:
        return
    if _world <= 1:
        stop = _requested or _stop_file_seen
    else:
        step = state.global_step
        if step < _next_check:
            return
        now = time.monotonic()
        stop, interval = _all_agree(_requested or _stop_file_seen, _propose_interval(step, now))
        _next_check, _last_check = step + interval, (now, step)
    if stop:
        _agreed = True
        control.should_save = True
        control.should_training_stop = True


def _propose_interval(step: int, now: float) -> int:
    """Steps until the next check as this rank would have it: about ``CHECK_SECONDS`` of its own
    recent steps, a multiple of ``CHECK_EVERY`` and at least ``CHECK_EVERY``."""
    t0, s0 = _last_check
    if now <= t0 or step <= s0:
        return CHECK_EVERY
    steps = (step - s0) / (now - t0) * CHECK_SECONDS
    return max(1, int(steps // CHECK_EVERY)) * CHECK_EVERY


def _all_agree(flag: bool, interval: int) -> tuple[bool, int]:
    """One all-reduce (MAX) of ``[flag, -interval]``: whether any rank wants to stop, and the
    smallest proposed interval. Every rank gets the same answer, so every rank picks the same
    next check step."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_initialized():
        return flag, interval
    import torch

    t = torch.tensor([1 if flag else 0, -interval], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    stop, neg_interval = t.tolist()
    return bool(stop), max(CHECK_EVERY, -int(neg_interval))
