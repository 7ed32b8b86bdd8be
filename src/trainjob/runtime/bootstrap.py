"""The entry point of every rank: ``python -m trainjob.runtime.bootstrap``.

Runs inside the job's processes only (under trainjob's local supervisor, torchrun, or a Ray Train
worker). It sends this rank's output to its own log file, instruments Trainers unless tracking is
off, runs the user's function/script/module, records an exception for the supervisor, and tears
the process group down before the interpreter exits (two-process gloo runs otherwise abort at
exit about one time in four).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from trainjob import contract, filesystems
from trainjob.core.records import dump_return_value, error_record, record_traceback
from trainjob.core.spec import JobSpec
from trainjob.masking import secret_values
from trainjob.runtime import affinity, done

ERROR_RESERVE_BYTES = 64 * 1024  # an error record is a few KiB (40 traceback lines)


def main() -> int:
    os.umask(0o077)
    info = contract.RankInfo.from_env()
    run_dir = Path(os.environ[contract.RUN_DIR])
    job_dir = Path(os.environ[contract.JOB_DIR])
    attempt = int(os.environ.get(contract.ATTEMPT, "0"))
    _redirect_output(job_dir / contract.LOGS / f"attempt-{attempt}" / f"rank-{info.rank}.log")
    _enable_stack_dumps()
    _record_pid(run_dir, info.rank)
    _reserve_error_space(run_dir, info.rank)
    affinity.apply_placement()  # this rank's CPUs, GPUs and memory cgroup from the local scheduler
    tracking = os.environ.get(contract.TRACKING) == "1"
    resume = os.environ.get(contract.RESUME) == "1"
    if tracking or resume:
        from trainjob.runtime import instrument

        instrument.install(callback=tracking, resume=resume)
    if tracking:
        from trainjob.runtime import stopping

        stopping.install_signal_handler()
    spec = contract.read_job_spec(job_dir)  # the real script arguments, not the masked ones
    try:
        try:
            value = run_entrypoint(spec, job_dir)
        except SystemExit as e:
            if e.code not in (None, 0):
                raise
            value = None
    except SystemExit as e:
        record_error(run_dir, info.rank, e)
        shutdown_distributed()
        return e.code if isinstance(e.code, int) else 1
    except BaseException as e:  # noqa: BLE001 - recorded for the supervisor, then the rank fails
        print(record_error(run_dir, info.rank, e), end="", file=sys.stderr, flush=True)  # the traceback, secrets masked
        shutdown_distributed()
        return 1
    # The work is done: record it before anything that can hang at exit (the process group's
    # teardown, non-daemon threads), so the supervisor can tell a hang at exit from a failure.
    if info.rank == 0:
        _write_result(run_dir, value)
    done.mark("returned")
    shutdown_distributed()
    return 0


def run_entrypoint(spec: JobSpec, job_dir: Path) -> Any:
    """Run what the spec names; returns the function's value (None for scripts, modules, commands)."""
    import runpy

    entry = spec.require_real("run_entrypoint").entrypoint
    kind = entry.kind
    if entry.is_function:
        from trainjob.payload import load_payload, resolve_func_ref

        func, kwargs = load_payload((job_dir / contract.PAYLOAD_FILE).read_bytes())
        if isinstance(func, str):  # "pkg.module:function", imported here in the rank
            func = resolve_func_ref(func)
        return func(**kwargs)
    args = list(entry.args)
    if kind == "command":  # a program (Kubeflow's TrainerCommand), in this rank's environment and folder
        import subprocess

        subprocess.run([entry.command, *args], check=True)  # CalledProcessError: its exit status is the rank's error
        return None
    if kind == "script":
        script = entry.script
        sys.argv = [script, *args]
        sys.path.insert(0, str(Path(script).parent))
        runpy.run_path(script, run_name="__main__")
        return None
    sys.argv = [entry.module, *args]
    runpy.run_module(entry.module, run_name="__main__", alter_sys=True)
    return None


def record_error(run_dir: Path, rank: int, exc: BaseException) -> str:
    """Write ``errors/rank-N.json`` (first failure wins by its time) for the supervisor.

    Returns the whole traceback, the job's secret values masked as in the record, for the log.
    """
    known = _secret_values()
    tb = record_traceback(exc, known)
    record = error_record(rank, exc, known, **filesystems.oserror_details(exc))  # errno and file: the supervisor explains a full disk
    try:
        # On a full disk the record still fits: the rank's reserve is given back first.
        filesystems.with_reserve(lambda: contract.write_json_atomic(run_dir / contract.ERRORS_DIR / f"rank-{rank}.json", record), _error_reserve(run_dir, rank))
    except OSError:
        pass
    return tb


def _error_reserve(run_dir: Path, rank: int) -> filesystems.Reserve:
    return filesystems.Reserve(run_dir / contract.ERRORS_DIR / f".rank-{rank}.reserve", ERROR_RESERVE_BYTES, keep_free=0)


def _reserve_error_space(run_dir: Path, rank: int) -> None:
    """Set aside room for this rank's error record, so a full disk cannot lose it; gone at exit."""
    import atexit

    reserve = _error_reserve(run_dir, rank)
    if reserve.ensure():
        atexit.register(reserve.release)


def _secret_values() -> list[str]:
    """The job's secret values (to mask in a recorded error: it is stored and shown), if known here."""
    job_dir = os.environ.get(contract.JOB_DIR)
    try:
        return secret_values(contract.read_job_spec(Path(job_dir)).to_dict()) if job_dir else []
    except (OSError, ValueError):
        return []


def shutdown_distributed() -> None:
    """Destroy the default process group if the user's code left one (never imports torch itself)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return
    try:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - best effort at exit; a failure here must not mask the result
        pass


def _enable_stack_dumps() -> None:
    """``kill -QUIT`` writes every thread's Python stack into this rank's log (it keeps running).

    The supervisor sends it before it ends a rank that hangs, so the log shows where; a user can
    send it too. Done after the output is redirected: faulthandler writes to the fd it was given.
    """
    import faulthandler
    import signal

    try:
        faulthandler.register(getattr(signal, contract.STACK_DUMP_SIGNAL), file=sys.stderr, all_threads=True)
    except (AttributeError, ValueError, OSError, RuntimeError):
        pass  # no such signal here, or stderr has no fd: dumps are a diagnostic only


def _redirect_output(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _record_pid(run_dir: Path, rank: int) -> None:
    try:
        import psutil

        started = psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - psutil missing in an odd environment: pid alone
        started = None
    contract.write_json_atomic(run_dir / contract.PIDS_DIR / f"rank-{rank}.json", {"pid": os.getpid(), "start": started})


def _write_result(run_dir: Path, value: Any) -> None:
    data = dump_return_value(value)
    tmp = run_dir / f".{contract.RESULT_FILE}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, run_dir / contract.RESULT_FILE)


if __name__ == "__main__":
    sys.exit(main())
