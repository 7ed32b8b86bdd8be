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


def trainer_hp_search(n_trials: int = 2, max_steps: int = 10):
    """``Trainer.hyperparameter_search(backend="optuna")`` inside one job: each trial is a ``train()``."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from trainjob.demo import build_dataset, build_model, build_tokenizer, corpus

    texts = corpus()
    tok = build_tokenizer(texts)
    args = TrainingArguments(output_dir="./hp", max_steps=max_steps, per_device_train_batch_size=8, eval_strategy="steps", eval_steps=5,
                             logging_steps=5, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)  # fmt: skip
    trainer = Trainer(model_init=lambda trial=None: build_model(tok), args=args, data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
                      train_dataset=build_dataset(tok, texts[:224]), eval_dataset=build_dataset(tok, texts[224:]))  # fmt: skip
    best = trainer.hyperparameter_search(backend="optuna", n_trials=n_trials, direction="minimize",
                                         hp_space=lambda trial: {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)})  # fmt: skip
    return {"objective": best.objective, "hyperparameters": best.hyperparameters}
