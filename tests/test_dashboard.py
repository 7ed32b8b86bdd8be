"""The web dashboard: its JSON API and guards over real HTTP, and its job page in a real Chromium.

The server is started through the real command (`trainjob dashboard --port 0`) on 127.0.0.1;
jobs are real tiny trainings. The browser test needs Debian's `chromium` (apt-get install
chromium) and the `playwright` Python package (its own browser download is not used).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest


from trainjob import JobNotFoundError, TransformersTrainer
from trainjob.dashboard.security import is_loopback
from trainjob.dashboard.server import DashboardConfig

TESTS = Path(__file__).parent
ARTIFACTS = TESTS.parent / "test-artifacts"
_SCRIPT = Path(sys.executable).parent / "trainjob"
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "trainjob.cli.main"]
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
]  # fmt: skip


# ---- helpers --------------------------------------------------------------------------------
class Dashboard:
    """A `trainjob dashboard` process on 127.0.0.1 and a free port, ended by SIGINT.

    ``token``: the token from the URL the command printed (None with --no-auth); ``request``
    sends it unless told not to (``token=False``) or given credentials of its own.
    """

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "TRAINJOB_HOME": str(home), **(env or {})}
        self.proc = subprocess.Popen(
            [*COMMAND, "dashboard", "--port", "0", *args],
            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        line = self.proc.stdout.readline().strip()  # the command prints its URL first
        if not line.startswith("http://"):
            self.close()
            raise AssertionError(f"dashboard did not start: {line!r} {self.proc.stderr.read()}")
        self.printed = line
        self.url = line.split("?")[0]
        parts = urlsplit(line)
        self.host, self.port = parts.hostname, parts.port
        self.token = parse_qs(parts.query).get("token", [None])[0]

    def request(self, method: str, path: str, headers: dict[str, str] | None = None, token: bool = True) -> tuple[int, dict[str, str], bytes]:
        headers = dict(headers or {})
        own = {k.lower() for k in headers} & {"authorization", "x-trainjob-token", "cookie"}
        if token and self.token and not own:
            headers["Authorization"] = f"Bearer {self.token}"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, headers=headers)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def get_json(self, path: str, headers: dict[str, str] | None = None):
        status, _, body = self.request("GET", path, headers)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()


@pytest.fixture
def dashboard(home):
    d = Dashboard(home)
    yield d
    d.close()




# ---- who may connect -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "host, expected",
    [("127.0.0.1", True), ("127.0.0.9", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("192.168.0.10", False), ("", False)],
)  # fmt: skip
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected


def test_config_token_rules():
    assert DashboardConfig(host="0.0.0.0").token  # generated, as on loopback
    with pytest.raises(ValueError, match="at least 8 characters"):
        DashboardConfig(host="0.0.0.0", token="short")
    assert DashboardConfig(host="0.0.0.0", token="a-long-enough-token").token == "a-long-enough-token"
    assert DashboardConfig().host == "127.0.0.1" and DashboardConfig().port == 8686


def test_loopback_needs_the_token_printed_at_start(home):
    """On a shared machine every user reaches 127.0.0.1: a token is generated per start (as Jupyter does)."""
    env = {"TRAINJOB_DASHBOARD_TOKEN": ""}  # unset: a generated one
    d = Dashboard(home, env=env)
    try:
        assert d.host == "127.0.0.1" and d.token and len(d.token) >= 24
        for path in ("/", "/api/jobs", "/api/jobs/abcdefghijkl/logs", "/static/job.js"):
            status, _, body = d.request("GET", path, token=False)
            assert status == 401 and json.loads(body)["reason"] == "token", path
        assert d.request("GET", "/api/jobs")[0] == 200
    finally:
        d.close()
    again = Dashboard(home, env=env)
    try:
        assert again.token != d.token  # a new one per start
        assert again.request("GET", "/api/jobs", {"Authorization": f"Bearer {d.token}"})[0] == 401
    finally:
        again.close()


def test_no_auth_is_explicit_and_loopback_only(home):
    d = Dashboard(home, "--no-auth", env={"TRAINJOB_DASHBOARD_TOKEN": ""})
    try:
        assert d.token is None and "?" not in d.printed
        assert d.request("GET", "/api/jobs")[0] == 200
    finally:
        d.close()
    for args, env, says in (
        (["--no-auth", "--host", "0.0.0.0"], {}, "not a loopback address"),
        (["--no-auth"], {"TRAINJOB_DASHBOARD_TOKEN": "a-long-enough-token"}, "contradict"),
    ):
        full = {**{k: v for k, v in os.environ.items() if k != "TRAINJOB_DASHBOARD_TOKEN"}, **env}
        proc = subprocess.run([*COMMAND, "dashboard", "--port", "0", *args], env=full, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and says in proc.stderr and proc.stdout == "", (args, proc.stderr)
    with pytest.raises(ValueError, match="not a loopback"):
        DashboardConfig(host="0.0.0.0", no_auth=True)
    assert DashboardConfig(no_auth=True).token is None
    assert DashboardConfig().token != DashboardConfig().token


def test_token_is_checked_on_every_request(home):
    token = "tok-" + "x" * 20
    d = Dashboard(home, env={"TRAINJOB_DASHBOARD_TOKEN": token})
    try:
        assert d.token == token  # the given token, not a generated one
        for path in ("/", "/api/jobs", "/static/job.js", "/api/session"):
            status, headers, body = d.request("GET", path, token=False)
            assert status == 401, path
        assert json.loads(body)["reason"] == "token"
        assert d.request("GET", "/api/jobs", {"Authorization": f"Bearer {token}"})[0] == 200
        assert d.request("GET", "/api/jobs", {"X-Trainjob-Token": token})[0] == 200
        assert d.request("GET", "/api/jobs", {"Authorization": "Bearer wrong-token-value"})[0] == 401
        assert d.request("GET", "/?token=wrong-token-value", token=False)[0] == 401
        # Opening the printed link sets an HttpOnly cookie and drops the token from the URL.
        status, headers, _ = d.request("GET", f"/jobs/abcdefghijkl?token={token}", token=False)
        assert status == 303 and headers["location"] == "/jobs/abcdefghijkl"
        cookie = headers["set-cookie"]
        assert cookie.startswith(f"trainjob_token={token}") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
        status, _, body = d.request("GET", "/api/jobs", {"Cookie": cookie.split(";")[0]})
        assert status == 200 and json.loads(body)["jobs"] == []
        # The token does not replace the cross-site protection of actions.
        assert d.request("POST", "/api/jobs/abcdefghijkl/stop", {"Authorization": f"Bearer {token}"})[0] == 403
    finally:
        d.close()


# ---- the JSON API ----------------------------------------------------------------------------
@pytest.mark.slow
def test_api_serves_a_finished_job(client, dashboard):
    from trainjob.demo import train_tiny_gpt2

    from trainjob.options import Labels

    trainer = TransformersTrainer(func=train_tiny_gpt2, func_args={"max_steps": 30, "eval_steps": 10, "save_steps": None})
    job_id = client.train(trainer=trainer, options=[Labels({"team": "nlp"})], name="api-job")
    client.wait_for_job_completion(job_id, timeout=240)
    d = dashboard

    jobs = d.get_json("/api/jobs")["jobs"]
    assert [j["id"] for j in jobs] == [job_id] and jobs[0]["name"] == "api-job" and jobs[0]["labels"] == {"team": "nlp"}
    assert d.get_json("/api/jobs?status=Running") == {"jobs": [], "total": 0, "counts": {"Complete": 1}}
    assert [j["name"] for j in d.get_json("/api/jobs?label=team=nlp")["jobs"]] == ["api-job"]
    assert d.get_json("/api/jobs?label=team=cv")["jobs"] == []
    job = d.get_json(f"/api/jobs/{job_id}")
    assert job["status"] == "Complete" and job["progress"]["currentStep"] == 30 and job["progress"]["progressPercentage"] == 100
    assert d.get_json(f"/api/jobs/{job_id}/progress")["totalSteps"] == 30

    m = d.get_json(f"/api/jobs/{job_id}/metrics?after=0")
    assert [e["step"] for e in m["entries"] if "loss" in e] == [10, 20, 30]
    assert [e["step"] for e in m["entries"] if "eval_loss" in e] == [10, 20, 30]
    assert m["next"] == len(m["entries"])
    assert d.get_json(f"/api/jobs/{job_id}/metrics?after={m['next']}") == {"entries": [], "next": m["next"]}
    assert d.get_json(f"/api/jobs/{job_id}/metrics?after=2")["entries"] == m["entries"][2:]

    ev = d.get_json(f"/api/jobs/{job_id}/events")
    assert [e["reason"] for e in ev["events"]][0] == "Created" and ev["events"][-1]["reason"] == "Completed"
    assert d.get_json(f"/api/jobs/{job_id}/events?after={ev['next']}")["events"] == []

    logs = d.get_json(f"/api/jobs/{job_id}/logs")
    assert logs["step"] == "node-0" and logs["steps"] == ["node-0", "supervisor"]
    assert any("'loss':" in line for line in logs["lines"]) and logs["skipped_bytes"] == 0 and logs["more"] is False
    again = d.get_json(f"/api/jobs/{job_id}/logs?cursor={logs['cursor']}")
    assert again["lines"] == [] and again["cursor"] == logs["cursor"]
    assert d.get_json(f"/api/jobs/{job_id}/logs?rank=0")["step"] == "rank-0"
    assert d.request("GET", f"/api/jobs/{job_id}/logs?cursor=-3")[0] == 400
    assert d.request("GET", f"/api/jobs/{job_id}/logs?rank=5")[0] == 400

    r = d.get_json(f"/api/jobs/{job_id}/result")
    assert r["status"] == "Complete" and r["error"] is None and isinstance(r["return_value"]["train_loss"], float)

    assert d.request("GET", "/api/jobs/zzzzzzzzzzzz")[0] == 404
    assert d.request("GET", "/api/jobs/not-an-id")[0] == 404
    assert d.request("GET", f"/api/jobs/{job_id}/stop")[0] == 405  # actions are POST only

    status, headers, body = d.request("GET", f"/jobs/{job_id}")
    assert status == 200 and b'id="charts"' in body
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
    assert d.request("GET", "/static/chart.js")[0] == 200


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


@pytest.mark.slow
def test_logs_are_read_by_byte_range(client, dashboard, tmp_path):
    """The logs endpoint reads a tail, then what follows a cursor: a 2 GiB log costs a poll no more
    than a small one (it is never read whole), and a bad step or cursor is a 400 that says why."""
    from trainjob import CustomTrainer

    script = tmp_path / "chatty.py"
    script.write_text("for i in range(20000):\n    print(f'line {i:05d} ' + 'x' * 40)\n")
    job_id = client.train(CustomTrainer(script=str(script)))
    client.wait_for_job_completion(job_id, timeout=120)
    d = dashboard
    first = d.get_json(f"/api/jobs/{job_id}/logs?step=rank-0")
    assert first["lines"][-1].startswith("line 19999 ") and not first["lines"][0].startswith("line 00000 ")
    kept = sum(len(x) + 1 for x in first["lines"])
    assert first["skipped_bytes"] > 0 and first["skipped_bytes"] + kept == 20000 * 52  # the tail, from a line start
    assert d.get_json(f"/api/jobs/{job_id}/logs?step=rank-0&cursor={first['cursor']}")["lines"] == []
    # From the start, a chunk at a time: "more" until all of it came, in order, each line once.
    cursor, seen, reads = "0", [], 0
    while True:
        page = d.get_json(f"/api/jobs/{job_id}/logs?step=rank-0&cursor={cursor}")
        seen += page["lines"]
        cursor, reads = page["cursor"], reads + 1
        if not page["more"]:
            break
    assert reads > 1 and seen == [f"line {i:05d} " + "x" * 40 for i in range(20000)]

    # 2 GiB more (a sparse hole: cheap on disk), then one line.
    log = client.get_job(job_id).job_dir / "logs" / "attempt-0" / "rank-0.log"
    with open(log, "r+b") as f:
        f.truncate(log.stat().st_size + 2 * 2**30)
    with open(log, "ab") as f:
        f.write(b"\nafter the gap\n")
    before = _peak_rss(d.proc.pid)
    tail = d.get_json(f"/api/jobs/{job_id}/logs?step=rank-0")
    assert tail["lines"][-1] == "after the gap" and tail["skipped_bytes"] > 2 * 2**30
    nxt = d.get_json(f"/api/jobs/{job_id}/logs?step=rank-0&cursor={first['cursor']}")  # a poller that was at the old end
    assert nxt["more"] is True and len("".join(nxt["lines"])) <= 256 * 1024
    assert _peak_rss(d.proc.pid) - before < 200 * 2**20  # never held the 2 GiB

    for bad, says in (("node-\u00b2", "node-K"), ("rank-1", "rank-R (R < 1)"), ("node-01x", "node-0"), ("driver", "supervisor")):
        status, _, body = d.request("GET", f"/api/jobs/{job_id}/logs?step={quote(bad)}")
        assert status == 400 and says in json.loads(body)["error"], (bad, body)
    for bad in ("1.x", "-1", "9" * 30):
        status, _, body = d.request("GET", f"/api/jobs/{job_id}/logs?cursor={quote(bad)}")
        assert status == 400 and "cursor" in json.loads(body)["error"], (bad, body)


def test_guard_refuses_rebinding_and_cross_site_posts(dashboard):
    d = dashboard
    # DNS rebinding: a page on another name that resolves to 127.0.0.1 sends its own Host.
    assert d.request("GET", "/api/jobs", {"Host": f"evil.example:{d.port}"})[0] == 403
    assert d.request("GET", "/api/jobs", {"Host": f"localhost:{d.port}"})[0] == 200
    csrf = d.get_json("/api/session")["csrf"]
    assert len(csrf) >= 32
    path = "/api/jobs/abcdefghijkl/stop"
    assert d.request("POST", path)[0] == 403
    assert d.request("POST", path, {"X-Trainjob-Csrf": "guess"})[0] == 403
    assert d.request("POST", path, {"X-Trainjob-Csrf": csrf, "Origin": "http://evil.example"})[0] == 403
    assert d.request("POST", path, {"X-Trainjob-Csrf": csrf, "Sec-Fetch-Site": "cross-site"})[0] == 403
    # With the header (and a same-origin Origin) the request reaches the API: no such job -> 404.
    status, _, body = d.request("POST", path, {"X-Trainjob-Csrf": csrf, "Origin": f"http://127.0.0.1:{d.port}"})
    assert status == 404 and b"abcdefghijkl" in body


# ---- a real browser on a live job -----------------------------------------------------------
def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium); the browser test needs it")
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    return path


def _points(page) -> int:
    return int(page.get_attribute("path[data-key=loss]", "data-points") or 0)


@pytest.mark.browser
@pytest.mark.slow
def test_job_page_draws_live_curves_and_stops_the_job(client, dashboard, tmp_path):
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    import jobs

    job_id = client.train(TransformersTrainer(func=jobs.paced_tiny, func_args={"max_steps": 400, "step_sleep": 0.05}), name="live-curves")
    d = dashboard
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=executable, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )  # fmt: skip
        try:
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{d.url}jobs/{job_id}?token={d.token}")  # the printed link: sets the cookie

            # The loss curve appears, then grows without a reload.
            page.wait_for_function("() => +(document.querySelector('path[data-key=loss]')?.dataset.points || 0) >= 2", timeout=180_000)
            first = _points(page)
            d_attr = page.get_attribute("path[data-key=loss]", "d")
            assert d_attr.startswith("M") and d_attr.count("L") == first - 1
            page.wait_for_function(f"() => +document.querySelector('path[data-key=loss]').dataset.points > {first}", timeout=60_000)
            assert _points(page) > first
            assert page.evaluate("() => performance.getEntriesByType('navigation').length") == 1  # no reload happened

            # Legible: axes with ticks and titles; the learning-rate curve too; a live progress figure.
            loss_chart = page.locator("[data-chart=loss]")
            assert loss_chart.locator("text.tick.y").count() >= 3 and loss_chart.locator("text.tick.x").count() >= 3
            assert "training step" in loss_chart.inner_text() and "loss" in loss_chart.inner_text()
            assert int(page.get_attribute("path[data-key=learning_rate]", "data-points")) >= 2
            assert page.locator("#status .badge").inner_text() == "Running"
            assert page.locator("#pct").inner_text().endswith("%")
            page.wait_for_selector("#events li[data-reason=TrainBegin]")
            assert "'loss':" in page.locator("#logs").inner_text()
            page.screenshot(path=str(ARTIFACTS / "dashboard-job-running.png"), full_page=True)

            # An action without the CSRF header is refused and changes nothing.
            assert d.request("POST", f"/api/jobs/{job_id}/stop")[0] == 403
            assert client.get_job(job_id).status == "Running"

            # The page's own Stop button (it sends the header) works.
            page.once("dialog", lambda dialog: dialog.accept())
            page.click("#stop")
            page.wait_for_selector("body[data-status=Stopped]", timeout=120_000)
            assert client.get_job(job_id).status == "Stopped"
            page.wait_for_selector("#result:not(.hidden)", timeout=30_000)
            assert "Stopped" in page.locator("#result").inner_text()
            assert page.locator("#stop").is_disabled()
            page.wait_for_selector("#events li[data-reason=Stopped]", timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "dashboard-job-stopped.png"), full_page=True)

            # The job list shows it, with its progress.
            page.goto(d.url)
            row = page.wait_for_selector(f"tr[data-job={job_id}]")
            assert row.get_attribute("data-status") == "Stopped" and "live-curves" in row.inner_text() and "%" in row.inner_text()
            page.screenshot(path=str(ARTIFACTS / "dashboard-list.png"), full_page=True)
            assert errors == [], errors
        finally:
            ctx.close()

    # Delete through the API the way the page does it: with the CSRF header.
    csrf = d.get_json("/api/session")["csrf"]
    status, _, body = d.request("POST", f"/api/jobs/{job_id}/delete", {"X-Trainjob-Csrf": csrf})
    assert status == 200 and json.loads(body) == {"ok": True, "deleted": job_id}
    with pytest.raises(JobNotFoundError):
        client.get_job(job_id)


@pytest.mark.browser
def test_chart_component_axes_restarts_and_hover(dashboard, tmp_path):
    """The page's own chart code, served by the dashboard under its CSP, on known data."""
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=executable, headless=True, args=CHROMIUM_ARGS, viewport={"width": 1200, "height": 800})
        try:
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{dashboard.url}jobs/abcdefghijkl?token={dashboard.token}")  # no such job: the page loads and says so
            page.wait_for_selector("#error:not(.hidden)")
            assert "does not exist" in page.inner_text("#error")
            info = page.evaluate(Path(TESTS / "browser" / "chart_check.js").read_text())
            page.screenshot(path=str(tmp_path / "chart.png"))
            assert errors == [], errors
        finally:
            ctx.close()
    # A restart (attempt 0 -> 1) starts a new segment and is marked on the axis.
    assert info["lossMoves"] == 2 and info["restartMarks"] == 1
    assert info["lossPoints"] == 26 and info["evalMarkers"] == 4
    # Learning rates are >= 0: the axis starts at 0, not below; tiny values get exponent labels.
    assert info["lrTicks"][0] == "0" and all("e-4" in t for t in info["lrTicks"][1:])
    assert len(info["xTicks"]) >= 3 and info["xTicks"][0] == "0" and info["xTicks"][-1] == "400"
    # Hovering shows the values at the nearest step.
    assert info["tooltip"][0].startswith("step ") and any(t.startswith("loss: ") for t in info["tooltip"])
    # The y-axis title does not overlap the tick labels.
    assert max(len(t) for t in info["narrowTicks"]) >= 7, info["narrowTicks"]  # e.g. "4.95e-4"
    assert info["yTitleRight"] <= info["tickLeft"], info


