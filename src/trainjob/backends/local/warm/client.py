"""The client side of warm start: used by the supervisor (``start_nodes``) and ``trainjob warm``.

``start_nodes`` asks the warm process of the job's environment to fork every node of an
attempt. It never fails a job: when warm start is off it returns nothing (the supervisor starts
cold, exactly as without this module); when it is on but cannot be used (no warm process yet,
one still importing, a stale socket, one that does not answer or refuses) it returns why, the
supervisor starts cold and records a ``ColdStart`` event with that reason, and, where no warm
process runs, one is started in the background for the next job.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from trainjob.backends.local.warm import common
from trainjob.backends.local.warm.handle import ForkedProcess
from trainjob.core.spec import JobSpec

CONNECT_TIMEOUT = 2.0  # seconds for a warm process to accept and answer; longer is "busy": cold start
PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37


class WarmUnavailable(Exception):
    """Why this attempt starts cold (its message goes into the ``ColdStart`` event)."""


@dataclass
class WarmOutcome:
    """What ``start_nodes`` did: the node handles (None: start cold) and the event to record."""

    nodes: list[ForkedProcess] | None
    reason: str | None = None  # "WarmStart" / "ColdStart"; None: warm start is off, record nothing
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WarmInfo:
    """One warm process, as ``trainjob warm ls`` shows it."""

    key: str
    pid: int | None
    state: str  # starting / ready / refused / gone
    python: str | None
    venv: str | None
    started_at: float | None
    idle_timeout: float | None
    forks: int | None
    children: list[int]
    rss_bytes: int | None
    pss_bytes: int | None
    children_pss_bytes: int | None
    import_seconds: float | None
    imported: list[str]
    native_threads: list[str]
    error: str | None = None


def enabled(spec: JobSpec, environ: Mapping[str, str]) -> bool:
    """Warm start is on for this job: the trainer's ``warm_start``, the backend config, the environment."""
    return spec.warm.wanted and common.enabled_globally(environ)


def start_nodes(plans: Sequence[Any], *, spec: JobSpec, home: Path, python: str, run_dir: Path, attempt: int) -> WarmOutcome:
    """Fork every node of ``plans`` (``launcher.NodeLaunch``) from the warm process, or say why not.

    Runs in the supervisor. All or nothing: if one node cannot be forked, those already forked
    are killed and the attempt starts cold. Never raises: warm start must not fail a job.
    """
    try:
        return _start_nodes(plans, spec=spec, home=home, python=python, run_dir=run_dir, attempt=attempt)
    except Exception as e:  # noqa: BLE001 - any fault here (a bug included) means a cold start, with the reason
        return WarmOutcome(None, "ColdStart", f"started cold: warm start failed: {type(e).__name__}: {e}", {"attempt": attempt, "why": f"{type(e).__name__}: {e}"})


def _start_nodes(plans: Sequence[Any], *, spec: JobSpec, home: Path, python: str, run_dir: Path, attempt: int) -> WarmOutcome:
    environ = plans[0].env if plans else os.environ
    if not plans or not enabled(spec, os.environ) or not common.enabled_globally(environ):
        return WarmOutcome(None)
    nproc, world = spec.procs_per_node, spec.world_size
    idle = float(spec.warm.idle_timeout or common.idle_timeout(environ))
    t0 = time.perf_counter()
    key = common.warm_key(python, environ)
    handles: list[ForkedProcess] = []
    try:
        for plan in plans:
            handles.append(_fork_node(home, key, plan, nproc if world > 1 else 0, world, run_dir / f"warm-exit-{attempt}-node-{plan.node_rank}.json"))
    except WarmUnavailable as e:
        for h in handles:
            h.kill()
            h.wait()
        started = _ensure_server(home, key, python, environ, idle)
        message = f"started cold: {e}" + ("; a warm process for this environment is starting for the next job" if started else "")
        return WarmOutcome(None, "ColdStart", message, {"attempt": attempt, "key": key, "why": str(e)})
    ms = (time.perf_counter() - t0) * 1000
    status = common.read_status(common.paths(home, key)["json"]) or {}
    return WarmOutcome(
        handles,
        "WarmStart",
        f"attempt {attempt}: forked {len(handles)} process{'es' if len(handles) != 1 else ''} from the warm process (pid {status.get('pid')}) in {ms:.0f} ms",
        {"attempt": attempt, "key": key, "warm_pid": status.get("pid"), "pids": [h.pid for h in handles], "fork_ms": round(ms, 1)},
    )


