"""Secrets never leave the spec: real jobs, the real CLI, the real dashboard, real uv.

A job is submitted the way a user would (``trainjob run``) with a secret-named env var, a
token-shaped value, credentials in a URL env value and in an index URL, and secret script
arguments. None of them may appear in anything trainjob stores or shows; the job itself must get
them all, unmasked. The masking rules themselves (``trainjob.masking``) are pinned first.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

import jobs
from test_cli import cli
from test_dashboard import Dashboard
from trainjob import CustomTrainer, LocalBackendConfig, TrainerClient, TransformersTrainer, ValidationError
from trainjob import masking
from trainjob.backends.local import envplan, envs

MASK = masking.MASK
NAME_SECRET = "plain-name-secret-7d1"  # secret because of its variable's name
HF_SECRET = "hf_" + "Xy7q" * 9  # secret because of its shape
DB_PASSWORD = "db-pass-93k"
INDEX_PASSWORD = "index-pass-55q"
ARG_SECRET = "arg-secret-61z"
KEY_SECRET = "key-secret-22w"
ALL_SECRETS = (NAME_SECRET, HF_SECRET, DB_PASSWORD, INDEX_PASSWORD, ARG_SECRET, KEY_SECRET)

RECEIVER = textwrap.dedent(
    """
    import json, os, sys
    names = ("HF_TOKEN", "UPSTREAM", "DATABASE_URL")
    with open("received.json", "w") as f:
        json.dump({"env": {n: os.environ.get(n) for n in names}, "argv": sys.argv[1:]}, f)
    print("the script ran", flush=True)
    raise RuntimeError("cannot log in with " + os.environ["HF_TOKEN"] + " / " + os.environ["UPSTREAM"])
    """
)


def _leaks(text: str) -> list[str]:
    return [s for s in ALL_SECRETS if s in text]


# ---- the rules ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "env, shown",
    [
        ({"HF_TOKEN": "abc"}, {"HF_TOKEN": MASK}),
        ({"AWS_SECRET_ACCESS_KEY": "abc", "DB_PASSWORD": "x"}, {"AWS_SECRET_ACCESS_KEY": MASK, "DB_PASSWORD": MASK}),
        ({"UPSTREAM": HF_SECRET, "OPENAI": "sk-" + "a1B2" * 8, "GH": "ghp_" + "Z9y8" * 9}, {"UPSTREAM": MASK, "OPENAI": MASK, "GH": MASK}),
        ({"BLOB": "dGhpcyBpcyBhIHNlY3JldCB0b2tlbiB2YWx1ZTEyMw==", "SHA": "0123456789abcdef" * 3}, {"BLOB": MASK, "SHA": MASK}),
        ({"DATABASE_URL": "postgres://alice:pw1@db/app"}, {"DATABASE_URL": f"postgres://alice:{MASK}@db/app"}),
        ({"REPO": "https://ghtoken123@github.com/x.git"}, {"REPO": f"https://{MASK}@github.com/x.git"}),
        # Not secrets: left alone.
        ({"TOKENIZERS_PARALLELISM": "false", "HF_HOME": "/data/hf", "MODEL": "transformers.models.gpt2.modeling_gpt2", "SSH": "ssh://git@github.com/x"},
         {"TOKENIZERS_PARALLELISM": "false", "HF_HOME": "/data/hf", "MODEL": "transformers.models.gpt2.modeling_gpt2", "SSH": "ssh://git@github.com/x"}),
    ],
)  # fmt: skip
def test_env_masking(env, shown):
    assert masking.mask_env(env) == shown


def test_script_argument_masking():
    args = ["--lr", "1e-4", "--hf_token", "t1", "--api-key=k1", "--PASSWORD", "p1", "--client_secret", "s1", "--use_auth_token", "--epochs", "2", HF_SECRET, "--index", "https://u:p@h/simple"]
    assert masking.mask_args(args) == [
        "--lr", "1e-4", "--hf_token", MASK, f"--api-key={MASK}", "--PASSWORD", MASK, "--client_secret", MASK,
        "--use_auth_token", "--epochs", "2", MASK, "--index", f"https://u:{MASK}@h/simple",
    ]  # fmt: skip


def test_split_and_join_spec_round_trip():
    spec = {
        "env": {"HF_TOKEN": NAME_SECRET, "A": "1"},
        "script_args": ["--hf_token", ARG_SECRET],
        "pip_index_urls": [f"https://bob:{INDEX_PASSWORD}@pypi.internal.example/simple"],
        "packages_to_install": [f"pkg @ https://bob:{INDEX_PASSWORD}@files.example/pkg-1.0-py3-none-any.whl", "peft"],
        "num_nodes": 2,
    }
    shown, hidden = masking.split_spec(spec)
    assert not _leaks(json.dumps(shown)) and shown["num_nodes"] == 2 and shown["env"]["A"] == "1"
    assert set(hidden) == {"env", "script_args", "pip_index_urls", "packages_to_install"}
    assert masking.join_spec(shown, hidden) == spec
    assert set(masking.secret_values(spec)) == {NAME_SECRET, ARG_SECRET, INDEX_PASSWORD}
    assert masking.split_spec({"env": {"A": "1"}, "num_nodes": 1})[1] == {}  # nothing secret: nothing hidden
    text = f"GET https://bob:{INDEX_PASSWORD}@h/ with {HF_SECRET}: {NAME_SECRET}"
    assert masking.mask_text(text, masking.secret_values(spec)) == f"GET https://bob:{MASK}@h/ with {MASK}: {MASK}"


def test_validation_errors_mask_what_they_show():
    with pytest.raises(ValidationError) as e:
        CustomTrainer(
            func=print,
            env={"HF_TOKEN": 12345678, "UPSTREAM": HF_SECRET, "MY TOKEN": DB_PASSWORD},
            pip_index_urls=[f"ftp://bob:{INDEX_PASSWORD}@h/simple"],
            script_args=f"--hf_token {ARG_SECRET}",
        )
    message = str(e.value)
    assert e.value.fields == ["script_args", "script_args", "pip_index_urls[0]", "env['HF_TOKEN']", "env['MY TOKEN']"]
    assert not _leaks(message) and "12345678" not in message, message
    assert f"bob:{MASK}@h" in message and f"--hf_token {MASK}" in message


def test_bad_requirements_are_named_and_nothing_is_created(client, home):
    bad = ["transformers; rm -rf /", "-e .", "./local/folder", "peft trl", "a\nb"]
    with pytest.raises(ValidationError) as e:
        TransformersTrainer(func="trainjob.demo:train_tiny_gpt2", packages_to_install=["peft==0.21.2", *bad, "pkg @ https://h/pkg-1.0-py3-none-any.whl"])
    assert e.value.fields == [f"packages_to_install[{i}]" for i in range(1, 6)]
    message = str(e.value)
    assert "'transformers; rm -rf /'" in message and "PEP 508" in message
    assert client.list_jobs() == [] and not (home / "jobs").exists()
    # The CLI refuses it the same way, exit 2, and starts nothing.
    proc = cli(home, "run", "--pkg", "transformers; rm -rf /", "trainjob.demo:train_tiny_gpt2")
    assert proc.returncode == 2 and "--pkg: packages_to_install[0]='transformers; rm -rf /'" in proc.stderr, proc.stderr
    assert client.list_jobs() == []


# ---- a real job -----------------------------------------------------------------------------
@pytest.mark.slow
def test_a_job_gets_its_secrets_and_nothing_shows_them(client, home, tmp_path, monkeypatch):
    script = tmp_path / "receiver.py"
    script.write_text(RECEIVER)
    monkeypatch.setenv("HF_TOKEN", NAME_SECRET)  # passed with `--env HF_TOKEN`: never on a command line
    proc = cli(
        home, "run", "--no-progress", "--env", "HF_TOKEN", "--env", f"UPSTREAM={HF_SECRET}",
        "--env", f"DATABASE_URL=postgres://alice:{DB_PASSWORD}@db.internal:5432/app",
        "--index-url", f"https://bob:{INDEX_PASSWORD}@pypi.internal.example/simple",
        str(script), "--hf_token", ARG_SECRET, f"--api_key={KEY_SECRET}", "--lr", "0.1",
        check_rc=0,
    )  # fmt: skip
    job_id = proc.stdout.strip()
    assert not _leaks(proc.stdout + proc.stderr)
    client.wait_for_job_status(job_id, {"Failed"}, timeout=120, polling_interval=0.2)
    job = client.get_job(job_id)

    # The job got every real value.
    received = json.loads((job.job_dir / "workdir" / "received.json").read_text())
    assert received["env"] == {"HF_TOKEN": NAME_SECRET, "UPSTREAM": HF_SECRET, "DATABASE_URL": f"postgres://alice:{DB_PASSWORD}@db.internal:5432/app"}
    assert received["argv"] == ["--hf_token", ARG_SECRET, f"--api_key={KEY_SECRET}", "--lr", "0.1"]

    # The API: spec, records, events, result (the job's error quotes two secrets).
    assert job.spec["env"] == {"HF_TOKEN": MASK, "UPSTREAM": MASK, "DATABASE_URL": f"postgres://alice:{MASK}@db.internal:5432/app"}
    assert job.spec["script_args"] == ["--hf_token", MASK, f"--api_key={MASK}", "--lr", "0.1"]
    assert job.spec["pip_index_urls"] == [f"https://bob:{MASK}@pypi.internal.example/simple"]
    listed = [j for j in client.list_jobs() if j.id == job_id][0]
    events = client.get_job_events(job_id)
    result = client.get_job_result(job_id)
    assert result.error["message"] == f"cannot log in with {MASK} / {MASK}"
    shown = json.dumps([repr(job), repr(listed), [repr(e) for e in events], repr(result)])
    assert not _leaks(shown), _leaks(shown)

    # Stored: the job folder's spec.json, the SQLite store (every byte), the supervisor log.
    assert not _leaks((job.job_dir / "spec.json").read_text())
    secrets_file = job.job_dir / "secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600 and NAME_SECRET in secrets_file.read_text()
    with sqlite3.connect(home / "trainjob.db") as db:
        db.execute("PRAGMA wal_checkpoint(FULL)")
    stored = b"".join(p.read_bytes() for p in home.glob("trainjob.db*"))
    assert not [s for s in ALL_SECRETS if s.encode() in stored]
    assert not _leaks((job.job_dir / "supervisor.log").read_text())

    # The CLI, in both output forms.
    commands = [(*verb, *form) for verb in (("ls",), ("status", job_id), ("events", job_id), ("result", job_id)) for form in ((), ("-o", "json"))]
    for args in [*commands, ("logs", job_id), ("logs", job_id, "--supervisor")]:
        out = cli(home, *args)
        assert out.returncode in (0, 1), (args, out.stderr)
        # The job's own log is its output: it printed no secret, and its error's traceback is masked.
        assert not _leaks(out.stdout + out.stderr), (args, _leaks(out.stdout + out.stderr))
        if args == ("logs", job_id):
            assert "the script ran" in out.stdout and f"RuntimeError: cannot log in with {MASK} / {MASK}" in out.stdout

    # The dashboard's API.
    d = Dashboard(home)
    try:
        for path in ("/api/jobs", f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/events", f"/api/jobs/{job_id}/result", f"/api/jobs/{job_id}/logs?step=supervisor"):
            body = json.dumps(d.get_json(path))
            assert not _leaks(body), (path, _leaks(body))
    finally:
        d.close()


# ---- package indexes --------------------------------------------------------------------------
def test_uv_command_line_holds_no_credentials(tmp_path):
    plan = envplan.plan_for(
        ["tjpkg-sec"],
        [f"https://bob:{INDEX_PASSWORD}@one.example/simple", f"https://{HF_SECRET}@two.example/simple"],
        pip=envplan.PipSettings(find_links=(f"https://carl:{DB_PASSWORD}@links.example/", str(tmp_path))),
    )
    argv, env = envs.install_command("uv", tmp_path / "python", tmp_path / "requirements.txt", plan)
    assert not _leaks(" ".join(argv)) and argv[-2:] == ["--find-links", str(tmp_path)]
    assert env == {
        "UV_DEFAULT_INDEX": f"https://bob:{INDEX_PASSWORD}@one.example/simple",
        "UV_INDEX": f"https://{HF_SECRET}@two.example/simple",
        "UV_FIND_LINKS": f"https://carl:{DB_PASSWORD}@links.example/",
    }
    assert not _leaks(json.dumps(plan.describe()))


class _AuthIndex:
    """A PEP 503 index on 127.0.0.1 that wants HTTP basic auth, serving one wheel.

    Each request that carries the right credentials also records whether any process on this
    machine has the password on its command line at that moment (uv is running then).
    """

    def __init__(self, wheel: Path, user: str, password: str) -> None:
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.authorized = 0
        self.in_argv: list[list[str]] = []
        index = self
        project = wheel.name.split("-")[0].replace("_", "-")

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:  # noqa: N802 - uv asks before it downloads
                self.do_GET(body=False)

            def do_GET(self, body: bool = True) -> None:  # noqa: N802
                if self.headers.get("Authorization") != index.expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="test"')
                    self.end_headers()
                    return
                index.authorized += 1
                index.in_argv += [p.info["cmdline"] for p in psutil.process_iter(["cmdline"]) if password in " ".join(p.info["cmdline"] or [])]
                if self.path.rstrip("/") == f"/simple/{project}":
                    data, ctype = f'<a href="/files/{wheel.name}">{wheel.name}</a>'.encode(), "text/html"
                elif self.path == f"/files/{wheel.name}":
                    data, ctype = wheel.read_bytes(), "application/octet-stream"
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://{user}:{password}@127.0.0.1:{self.server.server_address[1]}/simple"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_index_credentials_reach_uv_privately(client, home, tmp_path, monkeypatch):
    from test_envs import _build_wheel

    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX"):
        monkeypatch.delenv(var, raising=False)
    wheel = _build_wheel(tmp_path / "src", tmp_path / "wheels", "tjpkg-sec", "1.0", "tjpkg_sec", "VALUE = 'sec'\n", [])
    index = _AuthIndex(wheel, "bob", INDEX_PASSWORD)
    try:
        job_id = client.train(CustomTrainer(func=jobs.use_package, func_args={"module": "tjpkg_sec"}, packages_to_install=["tjpkg-sec"], pip_index_urls=[index.url]))
        client.wait_for_job_completion(job_id, timeout=240)
    finally:
        index.close()
    assert client.get_job_result(job_id).return_value["value"] == "sec"  # installed from the index, with the credentials
    assert index.authorized >= 2 and index.in_argv == []  # uv authenticated; no command line held the password
    job = client.get_job(job_id)
    ready = [e for e in client.get_job_events(job_id) if e.reason == "EnvironmentReady"]
    assert ready and ready[0].data["index_url"] == index.url.replace(INDEX_PASSWORD, MASK)
    shown = json.dumps([repr(job), [repr(e) for e in client.get_job_events(job_id)]]) + (job.job_dir / "supervisor.log").read_text()
    assert INDEX_PASSWORD not in shown
    listing = cli(home, "envs", "ls", "-o", "json", check_rc=0).stdout + cli(home, "envs", "ls", check_rc=0).stdout
    assert INDEX_PASSWORD not in listing and f"bob:{MASK}@127.0.0.1" in listing
    assert not [p for p in (home / "envs").glob("*/trainjob-env.json") if INDEX_PASSWORD in p.read_text()]


# ---- the metrics endpoint -------------------------------------------------------------------
UNROUTABLE = "203.0.113.77"  # TEST-NET-3: never an address of this machine


def test_metrics_host_must_be_an_address_of_this_machine(home):
    from trainjob.config import _local_addresses

    assert UNROUTABLE not in _local_addresses()
    with pytest.raises(ValidationError) as e:
        TrainerClient(LocalBackendConfig(metrics_host=UNROUTABLE))
    assert e.value.fields == ["metrics_host"] and "127.0.0.1" in str(e.value)
    for ok in ("127.0.0.1", "localhost", "0.0.0.0"):
        TrainerClient(LocalBackendConfig(metrics_host=ok))


@pytest.mark.slow
def test_an_endpoint_that_cannot_bind_does_not_stop_training(tmp_path):
    """A rank whose /metrics endpoint cannot bind trains to the end; the event and warning say why."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {
        **os.environ, "TRAINJOB_TRACKING": "1", "TRAINJOB_RUN_DIR": str(run_dir), "TRAINJOB_METRICS_HOST": UNROUTABLE,
        "TRAINJOB_METRICS_PORT": "28080", "HF_HUB_OFFLINE": "1",
    }  # fmt: skip
    code = (
        "import os; os.chdir(%r)\n"
        "from trainjob.runtime import instrument; instrument.install(callback=True)\n"
        "from trainjob.demo import train_tiny_gpt2; print('RESULT', train_tiny_gpt2(max_steps=3, save_steps=None, eval_steps=None))\n"
    ) % str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULT" in proc.stdout
    assert f"[trainjob] warning: rank 0's /metrics endpoint could not bind {UNROUTABLE}:28080" in proc.stderr
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    reasons = [e["reason"] for e in events]
    assert "MetricsEndpointFailed" in reasons and reasons[-1] == "TrainEnd" and events[-1]["data"]["global_step"] == 3
    failed = events[reasons.index("MetricsEndpointFailed")]
    assert failed["data"]["host"] == UNROUTABLE and "Errno" in failed["data"]["error"]
    assert not (run_dir / "endpoint.json").exists()
