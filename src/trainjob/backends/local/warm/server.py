"""The warm process of one environment: ``python -m trainjob.backends.local.warm.server HOME KEY IDLE``.

Started in the background by the first job that uses an environment, or by ``trainjob warm``.
It detaches (forks, the parent exits at once: its starter is not kept waiting, and a
supervisor, which is a subreaper, does not end up owning it), takes ``<key>.lock`` for its whole
life (one warm process per key), imports the training stack and trainjob's runtime, checks that
nothing started a thread or CUDA, freezes the garbage collector's generations (fewer pages
copied on write in the children), and only then binds ``<key>.sock``: a socket present means a
process ready to fork.

Then it serves, one request at a time (a fork takes a few milliseconds):

- ``{"op": "fork", ...}`` with the log file's descriptor: fork; the child becomes the rank
  (``child.run``); the reply is ``{"pid": ...}``; the connection stays open, and when the
  child ends the server reaps it (its pidfd says when) and sends ``{"exit": code}``;
- ``{"op": "ping"}``: its status; ``{"op": "stop"}``: stop (below).

It exits after ``IDLE`` seconds with no request and no child, on ``stop`` or SIGTERM (it stops
accepting at once and leaves when its last child has ended), and when its socket file is
removed or replaced (its home deleted, or a newer one took over). It never runs a job's code.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def _detach() -> None:
    """Fork; the parent exits at once (see the module docstring). The child gets its own session."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()


