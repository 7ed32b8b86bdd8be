"""Hints for failures that come from code written for older transformers/TRL versions.

These arguments were renamed or removed and now raise ``TypeError``; the raw message does not say
what the new name is.
"""

from __future__ import annotations

_RENAMED = {
    "evaluation_strategy": "use eval_strategy= (renamed in transformers)",
    "no_cuda": "use use_cpu=True (renamed in transformers)",
    "'tokenizer'": "pass processing_class= instead of tokenizer= (Trainer, SFTTrainer, DPOTrainer)",
    "max_seq_length": "SFTConfig(max_seq_length=) is now SFTConfig(max_length=)",
    "'beta'": "DPOTrainer(beta=) moved to DPOConfig(beta=)",
    "overwrite_output_dir": "overwrite_output_dir was removed from TrainingArguments; drop it",
    "save_safetensors": "save_safetensors was removed (safetensors is always used); drop it",
}


def hint_for(exc_type: str, message: str) -> str | None:
    if exc_type != "TypeError" or "unexpected keyword argument" not in message:
        return None
    for needle, hint in _RENAMED.items():
        if needle in message:
            return hint
    return None
