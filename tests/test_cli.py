"""The `trainjob` command, run through its real entry point against real tiny jobs.

Every call is a subprocess (`trainjob ...`, the console script of this install), with its own
TRAINJOB_HOME, so what is tested is what a user types: parsing, output, exit codes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
_SCRIPT = Path(sys.executable).parent / "trainjob"
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "trainjob.cli.main"]
ID = re.compile(r"^[a-z][a-z0-9]{11}$")

TRAIN_PY = textwrap.dedent(
    """
    import sys
    from trainjob.demo import train_tiny_gpt2

    print("script args:", sys.argv[1:], flush=True)
    train_tiny_gpt2(max_steps=int(sys.argv[1]), eval_steps=20, save_steps=20)
    """
)
FAIL_PY = textwrap.dedent(
    """
    print("about to fail", flush=True)
    raise ValueError("boom from the cli test")
    """
)

def cli(home: Path, *args: str, cwd: Path | None = None, timeout: float = 240, check_rc: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(
        TRAINJOB_HOME=str(home),
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p),
    )
    env.pop("COLUMNS", None)
    proc = subprocess.run([*COMMAND, *args], cwd=cwd or home.parent, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check_rc is not None:
        assert proc.returncode == check_rc, f"trainjob {' '.join(args)} -> {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def cli_json(home: Path, *args: str):
    return json.loads(cli(home, *args, "-o", "json", check_rc=0).stdout)


def _cleanup(home: Path) -> None:
    from trainjob import LocalBackendConfig, TrainerClient

    if not (home / "trainjob.db").exists():
        return
    c = TrainerClient(LocalBackendConfig(home=home))
    for job in c.list_jobs():
        if not job.status.is_terminal:
            c.delete_job(job.id)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One script job run with --follow to completion; the read commands are tested on it."""
    root = tmp_path_factory.mktemp("cli")
    home = root / "home"
    (root / "train.py").write_text(TRAIN_PY)
    started = time.monotonic()
    proc = cli(home, "run", "--name", "tiny-script", "--follow", "train.py", "40", "--flag", cwd=root)
    yield {"home": home, "root": root, "proc": proc, "seconds": time.monotonic() - started}
    _cleanup(home)


@pytest.fixture
def fresh(tmp_path):
    home = tmp_path / "home"
    yield home
    _cleanup(home)


# ---- run --follow ---------------------------------------------------------------------------
@pytest.mark.slow
def test_run_script_follow_streams_logs_and_exits_0(finished):
    proc = finished["proc"]
    assert proc.returncode == 0, proc.stderr
    # The script's own output (its arguments went to it untouched) and the Trainer's log lines.
    assert "script args: ['40', '--flag']" in proc.stdout
    assert "'loss':" in proc.stdout and "'eval_loss':" in proc.stdout
    # trainjob's messages go to stderr: the id, progress lines, the outcome.
    m = re.search(r"submitted job (tiny-script)\b", proc.stderr)  # --name is the job's name, its identifier
    assert m, proc.stderr
    assert re.search(r"Complete\s+job " + m.group(1), proc.stderr)
    assert "step 40/40" in proc.stderr


@pytest.mark.slow
def test_ls_table_json_quiet_and_filter(finished):
    home = finished["home"]
    jobs = cli_json(home, "ls")
    assert len(jobs) == 1
    job = jobs[0]
    assert job["id"] == job["name"] == "tiny-script" and job["status"] == "Complete"
    assert job["is_terminal"] is True and job["progress"]["progressPercentage"] == 100
    assert job["entrypoint"].endswith("train.py 40 --flag")
    table = cli(home, "ls", check_rc=0).stdout
    assert job["id"] in table and "Complete" in table and "40/40" in table and "100%" in table
    assert cli(home, "ls", "-q", check_rc=0).stdout.split() == [job["id"]]
    assert cli_json(home, "ls", "--status", "Failed,Stopped") == []
    assert [j["id"] for j in cli_json(home, "ls", "--status", "complete")] == [job["id"]]
    bad = cli(home, "ls", "--status", "Finished")
    assert bad.returncode == 2 and "Finished" in bad.stderr and "Complete" in bad.stderr


