"""Real faults for tests and benchmarks: another program holding the store's write lock, a small disk.

Used by tests/test_store_faults.py and benchmarks/reliability.py (``--scenario db-lock|full-disk``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

# A separate program, as a user's `sqlite3 trainjob.db` shell would be: it takes the write lock
# (BEGIN EXCLUSIVE), says so on stdout, holds it, then ends the transaction.
_LOCKER = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("ROLLBACK")
    print("released", flush=True)
    """
)


@contextlib.contextmanager
def write_lock(db: Path, seconds: float) -> Iterator[subprocess.Popen]:
    """Start a process that holds ``db``'s write lock for ``seconds``; yields once the lock is held.

    Leaving the block waits for the process to release the lock and end.
    """
    proc = subprocess.Popen([sys.executable, "-c", _LOCKER, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        if line != "locked":
            raise RuntimeError(f"the lock holder did not take the lock on {db} (it said {line!r}, exit code {proc.poll()})")
        yield proc
        proc.wait(timeout=seconds + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def tmpfs_unavailable() -> str | None:
    """Why a tmpfs cannot be mounted here (not root, no mount command), or None."""
    if os.geteuid() != 0:
        return "mounting a small tmpfs as TRAINJOB_HOME needs root"
    if not Path("/bin/mount").exists() and not Path("/usr/bin/mount").exists():
        return "no mount command on this machine"
    return None


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (e.g. ``"64m"``) on ``path`` for the block (root only); unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise OSError(f"cannot mount a tmpfs on {path}: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        for _ in range(50):  # a process that just ended may still hold a file open for a moment
            if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def count_lines(path: Path) -> int:
    """Complete lines in a file (0 if it does not exist): what a rank wrote to a ``.jsonl``."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


# ---- training functions (pickled by value with the job) --------------------------------------
def fill_disk(folder: str | os.PathLike = ".", leave: int = 0, name: str = "ballast") -> int:
    """Take the free space of ``folder``'s file system, all but ``leave`` bytes, with one file; its size."""
    st = os.statvfs(folder)
    size = max(0, st.f_bavail * st.f_frsize - leave)
    fd = os.open(Path(folder) / name, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        if size:
            os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    return size


def tiny_until_disk_full(max_steps: int = 20, fill_at: int = 8, save_steps: int = 10, leave: int = 384 * 1024, logging_steps: int = 2):
    """The tiny GPT-2, logging every ``logging_steps``; at step ``fill_at`` the disk of its working folder fills up.

    ``leave`` bytes stay free: room for the log lines and progress until the checkpoint at
    ``save_steps``, which does not fit (its model file alone is about 450 KiB), so saving it fails
    with ENOSPC, as a real full disk does.
    """
    from transformers import TrainerCallback

    from trainjob.demo import train_tiny_gpt2

    class FillDisk(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == fill_at:
                fill_disk(".", leave=leave)

    return train_tiny_gpt2(max_steps=max_steps, eval_steps=None, save_steps=save_steps, logging_steps=logging_steps, callbacks=[FillDisk()])


def last_record(path: Path) -> dict | None:
    """The last complete JSON line of a ``.jsonl`` file a rank appends to (None if there is none)."""
    import json

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    lines = data[: data.rfind(b"\n") + 1].splitlines()
    return json.loads(lines[-1]) if lines else None
