"""Where an optimization lives: an Optuna study in ``$TRAINJOB_HOME/optuna.db``, plus a folder.

The study is a plain Optuna SQLite storage (``optuna-dashboard sqlite:///.../optuna.db`` opens it).
trainjob's own records ride in it as user attributes, so there is one source of truth:

- study ``trainjob``: the spec (search space, objectives, trial config, algorithm, early stopping);
  ``status``, ``message``, ``finished_at``; ``loop``: the optimizer process (pid, start time, host);
- trial ``job`` (its job's name), ``submitted``, ``status`` (a ``TrialStatus``), ``error``,
  ``metrics``, ``pruned_step``, ``resume_from`` (a stopped trial's job that a resume continues),
  ``prunes_itself`` (its job's rank 0 reports to the study and asks the pruner: ``runtime.pruning``).

The folder ``optimizations/<name>/`` holds what is not data: the pickled trial template
(``template.pkl``), the pickled pruner (``pruner.pkl``), the optimizer's log, the events
(``events.jsonl``) and the ``stop`` request. Any process may read. The optimizer process writes;
so does rank 0 of a trial that prunes itself (its intermediate values and ``pruned_step``): SQLite
serializes the writers (WAL mode, each waits up to ``BUSY_TIMEOUT`` for the others), and no two
write the same row (tests/test_optimizer.py writes from several processes at once).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainjob.runtime import pruning
from trainjob.types import Event

STORAGE_FILE = "optuna.db"
FOLDER = "optimizations"
LABEL = "trainjob.io/optimization"  # on every trial's job: the optimization's name
TRIAL_LABEL = "trainjob.io/trial"  # the trial's number
SPEC_ATTR = "trainjob"
BUSY_TIMEOUT = pruning.BUSY_TIMEOUT  # seconds a writer waits for the others (the trials' ranks use the same)
_storages: dict[str, Any] = {}


@dataclass(frozen=True)
class Files:
    root: Path

    @classmethod
    def of(cls, home: Path, name: str) -> "Files":
        return cls(Path(home) / FOLDER / name)

    @property
    def template(self) -> Path:
        return self.root / "template.pkl"

    @property
    def log(self) -> Path:
        return self.root / "optimizer.log"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def pruner(self) -> Path:
        """The pickled Optuna pruner, for trials that prune themselves (``runtime.pruning``)."""
        return self.root / "pruner.pkl"

    @property
    def stop(self) -> Path:
        return self.root / "stop"


def storage_url(home: Path) -> str:
    return f"sqlite:///{Path(home) / STORAGE_FILE}"


def storage(home: Path) -> Any:
    """The Optuna storage of ``home`` (one per process). WAL mode, so readers never block the writer;
    commits without fsync (``pruning.fast_commits``)."""
    url = storage_url(home)
    if url not in _storages:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        Path(home).mkdir(parents=True, exist_ok=True, mode=0o700)
        st = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": BUSY_TIMEOUT}})
        with st.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        pruning.fast_commits(st)
        _storages[url] = st
    return _storages[url]


def study_id(st: Any, name: str) -> int | None:
    """The study's id, or None when there is no trainjob optimization of that name."""
    try:
        sid = st.get_study_id_from_name(name)
    except KeyError:
        return None
    return sid if SPEC_ATTR in st.get_study_user_attrs(sid) else None


def add_event(files: Files, reason: str, message: str, trial: str | None = None, data: dict[str, Any] | None = None) -> None:
    """Append one event (one short line written with O_APPEND: concurrent writers do not interleave)."""
    files.root.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.time(), "reason": reason, "message": message, "trial": trial, "data": data or {}}, default=str) + "\n"
    fd = os.open(files.events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_events(files: Files, name: str) -> list[Event]:
    from trainjob.backends.records import utc

    out = []
    try:
        lines = files.events.read_text().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        kind, obj = ("Trial", e["trial"]) if e.get("trial") else ("OptimizationJob", name)
        out.append(Event(utc(e["time"]), e["reason"], e["message"], e.get("data") or {}, involved_object_kind=kind, involved_object_name=obj))
    return out
