"""What the warm process and its clients share: keys, file layout, the socket protocol.

Imported by supervisors, the CLI and the warm process itself, so it imports nothing heavy.

Files, all in ``$TRAINJOB_HOME/warm/`` (0700, so no other user can reach them):

- ``<key>.sock``: the warm process's unix socket (0600), present only while it accepts forks;
- ``<key>.lock``: held (``flock``) by the warm process for its whole life, from its first
  instruction: "held but no socket" means it is still importing;
- ``<key>.json``: its status (pid, start time, what it imported, its threads...);
- ``<key>.log``: its own output.

``<key>`` hashes everything a forked rank inherits instead of computing itself: the
interpreter, the environment (its path: a cached package environment's folder is named by the
hash of its packages), the name-version of every installed distribution, trainjob's version
and location, and the environment variables that libraries read at import time
(``import_env``). A change to any of them is a new key, so a new warm process. A change to a
trainjob source file the warm process imported makes it refuse forks and stop (``server``).

Protocol: ``SOCK_SEQPACKET`` (message boundaries kept), one JSON object per message, file
descriptors passed with ``SCM_RIGHTS``. One connection per forked process: the request, the
reply ``{"pid": ...}``, then, when the process ends, ``{"exit": code}`` (``Popen``'s convention:
``-N`` for a signal) and the server closes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any, Mapping

WARM_DIR = "warm"
MAX_MESSAGE = 4 * 1024 * 1024  # an environment is a few tens of KiB
REQUEST_DEADLINE = 1.5  # seconds after which a fork request is stale: its sender waits 2 s at most, then starts cold
DEFAULT_IDLE_TIMEOUT = 600.0  # seconds a warm process waits for the next fork before it exits
ENABLE_ENV = "TRAINJOB_WARM_START"  # "0": every job starts cold (the global opt-out)
IDLE_ENV = "TRAINJOB_WARM_IDLE_TIMEOUT"  # seconds; overrides the default idle timeout

# Variables some library reads when it is imported (so a forked rank would see the warm
# process's value, not its own): they are part of the key. The thread counts are not: the
# child sets torch's (OpenMP, MKL) and numpy's OpenBLAS thread counts from them (and from its
# CPU affinity) after the fork, as those libraries would at load. TOKENIZERS_PARALLELISM and
# CUDA_VISIBLE_DEVICES are read when used, not at import.
_IMPORT_PREFIXES = (
    "PYTHON", "HF_", "HUGGINGFACE", "TRANSFORMERS", "TOKENIZERS_", "TORCH", "PYTORCH", "CUDA_", "NVIDIA_",
    "OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "LD_", "DATASETS_", "TRL_", "PEFT_", "ACCELERATE_",
    "ARROW_", "NUMEXPR_", "XDG_CACHE", "LANG", "LC_",
)  # fmt: skip
_NOT_AT_IMPORT = {"PYTHONPATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM", "CUDA_VISIBLE_DEVICES"}


def warm_dir(home: Path) -> Path:
    d = Path(home) / WARM_DIR
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def paths(home: Path, key: str) -> dict[str, Path]:
    d = warm_dir(home)
    return {k: d / f"{key}.{k}" for k in ("sock", "lock", "json", "log")}


def import_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``env`` that libraries read at import time (see the module docstring)."""
    out = {k: v for k, v in env.items() if k.startswith(_IMPORT_PREFIXES) and k not in _NOT_AT_IMPORT}
    own_path = user_pythonpath(env)
    if own_path:
        out["PYTHONPATH"] = own_path  # it can hold the packages themselves; the submit folder is left out
    if "HOME" in env:
        out["HOME"] = env["HOME"]  # caches default to ~/.cache, resolved at import
    return out


def user_pythonpath(env: Mapping[str, str]) -> str:
    """A job's ``PYTHONPATH`` without the submit folder the launcher appends (``TRAINJOB_SUBMIT_DIR``).

    The warm process gets this one: the submit folder holds the user's modules, which only the
    ranks may import (each one afresh); each rank gets the job's whole ``PYTHONPATH``.
    """
    submit = env.get("TRAINJOB_SUBMIT_DIR")
    return os.pathsep.join(p for p in (env.get("PYTHONPATH") or "").split(os.pathsep) if p and p != submit)


def trainjob_identity() -> dict[str, str]:
    """Which trainjob: its version and where it is installed.

    Its source files are not hashed here: edits to modules the warm process never imported do
    not matter (ranks import those afresh), so the warm process itself watches the ones it
    imported and stops when one changes (``server``).
    """
    import trainjob

    return {"version": getattr(trainjob, "__version__", "?"), "path": os.path.realpath(os.path.dirname(trainjob.__file__))}


def environment_id(python: str, env: Mapping[str, str]) -> str:
    """Which environment a warm process serves, whatever its versions: its interpreter and venv."""
    return f"{os.path.realpath(python)}|{env.get('VIRTUAL_ENV') or ''}"


def warm_key(python: str, env: Mapping[str, str]) -> str:
    """The key of the warm process that may fork ranks of ``python`` with environment ``env``."""
    from trainjob.backends.local.envplan import BaseEnv

    data = {
        "environment": environment_id(python, env),
        "base": BaseEnv.current().identity(),
        "trainjob": trainjob_identity(),
        "env": import_env(env),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:20]


def idle_timeout(environ: Mapping[str, str] | None = None) -> float:
    environ = os.environ if environ is None else environ
    try:
        value = float(environ.get(IDLE_ENV) or DEFAULT_IDLE_TIMEOUT)
    except ValueError:
        return DEFAULT_IDLE_TIMEOUT
    return value if value > 0 else DEFAULT_IDLE_TIMEOUT


def enabled_globally(environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return (environ.get(ENABLE_ENV) or "1").strip().lower() not in ("0", "false", "no", "off")


# ---- the socket ----------------------------------------------------------------------------
class SocketAddress:
    """A unix socket path usable with bind/connect, however long the folder name is.

    ``sun_path`` holds 107 bytes; a longer path is reached through ``/proc/self/fd/<dir fd>/``.
    Close it when done (it may hold that folder descriptor).
    """

    def __init__(self, path: Path) -> None:
        self._fd: int | None = None
        if len(os.fsencode(str(path))) < 100 or not os.path.isdir("/proc/self/fd"):
            self.address = str(path)
        else:
            self._fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self.address = f"/proc/self/fd/{self._fd}/{path.name}"

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def new_socket() -> socket.socket:
    return socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"warm-start message of {len(data)} bytes is over {MAX_MESSAGE}")
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def receive(sock: socket.socket, max_fds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and the descriptors that came with it; ``(None, [])`` when the peer closed."""
    if max_fds:
        data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, max_fds)
    else:
        data, fds = sock.recv(MAX_MESSAGE), []
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), list(fds)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end (``SO_PEERCRED``)."""
    import struct

    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
