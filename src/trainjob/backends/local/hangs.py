"""Ranks that do not end: when to call a rank hung, its stacks, and the frame it hangs in.

Two ways a local job can stop making progress while its processes live on:

- **at exit**: a rank finished its work and exited, and a sibling never does (torch's gloo
  process group can deadlock in its destructor, holding the GIL while it joins a worker thread
  that waits for the GIL; a user thread that never ends keeps an interpreter alive). Once one
  rank has exited after its work was done, the others get ``exit_grace_seconds``;
- **mid-training**: with ``progress_timeout`` set, no training step completes for that long.

:class:`HangWatch` decides (pure: the supervisor feeds it what it observed); :func:`dump_stacks`
writes a rank's stacks into its log (Python frames of every thread through ``faulthandler`` in
the rank itself, native frames through ``py-spy`` when it is installed and allowed to attach) and
returns the frame the rank's main thread is in, for the event that reports it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainjob import contract

PY_SPY_TIMEOUT = 15.0  # seconds py-spy may take to attach and dump one process
FAULTHANDLER_WAIT = 1.0  # seconds a rank gets to write its own Python stacks after the signal


@dataclass(frozen=True)
class Hang:
    """What :class:`HangWatch` concluded about an attempt."""

    kind: str  # "exit": ranks still alive after a sibling exited with its work done; "stalled": no step for too long
    ranks: tuple[int, ...]  # the ranks still alive (to dump and end)
    why: str  # one sentence for events and messages


@dataclass
class HangWatch:
    """Decides when an attempt's live ranks count as hung. No I/O: see the module docstring.

    ``exit_grace`` starts at the first sign that the job's work is over while ranks still run:
    a rank that recorded its work done (``run/done/rank-N.json``) and then exited, a node that
    exited 0, or every rank having returned from the job's function (one process kept alive by a
    thread). ``progress_timeout`` (None: off) counts from the start of training (the Trainer's
    ``on_train_begin``: loading a model or a dataset before it may take any time) until the
    first step, then from the newest step; it stops once training has ended (the exit grace
    takes over).
    """

    world: int
    exit_grace: float
    progress_timeout: float | None
    training_since: float | None = None  # time.monotonic() when this attempt's training began
    exit_since: float | None = None
    exit_cause: str | None = None
    last_step: int | None = None
    last_step_at: float | None = None
    _seen_exited: set[int] = field(default_factory=set)

    def observe(self, training_begun: bool, step: int | None, now: float) -> None:
        """What the supervisor saw: whether training has begun, and the newest step."""
        if training_begun and self.training_since is None:
            self.training_since = now
        if step is not None and step != self.last_step:
            self.last_step, self.last_step_at = step, now

    def check(
        self,
        now: float,
        alive: dict[int, bool],
        done: dict[int, dict],
        node_exited_ok: bool,
        training_ended: bool,
    ) -> Hang | None:
        """A verdict once ranks count as hung, else None. ``alive``: rank -> process alive."""
        live = tuple(sorted(r for r, a in alive.items() if a))
        if not live:
            return None
        if self.exit_since is None:
            cause = self._exit_cause(alive, done, node_exited_ok)
            if cause:
                self.exit_since, self.exit_cause = now, cause
        if self.exit_since is not None:
            if now - self.exit_since >= self.exit_grace:
                return Hang("exit", live, f"{self.exit_cause}, and {_ranks(live)} still ran {self.exit_grace:g}s later")
            return None
        if self.progress_timeout and self.training_since is not None and not training_ended:
            since = max(self.training_since, self.last_step_at or 0.0)
            if now - since >= self.progress_timeout:
                what = f"no training step completed for {now - since:.0f}s" + (
                    f" (the last was step {self.last_step})" if self.last_step is not None else " (none since training began)"
                )
                return Hang("stalled", live, f"{what}: progress_timeout={self.progress_timeout:g}s")
        return None

    def _exit_cause(self, alive: dict[int, bool], done: dict[int, dict], node_exited_ok: bool) -> str | None:
        for r, a in sorted(alive.items()):
            if not a and _work_done(done.get(r)):
                return f"rank {r} exited after its work was done"
        if node_exited_ok:
            return "a node exited 0"
        if len(done) >= self.world and all("returned" in done.get(r, {}) for r in range(self.world)):
            return f"{_ranks(tuple(range(self.world)))} returned from the job's function"
        return None


def work_done(done: dict[int, dict], world: int) -> bool:
    """True when every rank recorded that its training ended or its function returned."""
    return all(_work_done(done.get(r)) for r in range(world))


def _work_done(record: dict | None) -> bool:
    return bool(record) and ("returned" in record or "train_end" in record)


def _ranks(ranks: tuple[int, ...]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


# ---- stacks ---------------------------------------------------------------------------------
def dump_stacks(pid: int, log: Path, python: str | None = None) -> str | None:
    """Write the stacks of rank ``pid`` into its ``log``; the frame its main thread is in, if known.

    First the rank's own ``faulthandler`` (registered by ``runtime.bootstrap`` on SIGQUIT; works
    even when the main thread is stuck in native code holding the GIL), then ``py-spy dump
    --native`` for the C/C++ frames. Either may be unavailable; this never raises.
    """
    before = _size(log)
    try:
        if _stopped(pid):
            # SIGSTOPped (a debugger, a job-control stop): it could run neither faulthandler nor be
            # attached to. It is about to be ended anyway, so let it run for its dump.
            _append(log, f"\n--- pid {pid} was stopped (SIGSTOP); the trainjob supervisor sent SIGCONT to read its stacks ---\n")
            os.kill(pid, signal.SIGCONT)
        os.kill(pid, getattr(signal, contract.STACK_DUMP_SIGNAL))
    except (ProcessLookupError, PermissionError, AttributeError):
        return None
    deadline = time.monotonic() + FAULTHANDLER_WAIT
    while time.monotonic() < deadline and _size(log) == before:
        time.sleep(0.05)
    time.sleep(0.1)  # let the dump finish once it has started
    python_frame = top_python_frame(_read_from(log, before))
    native = _py_spy(pid, python)
    native_frame = None
    if native:
        _append(log, f"\n--- native stacks of pid {pid} (py-spy dump --native), written by the trainjob supervisor ---\n{native}\n")
        native_frame = top_native_frame(native)
    return native_frame or python_frame


def _stopped(pid: int) -> bool:
    try:
        import psutil

        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except Exception:  # noqa: BLE001 - psutil missing or the process gone: treat as running
        return False


def _py_spy(pid: int, python: str | None) -> str | None:
    exe = _py_spy_path(python)
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "dump", "--native", "--pid", str(pid)], capture_output=True, text=True, timeout=PY_SPY_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 and out.stdout.strip() else None


def _py_spy_path(python: str | None) -> str | None:
    for interp in (python, sys.executable):
        if interp:
            cand = Path(interp).parent / "py-spy"
            if cand.is_file() and os.access(cand, os.X_OK):
                return str(cand)
    return shutil.which("py-spy")


_FH_THREAD = re.compile(r"^(Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\):$")
_FH_FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>.+)$')


def top_python_frame(faulthandler_text: str) -> str | None:
    """The innermost frame of the main thread in a ``faulthandler`` dump (its last thread block)."""
    blocks: list[list[str]] = []
    for line in faulthandler_text.splitlines():
        if _FH_THREAD.match(line.strip()):
            blocks.append([])
        elif blocks and (m := _FH_FRAME.match(line)):
            blocks[-1].append(f"{m['func']} ({_short_path(m['file'])}:{m['line']})")
    blocks = [b for b in blocks if b]
    return blocks[-1][0] if blocks else None


def top_native_frame(py_spy_text: str) -> str | None:
    """Where the main thread is, from ``py-spy dump --native``: its innermost native frame outside
    the C/C++ runtime and the interpreter, and the innermost Python frame it was reached from."""
    lines = py_spy_text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("Thread ") and "MainThread" in ln), None)
    if start is None:
        start = next((i for i, ln in enumerate(lines) if ln.startswith("Thread ")), None)
    if start is None:
        return None
    frames = []
    for ln in lines[start + 1 :]:
        if ln.startswith("Thread ") or not ln.strip():
            break
        frames.append(ln.strip())
    native = next((f for f in frames if not f.startswith("0x") and not _is_runtime(f) and not _is_python_frame(f)), None)
    python = next((f for f in frames if _is_python_frame(f)), None)
    if native and python:
        return f"{_symbol(native)} (reached from {python})"
    return _symbol(native) if native else python


def _is_runtime(frame: str) -> bool:
    """A frame of the C library, the C++ runtime or the interpreter: where every wait ends up, so
    it says nothing about which code is waiting (``std::thread::join``, ``PyThread_acquire_lock``)."""
    return bool(re.search(r"\((libc|libpthread|ld-linux|libstdc\+\+|libpython)[^)]*\)$", frame)) or frame.startswith(("pthread_", "__"))


def _is_python_frame(frame: str) -> bool:
    return bool(re.search(r"\([^()]*\.py:\d+\)$", frame))


def _symbol(frame: str) -> str:
    return re.sub(r"\s*\([^()]*\.so[^()]*\)$", "", frame)


def _short_path(path: str) -> str:
    parts = Path(path).parts
    if "site-packages" in parts:
        return "/".join(parts[parts.index("site-packages") + 1 :])
    return "/".join(parts[-2:])


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(256 * 1024).decode(errors="replace")
    except OSError:
        return ""


def _append(path: Path, text: str) -> None:
    try:
        with open(path, "a") as f:
            f.write(text)
    except OSError:
        pass