def _connect(home: Path, key: str):
    """A connection to the warm process of ``key``, or ``WarmUnavailable`` saying why there is none."""
    files = common.paths(home, key)
    sock = common.new_socket()
    sock.settimeout(CONNECT_TIMEOUT)
    address = common.SocketAddress(files["sock"])
    try:
        sock.connect(address.address)
        return sock
    except FileNotFoundError:
        sock.close()
        if _lock_held(files["lock"]):
            raise WarmUnavailable("the warm process for this environment is still importing") from None
        status = common.read_status(files["json"]) or {}
        if status.get("state") == "refused":
            raise WarmUnavailable(f"the warm process for this environment refused to serve: {status.get('error')}") from None
        raise WarmUnavailable("no warm process for this environment yet") from None
    except (ConnectionRefusedError, OSError) as e:
        sock.close()
        if not _lock_held(files["lock"]):
            # Nobody listens behind it: a warm process killed without cleaning up. Remove it.
            try:
                files["sock"].unlink()
            except OSError:
                pass
            raise WarmUnavailable(f"the warm process for this environment is gone (stale socket: {type(e).__name__})") from None
        raise WarmUnavailable(f"the warm process for this environment did not accept the connection ({type(e).__name__}: {e})") from None
    finally:
        address.close()


def _fork_node(home: Path, key: str, plan: Any, nproc: int, world: int, exit_file: Path) -> ForkedProcess:
    sock = _connect(home, key)
    try:
        exit_file.unlink(missing_ok=True)
        plan.log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        log = os.open(plan.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            request = {"op": "fork", "key": key, "env": dict(plan.env), "cwd": str(plan.cwd), "nproc": nproc, "world": world,
                       "node_rank": plan.node_rank, "exit_file": str(exit_file), "sent_at": time.time()}  # fmt: skip
            common.send(sock, request, [log])
        finally:
            os.close(log)
        reply, _ = common.receive(sock)
    except TimeoutError:
        sock.close()
        raise WarmUnavailable(f"the warm process for this environment is busy (no answer within {CONNECT_TIMEOUT:g}s)") from None
    except (OSError, ValueError) as e:
        sock.close()
        raise WarmUnavailable(f"the warm process for this environment failed to answer ({type(e).__name__}: {e})") from None
    if not reply or "pid" not in reply:
        sock.close()
        raise WarmUnavailable(f"the warm process for this environment refused: {(reply or {}).get('error', 'it closed the connection')}")
    sock.settimeout(None)
    sock.setblocking(False)
    return ForkedProcess(sock, int(reply["pid"]), exit_file, [f"warm:{key}", f"node-{plan.node_rank}"])


def _lock_held(path: Path) -> bool:
    try:
        with open(path, "ab") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False
    except OSError:
        return False


# ---- lifecycle -------------------------------------------------------------------------------
def server_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The warm process's own environment: a job's, less what belongs to one job or one rank.

    A forked rank replaces the whole environment anyway; what the warm process has matters only
    to what libraries read at import time, which the key covers.
    """
    drop = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "PYTHONPATH")
    env = {k: v for k, v in environ.items() if not k.startswith("TRAINJOB_") and k not in drop}
    own_path = common.user_pythonpath(environ)
    if own_path:
        env["PYTHONPATH"] = own_path
    return env


def _ensure_server(home: Path, key: str, python: str, environ: Mapping[str, str], idle: float) -> bool:
    """Start the warm process of ``key`` in the background unless one runs or starts. True if started.

    Warm processes of the same environment with another key (trainjob or the packages changed)
    are asked to stop: they would never be used again.
    """
    files = common.paths(home, key)
    if _lock_held(files["lock"]):
        return False
    if (common.read_status(files["json"]) or {}).get("state") == "refused":
        return False  # it would refuse again (the key covers what it imports): `trainjob warm --stop` clears it
    stop_servers(home, environment=common.environment_id(python, environ), keep=key)
    files["json"].unlink(missing_ok=True)
    start_server(home, key, python, server_env(environ), idle)
    return True


def start_server(home: Path, key: str, python: str, env: Mapping[str, str], idle: float) -> None:
    """Start a warm process and return at once (it detaches; it is never this process's child).

    The supervisor is a child subreaper: an orphan of its descendants would be re-parented to it
    and ended with the job's processes. So it stops being one while the launcher process forks
    the warm process away and exits.
    """
    files = common.paths(home, key)
    argv = [python, "-m", "trainjob.backends.local.warm.server", str(home), key, repr(float(idle))]
    was_reaper = _subreaper(None)
    if was_reaper:
        _subreaper(False)
    try:
        with open(files["log"], "ab") as log:
            proc = subprocess.Popen(argv, env=dict(env), cwd=str(files["sock"].parent), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        proc.wait()  # the detaching parent exits right after its fork
    finally:
        if was_reaper:
            _subreaper(True)


def _subreaper(value: bool | None) -> bool:
    """Set (or, with None, read) this process's child-subreaper flag. Linux; elsewhere False."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if value is None:
            flag = ctypes.c_int(0)
            libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0)
            return bool(flag.value)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if value else 0, 0, 0, 0)
        return value
    except (OSError, AttributeError):
        return False


