"""Training functions for tests/test_warm.py. Ordinary user code: no trainjob imports.

Each is referenced as ``"warm_jobs:name"`` (imported in the rank from the submit folder's
``PYTHONPATH``), or by value (cloudpickle) where that is what the test is about.
"""

from __future__ import annotations

import os
import sys

MARK = "unset"  # a module global a job changes: the next job must see it unchanged


def seeded_losses(max_steps: int = 12, seed: int = 0):
    """The tiny GPT-2, seeded *before* the model is built, so two fresh processes give the same losses."""
    from transformers import TrainerCallback, set_seed

    from trainjob.demo import train_tiny_gpt2

    set_seed(seed)
    losses = []

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(repr(float(logs["loss"])))

    out = train_tiny_gpt2(max_steps=max_steps, eval_steps=None, save_steps=None, logging_steps=1, seed=seed, callbacks=[Record()])
    import torch

    return {"losses": losses, "train_loss": repr(out["train_loss"]), "threads": torch.get_num_threads()}


def process_report():
    """What a fresh process would show: argv, __main__, pid, signal handlers, seeds, environment, modules."""
    import random
    import signal
    import threading

    import numpy as np
    import torch

    import warm_user_module

    main = sys.modules["__main__"]
    handlers = {}
    for name in ("SIGINT", "SIGTERM", "SIGPIPE", "SIGCHLD", "SIGHUP", "SIGUSR1", "SIGXFSZ"):
        h = signal.getsignal(getattr(signal, name))
        handlers[name] = h.__name__ if callable(h) else str(h)
    return {
        "argv": list(sys.argv),
        "main_name": main.__name__,
        "main_spec": getattr(getattr(main, "__spec__", None), "name", None),
        "main_file": getattr(main, "__file__", None),
        "pid": os.getpid(),
        "ppid_is_init_or_server": os.getppid(),
        "sid_is_own": os.getsid(0) == os.getpid(),
        "handlers": handlers,
        "signal_mask": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "random": random.random(),
        "numpy": float(np.random.random()),
        "torch": float(torch.rand(1).item()),
        "torch_initial_seed": str(torch.initial_seed()),
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
        "env_marker": os.environ.get("WARM_TEST_MARKER"),
        "cwd": os.getcwd(),
        "sys_path0": sys.path[0],
        "user_module_value": warm_user_module.VALUE,
        "user_module_file": warm_user_module.__file__,
        "python_threads": threading.active_count(),
        "mark": MARK,
        "transformers_leak": getattr(__import__("transformers"), "_warm_test_leak", None),
        "torch_threads": torch.get_num_threads(),
        "stdin_is_devnull": os.path.samefile("/proc/self/fd/0", os.devnull),
    }


def set_globals():
    """Change process-wide state a later job would see if it leaked: a module global, a library attribute, the environment."""
    global MARK
    import transformers

    MARK = "set by an earlier job"
    transformers._warm_test_leak = "leaked"
    os.environ["WARM_TEST_MARKER"] = "leaked"
    return "set"


def ddp_sum():
    """Every rank joins a gloo group from the environment (as HF Trainer does) and all-reduces rank+1."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t = torch.tensor([dist.get_rank() + 1.0])
    dist.all_reduce(t)
    return {"sum": float(t.item()), "world": dist.get_world_size(), "rank_env": os.environ["RANK"], "local_rank": os.environ["LOCAL_RANK"]}
