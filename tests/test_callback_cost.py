"""The progress callback's cost per step: no file I/O, no system call, no JSON on steps between writes.

Tracking must cost under 1% of throughput (BENCHMARKS.md, "Progress tracking"). A training step
runs ``on_step_end`` and, every ``logging_steps``, ``on_log``; a system call there (a ``stat`` of
the stop file, a write) costs tens of microseconds inside a step on a busy machine. So these tests
drive a real ``TrainjobCallback`` (real ``TrainingArguments``, ``TrainerState``, ``TrainerControl``
and ``FileSink``, in a fresh interpreter) through steps the way ``Trainer`` calls it, with the write
interval set far away, and look at what the steps between writes did:

- portably, with ``sys.addaudithook`` (``open`` and the other audited OS operations) and
  ``sys.setprofile`` (every C function called: anything from ``posix``, ``_io``, ``_socket``,
  ``select``, ``_json``... is I/O or encoding);
- with ``strace`` where it is installed and allowed: the system calls the main thread really made.

Each test also checks that its detector sees the write at the final step, so it can fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

STEPS = 300  # steps between the first write and the last step
LOG_EVERY = 10

# Runs in a fresh interpreter. DETECT is "profile" or "strace". Prints one JSON line.
SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from transformers import TrainerControl, TrainerState, TrainingArguments
    from trainjob.runtime.callback import TrainjobCallback

    DETECT, STEPS, LOG_EVERY = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    run_dir = os.environ["TRAINJOB_RUN_DIR"]
    args = TrainingArguments(output_dir=run_dir, max_steps=STEPS + 1, per_device_train_batch_size=8, report_to=[], use_cpu=True)
    state = TrainerState(max_steps=STEPS + 1, num_train_epochs=3, logging_steps=LOG_EVERY)
    control = TrainerControl()
    cb = TrainjobCallback()
    cb.on_train_begin(args, state, control)
    logs = {"loss": 2.5, "grad_norm": 1.25, "learning_rate": 5e-4}

    def step():
        # What Trainer does around our callback: DefaultFlowCallback sets the flags first.
        state.global_step += 1
        state.epoch = state.global_step / 100
        control.should_log = state.global_step % LOG_EVERY == 0
        control.should_training_stop = state.global_step >= state.max_steps
        cb.on_step_end(args, state, control)
        if control.should_log:
            control.should_log = False
            cb.on_log(args, state, control, logs=dict(logs))

    step()  # the first step always writes
    cb.write_interval = 3600.0  # so no step below is due for a write, whatever the machine's speed

    IO_MODULES = {"posix", "_io", "io", "_socket", "socket", "select", "selectors", "fcntl", "mmap", "_signal",
                  "signal", "_posixsubprocess", "subprocess", "os", "pathlib", "shutil", "json", "_json"}
    VDSO_CLOCKS = {"monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns", "time", "time_ns"}
    seen = {"audit": [], "calls": set()}
    on = [False]

    def audit(event, args_):
        if on[0]:
            seen["audit"].append(event)

    def profile(frame, event, arg):
        if event == "c_call":
            self_ = getattr(arg, "__self__", None)
            module = getattr(arg, "__module__", None) or (type(self_).__module__ if self_ is not None else None)
            if module in IO_MODULES or (module == "time" and arg.__name__ not in VDSO_CLOCKS):
                seen["calls"].add(f"{module}.{arg.__name__}")
        elif event == "call":
            module = frame.f_globals.get("__name__", "")
            if module.split(".")[0] in IO_MODULES:
                seen["calls"].add(f"{module}.{frame.f_code.co_name}")

    sys.addaudithook(audit)  # records only while on[0]

    def watch(steps):
        seen["audit"].clear()
        seen["calls"].clear()
        if DETECT == "profile":
            sys.setprofile(profile)
            on[0] = True
        else:
            os.path.exists("/trainjob-cost-test-begin")  # markers in the strace output (a stat that fails)
        for _ in range(steps):
            step()
        if DETECT == "profile":
            on[0] = False
            sys.setprofile(None)
        else:
            os.path.exists("/trainjob-cost-test-end")
        return {"audit": sorted(set(seen["audit"])), "calls": sorted(seen["calls"])}

    between = watch(STEPS - 1)
    pending = len(cb._pending)
    last = watch(1)  # the last step: the end is coming, so it writes
    print(json.dumps({"between": between, "last": last, "pending_before_last": pending,
                      "progress_lines": len(open(os.path.join(run_dir, "progress.jsonl")).read().splitlines()),
                      "metric_lines": len(open(os.path.join(run_dir, "metrics.jsonl")).read().splitlines()),
                      "pid": os.getpid()}))
    """
)


def _run(tmp_path: Path, detect: str, prefix: list[str] | None = None) -> dict:
    env = {**os.environ, "TRAINJOB_RUN_DIR": str(tmp_path), "TRAINJOB_TRACKING": "1", "TRAINJOB_METRICS_PORT": "0", "HF_HUB_OFFLINE": "1"}
    argv = [*(prefix or []), sys.executable, "-c", SCRIPT, detect, str(STEPS), str(LOG_EVERY)]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _check_writes(r: dict) -> None:
    """Between writes the entries wait; the last step writes them and the final progress."""
    assert r["pending_before_last"] == STEPS // LOG_EVERY  # every entry logged since the first step, none written yet
    assert r["progress_lines"] == 2  # the first step and the last one
    assert r["metric_lines"] == STEPS // LOG_EVERY


def test_steps_between_writes_call_nothing_that_does_io(tmp_path):
    r = _run(tmp_path, "profile")
    assert r["between"] == {"audit": [], "calls": []}, r["between"]
    # The detector sees the write of the last step: the test can fail.
    assert "posix.write" in r["last"]["calls"] and any(c.startswith("json.") for c in r["last"]["calls"]), r["last"]
    _check_writes(r)


NOT_THE_CALLBACK = ("futex(", "<... futex resumed>", "mmap(", "munmap(", "brk(", "madvise(", "mprotect(", "mremap(")


def _strace_usable() -> bool:
    if not shutil.which("strace"):
        return False
    return subprocess.run(["strace", "-f", "-qq", "-o", os.devnull, "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _strace_usable(), reason="strace is not installed, or ptrace is not allowed here")
def test_steps_between_writes_make_no_system_call(tmp_path):
    trace = tmp_path / "strace.txt"
    r = _run(tmp_path, "strace", ["strace", "-f", "-qq", "-o", str(trace)])
    main = str(r["pid"])  # the main thread's id is the process id; other threads (the /metrics server) are left out
    lines = trace.read_text().splitlines()
    begin = [i for i, l in enumerate(lines) if "/trainjob-cost-test-begin" in l]
    end = [i for i, l in enumerate(lines) if "/trainjob-cost-test-end" in l]
    assert len(begin) == 2 and len(end) == 2, "markers missing from the strace output"

    def calls(a: int, b: int) -> list[str]:
        out = []
        for line in lines[a + 1 : b]:
            tid, _, call = line.partition(" ")
            call = call.lstrip()  # strace pads the thread id column
            # Not the callback's doing: futex (the interpreter handing the GIL to another thread
            # that woke meanwhile) and the allocator getting memory for a new arena.
            if tid == main and not call.startswith(NOT_THE_CALLBACK):
                out.append(call)
        return out

    assert calls(begin[0], end[0]) == []
    last = calls(begin[1], end[1])
    assert sum(c.startswith("write(") for c in last) == 2, last  # the metric lines, then the progress line
    _check_writes(r)
