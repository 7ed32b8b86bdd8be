"""Training functions the tests submit. Ordinary user code: no trainjob imports."""

from __future__ import annotations

import os


def tiny(max_steps: int = 30, **kw):
    from trainjob.demo import train_tiny_gpt2

    kw.setdefault("eval_steps", None)
    kw.setdefault("save_steps", None)
    return train_tiny_gpt2(max_steps=max_steps, **kw)


def report_env():
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")
    return {k: os.environ.get(k) for k in keys} | {"cwd": os.getcwd()}


def fail_on_rank(rank: int = 0, message: str = "boom"):
    if int(os.environ.get("RANK", 0)) == rank:
        raise ValueError(message)
    import time

    time.sleep(30)
