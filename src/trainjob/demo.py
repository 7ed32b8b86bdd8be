"""A tiny, self-contained training job: what ``trainjob demo`` runs and what tests and benchmarks train.

Everything is built locally (nothing comes from the HuggingFace hub): a byte-level BPE tokenizer
trained on a small in-memory corpus, a 2-layer GPT-2 built from its config, and an ordinary
``transformers.Trainer``. It is ordinary user code: it does not import trainjob's runtime.
"""

from __future__ import annotations

import random
from typing import Any

CORPUS_WORDS = (
    "the model learns to predict the next token from the tokens before it while the trainer "
    "logs loss learning rate and gradient norm saves checkpoints evaluates on held out text "
    "and reports progress to the platform every few steps"
).split()


def corpus(n: int = 256, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(CORPUS_WORDS) for _ in range(rng.randint(8, 24))) for _ in range(n)]


def build_tokenizer(texts: list[str]):
    """A ``PreTrainedTokenizerFast`` trained here with ``tokenizers`` (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<unk>", "<eos>"], show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


def build_model(tokenizer, n_layer: int = 2, n_embd: int = 64):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_layer=n_layer, n_head=2, n_embd=n_embd,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def build_dataset(tokenizer, texts: list[str], max_length: int = 32):
    from datasets import Dataset

    enc = tokenizer(texts, truncation=True, max_length=max_length, padding="max_length")
    return Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})


def train_tiny_gpt2(
    max_steps: int = 200,
    output_dir: str = "./output",
    eval_steps: int | None = 50,
    save_steps: int | None = 100,
    batch_size: int = 8,
    learning_rate: float = 5e-4,
    logging_steps: int = 10,
    seed: int = 0,
    callbacks: list | None = None,
    **training_args: Any,
) -> dict[str, Any]:
    """Train the tiny GPT-2 with ``transformers.Trainer``; returns the final train metrics and step."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    texts = corpus(seed=seed)
    tokenizer = build_tokenizer(texts)
    model = build_model(tokenizer)
    train_ds = build_dataset(tokenizer, texts[:224])
    eval_ds = build_dataset(tokenizer, texts[224:])
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        learning_rate=learning_rate,
        logging_steps=logging_steps,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps,
        report_to=[],
        use_cpu=True,
        seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        ddp_find_unused_parameters=False,
        **training_args,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds if eval_steps else None,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    output = trainer.train()
    return {**output.metrics, "global_step": trainer.state.global_step}


if __name__ == "__main__":
    import json
    import sys

    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    print(json.dumps(train_tiny_gpt2(max_steps=steps)))
