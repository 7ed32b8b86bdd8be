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


# ---- TRL trainers (tiny GPT-2 from config, tokenizer trained locally) -----------------------
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def _tiny_lm():
    from trainjob.demo import build_model, build_tokenizer, corpus

    texts = corpus(64)
    tok = build_tokenizer(texts + ["user assistant system : ."])
    tok.chat_template = CHAT_TEMPLATE
    return tok, build_model(tok), texts


def _trl_common(output_dir, max_steps):
    return dict(output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=4, logging_steps=2,
                report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)  # fmt: skip


def trl_sft(max_steps: int = 8, messages: bool = False, output_dir: str = "./sft"):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tok, model, texts = _tiny_lm()
    if messages:
        ds = Dataset.from_dict({"messages": [[{"role": "user", "content": t[:40]}, {"role": "assistant", "content": t[40:80]}] for t in texts]})
    else:
        ds = Dataset.from_dict({"text": texts})
    trainer = SFTTrainer(model=model, args=SFTConfig(max_length=32, **_trl_common(output_dir, max_steps)), train_dataset=ds, processing_class=tok)
    return trainer.train().metrics


def trl_dpo(max_steps: int = 6, output_dir: str = "./dpo"):
    import copy

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tok, model, texts = _tiny_lm()
    ds = Dataset.from_dict({"prompt": [t[:20] for t in texts], "chosen": [t[20:50] for t in texts], "rejected": [t[50:80] for t in texts]})
    args = DPOConfig(max_length=32, beta=0.1, **_trl_common(output_dir, max_steps))
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=ds, processing_class=tok)
    return trainer.train().metrics


def _length_reward(completions, **kwargs):
    return [float(len(c)) / 10.0 for c in completions]


def trl_grpo(max_steps: int = 4, output_dir: str = "./grpo"):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    tok, model, texts = _tiny_lm()
    ds = Dataset.from_dict({"prompt": [t[:20] for t in texts]})
    common = _trl_common(output_dir, max_steps)
    args = GRPOConfig(num_generations=2, max_completion_length=8, generation_batch_size=4, **common)
    trainer = GRPOTrainer(model=model, reward_funcs=[_length_reward], args=args, train_dataset=ds, processing_class=tok)
    return trainer.train().metrics


def classifier_with_metrics(max_steps: int = 20, output_dir: str = "./clf"):
    """HF Trainer with eval, compute_metrics and a custom logged metric (accuracy, my_f1)."""
    import numpy as np
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    rng = np.random.default_rng(0)
    ids = rng.integers(5, 50, size=(128, 16))
    labels = (ids[:, 0] > 27).astype(int)
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": np.ones_like(ids).tolist(), "labels": labels.tolist()})
    model = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=2))

    def compute_metrics(pred):
        acc = float((pred.predictions.argmax(-1) == pred.label_ids).mean())
        return {"accuracy": acc, "my_f1": acc * 0.9}

    args = TrainingArguments(output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=16, logging_steps=5, eval_strategy="steps",
                             eval_steps=10, save_strategy="steps", save_steps=10, report_to=[], use_cpu=True, disable_tqdm=True,
                             load_best_model_at_end=True, metric_for_best_model="accuracy")  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=ds, eval_dataset=ds.select(range(32)), compute_metrics=compute_metrics)
    return trainer.train().metrics


def injected_state():
    """What instrumentation did to this process: callbacks, threads, import hooks (for the tracking-off test)."""
    import sys
    import threading

    import transformers.trainer as tt

    from trainjob.demo import train_tiny_gpt2

    train_tiny_gpt2(max_steps=3, eval_steps=None, save_steps=None)
    return {
        "default_callbacks": [c.__name__ for c in tt.DEFAULT_CALLBACKS],
        "threads": sorted(t.name for t in threading.enumerate()),
        "meta_path": [type(f).__name__ for f in sys.meta_path],
        "server_module_loaded": "trainjob.runtime.server" in sys.modules,
    }


