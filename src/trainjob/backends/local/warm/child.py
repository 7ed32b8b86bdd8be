"""Inside a process the warm process just forked: become a rank (or a node's agent), as a cold one.

Runs only in forked children of ``server``; never returns (``os._exit``). A cold rank is
``python -m trainjob.runtime.bootstrap`` started by ``Popen`` with the plan's environment, working
directory and log file. A forked one gets the same, by hand, before it runs bootstrap's code as
``__main__``:

- a new session (the warm process's session and terminal are not its own);
- stdin from /dev/null, stdout and stderr to the log file the supervisor opened and passed over;
- ``os.environ`` replaced by the plan's environment; the working directory; ``sys.path`` as a
  fresh ``python -m`` would build it there (working directory, the job's ``PYTHONPATH``, then
  the interpreter's own entries); ``sys.argv``, ``sys.orig_argv`` and ``__main__`` as for
  ``python -m trainjob.runtime.bootstrap``;
- the signal handlers and mask the interpreter had at start (Python's defaults);
- fresh random state: ``random`` (also reseeded by CPython at fork), numpy's global generator
  and torch's default CPU generator from the OS, as each seeds itself at import in a fresh
  process (CUDA's generators are created at CUDA's initialization, which happens here);
- the job's CPU affinity and memory cgroup (``runtime.affinity``), then torch's thread count as
  libgomp would have set it at load: ``OMP_NUM_THREADS`` or the number of CPUs it may use;
- at the end what the interpreter does at exit: wait for non-daemon threads, run ``atexit``
  functions, flush; then the exit code is written to ``exit_file`` (read by the supervisor only
  if the warm process, which relays exit codes, is gone) and the process exits with it.

With several ranks per node this process is the node's *agent* (as torchrun's is): it forks one
rank per local rank, gives each the variables torchrun would (``rank_env``), forwards SIGTERM and
SIGINT to them, ends the others when one fails, and writes a failure summary in torchrun's words
to the node log, which the supervisor's root-cause analysis reads (``failures``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from typing import Any, Mapping

BOOTSTRAP = "trainjob.runtime.bootstrap"
AGENT_TERM_GRACE = 5.0  # seconds the other ranks get after one failed, before SIGKILL


def rank_env(node_env: Mapping[str, str], node_rank: int, local_rank: int, nproc: int, world: int) -> dict[str, str]:
    """The environment of one rank of a node of ``nproc`` ranks: what torchrun gives its workers.

    No ``TORCHELASTIC_USE_AGENT_STORE``: there is no agent store, rank 0 hosts the c10d store on
    ``MASTER_PORT`` as with a plain ``init_process_group("env://")``. Pure.
    """
    rank = node_rank * nproc + local_rank
    env = dict(node_env)
    env.update(
        {
            "RANK": str(rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(nproc),
            "GROUP_RANK": str(node_rank), "NODE_RANK": str(node_rank), "ROLE_RANK": str(rank), "ROLE_WORLD_SIZE": str(world),
            "ROLE_NAME": "default", "GROUP_WORLD_SIZE": str(world // nproc), "TORCHELASTIC_RESTART_COUNT": "0",
            "TORCHELASTIC_MAX_RESTARTS": "0", "TORCHELASTIC_RUN_ID": "none",
        }
    )  # fmt: skip
    return env


_server_blas_threads: int | None = None  # set by ``run``: what OpenBLAS started with in the warm process


def run(request: dict[str, Any], log_fd: int, start_signals: dict[int, Any], server_path_tail: list[str], close: list[Any], server_blas_threads: int | None = None) -> None:
    """Become what ``request`` asks for and exit with its code. Never returns.

    ``start_signals``: the handlers the warm process had when it started; ``server_path_tail``:
    the interpreter's own ``sys.path`` entries (after ``PYTHONPATH``'s); ``close``: the warm
    process's sockets, selector and descriptors, which this process must not keep.
    """
    global _server_blas_threads
    _server_blas_threads = server_blas_threads
    code = 1
    try:
        for obj in close:
            try:
                obj.close() if hasattr(obj, "close") else os.close(obj)
            except OSError:
                pass
        os.setsid()
        _reset_signals(start_signals)
        _set_stdio(log_fd)
        _set_process(request["env"], request["cwd"], server_path_tail)
        nproc = int(request.get("nproc") or 0)
        if nproc:
            code = _agent(request, nproc)
        else:
            code = _rank()
    except BaseException:  # noqa: BLE001 - a forked process must never return into the server's loop
        import traceback

        traceback.print_exc()
        code = 1
    _exit(code, request.get("exit_file"))


def _reset_signals(start_signals: dict[int, Any]) -> None:
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for signum, handler in start_signals.items():
        try:
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        except (OSError, ValueError, TypeError):
            pass


def _set_stdio(log_fd: int) -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    if log_fd > 2:
        os.close(log_fd)


def _set_process(env: Mapping[str, str], cwd: str, server_path_tail: list[str]) -> None:
    import importlib

    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    user_path = [p for p in (env.get("PYTHONPATH") or "").split(os.pathsep) if p]
    sys.path[:] = [os.getcwd(), *(os.path.abspath(p) for p in user_path), *server_path_tail]
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()


def _reseed() -> None:
    """Seed every global generator from the OS, as a fresh process does (they would all be the warm process's)."""
    import random

    random.seed()
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.default_generator.seed()  # CPU only: CUDA's generators are made at CUDA's lazy init, in this process


def thread_count(environ: Mapping[str, str], *names: str) -> int:
    """The threads a library reading ``names`` at load would start: the first set, else the usable CPUs."""
    for name in names:
        try:
            n = int(environ.get(name, "0"))
        except ValueError:
            n = 0
        if n > 0:
            return n
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _set_threads(server_blas_threads: int | None) -> None:
    """torch's (OpenMP, MKL) and numpy's OpenBLAS thread counts as a fresh process would have them.

    Those libraries read them once, when loaded (in the warm process); here they are set again
    from this rank's variables and CPU affinity.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(thread_count(os.environ, "OMP_NUM_THREADS"))
    blas = thread_count(os.environ, "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
    if "numpy" in sys.modules and blas != server_blas_threads:
        _set_openblas_threads(blas)


def _set_openblas_threads(n: int) -> None:
    """``openblas_set_num_threads`` of the OpenBLAS that numpy loaded (found in /proc/self/maps)."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line.rsplit("/", 1)[-1].lower() and ".so" in line}
    except OSError:
        return
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in ("openblas_set_num_threads", "openblas_set_num_threads64_", "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads"):
            fn = getattr(lib, symbol, None)
            if fn is not None:
                fn(ctypes.c_int(n))
                return


def _rank() -> int:
    """Run bootstrap as ``python -m trainjob.runtime.bootstrap`` would; its exit code."""
    import importlib.util
    import types

    from trainjob.runtime import affinity

    try:
        affinity.apply_placement()  # bootstrap applies it again (idempotent) and reports a failure
    except (OSError, RuntimeError, ValueError):
        pass
    _set_threads(_server_blas_threads)
    _reseed()
    spec = importlib.util.find_spec(BOOTSTRAP)
    main = types.ModuleType("__main__")
    main.__dict__.update({"__file__": spec.origin, "__spec__": spec, "__loader__": spec.loader, "__package__": spec.parent, "__cached__": spec.cached, "__builtins__": __builtins__})
    sys.modules["__main__"] = main
    sys.argv = [spec.origin]
    sys.orig_argv = [sys.executable, "-m", BOOTSTRAP]
    code = spec.loader.get_code(BOOTSTRAP)
    try:
        exec(code, main.__dict__)
    except SystemExit as e:
        return _exit_code(e.code)
    except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
        sys.excepthook(*sys.exc_info())
        return 1
    return 0


def _exit_code(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def _agent(request: dict[str, Any], nproc: int) -> int:
    """Fork ``nproc`` ranks, wait for them all, end the rest when one fails (as torchrun does)."""
    node = int(request.get("node_rank") or 0)
    world = int(request["world"])
    node_env = dict(os.environ)
    children: dict[int, int] = {}  # pid -> local rank
    for local in range(nproc):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.environ.clear()
                os.environ.update(rank_env(node_env, node, local, nproc, world))
                code = _rank()
            except BaseException:  # noqa: BLE001
                import traceback

                traceback.print_exc()
            _exit(code, None)
        children[pid] = local
    print(f"[trainjob warm] node {node}: started ranks {', '.join(str(node * nproc + i) for i in range(nproc))} (pids {', '.join(map(str, children))})", flush=True)

    def forward(signum, frame):
        for p in children:
            try:
                os.kill(p, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    failures: list[tuple[int, int, int, float]] = []  # (local rank, exit code, pid, time)
    alive = dict(children)
    ending_at: float | None = None
    while alive:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG if ending_at is not None else 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == 0:
            if ending_at is not None and time.monotonic() > ending_at:
                forward(signal.SIGKILL, None)
                ending_at = float("inf")
            time.sleep(0.05)
            continue
        if pid not in alive:
            continue
        local = alive.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            failures.append((local, code, pid, time.time()))
            if ending_at is None and alive:
                for p in alive:
                    try:
                        os.kill(p, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                ending_at = time.monotonic() + AGENT_TERM_GRACE
    if not failures:
        return 0
    host = socket.gethostname()
    lines = ["[trainjob warm] Failures:"]
    for local, code, pid, at in failures:
        stamp = time.strftime("%Y-%m-%d_%H:%M:%S", time.localtime(at))
        lines += [f"  time      : {stamp}", f"  host      : {host}", f"  rank      : {node * nproc + local} (local_rank: {local})", f"  exitcode  : {code} (pid: {pid})"]
    print("\n".join(lines), flush=True)
    return 1


def _exit(code: int, exit_file: str | None) -> None:
    """What the interpreter does at exit (threads, atexit, flush), then record the code and leave."""
    try:
        import threading

        threading._shutdown()  # type: ignore[attr-defined]  # wait for non-daemon threads, as at exit
    except BaseException:  # noqa: BLE001
        pass
    _skip_torch_library_finalizers()
    try:
        import atexit

        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    if exit_file:
        try:
            with open(exit_file, "w") as f:
                json.dump({"pid": os.getpid(), "exit": code, "time": time.time()}, f)
        except OSError:
            pass
    os._exit(code)


def _skip_torch_library_finalizers() -> None:
    """torch keeps a ``weakref.finalize`` per operator library (~180 once transformers is imported)
    that deregisters the library's operators from the dispatcher at exit: ~40 ms of every forked
    rank's exit, spent on state of a process about to vanish. Those alone are not run; every
    other exit function is (the user's finalizers, temporary folders, logging)."""
    import weakref

    target = getattr(sys.modules.get("torch.library"), "_del_library", None)
    if target is None:
        return
    try:
        for f, info in list(weakref.finalize._registry.items()):  # type: ignore[attr-defined]
            if getattr(info, "func", None) is target:
                f.atexit = False
    except Exception:  # noqa: BLE001 - a private registry: if its shape changes, exit as before
        pass