@pytest.mark.slow
def test_status_by_prefix_and_name(finished):
    home = finished["home"]
    job_id = cli_json(home, "ls")[0]["id"]
    rec = cli_json(home, "status", job_id[:5])
    assert rec["id"] == job_id and rec["status"] == "Complete"
    assert rec["started_at"].endswith("Z") and rec["finished_at"] >= rec["started_at"]
    assert rec["runtime_seconds"] > 0 and rec["num_nodes"] == 1 and rec["procs_per_node"] == 1
    assert rec["spec"]["script_args"] == ["40", "--flag"]
    text = cli(home, "status", "tiny-script", check_rc=0).stdout
    assert job_id in text and "Complete" in text and "train.py 40 --flag" in text and "node-0" in text
    missing = cli(home, "status", "zzzzzzzzzzzz")
    assert missing.returncode == 4 and "zzzzzzzzzzzz" in missing.stderr


@pytest.mark.slow
def test_progress_json_and_text(finished):
    home = finished["home"]
    p = cli_json(home, "progress", "tiny-script")
    assert p["currentStep"] == p["totalSteps"] == 40 and p["progressPercentage"] == 100
    assert isinstance(p["trainMetrics"]["loss"], float) and 0 < p["trainMetrics"]["loss"] < 10
    assert isinstance(p["evalMetrics"]["eval_loss"], float)
    text = cli(home, "progress", "tiny-script", check_rc=0).stdout
    assert "100%" in text and "step 40/40" in text and "eval_loss" in text
    # --watch on an ended job returns at once with its outcome as exit code.
    watched = cli(home, "progress", "--watch", "tiny-script", check_rc=0).stderr
    assert re.search(r"^Complete\s+job ", watched, re.M), watched


@pytest.mark.slow
def test_logs_rank_tail_and_supervisor(finished):
    home = finished["home"]
    logs = cli(home, "logs", "tiny-script", check_rc=0).stdout
    assert "script args: ['40', '--flag']" in logs and "'train_runtime':" in logs
    assert cli(home, "logs", "tiny-script", "--rank", "0", check_rc=0).stdout == logs
    tail = cli(home, "logs", "tiny-script", "--tail", "2", check_rc=0).stdout.splitlines()
    assert tail == logs.splitlines()[-2:]
    # follow on an ended job prints everything and returns
    assert cli(home, "logs", "-f", "tiny-script", check_rc=0).stdout == logs
    assert cli(home, "logs", "tiny-script", "--supervisor", check_rc=0).stdout != logs
    bad = cli(home, "logs", "tiny-script", "--rank", "3")
    assert bad.returncode == 2 and "rank-0" in bad.stderr


@pytest.mark.slow
def test_events_json_and_table(finished):
    home = finished["home"]
    events = cli_json(home, "events", "tiny-script")
    reasons = [e["reason"] for e in events]
    for r in ("Created", "Started", "TrainBegin", "Evaluate", "Save", "TrainEnd", "Completed"):
        assert r in reasons, reasons
    assert reasons.index("Created") < reasons.index("Started") < reasons.index("Completed")
    assert all(e["time"].endswith("Z") for e in events)
    saves = [e["data"]["step"] for e in events if e["reason"] == "Save"]
    assert saves == [20, 40]
    table = cli(home, "events", "tiny-script", check_rc=0).stdout
    assert "TrainBegin" in table and "checkpoint saved at step 20" in table


@pytest.mark.slow
def test_metrics_json_table_and_plot(finished):
    home, root = finished["home"], finished["root"]
    entries = cli_json(home, "metrics", "tiny-script")
    losses = [(e["step"], e["loss"]) for e in entries if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in entries if "eval_loss" in e]
    assert [s for s, _ in losses] == [10, 20, 30, 40]
    assert [s for s, _ in evals] == [20, 40]
    assert losses[-1][1] < losses[0][1], "the tiny model learns: loss goes down"
    assert len(cli_json(home, "metrics", "tiny-script", "--last", "2")) == 2
    table = cli(home, "metrics", "tiny-script", check_rc=0).stdout
    assert "LOSS" in table and "EVAL_LOSS" in table and "LEARNING_RATE" in table
    assert f"{losses[0][1]:.4g}" in table

    png = root / "plots" / "curves.png"
    proc = cli(home, "metrics", "tiny-script", "--plot", str(png), check_rc=0)
    assert str(png) in proc.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert width >= 800 and height >= 300 and len(data) > 20_000


