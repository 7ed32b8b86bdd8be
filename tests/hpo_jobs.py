"""Training functions the optimizer tests run as trials. Ordinary user code: no trainjob imports
except ``trainjob.demo`` (the tiny GPT-2 built from its config, nothing from the hub)."""

from __future__ import annotations


def lm(learning_rate: float = 5e-4, max_steps: int = 10, eval_steps: int = 5, step_delay: float = 0.0, save_steps: int | None = None, width: int = 0):
    """The tiny GPT-2 with eval every ``eval_steps``; ``step_delay`` seconds of sleep per step keep it
    running long enough for a pruner to act (sleeping costs no CPU). ``width`` only has to arrive as an int."""
    import time

    from transformers import TrainerCallback

    from trainjob.demo import train_tiny_gpt2

    if not isinstance(width, int):
        raise TypeError(f"width arrived as {type(width).__name__}, not int")

    class Pause(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            time.sleep(step_delay)

    return train_tiny_gpt2(max_steps=max_steps, learning_rate=learning_rate, eval_steps=eval_steps, save_steps=save_steps,
                           logging_steps=eval_steps, callbacks=[Pause()] if step_delay else None)  # fmt: skip


def quadratic(x: float = 0.0, mode: str = "ok", sleep: float = 0.0):
    """No Trainer: prints ``loss=...`` (Katib's stdout format); ``mode="fail"`` raises."""
    import time

    time.sleep(sleep)
    if mode == "fail":
        raise ValueError(f"trial asked to fail (x={x})")
    print(f"loss={(x - 1.0) ** 2 + (0.5 if mode == 'worse' else 0.0)}", flush=True)


def train_fn(learning_rate, num_epochs):
    """Kubeflow's example trial function: parameters used as Katib delivers them (strings), the metric printed."""
    import math

    loss = (math.log10(float(learning_rate)) + 2.0) ** 2 + 1.0 / int(num_epochs)
    print(f"epoch={int(num_epochs)} loss={loss:.6f}")