def start_for_current_environment(home: Path, idle: float | None = None, wait: float = 0.0) -> str:
    """``trainjob warm``: start the warm process of this interpreter's environment; its key.

    The key is computed from a job's environment as this process would launch it (its own
    variables plus the variables every job gets), so jobs submitted from here find it.
    ``wait``: seconds to wait for it to be ready (0: return at once).
    """
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    key = common.warm_key(sys.executable, env)
    files = common.paths(home, key)
    if not _lock_held(files["lock"]):
        stop_servers(home, environment=common.environment_id(sys.executable, env), keep=key)
        files["json"].unlink(missing_ok=True)  # a dead one's status must not read as this one's
        start_server(home, key, sys.executable, server_env(env), idle or common.idle_timeout())
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        status = common.read_status(files["json"]) or {}
        if status.get("state") not in (None, "starting") or (status and _process(status) is None):
            break  # ready, refused, stopping, or it died
        time.sleep(0.1)
    return key


def _process(status: Mapping[str, Any]):
    from trainjob.backends.local import procs

    return procs.process(status.get("pid"), status.get("start"))


def list_servers(home: Path) -> list[WarmInfo]:
    """Every warm process recorded in ``home``: state, memory (RSS, and PSS: shared pages split), children."""
    import psutil

    out = []
    for status_file in sorted(common.warm_dir(home).glob("*.json")):
        status = common.read_status(status_file) or {}
        key = status_file.stem
        proc = _process(status)
        if proc is None and status.get("state") != "refused" and not _lock_held(common.paths(home, key)["lock"]):
            _remove_files(home, key)
            continue
        rss = pss = kids_pss = None
        children: list[int] = []
        forks = None
        state = status.get("state", "?") if proc is not None else "gone"
        if proc is not None:
            try:
                mem = proc.memory_full_info()
                rss, pss = mem.rss, getattr(mem, "pss", None)
                kids = proc.children(recursive=True)
                children = [k.pid for k in kids]
                kids_pss = sum(getattr(k.memory_full_info(), "pss", 0) for k in kids) if kids else 0
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
            if state == "ready":
                forks = (_ping(home, key) or {}).get("forks")
        out.append(
            WarmInfo(
                key=key, pid=status.get("pid"), state=state, python=status.get("python"), venv=status.get("venv"),
                started_at=status.get("started_at"), idle_timeout=status.get("idle_timeout"), forks=forks, children=children,
                rss_bytes=rss, pss_bytes=pss, children_pss_bytes=kids_pss, import_seconds=status.get("import_seconds"),
                imported=list(status.get("imported") or []), native_threads=list(status.get("native_threads") or []), error=status.get("error"),
            )
        )  # fmt: skip
    return out


def _remove_files(home: Path, key: str) -> None:
    """Forget a warm process that is gone: its socket, status and log (not its lock: someone may hold it next)."""
    for kind, f in common.paths(home, key).items():
        if kind != "lock":
            f.unlink(missing_ok=True)


def _ping(home: Path, key: str) -> dict[str, Any] | None:
    try:
        sock = _connect(home, key)
    except WarmUnavailable:
        return None
    try:
        common.send(sock, {"op": "ping"})
        reply, _ = common.receive(sock)
        return reply
    except (OSError, ValueError):
        return None
    finally:
        sock.close()


def stop_servers(home: Path, environment: str | None = None, keep: str | None = None, wait: float = 0.0) -> list[str]:
    """Ask warm processes to stop (SIGTERM: they stop accepting and leave once their ranks ended).

    ``environment``: only those of this environment; ``keep``: not this key. Returns the keys
    asked. Files of processes already gone are removed.
    """
    asked = []
    for status_file in sorted(common.warm_dir(home).glob("*.json")):
        status = common.read_status(status_file) or {}
        key = status_file.stem
        if key == keep or (environment is not None and status.get("environment") != environment):
            continue
        proc = _process(status)
        if proc is None:
            if not _lock_held(common.paths(home, key)["lock"]):
                _remove_files(home, key)
            continue
        try:
            proc.send_signal(signal.SIGTERM)
            asked.append(key)
        except OSError:
            continue
    deadline = time.monotonic() + wait
    while asked and time.monotonic() < deadline and any(_lock_held(common.paths(home, k)["lock"]) for k in asked):
        time.sleep(0.05)
    return asked