@pytest.mark.slow
def test_result_json_and_table(finished):
    home = finished["home"]
    r = cli_json(home, "result", "tiny-script")
    assert r["status"] == "Complete" and r["error"] is None
    assert r["checkpoint"].endswith("checkpoint-40") and Path(r["checkpoint"]).is_dir()
    assert [Path(c).name for c in r["checkpoints"]] == ["checkpoint-20", "checkpoint-40"]
    assert isinstance(r["metrics"]["train_loss"], float) and isinstance(r["metrics"]["eval_loss"], float)
    assert r["return_value"] is None  # scripts return nothing
    text = cli(home, "result", "tiny-script", check_rc=0).stdout
    assert "checkpoint-40" in text and "final metrics" in text and "eval_loss" in text


# ---- failures and usage errors -----------------------------------------------------------------
@pytest.mark.slow
def test_failing_job_follow_exits_1_with_its_error(fresh, tmp_path):
    (tmp_path / "fail.py").write_text(FAIL_PY)
    proc = cli(fresh, "run", "--follow", "fail.py", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "about to fail" in proc.stdout
    assert "Failed" in proc.stderr and "trainjob status" in proc.stderr
    job = cli_json(fresh, "ls")[0]
    assert job["status"] == "Failed"
    status = cli(fresh, "status", job["id"], check_rc=0).stdout
    assert "ValueError" in status and "boom from the cli test" in status
    r = cli_json(fresh, "result", job["id"])
    assert r["error"]["type"] == "ValueError" and r["error"]["message"] == "boom from the cli test"
    assert cli(fresh, "wait", job["id"]).returncode == 1


def test_invalid_spec_exits_2_and_leaves_nothing(fresh, tmp_path):
    (tmp_path / "train.py").write_text(TRAIN_PY)
    proc = cli(fresh, "run", "--cpu", "lots", "--memory", "12Zi", "--nodes", "0", "--env", "NOVALUE", "--metrics-port", "80", "train.py", cwd=tmp_path)
    assert proc.returncode == 2
    err = proc.stderr
    assert "5 problems" in err
    for flag, value in (("--cpu", "'lots'"), ("--memory", "'12Zi'"), ("--nodes", "0"), ("--env", "'NOVALUE'"), ("--metrics-port", "80")):
        assert re.search(rf"^  - {re.escape(flag)}\b.*{re.escape(value)}", err, re.M), (flag, err)
    # More than this machine has: refused at submit, with the machine's totals.
    too_big = cli(fresh, "run", "--cpu", "4096", "train.py", cwd=tmp_path)
    assert too_big.returncode == 2 and "this machine has" in too_big.stderr and "--cpu" in too_big.stderr
    missing = cli(fresh, "run", "nothere.py", cwd=tmp_path)
    assert missing.returncode == 2 and "nothere.py" in missing.stderr
    module_like = cli(fresh, "run", "mypkg.train", cwd=tmp_path)
    assert module_like.returncode == 2 and "-m mypkg.train" in module_like.stderr
    bad_kw = cli(fresh, "run", "trainjob.demo:train_tiny_gpt2", "max_steps", cwd=tmp_path)
    assert bad_kw.returncode == 2 and "max_steps" in bad_kw.stderr
    assert cli(fresh, "run", "--nodes", "two", "train.py", cwd=tmp_path).returncode == 2  # typer's own check
    lifecycle = cli(fresh, "run", "--progress-timeout", "0", "--deadline", "-5", "--stop-grace", "0", "--no-progress", "train.py", cwd=tmp_path)
    assert lifecycle.returncode == 2
    for flag in ("--progress-timeout", "--deadline", "--stop-grace"):
        assert re.search(rf"^  - {re.escape(flag)}\b", lifecycle.stderr, re.M), (flag, lifecycle.stderr)
    # Nothing was created: no job row, no job folder.
    assert cli_json(fresh, "ls") == []
    jobs_dir = fresh / "jobs"
    assert not jobs_dir.exists() or not any(jobs_dir.iterdir())


def test_help_explains_every_flag(fresh):
    top = cli(fresh, "--help", check_rc=0).stdout
    for verb in ("run", "demo", "ls", "status", "progress", "logs", "events", "metrics", "result", "stop", "delete", "envs", "dashboard"):
        assert re.search(rf"\b{verb}\b", top), verb
    run_help = cli(fresh, "run", "--help", check_rc=0).stdout
    for flag in ("--nodes", "--procs-per-node", "--cpu", "--gpu", "--memory", "--pkg", "--index-url", "--env", "--max-restarts",
                 "--no-progress", "--name", "--metrics-port", "--custom-metric", "--follow", "--module", "--output",
                 "--progress-timeout", "--deadline", "--stop-grace", "--exit-grace"):  # fmt: skip
        assert flag in run_help, flag
    logs_help = cli(fresh, "logs", "--help", check_rc=0).stdout
    assert "--rank" in logs_help and "--node" in logs_help and "--follow" in logs_help


# ---- other entry points, control ---------------------------------------------------------------
@pytest.mark.slow
def test_module_job_without_tracking_and_func_ref_json(fresh, tmp_path):
    rec = json.loads(cli(fresh, "run", "--no-progress", "--env", "MY_SETTING=on", "--name", "mod", "-o", "json", "-m", "trainjob.demo", "12", check_rc=0).stdout)
    assert rec["id"] == rec["name"] == "mod" and rec["entrypoint"] == "-m trainjob.demo 12"
    assert rec["spec"]["enable_progression_tracking"] is False and rec["spec"]["env"] == {"MY_SETTING": "on"}
    assert cli(fresh, "wait", "mod", "--timeout", "200", check_rc=0).stdout.strip() == f"{rec['id']} Complete"
    assert cli_json(fresh, "progress", "mod") is None  # tracking off: nothing injected, no progress
    assert cli_json(fresh, "metrics", "mod") == []
    assert '"train_runtime"' in cli(fresh, "logs", "mod", check_rc=0).stdout  # the module printed its metrics
    no_plot = cli(fresh, "metrics", "mod", "--plot", str(tmp_path / "x.png"))
    assert no_plot.returncode == 1 and "no metrics" in no_plot.stderr and not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_follow_then_stop_exits_3_and_delete(fresh):
    env_home = fresh
    follow = subprocess.Popen(
        [*COMMAND, "run", "--follow", "--name", "paced", "jobs:paced_tiny", "max_steps=400", "step_sleep=0.05", "eval_steps=null"],
        cwd=fresh.parent,
        env={**os.environ, "TRAINJOB_HOME": str(env_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(TESTS)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        job = None
        while time.monotonic() < deadline:
            jobs = cli_json(env_home, "ls") if (env_home / "trainjob.db").exists() else []
            job = jobs[0] if jobs else None
            if job and (job["progress"] or {}).get("currentStep", 0) >= 10:
                break
            assert follow.poll() is None, follow.communicate()
            time.sleep(1)
        assert job and job["status"] == "Running", job
        assert job["spec"]["func_args"] == {"max_steps": "400", "step_sleep": "0.05", "eval_steps": "None"}
        stop = cli(env_home, "stop", "paced", check_rc=0)
        assert "stop requested" in stop.stderr
        out, err = follow.communicate(timeout=120)
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 3, err
    assert "Stopped" in err
    final = cli_json(env_home, "status", "paced")
    assert final["status"] == "Stopped" and 10 <= final["progress"]["currentStep"] < 400
    assert "Stopped" in [e["reason"] for e in cli_json(env_home, "events", "paced")]
    assert cli(env_home, "stop", "paced", check_rc=0).stderr.strip().endswith("already Stopped, nothing to stop")

    job_dir = Path(final["job_dir"])
    assert job_dir.is_dir()
    refused = cli(env_home, "delete", "paced")  # stdin is not a terminal: needs --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr and job_dir.is_dir()
    cli(env_home, "delete", "--yes", "paced", check_rc=0)
    assert cli_json(env_home, "ls") == [] and not job_dir.exists()
    assert cli(env_home, "status", final["id"]).returncode == 4


@pytest.mark.slow
def test_demo_trains_and_prints_result(fresh):
    proc = cli(fresh, "demo", "--steps", "20", check_rc=0)
    assert "a 2-layer GPT-2 for 20 steps" in proc.stderr
    assert re.search(r"final metrics: loss \d", proc.stdout)
    assert "trainjob dashboard" in proc.stdout
    job = cli_json(fresh, "ls")[0]
    assert re.match(r"^demo-[a-z0-9]{6}$", job["name"]) and job["status"] == "Complete" and job["progress"]["currentStep"] == 20


def _wheel_index(root: Path) -> str:
    """A one-package PEP 503 index (``tjcli-pkg``, no dependencies) built here with uv; its file:// URL."""
    from trainjob.backends.local import envs

    src = root / "src"
    (src / "tjcli_pkg").mkdir(parents=True)
    (src / "tjcli_pkg" / "__init__.py").write_text("VALUE = 'from the cli test'\n")
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "tjcli-pkg"\nversion = "1.0"\n[tool.setuptools]\npackages = ["tjcli_pkg"]\n'
    )
    subprocess.run([envs.find_uv(), "build", "--wheel", "--no-build-isolation", "--offline", "--quiet", "--out-dir", str(root / "files"), str(src)], check=True, capture_output=True)
    (wheel,) = (root / "files").glob("tjcli_pkg-1.0-*.whl")
    page = root / "simple" / "tjcli-pkg" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text(f'<a href="{wheel.as_uri()}">{wheel.name}</a>\n')
    return (root / "simple").as_uri()


@pytest.mark.slow
def test_pkg_flags_build_an_env_that_envs_ls_and_prune_manage(fresh, tmp_path, monkeypatch):
    # The installer sees only the index made here (no machine-wide pip config, its own uv cache).
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    assert cli_json(fresh, "envs", "ls") == []
    assert "no cached package environments" in cli(fresh, "envs", "ls", check_rc=0).stderr
    index_url = _wheel_index(tmp_path / "index")
    rec = json.loads(cli(fresh, "run", "-o", "json", "--name", "withpkg", "--pkg", "tjcli-pkg", "--index-url", index_url, "jobs:package_value", check_rc=0).stdout)
    assert rec["spec"]["packages_to_install"] == ["tjcli-pkg"] and rec["spec"]["pip_index_urls"] == [index_url]
    cli(fresh, "wait", "withpkg", "--timeout", "200", check_rc=0)
    assert cli_json(fresh, "result", "withpkg")["return_value"] == "from the cli test"

    (env,) = cli_json(fresh, "envs", "ls")
    assert env["requirements"] == ["tjcli-pkg"] and env["index_url"] == index_url
    assert env["size_bytes"] > 0 and env["in_use"] is False and env["last_used_at"].endswith("Z")
    table = cli(fresh, "envs", "ls", check_rc=0).stdout
    assert env["key"] in table and "tjcli-pkg" in table
    assert cli(fresh, "envs", "prune", "--older-than", "soon").returncode == 2
    assert cli_json(fresh, "envs", "prune", "--older-than", "1h") == []  # used seconds ago: kept
    removed = cli_json(fresh, "envs", "prune")
    assert [e["key"] for e in removed] == [env["key"]]
    assert cli_json(fresh, "envs", "ls") == [] and not Path(env["path"]).exists()


def test_console_script_is_installed():
    assert shutil.which("trainjob") or _SCRIPT.exists(), "the trainjob console script is not installed (pip install -e .)"


# ---- trainjob.plot on known entries (no job needed) ----------------------------------------------
def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plot_panels_restarts_and_empty(tmp_path):
    from trainjob.plot import NoMetricsError, panels, plot_metrics, series

    entries = [{"step": s, "epoch": s / 10, "time": 0.0, "attempt": 0, "loss": 5 - s / 100, "learning_rate": 1e-3 - s * 1e-6, "grad_norm": 1.0} for s in range(10, 140, 10)]
    entries += [{"step": s, "attempt": 0, "eval_loss": 4.0, "eval_accuracy": 0.5, "eval_runtime": 0.1} for s in (50, 100)]
    entries += [{"step": s, "attempt": 1, "loss": 4 - s / 200, "perplexity": float("nan") if s == 110 else 20.0} for s in range(100, 210, 10)]
    entries += [{"step": 200, "attempt": 1, "train_loss": 3.0, "train_runtime": 9.0, "total_flos": 1e12}]
    data = series(entries)
    assert set(data) == {"loss", "learning_rate", "grad_norm", "eval_loss", "eval_accuracy", "perplexity"}
    assert len(data["perplexity"]) == 10  # the NaN is left out
    assert [p[2] for p in data["loss"]].count(1) == 11
    assert panels(data) == [
        ("Loss", "loss", ["loss", "eval_loss"]),
        ("Learning rate", "learning rate", ["learning_rate"]),
        ("Gradient norm", "L2 norm of gradients", ["grad_norm"]),
        ("accuracy (eval)", "eval_accuracy", ["eval_accuracy"]),
        ("perplexity", "perplexity", ["perplexity"]),
    ]
    out = plot_metrics(entries, tmp_path / "sub" / "m.png", title="restarted job")
    w, h = _png_size(out)
    assert w > 1000 and h > 1000  # 5 panels: 2 columns x 3 rows
    one = plot_metrics([{"step": 1, "loss": 2.0}], tmp_path / "one.png")
    assert _png_size(one)[0] < w
    with pytest.raises(NoMetricsError, match="no metrics"):
        plot_metrics([{"step": 1, "epoch": 0.1, "train_runtime": 3.0}], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_a_running_job_with_no_recent_step_is_flagged(tmp_path):
    """``no step for N``: from the progress's own lastUpdatedTime, only for Running jobs, only after 2 minutes."""
    from datetime import datetime, timedelta, timezone

    from trainjob.core.public_records import no_step_for
    from trainjob.cli.render import status_cell
    from trainjob.types import JobStatus

    now = datetime(2026, 12, 5, 10, 0, 0, tzinfo=timezone.utc)
    old = {"lastUpdatedTime": (now - timedelta(seconds=185)).isoformat().replace("+00:00", "Z")}
    fresh_progress = {"lastUpdatedTime": (now - timedelta(seconds=30)).isoformat().replace("+00:00", "Z")}
    assert no_step_for(JobStatus.RUNNING, old, now) == 185
    assert no_step_for(JobStatus.RUNNING, fresh_progress, now) is None
    assert no_step_for(JobStatus.COMPLETE, old, now) is None and no_step_for(JobStatus.RUNNING, None, now) is None
    cell = status_cell({"status": "Running", "queue_position": None, "no_step_for_seconds": 185})
    assert cell.plain == "Running (no step for 3m05s)"


# ---- names, labels, runtimes (issue 13) ------------------------------------------------------
@pytest.mark.slow
def test_labels_names_and_runtimes(fresh, tmp_path):
    script = tmp_path / "hello.py"
    script.write_text("print('hello')\n")
    a = cli(fresh, "run", "--name", "labelled", "--label", "team=nlp", "--label", "tier=gold", "--annotation", "owner=ana v", str(script), check_rc=0)
    assert a.stdout.strip() == "labelled"
    b = cli(fresh, "run", "--label", "team=cv", str(script), check_rc=0).stdout.strip()
    assert ID.match(b)  # no --name: 12 random characters
    taken = cli(fresh, "run", "--name", "labelled", str(script))
    assert taken.returncode == 2 and "--name: Name='labelled'" in taken.stderr and "no other job has" in taken.stderr
    bad = cli(fresh, "run", "--name", "Bad_Name", "--label", "team=n l p", str(script))
    assert bad.returncode == 2 and "--name" in bad.stderr and "DNS-1035" in bad.stderr
    bad_label = cli(fresh, "run", "--label", "team=n l p", str(script))
    assert bad_label.returncode == 2 and "--label: Labels['team']" in bad_label.stderr
    for job in ("labelled", b):
        cli(fresh, "wait", job, "--timeout", "120", check_rc=0)
    assert [j["id"] for j in cli_json(fresh, "ls", "-l", "team=nlp")] == ["labelled"]
    assert [j["id"] for j in cli_json(fresh, "ls", "-l", "team=cv", "-l", "tier=gold")] == []
    table = cli(fresh, "ls", check_rc=0).stdout
    assert "LABELS" in table and "team=nlp,tier=gold" in table and "team=cv" in table
    rec = cli_json(fresh, "status", "labelled")
    assert rec["labels"] == {"team": "nlp", "tier": "gold"} and rec["annotations"] == {"owner": "ana v"} and rec["runtime"] == "torch-distributed"
    assert "owner=ana v" in cli(fresh, "status", "labelled", check_rc=0).stdout
    runtimes = cli_json(fresh, "runtimes")
    assert [r["name"] for r in runtimes] == ["torch-distributed"] and runtimes[0]["framework"] == "torch" and int(runtimes[0]["device_count"]) >= 1
    packages = cli(fresh, "runtimes", "--packages", check_rc=0).stdout
    assert "torch-distributed" in packages and re.search(r"^\s+torch==", packages, re.M)
