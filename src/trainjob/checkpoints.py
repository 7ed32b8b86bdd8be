"""Finding a Trainer's checkpoints, and telling a complete one from a partial one.

The Trainer writes ``trainer_state.json`` last, after the weights, optimizer, scheduler and RNG
state; a checkpoint folder without a readable one (or whose recorded step disagrees with its name)
was cut short, e.g. by a kill mid-save, and must not be resumed from.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_CKPT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


def list_checkpoints(output_dir: str | Path | None) -> list[Path]:
    """``checkpoint-N`` folders under ``output_dir``, oldest step first (complete or not)."""
    if not output_dir:
        return []
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CKPT.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_step(checkpoint: str | Path) -> int | None:
    """The step in a ``checkpoint-N`` folder's name, or None for another name."""
    m = _CKPT.match(Path(checkpoint).name)
    return int(m.group(1)) if m else None


def is_complete(checkpoint: Path) -> bool:
    """True if the Trainer finished writing this checkpoint: its ``trainer_state.json`` parses and names its step."""
    m = _CKPT.match(checkpoint.name)
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not m or not isinstance(state, dict):
        return False
    try:
        return int(state.get("global_step", -1)) == int(m.group(1))
    except (TypeError, ValueError):
        return False


def latest_complete(output_dir: str | Path | None) -> Path | None:
    """The newest complete checkpoint, skipping partial ones; None if there is none."""
    for ckpt in reversed(list_checkpoints(output_dir)):
        if is_complete(ckpt):
            return ckpt
    return None