def slow_tiny(max_steps: int = 40, save_steps: int | None = 10, step_delay: float = 0.1, output_dir: str = "./output", seed: int = 0, **training_args):
    """The tiny GPT-2 of ``trainjob.demo`` with a pause after every step, so a test can act mid-training.

    Logs every 5 steps; returns the final train metrics plus the step and epoch it ended at.
    """
    import time

    from transformers import TrainerCallback

    from trainjob.demo import train_tiny_gpt2

    class Pause(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            time.sleep(step_delay)

    training_args.setdefault("logging_steps", 5)
    return train_tiny_gpt2(max_steps=max_steps, output_dir=output_dir, eval_steps=None, save_steps=save_steps, seed=seed,
                           callbacks=[Pause()], **training_args)  # fmt: skip

def rewrite_then_slow_tiny(rewrite: tuple[str, ...] = (), **kw):
    """Overwrite each file in ``rewrite`` (relative to the job's workdir) in place, as a Trainer's
    ``save_model`` overwrites ``model.safetensors``, then train as ``slow_tiny``: a resumed job that
    changes what it was given, so a test can check the source job's files stay as they were."""
    for rel in rewrite:
        with open(rel, "r+b") as f:
            f.write(b"rewritten by the resumed job")
    return slow_tiny(**kw)


def quick_value(x: int = 42):
    return x


def gloo_allreduce():
    """Init gloo from torchrun's env, all-reduce each rank's (rank + 1), return the sum."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t = torch.tensor([dist.get_rank() + 1.0])
    dist.all_reduce(t)
    return float(t.item())


def sleep_for(seconds: float = 600):
    import time

    time.sleep(seconds)


def _collective_loop(seconds: float = 60):
    """All-reduce until a peer disappears (then gloo raises "Connection closed by peer")."""
    import time

    import torch
    import torch.distributed as dist

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        dist.all_reduce(torch.ones(1))
        time.sleep(0.01)


def die_on_rank(rank: int = 1, sig: int = 9):
    """Every rank joins a gloo group; ``rank`` then kills itself with ``sig`` while the others sit in all_reduce."""
    import os

    import torch.distributed as dist

    dist.init_process_group("gloo")
    dist.barrier()
    if dist.get_rank() == rank:
        os.kill(os.getpid(), sig)
    _collective_loop()


def raise_in_collective(rank: int = 1, message: str = "boom"):
    """Every rank joins a gloo group; ``rank`` raises while the others sit in all_reduce (and fail after it)."""
    import time

    import torch.distributed as dist

    dist.init_process_group("gloo")
    dist.barrier()
    if dist.get_rank() == rank:
        time.sleep(0.5)  # the others are inside all_reduce by now
        raise ValueError(message)
    _collective_loop()


def paced_tiny(max_steps: int = 400, step_sleep: float = 0.05, logging_steps: int = 5, eval_steps: int | None = 50):
    """The tiny GPT-2, slowed down by a sleeping data collator: a job that stays Running for a while.

    Used by dashboard/CLI tests that need a live job (curves that grow, stop). Sleeping costs no
    CPU, so it does not load the shared machine like a longer job would.
    """
    import time

    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from trainjob.demo import build_dataset, build_model, build_tokenizer, corpus

    texts = corpus()
    tokenizer = build_tokenizer(texts)
    base = DataCollatorForLanguageModeling(tokenizer, mlm=False)

    def collate(features):
        time.sleep(step_sleep)
        return base(features)

    args = TrainingArguments(
        output_dir="./output", max_steps=max_steps, per_device_train_batch_size=8, learning_rate=5e-4,
        logging_steps=logging_steps, eval_strategy="steps" if eval_steps else "no", eval_steps=eval_steps,
        save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, ddp_find_unused_parameters=False,
    )  # fmt: skip
    trainer = Trainer(
        model=build_model(tokenizer), args=args, data_collator=collate, processing_class=tokenizer,
        train_dataset=build_dataset(tokenizer, texts[:224]), eval_dataset=build_dataset(tokenizer, texts[224:]) if eval_steps else None,
    )  # fmt: skip
    return dict(trainer.train().metrics)


# ---- resources and package environments (tests/test_scheduler.py, tests/test_envs.py) -------
def placement_report(seconds: float = 0.0):
    """What this rank was given: CPU affinity, thread counts, GPUs, memory cgroup; optionally holds them a while."""
    import json
    import time

    time.sleep(seconds)
    cgroup = None
    try:
        for line in open("/proc/self/cgroup"):
            if ":memory:" in line or line.startswith("0::"):
                cgroup = (cgroup or "") + line.strip() + ";"
    except OSError:
        pass
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "TRAINJOB_PLACEMENT", "RANK", "NODE_RANK", "GROUP_RANK")
    for k in keys:
        print(f"{k}={os.environ.get(k)}", flush=True)  # every rank's own view, in its log
    return {"affinity": sorted(os.sched_getaffinity(0)), "env": {k: os.environ.get(k) for k in keys}, "cgroup": cgroup, "pid": os.getpid(), "time": time.time(), "json": json.dumps(1)}


def use_package(module: str = "tjpkg", attribute: str = "VALUE"):
    """Import a module installed through packages_to_install; report where it came from and torch's path."""
    import importlib
    import sys

    mod = importlib.import_module(module)
    import torch

    return {"value": getattr(mod, attribute), "file": mod.__file__, "torch": torch.__file__, "python": sys.executable, "prefix": sys.prefix}


def allocate_mb(mb: int = 1024, hold: float = 2.0):
    """Allocate and touch ``mb`` MiB in 64 MiB pieces, then hold it; to hit a memory limit."""
    import time

    chunks = []
    for _ in range(max(1, mb // 64)):
        chunks.append(b"\x01" * (64 * 2**20))  # written, so the pages are really used (not lazily zero)
    time.sleep(hold)
    return len(chunks) * 64


def package_value():
    """Returns ``tjcli_pkg.VALUE``: proves the job ran in the environment built for ``--pkg tjcli-pkg``."""
    import tjcli_pkg

    return tjcli_pkg.VALUE


# ---- Ray backend (tests/test_ray.py) ---------------------------------------------------------
def fails_once_at(fail_at: int = 15, rank: int = 1, max_steps: int = 30, save_steps: int = 10, output_dir: str = "./output"):
    """The tiny GPT-2; ``rank`` raises at step ``fail_at`` in the job's first attempt only (``TRAINJOB_ATTEMPT=0``)."""
    from transformers import TrainerCallback

    from trainjob.demo import train_tiny_gpt2

    class FailOnce(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            first = os.environ.get("TRAINJOB_ATTEMPT", "0") == "0"
            if first and state.global_step == fail_at and int(os.environ.get("RANK", 0)) == rank:
                raise RuntimeError(f"injected failure at step {fail_at}")

    return train_tiny_gpt2(max_steps=max_steps, output_dir=output_dir, eval_steps=None, save_steps=save_steps, logging_steps=5,
                           callbacks=[FailOnce()])  # fmt: skip

def stubborn_peer(fail_rank: int = 1, message: str = "boom"):
    """``fail_rank`` raises; every other rank ignores SIGTERM and sleeps (so its launcher cannot end it)."""
    import os
    import signal
    import time

    if int(os.environ.get("RANK", 0)) == fail_rank:
        time.sleep(0.5)
        raise ValueError(message)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(120)


# ---- ranks that do not end (tests/test_hangs.py) ----------------------------------------------
def hang_at_exit(rank: int = 1):
    """Returns normally everywhere; on ``rank`` a non-daemon thread then keeps the interpreter alive."""
    import threading

    if int(os.environ.get("RANK", 0)) == rank:
        threading.Thread(target=threading.Event().wait, name="never-ends").start()
    return int(os.environ.get("RANK", 0))


def never_returns_on(rank: int = 1):
    """``rank`` never finishes its work; the others return at once."""
    import time

    if int(os.environ.get("RANK", 0)) == rank:
        while True:
            time.sleep(1)
    return int(os.environ.get("RANK", 0))


def tiny_hanging(hang_at_step: int = 3, **kw):
    """The tiny Trainer job, stuck for ever inside step ``hang_at_step`` (a callback that never returns)."""
    import time

    from transformers import TrainerCallback

    class Stuck(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            while state.global_step >= hang_at_step:
                time.sleep(1)

    return tiny(callbacks=[Stuck()], **kw)


def tiny_stopping_early(stop_at: int = 7, **kw):
    """The tiny Trainer job whose own callback ends training at ``stop_at`` (as EarlyStoppingCallback does)."""
    from transformers import TrainerCallback

    class StopEarly(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= stop_at:
                control.should_training_stop = True

    return tiny(callbacks=[StopEarly()], **kw)


def env_value(name: str = "MY_TOKEN"):
    return os.environ.get(name)


def clocked_tiny(max_steps: int = 300, step_delay: float = 0.1, output_dir: str = "./output", **kw):
    """``slow_tiny`` that appends ``<step> <time>`` to ``<output_dir>/steps.log`` at the end of every
    step: the true step times, for measuring how stale the progress a client sees is."""
    import time

    from transformers import TrainerCallback

    from trainjob.demo import train_tiny_gpt2

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if int(os.environ.get("RANK", 0)) == 0:
                os.makedirs(output_dir, exist_ok=True)
                with open(os.path.join(output_dir, "steps.log"), "a") as f:
                    f.write(f"{state.global_step} {time.time()}\n")
            time.sleep(step_delay)

    kw.setdefault("logging_steps", 5)
    return train_tiny_gpt2(max_steps=max_steps, output_dir=output_dir, eval_steps=None, save_steps=None, callbacks=[Clock()], **kw)
