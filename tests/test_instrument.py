"""Instrumentation in one process: lazy, idempotent, harmless to user callbacks and control."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest


def _run(code: str, tmp_path, **env) -> dict:
    """Run ``code`` in a fresh interpreter (instrumentation changes process-global state)."""
    import os

    full_env = {**os.environ, "TRAINJOB_RUN_DIR": str(tmp_path), "TRAINJOB_TRACKING": "1", **env}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full_env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_install_is_lazy_and_idempotent(tmp_path):
    r = _run("""
        import json, sys
        from trainjob.runtime import instrument
        instrument.install(); instrument.install()
        lazy = "transformers" not in sys.modules
        import transformers.trainer as tt
        instrument.install()
        print(json.dumps({"lazy": lazy, "callbacks": [c.__name__ for c in tt.DEFAULT_CALLBACKS],
                          "hooks_left": [type(f).__name__ for f in sys.meta_path if "Trainer" in type(f).__name__]}))
    """, tmp_path)
    assert r == {"lazy": True, "callbacks": ["DefaultFlowCallback", "TrainjobCallback"], "hooks_left": []}


@pytest.mark.slow
def test_user_callbacks_and_control_are_respected(tmp_path):
    r = _run("""
        import json
        from trainjob.runtime import instrument
        instrument.install()
        from transformers import TrainerCallback
        seen = []
        class StopAt5(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                seen.append(state.global_step)
                if state.global_step == 5:
                    control.should_training_stop = True
        from trainjob.demo import train_tiny_gpt2
        import transformers.trainer as tt
        tt.DEFAULT_CALLBACKS.append(StopAt5)
        train_tiny_gpt2(max_steps=50, eval_steps=None, save_steps=None)
        print(json.dumps({"seen": seen}))
    """, tmp_path)
    assert r["seen"] == [1, 2, 3, 4, 5]
    progress = json.loads((tmp_path / "progress.jsonl").read_text().splitlines()[-1])  # the last line is the current state
    assert progress["currentStep"] == 5 and progress["totalSteps"] == 50 and progress["progressPercentage"] == 10
    events = [json.loads(l) for l in (tmp_path / "events.jsonl").read_text().splitlines()]
    end = events[-1]
    assert end["reason"] == "TrainEnd" and end["data"]["completed"] is False and end["data"]["global_step"] == 5
