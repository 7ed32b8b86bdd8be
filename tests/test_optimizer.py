"""Hyperparameter optimization (issue 14) with real studies: trials are real jobs, the optimizer a
real detached process, the study a real Optuna SQLite storage.

One home with warm start serves the module (trials fork from a warm process instead of importing
torch again: ~0.4 s instead of ~4 s to the first step), so the whole module stays short.
"""

from __future__ import annotations

import math
import os
import signal
import time

import pytest

import hpo_jobs
from conftest import wait_until
from trainjob import CustomTrainer, JobStatus, TrainerClient, TransformersTrainer, ValidationError
from trainjob.optimizer import (
    TPE,
    GridSearch,
    Median,
    Objective,
    OptimizationStatus,
    OptimizerClient,
    RandomSearch,
    Search,
    TrainJobTemplate,
    TrialConfig,
    TrialStatus,
)
from trainjob.optimizer.state import LABEL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def opt_home(tmp_path_factory):
    from trainjob.backends.local.warm import client as warm_client
    from trainjob.backends.local.warm import common

    home = tmp_path_factory.mktemp("opthome")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in (("TRAINJOB_HOME", str(home)), (common.ENABLE_ENV, "1"), (common.IDLE_ENV, "300")):
            mp.setenv(k, v)
        warm_client.start_for_current_environment(home, wait=0)  # imports while the first tests submit
        yield home
        oc = OptimizerClient()
        for job in oc.list_jobs():
            oc.delete_job(job.name)  # ends optimizer processes and trial jobs a failed test left behind
        warm_client.stop_servers(home, wait=15)
        for info in warm_client.list_servers(home):  # one still importing does not stop at once
            if info.pid and info.state != "gone":
                os.kill(info.pid, signal.SIGKILL)


@pytest.fixture
def oc(opt_home):
    return OptimizerClient()


def lm_template(**func_args) -> TrainJobTemplate:
    return TrainJobTemplate(trainer=TransformersTrainer(func=hpo_jobs.lm, func_args=func_args))


def test_bad_arguments_are_reported_together_and_leave_nothing(oc, opt_home):
    with pytest.raises(ValidationError) as e:
        oc.optimize(
            trial_template=TrainJobTemplate(trainer="not a trainer"),
            search_space={"lr": Search.uniform(0.1, 0.2), "bad name": Search.choice([1, 2]), "n": [1, 2]},
            algorithm=GridSearch(),
            name="Bad_Name",
        )
    fields = e.value.fields
    assert fields == ["trial_template.trainer", "search_space['lr']", "search_space['bad name']", "search_space['n']", "name"]
    assert "GridSearch" in str(e.value) and "Search.choice" in str(e.value)
    with pytest.raises(ValidationError, match=r"search_space\['lr'\].*a keyword argument of lm\(\): it takes learning_rate, max_steps"):
        oc.optimize(lm_template(), search_space={"lr": Search.loguniform(1e-5, 1e-2)})  # a typo would fail every trial
    with pytest.raises(ValidationError, match="min < max"):
        Search.loguniform(1e-2, 1e-3)
    with pytest.raises(ValidationError, match="a number > 0"):
        Search.loguniform(0, 1)
    with pytest.raises(ValidationError, match="Objective.direction"):
        Objective("eval_loss", "down")
    with pytest.raises(ValidationError, match="TrialConfig.parallel_trials"):
        TrialConfig(num_trials=2, parallel_trials=0)
    assert oc.list_jobs() == []
    assert not (opt_home / "optimizations").exists() or not any((opt_home / "optimizations").iterdir())


def test_kubeflow_example_runs_with_only_the_imports_changed(oc):
    # Kubeflow's docstring example (kubeflow/optimizer/api/optimizer_client.py), imports changed:
    #   from kubeflow.trainer import TrainJobTemplate, CustomTrainer
    #   from kubeflow.optimizer import OptimizerClient, Search, TrialConfig
    from trainjob import CustomTrainer, TrainJobTemplate
    from trainjob.optimizer import OptimizerClient, Search, TrialConfig

    train_fn = hpo_jobs.train_fn
    template = TrainJobTemplate(runtime="torch-distributed", trainer=CustomTrainer(func=train_fn))
    client = OptimizerClient()
    opt_id = client.optimize(
        trial_template=template,
        trial_config=TrialConfig(num_trials=5, parallel_trials=2),
        search_space={
            "learning_rate": Search.loguniform(0.001, 0.1),
            "num_epochs": Search.choice([5, 10]),
        },
    )
    job = client.wait_for_job_status(name=opt_id, timeout=180, polling_interval=1)
    assert job.status == "Complete" and len(job.trials) == 5
    for t in job.trials:  # typed values, the loss read from the trial's stdout
        assert isinstance(t.parameters["learning_rate"], float) and 0.001 <= t.parameters["learning_rate"] <= 0.1
        assert t.parameters["num_epochs"] in (5, 10) and isinstance(t.parameters["num_epochs"], int)
        expected = (math.log10(t.parameters["learning_rate"]) + 2.0) ** 2 + 1.0 / t.parameters["num_epochs"]
        assert t.value == pytest.approx(expected, abs=1e-5) and t.metrics[0].latest == t.value  # Katib's Metric, from stdout
    best = client.get_best_results(opt_id)
    assert best.value == min(t.value for t in job.trials) and best.parameters == job.best_trial.parameters
    assert any(line.startswith("epoch=") for line in client.get_job_logs(opt_id))  # the best trial's log