# ---- scale: pages of jobs, a history read incrementally and drawn downsampled (issue 17) ------
def _stock(home: Path, jobs: int, entries: int, running: str | None = None) -> None:
    """Rows straight into the store: ended jobs job-0000..., and ``entries`` logged by job-0000
    (a loss with a spike and a dip); ``running``: one more job, Running under this (live) process."""
    import math
    import time

    from trainjob.backends.local import procs
    from trainjob.store import JobRow, Store
    from trainjob.types import JobStatus

    store = Store(home / "trainjob.db")
    rows = [JobRow(id=f"job-{i:04d}", name=f"job-{i:04d}", backend="local", status=JobStatus.FAILED if i % 5 == 0 else JobStatus.COMPLETE,
                   created_at=1.8e9 + i, num_nodes=1, procs_per_node=1, spec={}) for i in range(jobs)]  # fmt: skip
    if running:
        me = os.getpid()
        rows.append(JobRow(id=running, name=running, backend="local", status=JobStatus.RUNNING, created_at=time.time(), num_nodes=1, procs_per_node=1,
                           spec={}, supervisor_pid=me, supervisor_start=procs.start_time(me), supervisor_host=procs.this_host()))  # fmt: skip
    store.insert_jobs(rows)
    history = [{"step": i + 1, "loss": 2 + math.sin(i / 3000), "learning_rate": 1e-4, "attempt": 0} for i in range(entries)]
    if entries:
        history[entries // 3]["loss"], history[2 * entries // 3]["loss"] = 9.0, -4.0
    store.add_metrics(running or "job-0000", 0, history)


def test_api_pages_jobs_and_reads_history_by_position(home, dashboard):
    d = dashboard
    _stock(home, 250, 5000)
    page = d.get_json("/api/jobs?newest=1&limit=100&offset=100")
    assert [j["name"] for j in page["jobs"]] == [f"job-{i:04d}" for i in range(149, 49, -1)]
    assert page["total"] == 250 and page["counts"] == {"Complete": 200, "Failed": 50}
    failed = d.get_json("/api/jobs?status=Failed&limit=3")
    assert [j["name"] for j in failed["jobs"]] == ["job-0000", "job-0005", "job-0010"] and failed["total"] == 50
    assert [j["name"] for j in d.get_json("/api/jobs?name=job-024*")["jobs"]] == [f"job-{i:04d}" for i in range(240, 250)]
    assert len(d.get_json("/api/jobs")["jobs"]) == 250  # no limit: every job, as before

    m = d.get_json("/api/jobs/job-0000/metrics?after=4990&limit=5")
    assert [e["step"] for e in m["entries"]] == [4991, 4992, 4993, 4994, 4995] and m["next"] == 4995
    assert d.get_json("/api/jobs/job-0000/metrics?after=5000") == {"entries": [], "next": 5000}
    assert d.get_json("/api/jobs/job-0001/metrics") == {"entries": [], "next": 0}
    view = d.get_json("/api/jobs/job-0000/series?points=200")
    loss = view["series"]["loss"]
    assert view["downsampled"] and view["count"] == 5000 and len(loss) <= 200
    assert max(p[1] for p in loss) == 9.0 and min(p[1] for p in loss) == -4.0  # the extremes survive
    zoom = d.get_json("/api/jobs/job-0000/series?start=1000&stop=1100")
    assert not zoom["downsampled"] and [p[0] for p in zoom["series"]["loss"]] == list(range(1001, 1101))
    assert d.request("GET", "/api/jobs/job-0000/series?points=x")[0] == 400
    assert d.request("GET", "/api/jobs/job-0000/metrics?after=-1")[0] == 400
    assert d.request("GET", "/api/jobs/nosuchjob/series")[0] == 404


@pytest.mark.browser
def test_job_page_draws_a_long_history_downsampled_and_fetches_only_new_entries(home, dashboard, tmp_path):
    """100,000 entries: the first view is drawn from summaries (at most 2,000 points a curve, the
    spike and the dip kept); later polls ask only for entries after the last one; a drag zooms in."""
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    from trainjob.store import Store

    n = 100_000
    _stock(home, 0, n, running="long-run")
    d = dashboard
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=executable, headless=True, args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})
        try:
            page = ctx.new_page()
            errors: list[str] = []
            asked: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: asked.append(r.url.split(str(d.port), 1)[1]) if "/metrics" in r.url or "/series" in r.url else None)
            page.goto(f"{d.url}jobs/long-run?token={d.token}")
            page.wait_for_function("() => +(document.querySelector('path[data-key=loss]')?.dataset.points || 0) > 0", timeout=60_000)
            first = _points(page)
            rendered_ms = page.evaluate("() => performance.now()")
            assert 1000 <= first <= 2000, first
            ys = page.evaluate("() => [...document.querySelectorAll('[data-chart=loss] text.tick.y')].map((t) => +t.textContent)")
            assert min(ys) <= -4.0 and max(ys) >= 9.0, ys  # the axis spans the spike and the dip

            Store(home / "trainjob.db").add_metrics("long-run", 0, [{"step": n + 1 + i, "loss": 2.0, "attempt": 0} for i in range(30)])
            page.wait_for_function(f"() => +document.querySelector('path[data-key=loss]').dataset.points === {first + 30}", timeout=30_000)
            assert asked[0] == "/api/jobs/long-run/series?points=2000"
            polls = [u for u in asked[1:] if "/metrics" in u]
            assert polls and all(u.startswith(f"/api/jobs/long-run/metrics?after={n}") or u.startswith(f"/api/jobs/long-run/metrics?after={n + 30}") for u in polls), asked
            assert not any("/series" in u for u in asked[1:])  # the whole history was read once

            box = None
            for _ in range(50):  # the chart may be mid-redraw (a poll's new points) when it is looked for
                box = page.locator("[data-chart=loss] svg").first.bounding_box()
                if box:
                    break
                page.wait_for_timeout(100)
            assert box, "the loss chart is not visible"
            page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + 120)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.52, box["y"] + 120, steps=4)
            page.mouse.up()
            page.wait_for_selector("#zoom-reset:not(.hidden)", timeout=30_000)
            assert any("/series?" in u and "&start=" in u for u in asked)
            assert "zoomed" in page.inner_text("#history-note")
            page.screenshot(path=str(tmp_path / "zoomed.png"))
            page.click("#zoom-reset")
            page.wait_for_selector("#zoom-reset", state="hidden")
            assert errors == [], errors
            print(f"first render of {n:,} entries: {rendered_ms:.0f} ms after navigation start")
        finally:
            ctx.close()
