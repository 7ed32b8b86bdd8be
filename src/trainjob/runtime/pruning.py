"""Pruning at the evaluation, inside a trial's job: rank 0 reports each value of the objective to the
Optuna study and asks ``should_prune()`` there and then.

The optimizer process (``trainjob.optimizer.loop``) gives a trial job running on this machine the
``TRAINJOB_PRUNING`` variable (``contract.PRUNING``): JSON with the study's storage URL and name,
the trial's id and number, the objective's metric and the file holding the pickled pruner. Then the
decision is taken at the step of the evaluation itself, not a second or more later when the value
has travelled through the job's store to the optimizer (with ~1-s trials that was too late to save
anything). Where the variable is absent (Ray trials, a ``CustomTrainer``, no early stopping) this
module does nothing and the optimizer process judges the trial from its metrics history.

Runs in every rank: the ranks must stop at the same step, so with several ranks rank 0's verdict is
shared in one all-reduce at the logged entry that holds the metric (every rank logs the same keys
at the same steps). A storage error never fails the job: it is printed and training goes on (the
optimizer reports the values once the job has ended).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Mapping

from trainjob import contract

BUSY_TIMEOUT = 60.0  # seconds SQLite waits for another writer (the optimizer, parallel trials) before failing


def fast_commits(storage: Any) -> Any:
    """``PRAGMA synchronous=NORMAL`` on every connection of an Optuna SQLite storage (WAL mode), as
    trainjob's own store: a commit no longer waits for an fsync (~5 ms each here, and a trial's
    end is ~15 commits), and the database stays consistent after any crash; only a power loss or
    an OS crash can lose the last commits. Connections opened before are dropped from the pool."""
    from sqlalchemy import event

    if storage.engine.url.get_backend_name() != "sqlite":
        return storage

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()
    return storage


@dataclass
class TrialPruning:
    """One trial's link to its study, built from ``TRAINJOB_PRUNING``; the study is opened at the first value."""

    storage: str
    study: str
    trial_id: int
    number: int
    metric: str
    pruner_file: str
    _trial: Any = None
    _failed: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "TrialPruning | None":
        raw = environ.get(contract.PRUNING)
        if not raw:
            return None
        try:
            d = json.loads(raw)
            return cls(str(d["storage"]), str(d["study"]), int(d["trial_id"]), int(d["number"]), str(d["metric"]), str(d["pruner"]))
        except (ValueError, KeyError, TypeError) as e:
            print(f"trainjob: ignoring {contract.PRUNING}={raw!r} ({type(e).__name__}: {e}); the optimizer judges this trial itself", file=sys.stderr, flush=True)
            return None

    def key(self, logs: Mapping[str, Any]) -> str | None:
        """The logged key of the objective: the exact name, else with the ``eval_`` prefix (as the optimizer matches it)."""
        if self.metric in logs:
            return self.metric
        if not self.metric.startswith("eval_") and f"eval_{self.metric}" in logs:
            return f"eval_{self.metric}"
        return None

    def report(self, step: int, value: Any) -> str | None:
        """Report ``value`` at ``step``; the reason to stop when the pruner says so, else None. Rank 0 only."""
        if self._failed:
            return None
        value = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
        try:
            trial = self._open()
            trial.report(value, step)
            if not trial.should_prune():
                return None
            trial.storage.set_trial_user_attr(self.trial_id, "pruned_step", step)
        except Exception as e:  # noqa: BLE001 - storage, driver or pruner errors alike: pruning must never fail training
            self._failed = True
            print(f"trainjob: cannot report to the study ({type(e).__name__}: {e}); the optimizer judges this trial itself", file=sys.stderr, flush=True)
            return None
        return f"pruned by the optimizer: {self.metric}={value:g} at step {step} (trial {self.number})"

    def _open(self) -> Any:
        if self._trial is None:
            import cloudpickle
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            with open(self.pruner_file, "rb") as f:
                pruner = cloudpickle.load(f)
            # The optimizer created the tables and checked the schema: skip both (~0.35 s).
            storage = fast_commits(
                optuna.storages.RDBStorage(self.storage, engine_kwargs={"connect_args": {"timeout": BUSY_TIMEOUT}}, skip_compatibility_check=True, skip_table_creation=True)
            )
            study = optuna.load_study(study_name=self.study, storage=storage, sampler=optuna.samplers.RandomSampler(), pruner=pruner)
            self._trial = optuna.trial.Trial(study, self.trial_id)
        return self._trial


_current: TrialPruning | None = None
_loaded = False


def current() -> TrialPruning | None:
    """This process's trial link (read from the environment once), or None."""
    global _current, _loaded
    if not _loaded:
        _current, _loaded = TrialPruning.from_env(), True
    return _current