def test_random_grid_and_tpe_complete_with_their_best_parameters(oc):
    names = {
        "random": oc.optimize(lm_template(max_steps=10), search_space={"learning_rate": Search.loguniform(1e-4, 1e-2)},
                              objectives=[Objective("eval_loss")], trial_config=TrialConfig(num_trials=2), algorithm=RandomSearch(random_state=1)),
        "grid": oc.optimize(lm_template(max_steps=10), search_space={"learning_rate": Search.choice([1e-4, 3e-3]), "width": range(2, 3)},
                            objectives=[Objective("loss", strategy="best")], trial_config=TrialConfig(num_trials=10), algorithm=GridSearch()),
        "tpe": oc.optimize(lm_template(max_steps=10), search_space={"learning_rate": Search.loguniform(1e-4, 1e-2)},
                           objectives=[Objective("loss")], trial_config=TrialConfig(num_trials=2), algorithm=TPE(random_state=0, n_startup_trials=1)),
    }  # fmt: skip
    jobs = {k: oc.wait_for_job_status(n, timeout=240, polling_interval=1) for k, n in names.items()}
    for kind, job in jobs.items():
        assert job.status == OptimizationStatus.COMPLETE, (kind, job.message, [t.error for t in job.trials])
        assert all(t.status == TrialStatus.COMPLETE and t.value > 0 for t in job.trials)
        best = oc.get_best_results(job.name)
        assert best.value == min(t.value for t in job.trials)
        assert best.parameters == next(t.parameters for t in job.trials if t.value == best.value)
        # Trials are ordinary jobs, labeled with their optimization
        labeled = TrainerClient().list_jobs(labels={LABEL: job.name})
        assert sorted(j.name for j in labeled) == sorted(t.name for t in job.trials)
        assert all(t.trainjob.status == JobStatus.COMPLETE for t in job.trials)
    grid = jobs["grid"]
    # The whole grid (2 points, num_trials cut to it), in order; width arrives as an int (hpo_jobs.lm raises otherwise).
    assert [t.parameters for t in grid.trials] == [{"learning_rate": 1e-4, "width": 2}, {"learning_rate": 3e-3, "width": 2}]
    assert grid.trial_config.num_trials == 2
    assert grid.best_trial.parameters["learning_rate"] == 3e-3  # 30x the learning rate: a lower best train loss in 10 steps
    # strategy="best": the lowest logged loss, not the last one
    assert all(t.value == t.metrics[0].min for t in grid.trials)
    assert len({t.parameters["learning_rate"] for t in jobs["random"].trials}) == 2


def test_a_diverging_learning_rate_is_pruned_at_its_evaluation_and_keeps_its_checkpoint(oc):
    # No delay: a 20-step trial trains in well under a second, long before its values could reach
    # the optimizer process; only a decision taken inside the trial, at the evaluation, stops it there.
    name = oc.optimize(
        lm_template(max_steps=20, eval_steps=5),
        search_space={"learning_rate": Search.choice([1e-3, 50.0])},
        objectives=[Objective("eval_loss")],
        trial_config=TrialConfig(num_trials=2),
        algorithm=GridSearch(),
        early_stopping=Median(n_startup_trials=1),
    )
    job = oc.wait_for_job_status(name, timeout=240, polling_interval=1)
    good, bad = job.trials
    assert job.status == OptimizationStatus.COMPLETE
    assert good.status == TrialStatus.COMPLETE and good.trainjob.status == JobStatus.COMPLETE
    assert bad.parameters == {"learning_rate": 50.0}
    assert bad.status == TrialStatus.PRUNED, (bad.status, bad.error)
    assert bad.step == 5  # pruned at its first evaluation...
    client = TrainerClient()
    assert client.get_job_progress(bad.name)["currentStep"] == 5  # ...and it trained no step more
    assert bad.trainjob.status == JobStatus.STOPPED and "pruned by the optimizer" in bad.trainjob.message
    result = client.get_job_result(bad.name)
    assert result.checkpoint is not None and result.checkpoint.name == "checkpoint-5"  # saved where it stopped
    assert any(e.reason == "Pruned" for e in client.get_job_events(bad.name))  # decided inside the job
    assert not any(e.reason == "TrialPruning" for e in oc.get_job_events(name))  # not by the optimizer process
    assert any(e.reason == "TrialPruned" and e.involved_object_name == bad.name for e in oc.get_job_events(name))

    # The dashboard's page of it: every trial's curve, read after what the page already has.
    from starlette.testclient import TestClient

    from trainjob.dashboard.server import DashboardConfig, create_app

    web = TestClient(create_app(TrainerClient(), DashboardConfig(no_auth=True)), base_url="http://127.0.0.1")
    page = web.get(f"/api/optimizations/{name}").json()
    assert page["best_trial"]["name"] == good.name and [t["status"] for t in page["trials"]] == ["Complete", "Pruned"]
    assert [p[0] for p in page["curves"][good.name]["points"]] == [5, 10, 15, 20]
    assert [p[0] for p in page["curves"][bad.name]["points"]] == [5]
    cursor = ",".join(f"{k}:{v['after']}" for k, v in page["curves"].items())
    assert all(c["points"] == [] for c in web.get(f"/api/optimizations/{name}?after={cursor}").json()["curves"].values())
    assert web.get("/optimizations/" + name).status_code == 200 and web.get("/api/optimizations/nope").status_code == 404


