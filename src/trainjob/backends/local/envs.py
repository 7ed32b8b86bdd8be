"""Per-job package environments for ``packages_to_install`` (local backend).

A job that asks for packages runs in its own virtual environment, *layered* on the environment
trainjob itself runs in (the "base"): the layer holds only what the base lacks, and the base's
packages (torch, transformers, trainjob...) stay importable from it and are never reinstalled.

How the layer is made (with ``uv``, a dependency of trainjob):

1. ``uv venv --relocatable`` with the base's interpreter, built in a temporary folder.
2. A ``.pth`` file in the layer runs ``site.addsitedir(<base site-packages>)``: the base's
   packages come after the layer's own on ``sys.path`` (so a version the job asks for wins), and
   the base's own ``.pth`` files run too (editable installs such as trainjob's keep working).
   A plain ``--system-site-packages`` venv would not do: when the base is itself a venv, "system"
   means the interpreter's installation, not the base venv.
3. uv does not count packages reached through a ``.pth`` (or ``--system-site-packages``) as
   installed, so it would resolve and reinstall torch & co. into every layer (gigabytes). The
   layer therefore gets a *metadata-only* copy of every base distribution's ``.dist-info``
   (METADATA, entry points..., and a RECORD that lists only those copies). uv then sees the base
   packages as installed and satisfied and installs only what is missing. If the job asks for a
   different version of a base package, uv "uninstalls" the copy (removing only the copy: its
   RECORD names nothing else) and installs the requested version into the layer. (Base
   distributions installed the legacy ``.egg-info`` way are not copied: uv may install those
   again into the layer, which costs time, not correctness.)
4. ``uv pip install -r requirements.txt`` into the layer with the job's indexes
   (``pip_index_urls``: the first is the default index, the rest extra indexes; with none,
   pip's own configured ones) and pip's configured ``find-links`` (uv does not read pip's
   configuration; on machines whose torch wheel lives in a local find-links folder this is what
   keeps uv from fetching a CUDA build from the registry). The indexes reach uv through its
   environment (``UV_DEFAULT_INDEX``, ``UV_INDEX``), never its command line, which any user of
   the machine can read with ``ps``: index URLs may carry credentials. Everything trainjob
   shows or records about an environment (events, the supervisor log, the marker file that
   ``trainjob envs ls`` reads, errors) has them masked (``trainjob.masking``).
5. The finished folder is renamed into ``$TRAINJOB_HOME/envs/<key>``: an entry exists only when
   complete, and a failed install leaves nothing behind.

``<key>`` hashes the requirements, the index and find-links settings, and the base's identity
(interpreter, version, and the name-version of every installed distribution), so a change to the
base makes a new layer rather than a stale one. A file lock per key makes concurrent jobs build
it once; a job holds a shared lock on its environment while it runs, so pruning skips it.

What to build (the requirements, indexes, base and key: ``EnvPlan``) is planned in ``envplan``;
this module builds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Mapping

from trainjob.backends.local.envplan import BaseEnv, EnvPlan, PackageInstallError, plan_for
from trainjob.core.spec import JobSpec
from trainjob.masking import mask_text

ENVS_DIR = "envs"
LOCKS_DIR = ".locks"
MARKER_FILE = "trainjob-env.json"  # written last, before the rename: what the env holds
LAST_USED_FILE = ".last-used"  # its mtime is the last time a job used the env
REQUIREMENTS_FILE = "requirements.txt"
BASE_PTH = "_trainjob_base.pth"
OUTPUT_TAIL_LINES = 40

# Locks held for the life of this process: the environments this process's job runs in.
_held_locks: list[IO[bytes]] = []


@dataclass(frozen=True)
class PreparedEnv:
    """Where a job's ranks run: the environment's interpreter and the variables that select it."""

    python: str
    env: dict[str, str] = field(default_factory=dict)


# ---- the job's entry point ---------------------------------------------------------------
def prepare_for_job(spec: JobSpec, store: Any, job_id: str, job_dir: Any) -> PreparedEnv | None:
    """Make (or reuse) the environment a job's ``packages_to_install`` need. Runs in its supervisor.

    Returns None when the job asks for no packages (it runs in the base environment). Records an
    ``EnvironmentReady`` event with the seconds it took and whether the cache was hit, and writes
    the installer's output to the job's supervisor log. Raises PackageInstallError with the
    installer's message when the install fails; the cache is then left without an entry.
    """
    packages = list(spec.packages.install)
    if not packages:
        return None
    t0 = time.monotonic()
    home = Path(job_dir.root).parent.parent  # $TRAINJOB_HOME/jobs/<id>
    with open(job_dir.supervisor_log, "a", encoding="utf-8", errors="replace") as log:
        plan = plan_for(packages, list(spec.packages.index_urls))
        shown = ", ".join(plan.describe()["requirements"])

        def on_build_start() -> None:
            store.add_event(job_id, "InstallingPackages", f"installing {shown} with uv", plan.describe())
            store.update_job(job_id, message=f"installing packages: {shown}")

        path, cached = ensure_env(home, plan, log, on_build_start=on_build_start)
        seconds = time.monotonic() - t0
        how = "cached environment" if cached else "new environment"
        log.write(f"[trainjob] {how} {path} ready in {seconds:.2f}s\n")
    store.add_event(
        job_id,
        "EnvironmentReady",
        f"package environment ready in {seconds:.2f}s ({'cache hit' if cached else 'built'}): {shown}",
        {"seconds": round(seconds, 4), "cached": cached, "path": str(path), "key": plan.key, **plan.describe()},
    )
    if not cached:
        store.update_job(job_id, message=None)
    env_path = spec.env.get("PATH") or os.environ.get("PATH", os.defpath)
    return PreparedEnv(python=str(_python_of(path)), env={"VIRTUAL_ENV": str(path), "PATH": os.pathsep.join([str(path / "bin"), env_path])})


def ensure_env(home: Path, plan: EnvPlan, log: IO[str], on_build_start=None) -> tuple[Path, bool]:
    """The environment for ``plan`` under ``home/envs``, building it if needed. Returns (path, cached).

    Holds a shared lock on the entry for the rest of this process's life, so it is not pruned
    under a running job. Concurrent callers with the same plan build once: the builder holds the
    entry's exclusive lock; the others wait for it and then find the entry.
    """
    root = Path(home).absolute() / ENVS_DIR
    (root / LOCKS_DIR).mkdir(parents=True, exist_ok=True, mode=0o700)
    final = root / plan.key
    lock = open(root / LOCKS_DIR / f"{plan.key}.lock", "ab")
    try:
        fcntl.flock(lock, fcntl.LOCK_SH)
        cached = is_complete(final)
        if not cached:
            log.write(f"[trainjob] environment {plan.key} is not cached: building it, or waiting for the job that is\n")
            log.flush()
            fcntl.flock(lock, fcntl.LOCK_EX)  # drops our shared lock while it waits: no deadlock
            cached = is_complete(final)  # another job may have built it while we waited
            if not cached:
                if on_build_start is not None:
                    on_build_start()
                _build(root, plan, final, log)
            fcntl.flock(lock, fcntl.LOCK_SH)
    except BaseException:
        lock.close()
        raise
    _held_locks.append(lock)
    _touch(final / LAST_USED_FILE)
    return final, cached


def is_complete(path: Path) -> bool:
    return (path / MARKER_FILE).is_file()


def _python_of(env: Path) -> Path:
    return env / "bin" / "python"


def _site_packages_of(env: Path) -> Path:
    scheme = "venv" if "venv" in sysconfig.get_scheme_names() else "posix_prefix"
    return Path(sysconfig.get_path("purelib", scheme=scheme, vars={"base": str(env), "platbase": str(env)}))


def _build(root: Path, plan: EnvPlan, final: Path, log: IO[str]) -> None:
    """Build into a temporary folder, then rename it to ``final``. Caller holds the exclusive lock."""
    for stale in root.glob(f".building-{plan.key}-*"):  # a builder killed mid-way; we own the lock now
        shutil.rmtree(stale, ignore_errors=True)
    if final.exists():  # a folder without its marker: never complete, never used
        shutil.rmtree(final, ignore_errors=True)
    tmp = root / f".building-{plan.key}-{os.getpid()}"
    uv = find_uv()
    t0 = time.monotonic()
    log.write(f"[trainjob] building environment {plan.key} for {plan.describe()['requirements']}\n")
    try:
        _run([uv, "venv", "--relocatable", "--no-config", "--python", plan.base.python, str(tmp)], log, plan)
        sp = _site_packages_of(tmp)
        n = _shadow_base_metadata(plan.base, sp)
        (sp / BASE_PTH).write_text("".join(f"import site; site.addsitedir({d!r})\n" for d in plan.base.site_dirs))
        log.write(f"[trainjob] layered on {len(plan.base.site_dirs)} base site folder(s); {n} base distributions count as installed\n")
        reqs = tmp / REQUIREMENTS_FILE
        reqs.write_text("".join(r + "\n" for r in plan.requirements))
        argv, index_env = install_command(uv, _python_of(tmp), reqs, plan)
        _run(argv, log, plan, index_env)
        marker = {**plan.describe(), "key": plan.key, "created_at": time.time(), "build_seconds": round(time.monotonic() - t0, 3), "base": plan.base.identity()}
        marker["base"].pop("dists")  # long; the key already covers it
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=1))
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.write(f"[trainjob] built environment {plan.key} in {time.monotonic() - t0:.2f}s\n")


def find_uv() -> str:
    """The uv executable: the one shipped with the ``uv`` package, else one on PATH."""
    try:
        import uv  # the PyPI package bundles the binary

        return uv.find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return found
    raise PackageInstallError("packages_to_install needs uv, which was not found: pip install uv (it is a dependency of trainjob)")


# The installer's index settings a job's own indexes replace (uv would merge inherited ones in).
_UV_INDEX_VARS = ("UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX", "UV_FIND_LINKS")


def install_command(uv: str, python: Path, requirements: Path, plan: EnvPlan) -> tuple[list[str], dict[str, str]]:
    """``(argv, env)`` of the ``uv pip install`` that fills a layer. Pure; ``argv`` holds no URL credentials."""
    args, env = plan.index_options()
    argv = [uv, "pip", "install", "--no-config", "--python", str(python), "-r", str(requirements), *args]
    return argv, env


def _run(argv: list[str], log: IO[str], plan: EnvPlan, extra_env: Mapping[str, str] | None = None) -> None:
    """Run an installer command, streaming its output to ``log``; raise with its output on failure.

    ``extra_env`` (the plan's indexes) replaces any index settings inherited from this process.
    What goes to ``log`` and into the error has the plan's credentials masked.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH")}
    if extra_env and any(k in extra_env for k in ("UV_DEFAULT_INDEX", "UV_INDEX")):
        for k in _UV_INDEX_VARS:
            env.pop(k, None)
    env.update(extra_env or {})
    env.update({"UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1", "NO_COLOR": "1"})
    known = plan.secrets()
    log.write(mask_text("[trainjob] $ " + " ".join(argv), known) + "\n")
    log.flush()
    lines: list[str] = []
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, text=True, errors="replace")
    except OSError as e:
        raise PackageInstallError(f"could not run the installer {argv[0]}: {e}") from e
    assert proc.stdout is not None
    for line in proc.stdout:
        line = mask_text(line, known)
        lines.append(line.rstrip("\n"))
        log.write(line)
    rc = proc.wait()
    log.flush()
    if rc != 0:
        said = [ln for ln in lines if not ln.startswith(("Using Python ", "Using CPython "))]  # uv's preamble
        tail = "\n".join(said[-OUTPUT_TAIL_LINES:]).strip()
        what = "creating the environment" if argv[1] == "venv" else f"installing packages_to_install={plan.describe()['requirements']}"
        raise PackageInstallError(f"{what} failed (uv exited with code {rc}):\n{tail}")


def _shadow_base_metadata(base: BaseEnv, site_packages: Path) -> int:
    """Copy each base distribution's metadata (not its files) into the layer; see the module docstring.

    The copy's RECORD lists only the copy, so an uninstall by uv removes nothing of the base.
    Returns the number of distributions shadowed. The first of a name in ``sys.path`` order wins.
    """
    seen: set[str] = set()
    n = 0
    for d in base.site_dirs:
        try:
            entries = sorted(e for e in os.listdir(d) if e.endswith(".dist-info"))
        except OSError:
            continue
        for entry in entries:
            name = entry[: -len(".dist-info")].rsplit("-", 1)[0].lower().replace("_", "-")
            if name in seen:
                continue
            seen.add(name)
            src, dst = Path(d) / entry, site_packages / entry
            dst.mkdir()
            copied = []
            for f in os.listdir(src):
                if f == "RECORD" or not (src / f).is_file():
                    continue
                shutil.copyfile(src / f, dst / f)
                copied.append(f"{entry}/{f}")
            (dst / "RECORD").write_text("".join(f"{p},,\n" for p in [*copied, f"{entry}/RECORD"]))
            n += 1
    return n


def _touch(path: Path) -> None:
    try:
        path.touch()
    except OSError:
        pass
