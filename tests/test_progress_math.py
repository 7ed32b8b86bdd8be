"""The progress schema and its math (pure functions; no jobs)."""

from __future__ import annotations

import math

import pytest

from trainjob.progress import (
    PROGRESS_KEYS,
    RateWindow,
    build_progress,
    categorize,
    current_epoch,
    percentage,
    remaining_seconds,
    time_summary,
    total_epochs,
)


def test_schema_has_exactly_the_seed_keys():
    p = build_progress(step=450, max_steps=1000, epoch=1.35, num_train_epochs=3, steps_per_second=2.5, samples_per_step=8,
                       train_metrics={"loss": 0.35, "learning_rate": 5e-5}, eval_metrics={"eval_loss": 0.42})  # fmt: skip
    assert tuple(p) == PROGRESS_KEYS
    assert p["progressPercentage"] == 45
    assert p["currentStep"] == 450 and p["totalSteps"] == 1000
    assert p["currentEpoch"] == 1 and p["totalEpochs"] == 3
    assert p["estimatedRemainingSeconds"] == 220  # 550 steps at 2.5/s
    assert p["estimatedRemainingTimeSummary"] == "3 minutes"
    assert p["trainMetrics"] == {"loss": 0.35, "learning_rate": 5e-5, "throughput_samples_sec": 20.0}
    assert p["evalMetrics"] == {"eval_loss": 0.42}
    assert p["lastUpdatedTime"].endswith("Z")


def test_nan_and_inf_become_null():
    p = build_progress(step=1, max_steps=10, epoch=float("nan"), num_train_epochs=1, steps_per_second=None, samples_per_step=None,
                       train_metrics={"loss": float("nan"), "grad_norm": float("inf")}, eval_metrics={"eval_loss": -math.inf})  # fmt: skip
    assert p["trainMetrics"] == {"loss": None, "grad_norm": None}
    assert p["evalMetrics"] == {"eval_loss": None}
    assert p["currentEpoch"] is None and p["estimatedRemainingSeconds"] is None
    import json

    json.dumps(p, allow_nan=False)  # strictly valid JSON


def test_finished_is_100_and_no_time_left():
    p = build_progress(step=200, max_steps=200, epoch=3.0, num_train_epochs=3, steps_per_second=None, samples_per_step=8,
                       train_metrics={}, eval_metrics={}, finished=True)  # fmt: skip
    assert p["progressPercentage"] == 100 and p["estimatedRemainingSeconds"] == 0 and p["currentEpoch"] == 3


@pytest.mark.parametrize("step,total,expected", [(0, 100, 0), (1, 3, 33), (3, 3, 100), (5, 3, 100), (5, None, None), (5, 0, None)])
def test_percentage(step, total, expected):
    assert percentage(step, total) == expected


def test_epochs_from_trainer_state_are_right_with_max_steps():
    # The Trainer sets num_train_epochs = ceil(max_steps / steps_per_epoch) when max_steps is set;
    # an IterableDataset gives sys.maxsize, which must not be shown as a total.
    assert total_epochs(5) == 5
    assert total_epochs(2.5) == 3
    assert total_epochs(9223372036854775807) is None
    assert current_epoch(4.2857, 5) == 4
    assert current_epoch(5.0000001, 5) == 5


def test_remaining_and_summary():
    assert remaining_seconds(10, 110, 2.0) == 50
    assert remaining_seconds(10, 110, None) is None
    assert time_summary(1) == "1 second"
    assert time_summary(45) == "45 seconds"
    assert time_summary(180) == "3 minutes"
    assert time_summary(217) == "3 minutes"  # DESIGN.md's example: whole minutes, rounded down
    assert time_summary(3599) == "59 minutes"
    assert time_summary(3600 + 5 * 60) == "1 hour 5 minutes"
    assert time_summary(7200) == "2 hours"


def test_rate_counts_only_this_attempts_steps():
    w = RateWindow(window_seconds=30)
    w.add(500, now=0.0)  # resumed at step 500: no history before it
    assert w.steps_per_second() is None
    w.add(510, now=5.0)
    assert w.steps_per_second() == pytest.approx(2.0)


def test_rate_window_forgets_old_samples():
    w = RateWindow(window_seconds=10)
    for t in range(0, 30):
        w.add(t * 10 if t < 10 else 100 + (t - 10), now=float(t))  # 10 steps/s, then 1 step/s
    assert w.steps_per_second() == pytest.approx(1.0, rel=0.2)


def test_categorize_and_custom_metrics():
    logs = {"loss": 0.5, "perplexity": 1.6, "eval_my_f1": 0.7, "eval_loss": 0.4, "epoch": 1.0, "step": 3, "note": "x"}
    train, evals = categorize(logs, {"perplexity": "perplexity", "my_f1": "eval_custom_f1"})
    assert train == {"loss": 0.5, "perplexity": 1.6}
    assert evals == {"eval_custom_f1": 0.7, "eval_loss": 0.4}
    # An exposed name without eval_ goes to trainMetrics even when logged as eval_*.
    train, evals = categorize({"eval_acc": 0.9}, {"acc": "accuracy"})
    assert train == {"accuracy": 0.9} and evals == {}