def test_resume_after_kill_9_repeats_no_finished_trial_and_a_failed_trial_counts(oc):
    template = TrainJobTemplate(trainer=CustomTrainer(func=hpo_jobs.quadratic, func_args={"sleep": 0.5}))
    name = oc.optimize(
        template,
        search_space={"mode": Search.choice(["ok", "fail", "worse"])},
        trial_config=TrialConfig(num_trials=3, max_failed_trials=1),
        algorithm=GridSearch(),
    )
    loop_pid = wait_until(lambda: oc._storage.get_study_user_attrs(oc._sid(name)).get("loop", {}).get("pid"), 30, what="optimizer pid")
    wait_until(lambda: [t for t in oc.get_job(name).trials if t.status == TrialStatus.COMPLETE], 120, what="first trial complete")
    os.kill(loop_pid, signal.SIGKILL)
    job = wait_until(lambda: (j := oc.get_job(name)).status == OptimizationStatus.FAILED and j, 30, what="the lost optimizer noticed")
    assert "resume" in job.message and str(loop_pid) in job.message
    first = job.trials[0]
    first_job_created = first.trainjob.created_at

    assert oc.optimize(resume=name) == name
    job = oc.wait_for_job_status(name, timeout=180, polling_interval=1)
    assert job.status == OptimizationStatus.COMPLETE, job.message
    assert [t.parameters["mode"] for t in job.trials] == ["ok", "fail", "worse"]  # nothing repeated
    assert [j.name for j in TrainerClient().list_jobs(labels={LABEL: name})] == [t.name for t in job.trials]
    assert job.trials[0].trainjob.created_at == first_job_created and job.trials[0].value == 1.0
    failed = job.trials[1]
    assert failed.status == TrialStatus.FAILED and failed.error["type"] == "ValueError" and "asked to fail" in failed.error["message"]
    assert job.trials[2].status == TrialStatus.COMPLETE and oc.get_best_results(name).parameters == {"mode": "ok"}
    reasons = [e.reason for e in oc.get_job_events(name)]
    assert "OptimizerLost" in reasons and "Resumed" in reasons

    # More failures than max_failed_trials: the optimization fails, naming the first error.
    strict = oc.optimize(template, search_space={"mode": Search.choice(["fail", "ok"])}, algorithm=GridSearch(),
                         trial_config=TrialConfig(num_trials=2, max_failed_trials=0))  # fmt: skip
    with pytest.raises(RuntimeError, match="more than max_failed_trials=0.*asked to fail"):
        oc.wait_for_job_status(strict, timeout=120, polling_interval=1)
    assert len(oc.get_job(strict).trials) == 1  # no trial started after the limit


def test_parallel_trials_wait_queued_for_the_scheduler(oc):
    # Each trial asks for both cores of this 2-core machine: the second waits Queued for the first.
    trainer = CustomTrainer(func=hpo_jobs.quadratic, func_args={"sleep": 2.0}, resources_per_node={"cpu": 2})
    name = oc.optimize(TrainJobTemplate(trainer), search_space={"x": Search.uniform(0, 2)}, trial_config=TrialConfig(num_trials=2, parallel_trials=2))
    seen = set()
    job = oc.wait_for_job_status(name, timeout=180, polling_interval=0.3, callbacks=[lambda j: seen.update(t.status for t in j.trials)])
    assert job.status == OptimizationStatus.COMPLETE and len(job.trials) == 2
    assert TrialStatus.QUEUED in seen
    a, b = sorted((t.trainjob for t in job.trials), key=lambda j: j.started_at)
    assert a.created_at.timestamp() == pytest.approx(b.created_at.timestamp(), abs=5)  # submitted together
    assert b.started_at >= a.finished_at  # ran one after the other


