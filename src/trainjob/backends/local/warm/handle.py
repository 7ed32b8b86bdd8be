"""``ForkedProcess``: the supervisor's handle on a process the warm process forked for it.

Used in the supervisor where a cold launch has a ``subprocess.Popen``: it has the part of
``Popen``'s interface the supervisor uses (``pid``, ``returncode``, ``poll``, ``wait``,
``send_signal``, ``terminate``, ``kill``), with ``Popen``'s conventions (``-N`` for a signal,
``subprocess.TimeoutExpired``).

The process is the warm process's child, not the supervisor's, so its exit status reaches the
supervisor in one of two ways, most reliable first:

1. the warm process reaps it and sends ``{"exit": code}`` on the connection the fork was asked
   on, which this handle keeps open;
2. if that connection breaks first (the warm process was killed), a pidfd opened when the pid
   arrived says when the process ends, and the code is the one the process wrote in its exit
   file just before it exited; a process that wrote none was killed: ``-SIGKILL``.

Signals go through the pidfd (``pidfd_send_signal``), so a recycled pid is never signalled.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import time
from pathlib import Path

RELAY_WAIT = 0.5  # seconds to wait for the relayed status once the process is seen gone


class ForkedProcess:
    def __init__(self, conn: socket.socket, pid: int, exit_file: Path, args: list[str]) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self._conn: socket.socket | None = conn
        self._exit_file = exit_file
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except OSError:
            self._pidfd = None  # already gone: the relayed status (or the exit file) says how
        self.relayed = True  # False once the status came from the exit file instead

    def __repr__(self) -> str:
        return f"<ForkedProcess pid={self.pid} returncode={self.returncode}>"

    def poll(self) -> int | None:
        """The exit code if the process ended, else None. Never blocks for long."""
        if self.returncode is None:
            self._check(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self._check(1.0 if left is None else min(1.0, left))
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            return
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    # ---- the two channels ----------------------------------------------------------------------
    def _check(self, timeout: float) -> None:
        fds = [f for f in (self._conn, self._pidfd) if f is not None]
        if not fds:
            self._finish(self._recorded_code())
            return
        ready, _, _ = select.select(fds, [], [], timeout)
        if self._conn is not None and self._conn in ready:
            self._read_relay()
            if self.returncode is not None:
                return
        if self._pidfd is not None and (self._pidfd in ready or self._conn is None):
            if not self._gone():
                return
            # Gone: the warm process relays the status within milliseconds, if it is alive.
            if self._conn is not None:
                if select.select([self._conn], [], [], RELAY_WAIT)[0]:
                    self._read_relay()
                if self.returncode is not None:
                    return
            self.relayed = False
            self._finish(self._recorded_code())

    def _read_relay(self) -> None:
        try:
            data = self._conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            try:
                message = json.loads(data)
            except ValueError:
                message = {}
            if "exit" in message:
                self._finish(int(message["exit"]))
            return
        self._conn.close()  # the warm process is gone: the pidfd and the exit file take over
        self._conn = None

    def _gone(self) -> bool:
        """True once the process has exited (its pidfd is readable)."""
        if self._pidfd is None:
            return True
        return bool(select.select([self._pidfd], [], [], 0)[0])

    def _recorded_code(self) -> int:
        try:
            record = json.loads(self._exit_file.read_text())
            if record.get("pid") == self.pid:
                return int(record["exit"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return -signal.SIGKILL

    def _finish(self, code: int) -> None:
        self.returncode = code
        for closer in (self._conn,):
            if closer is not None:
                closer.close()
        self._conn = None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
