"""Waiting on events instead of polling: folders that change, processes that exit.

One primitive for the supervisor: the collector waits on its run folder and its ranks, a queued
job on the scheduler's ring folder, its own stop file and the processes holding what it waits for.
inotify (Linux, via ctypes) for the folders, one pidfd per process; ``fd`` is None where inotify
is not available, and the caller then polls.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import time
from pathlib import Path
from typing import Iterable

POLL_FALLBACK = 0.25  # seconds slept when select itself fails


class ChangeWatch:
    """Wakes a waiter when a file in one of its folders is created, written, touched, renamed
    into or deleted, or when a watched process exits."""

    _MASK = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200  # IN_MODIFY IN_ATTRIB IN_CLOSE_WRITE IN_MOVED_TO IN_CREATE IN_DELETE

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self._pidfds: dict[int, int] = {}  # pid -> pidfd

    @classmethod
    def start(cls, folders: Iterable[Path]) -> "ChangeWatch":
        """Watch ``folders`` (those that exist); events from now on wake ``wait``, none are missed."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, AttributeError):
            return cls(None)
        if fd < 0:
            return cls(None)
        watched = 0
        for folder in folders:
            if libc.inotify_add_watch(fd, os.fsencode(folder), cls._MASK) >= 0:
                watched += 1
        if not watched:
            os.close(fd)
            return cls(None)
        return cls(fd)

    def wait(self, pids: Iterable[int], timeout: float) -> None:
        """Block until something changed, one of ``pids`` exited, or ``timeout`` seconds passed."""
        assert self.fd is not None
        fds = [self.fd, *self._pidfds_of(pids)]
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except (OSError, ValueError):
            time.sleep(min(timeout, POLL_FALLBACK))
            return
        if self.fd in ready:
            self._drain()

    def wait_exit(self, pids: Iterable[int], timeout: float) -> bool:
        """Block until one of ``pids`` exited (True) or ``timeout`` seconds passed (False); changes
        to the folders do not wake it (they stay pending for the next ``wait``). Without pidfds it
        sleeps ``timeout``."""
        fds = self._pidfds_of(pids)
        if not fds:
            time.sleep(timeout)
            return False
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except (OSError, ValueError):
            time.sleep(min(timeout, POLL_FALLBACK))
            return False
        return bool(ready)

    def _pidfds_of(self, pids: Iterable[int]) -> list[int]:
        """A pidfd for each of ``pids`` (kept open between waits); those of other pids are closed."""
        alive = set(pids)
        for pid in list(self._pidfds):
            if pid not in alive:
                os.close(self._pidfds.pop(pid))
        fds = []
        for pid in alive:
            if pid not in self._pidfds:
                try:
                    self._pidfds[pid] = os.pidfd_open(pid)
                except (OSError, AttributeError):
                    continue  # already gone, or no pidfd here: the timeout bounds the wait
            fds.append(self._pidfds[pid])
        return fds

    def _drain(self) -> None:
        assert self.fd is not None
        while True:
            try:
                if not os.read(self.fd, 4096):
                    return
            except OSError as e:
                if e.errno != errno.EINTR:
                    return  # EAGAIN: drained

    def close(self) -> None:
        for fd in [self.fd, *self._pidfds.values()]:
            if fd is not None:
                os.close(fd)
        self.fd, self._pidfds = None, {}