def test_cli_optimizes_a_script_and_lists_studies_and_trials(opt_home, tmp_path):
    import json
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text("import argparse\np = argparse.ArgumentParser(); p.add_argument('--x', type=float); p.add_argument('--k', type=int)\n"
                      "a = p.parse_args()\nprint(f'loss={(a.x - 1) ** 2 + a.k}')\n")  # fmt: skip
    cli = [sys.executable, "-m", "trainjob.cli.main"]
    run = subprocess.run(cli + ["optimize", "--param", "x=uniform:0:2", "--param", "k=choice:0,1", "--trials", "3", "--algorithm", "tpe",
                                "--seed", "1", "--metric", "loss", "--name", "cli-study", "--wait", "-o", "json", str(script)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)
    assert record["status"] == "Complete" and len(record["trials"]) == 3
    for t in record["trials"]:  # the script got --x=... --k=...: its printed loss is the objective
        assert t["value"] == pytest.approx((t["parameters"]["x"] - 1) ** 2 + t["parameters"]["k"], abs=1e-9)
    studies = json.loads(subprocess.run(cli + ["studies", "-o", "json"], capture_output=True, text=True, check=True).stdout)
    assert "cli-study" in [s["name"] for s in studies]
    table = subprocess.run(cli + ["trials", "cli-study"], capture_output=True, text=True, check=True, env={**os.environ, "COLUMNS": "200"}).stdout
    best = record["best_trial"]
    assert table.splitlines()[2].split()[:3] == ["*", str(best["number"]), "Complete"]  # best first, marked
    bad = subprocess.run(cli + ["optimize", "--param", "x=uniform:2:1", "--prune", "maybe", str(script)], capture_output=True, text=True)
    assert bad.returncode == 2 and "--param='x=uniform:2:1': min < max" in bad.stderr and "--prune" in bad.stderr


def test_trainer_hyperparameter_search_inside_one_job_is_tracked_trial_by_trial(opt_home):
    client = TrainerClient()
    name = client.train(trainer=TransformersTrainer(func=hpo_jobs.trainer_hp_search, func_args={"n_trials": 2, "max_steps": 10}))
    client.wait_for_job_status(name, timeout=180, polling_interval=0.5)
    best = client.get_job_result(name).return_value
    assert 1e-4 <= best["hyperparameters"]["learning_rate"] <= 1e-2 and math.isfinite(best["objective"])
    reasons = [e.reason for e in client.get_job_events(name)]
    assert reasons.count("TrainBegin") == 2 and reasons.count("TrainEnd") == 2  # each trial's train() seen
    evals = [(m["step"], m["eval_loss"]) for m in client.get_job_metrics(name) if "eval_loss" in m]
    assert [s for s, _ in evals] == [5, 10, 5, 10]  # both trials' evaluations are in the history
    assert best["objective"] == pytest.approx(min(evals[1][1], evals[3][1]))


def test_the_study_takes_trials_and_the_optimizer_writing_at_once(tmp_path):
    # Four trials' rank 0 (runtime.pruning, each its own process) report 40 values each and ask the
    # pruner, while this process writes trial attributes as the optimizer does: nothing is lost or fails.
    import json
    import subprocess
    import sys

    import cloudpickle
    import optuna

    from trainjob import contract
    from trainjob.optimizer import state

    st = state.storage(tmp_path)
    study = optuna.create_study(study_name="concurrent", storage=st)
    (tmp_path / "pruner.pkl").write_bytes(cloudpickle.dumps(optuna.pruners.MedianPruner(n_startup_trials=100)))
    trials = [study.ask() for _ in range(4)]
    code = ("from trainjob.runtime.pruning import TrialPruning\np = TrialPruning.from_env()\n"
            "for s in range(40):\n    assert p.report(s, float(s)) is None and not p._failed, s\n")  # fmt: skip
    writers = []
    for t in trials:
        link = {"storage": state.storage_url(tmp_path), "study": "concurrent", "trial_id": t._trial_id, "number": t.number, "metric": "loss", "pruner": str(tmp_path / "pruner.pkl")}
        writers.append(subprocess.Popen([sys.executable, "-c", code], env={**os.environ, contract.PRUNING: json.dumps(link)}))
    writes = 0
    while any(w.poll() is None for w in writers):
        for t in trials:
            st.set_trial_user_attr(t._trial_id, "status", f"Running {writes}")
            writes += 1
    assert [w.wait() for w in writers] == [0, 0, 0, 0]
    assert writes > 4
    for t in trials:
        assert st.get_trial(t._trial_id).intermediate_values == {s: float(s) for s in range(40)}
