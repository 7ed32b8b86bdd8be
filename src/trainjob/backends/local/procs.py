"""Process identity and ending whole process trees.

A pid alone can be reused after a process dies, so a process is identified by (pid, start time);
a recorded process "is alive" only if both still match.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
from pathlib import Path
from typing import Iterable

import psutil


def this_host() -> str:
    """This machine's host name, recorded with a supervisor's pid: a pid means nothing on another host."""
    return socket.gethostname()


def start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def is_alive(pid: int | None, started: float | None) -> bool:
    """True if the process ``pid`` started at ``started`` still runs (and is not a zombie)."""
    if not pid:
        return False
    try:
        p = psutil.Process(pid)
        if started is not None and abs(p.create_time() - started) > 0.05:
            return False  # the pid was reused by another process
        return p.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def become_subreaper() -> None:
    """Orphaned descendants (ranks whose torchrun agent died) get re-parented to this process.

    Linux only; elsewhere a no-op. Lets the supervisor find and end every process of its job.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_CHILD_SUBREAPER = 36
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def kill_tree(roots: Iterable[psutil.Process], grace: float = 5.0, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to every process in the trees under ``roots``, then SIGKILL what is left after ``grace``."""
    procs: dict[int, psutil.Process] = {}
    for root in roots:
        try:
            procs[root.pid] = root
            for c in root.children(recursive=True):
                procs[c.pid] = c
        except psutil.NoSuchProcess:
            continue
    for p in procs.values():
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=2)


def process(pid: int | None, started: float | None) -> psutil.Process | None:
    """The live process with this identity, or None."""
    if not is_alive(pid, started):
        return None
    try:
        return psutil.Process(pid)  # type: ignore[arg-type]
    except psutil.NoSuchProcess:
        return None


def recorded_processes(pids_dir: Path, pattern: str = "*.json") -> list[psutil.Process]:
    """Live processes recorded as ``{"pid", "start"}`` files in a job's ``run/pids/`` (identity checked).

    Ranks and node launchers record themselves there so that they can be found and ended even
    when the process that started them is gone.
    """
    out = []
    for f in sorted(pids_dir.glob(pattern)):
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        p = process(rec.get("pid"), rec.get("start"))
        if p is not None and p.pid != os.getpid():
            out.append(p)
    return out


def start_detached(argv: list[str], *, log: Path, env: dict[str, str], cwd: Path | None = None) -> tuple[int, float | None]:
    """Start ``argv`` detached: its own session (it survives the caller and its terminal), stdin from
    /dev/null, stdout and stderr appended to ``log``. Returns its identity (pid, start time), for the
    caller to record at once, so there is no moment when the new process has no recorded owner.

    Used for a job's supervisor and an optimization's optimizer process. The caller never waits for
    it; a daemon thread reaps it when it ends, so a long-lived client collects no zombies.
    """
    import subprocess
    import threading

    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True)
    threading.Thread(target=proc.wait, daemon=True, name=f"reap-{proc.pid}").start()
    return proc.pid, start_time(proc.pid)


def wait_any_exit(identities: list[tuple[int | None, float | None]], timeout: float) -> None:
    """Return when one of these processes (pid, start time) has ended, at the latest after ``timeout``.

    Blocks on pidfds (Linux >= 5.3): no polling, woken the moment one exits. Returns at once when
    one is already gone; where pidfds are missing it sleeps ``timeout``.
    """
    import select
    import time

    fds = []
    try:
        for pid, started in identities:
            if not pid:
                continue  # not started yet: nothing to wait on
            if not is_alive(pid, started):
                return
            try:
                fds.append(os.pidfd_open(pid))  # type: ignore[arg-type]
            except (AttributeError, OSError):
                time.sleep(timeout)
                return
        if not fds:
            time.sleep(timeout)
            return
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        poller.poll(timeout * 1000)
    finally:
        for fd in fds:
            os.close(fd)