def main(argv: list[str]) -> int:
    home, key, idle = argv[0], argv[1], float(argv[2])
    # The handlers Python installed at start, before this process adds its own: every child gets them back.
    start_signals = {s: signal.getsignal(s) for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)}
    _detach()
    os.umask(0o077)
    import fcntl
    from pathlib import Path

    from trainjob.backends.local.warm import common

    files = common.paths(Path(home), key)
    lock = open(files["lock"], "ab")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another warm process holds this key
    log = os.open(files["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    server = Server(Path(home), key, idle, start_signals, lock)
    return server.serve()


class Server:
    """The serving loop. Single-threaded: a fork from a process with one thread is safe."""

    def __init__(self, home, key: str, idle: float, start_signals: dict, lock) -> None:
        from trainjob.backends.local.warm import common

        self.home, self.key, self.idle = home, key, idle
        self.files = common.paths(home, key)
        self.start_signals = start_signals
        self.lock = lock
        self.started_at = time.time()
        self.children: dict[int, tuple[int, object]] = {}  # pid -> (pidfd, connection)
        self.stopping = False
        self.listener = None
        self.selector = None
        self.forks = 0
        self.last_activity = time.monotonic()
        self.status: dict = {}

    # ---- start ------------------------------------------------------------------------------
    def _preload(self) -> dict:
        """Import what ranks import; report what was imported and what the imports started."""
        import importlib
        import threading

        t0 = time.perf_counter()
        imported, missing = [], []
        for name in (
            "numpy", "torch", "torch.distributed", "torch.nn", "torch.optim", "transformers", "transformers.trainer",
            "datasets", "accelerate", "peft", "trl", "tokenizers",
            "trainjob.runtime.bootstrap", "trainjob.runtime.instrument", "trainjob.runtime.callback",
            "trainjob.runtime.stopping", "trainjob.runtime.sinks", "trainjob.runtime.server", "trainjob.payload", "cloudpickle",
            "trainjob.runtime.pruning", "optuna", "sqlalchemy.dialects.sqlite",  # a trial reporting to its study (~0.2-1 s at its first evaluation)
        ):  # fmt: skip
            try:
                importlib.import_module(name)
                imported.append(name)
            except ImportError:
                missing.append(name)
            except Exception as e:  # noqa: BLE001 - a broken optional package must not break warm start
                missing.append(f"{name} ({type(e).__name__}: {e})")
        if "trl" in imported:
            try:
                from trl import SFTTrainer  # noqa: F401 - trl's trainers load lazily; this is the usual one

                imported.append("trl.SFTTrainer")
            except Exception:  # noqa: BLE001
                pass
        if "transformers" in imported:
            from transformers import Trainer, TrainingArguments  # noqa: F401 - resolve transformers' lazy attributes
        torch = sys.modules.get("torch")
        return {
            "import_seconds": round(time.perf_counter() - t0, 3),
            "imported": imported,
            "missing": missing,
            "python_threads": threading.active_count(),
            "native_threads": _native_threads(),
            "cuda_initialized": bool(torch is not None and torch.cuda.is_initialized()),
        }

    def _refusal(self, report: dict) -> str | None:
        """Why this process must not fork ranks, or None (a fork would copy one thread only)."""
        if report["python_threads"] != 1:
            return f"an import started {report['python_threads'] - 1} Python thread(s)"
        if report["cuda_initialized"]:
            return "an import initialized CUDA"
        return None

    def serve(self) -> int:
        import gc
        import selectors

        from trainjob import contract
        from trainjob.backends.local import procs
        from trainjob.backends.local.warm import common

        base = {"pid": os.getpid(), "start": procs.start_time(os.getpid()), "key": self.key, "python": sys.executable,
                "venv": os.environ.get("VIRTUAL_ENV"), "environment": common.environment_id(sys.executable, os.environ),
                "started_at": self.started_at, "idle_timeout": self.idle}  # fmt: skip
        self.status = {**base, "state": "starting"}
        contract.write_json_atomic(self.files["json"], self.status)
        report = self._preload()
        refusal = self._refusal(report)
        if refusal:
            self.status = {**base, **report, "state": "refused", "error": refusal}
            contract.write_json_atomic(self.files["json"], self.status)
            print(f"[trainjob warm] not serving: {refusal}", flush=True)
            return 1
        from trainjob.backends.local.warm.child import thread_count

        self.blas_threads = thread_count(os.environ, "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")  # what numpy's OpenBLAS started with
        # Everything imported is shared with every child: keep the collector off those pages.
        gc.collect()
        gc.freeze()
        # Where the interpreter's own sys.path entries start (after PYTHONPATH's): children keep those.
        own = [p for p in (os.environ.get("PYTHONPATH") or "").split(os.pathsep) if p]
        self.path_tail = [p for p in sys.path[1:] if p not in {os.path.abspath(q) for q in own}]
        signal.signal(signal.SIGTERM, lambda s, f: setattr(self, "stopping", True))
        sock_path = self.files["sock"]
        tmp = sock_path.with_name(f".{sock_path.name}.{os.getpid()}")
        address = common.SocketAddress(tmp)
        self.listener = common.new_socket()
        try:
            self.listener.bind(address.address)
        finally:
            address.close()
        os.chmod(tmp, 0o600)
        self.listener.listen(64)
        os.replace(tmp, sock_path)  # ready: a client that finds the socket finds it listening
        self.sock_ino = os.stat(sock_path).st_ino
        self.sources = _trainjob_sources()
        self.status = {**base, **report, "state": "ready", "ready_at": time.time(), "socket": str(sock_path)}
        contract.write_json_atomic(self.files["json"], self.status)
        print(f"[trainjob warm] ready in {time.time() - self.started_at:.2f}s (imports {report['import_seconds']}s): {', '.join(report['imported'])}", flush=True)
        self.last_activity = time.monotonic()  # the idle time counts from here, not from before the imports
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, ("listen", None))
        try:
            self._loop()
        finally:
            self._close_listener()
            print(f"[trainjob warm] exiting after {self.forks} fork(s)", flush=True)
        return 0

    # ---- serving -------------------------------------------------------------------------------
    def _loop(self) -> None:
        next_check = 0.0
        while True:
            if self.stopping:
                self._close_listener()
                if not self.children:
                    return
            elif not self.children and time.monotonic() - self.last_activity > self.idle:
                return
            elif time.monotonic() >= next_check:
                next_check = time.monotonic() + 2.0
                if not self._socket_is_mine():
                    self.stopping = True  # deleted (its home too?) or replaced by another warm process
                    continue
                changed = self._stale()
                if changed:
                    print(f"[trainjob warm] stopping: {changed}", flush=True)
                    self.stopping = True
                    continue
            for key, _ in self.selector.select(timeout=1.0):
                kind, data = key.data
                if kind == "listen":
                    try:
                        conn, _ = self.listener.accept()
                    except OSError:
                        continue
                    self._handle(conn)
                elif kind == "child":
                    self._reap(data)

    def _socket_is_mine(self) -> bool:
        try:
            return os.stat(self.files["sock"]).st_ino == self.sock_ino
        except OSError:
            return False

    def _stale(self) -> str | None:
        """Why this process's code is out of date (a trainjob file it imported changed), or None."""
        for path, (mtime, size) in self.sources.items():
            try:
                st = os.stat(path)
            except OSError:
                return f"trainjob's source changed since this warm process started ({path} is gone)"
            if (st.st_mtime_ns, st.st_size) != (mtime, size):
                return f"trainjob's source changed since this warm process started ({path})"
        return None

    def _close_listener(self) -> None:
        """Stop accepting: remove the socket and give the key's lock up, so a new warm process can start.

        Children still running keep being reaped and their exit codes relayed until they end.
        """
        if self.listener is None:
            return
        try:
            self.selector.unregister(self.listener)
        except (KeyError, ValueError):
            pass
        if self._socket_is_mine():
            try:
                os.unlink(self.files["sock"])
            except OSError:
                pass
        self.listener.close()
        self.listener = None
        import fcntl

        fcntl.flock(self.lock, fcntl.LOCK_UN)
        status = dict(self.status, state="stopping")
        if self.status.get("state") == "ready" and _read_pid(self.files["json"]) == os.getpid():
            from trainjob import contract

            contract.write_json_atomic(self.files["json"], status)

    def _handle(self, conn) -> None:
        from trainjob.backends.local.warm import common

        self.last_activity = time.monotonic()
        conn.settimeout(5.0)
        fds: list[int] = []
        try:
            if common.peer_uid(conn) != os.getuid():
                conn.close()  # never another user's: the folder is 0700 already, this is the second lock
                return
            request, fds = common.receive(conn, max_fds=1)
            if request is None:
                conn.close()
                return
            op = request.get("op")
            if op == "ping":
                common.send(conn, {**self.status, "children": len(self.children), "forks": self.forks, "stopping": self.stopping})
                conn.close()
            elif op == "stop":
                self.stopping = True
                common.send(conn, {"ok": True, "children": len(self.children)})
                conn.close()
            elif op == "fork":
                self._fork(conn, request, fds)
                fds = []
            else:
                common.send(conn, {"error": f"unknown request {op!r}"})
                conn.close()
        except (OSError, ValueError) as e:
            print(f"[trainjob warm] request failed: {type(e).__name__}: {e}", flush=True)
            conn.close()
        finally:
            for fd in fds:
                os.close(fd)

    def _fork(self, conn, request: dict, fds: list[int]) -> None:
        import selectors

        from trainjob.backends.local.warm import common

        if request.get("key") != self.key:
            common.send(conn, {"error": f"this warm process serves key {self.key}, not {request.get('key')}"})
            conn.close()
            return
        stale = self._stale()
        if self.stopping or stale:
            self.stopping = True
            self._close_listener()  # before the reply: the client may start a new warm process at once
            common.send(conn, {"error": stale or "this warm process is stopping", "stale": bool(stale)})
            conn.close()
            return
        if len(fds) != 1:
            common.send(conn, {"error": "a fork request needs the log file's descriptor"})
            conn.close()
            return
        if _peer_gone(conn) or time.time() - float(request.get("sent_at") or 0) > common.REQUEST_DEADLINE:
            # The supervisor gave up waiting (it started the job cold): forking now would run the job twice.
            print(f"[trainjob warm] dropped a fork request its sender no longer waits for (node {request.get('node_rank')})", flush=True)
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            from trainjob.backends.local.warm import child

            others = [c for _, c in self.children.values()] + [fd for fd, _ in self.children.values()]
            child.run(request, fds[0], self.start_signals, self.path_tail, [self.selector, self.listener, conn, self.lock, *others], self.blas_threads)
        os.close(fds[0])
        self.forks += 1
        pidfd = os.pidfd_open(pid)
        self.children[pid] = (pidfd, conn)
        self.selector.register(pidfd, selectors.EVENT_READ, ("child", pid))
        try:
            common.send(conn, {"pid": pid})
        except OSError:
            pass  # the supervisor gave up waiting: the child still runs; its exit is recorded in its exit file

    def _reap(self, pid: int) -> None:
        from trainjob.backends.local.warm import common

        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 255 << 8
        if done == 0:
            return
        pidfd, conn = self.children.pop(pid)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        self.last_activity = time.monotonic()
        try:
            common.send(conn, {"exit": os.waitstatus_to_exitcode(status)})
        except OSError:
            pass
        conn.close()


def _peer_gone(conn) -> bool:
    """True if the client closed its end (it stopped waiting for the reply)."""
    import select
    import socket

    if not select.select([conn], [], [], 0)[0]:
        return False  # nothing more to read: it still waits (recv would block on a socket with a timeout)
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError, TimeoutError):
        return False
    except OSError:
        return True


def _read_pid(path) -> int | None:
    from trainjob.backends.local.warm import common

    return (common.read_status(path) or {}).get("pid")


def _trainjob_sources() -> dict[str, tuple[int, int]]:
    """(mtime, size) of every trainjob source file this process imported."""
    import trainjob

    root = os.path.dirname(os.path.realpath(trainjob.__file__)) + os.sep
    out = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and os.path.realpath(path).startswith(root):
            try:
                st = os.stat(path)
            except OSError:
                continue
            out[path] = (st.st_mtime_ns, st.st_size)
    return out


def _native_threads() -> list[str]:
    """The names of this process's OS threads (OpenBLAS's pool, jemalloc's background thread...)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return []
    names = []
    for t in sorted(tasks, key=int):
        try:
            with open(f"/proc/self/task/{t}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            names.append("?")
    return names


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
