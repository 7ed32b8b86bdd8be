"""Per-job package environments: real wheels, real uv, real jobs, a local index made here. No network.

Every job gives ``pip_index_urls`` (file:// indexes built by the test), which replaces the default
registry, and pip's own configuration is switched off, so nothing leaves this machine.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import jobs
from trainjob import CustomTrainer, JobFailedError
from trainjob.backends.local import envcache, envplan, envs

pytestmark = pytest.mark.slow


# ---- a local package index ------------------------------------------------------------------
def _build_wheel(src: Path, out: Path, name: str, version: str, module: str, body: str, deps: list[str]) -> Path:
    (src / module).mkdir(parents=True)
    (src / module / "__init__.py").write_text(body)
    dep_list = ", ".join(f'"{d}"' for d in deps)
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\ndependencies = [{dep_list}]\n'
        f'[tool.setuptools]\npackages = ["{module}"]\n'
    )
    subprocess.run(
        [envs.find_uv(), "build", "--wheel", "--no-build-isolation", "--offline", "--quiet", "--out-dir", str(out), str(src)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob(f"{name.replace('-', '_')}-{version}-*.whl")
    return wheel


def _simple_index(root: Path, wheels: list[Path]) -> str:
    """A PEP 503 "simple" index in ``root`` listing ``wheels``; returns its file:// URL."""
    for w in wheels:
        project = w.name.split("-")[0].replace("_", "-").lower()
        page = root / project / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        links = page.read_text() if page.exists() else ""
        page.write_text(links + f'<a href="{w.as_uri()}">{w.name}</a>\n')
    return root.as_uri()


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """Two indexes: ``main`` has tjpkg-a (which needs torch and psutil, both in the base
    environment) and tjpkg-a 2.0; ``extra`` has tjpkg-b."""
    base = tmp_path_factory.mktemp("index")
    files = base / "files"
    a1 = _build_wheel(base / "src-a1", files, "tjpkg-a", "1.0", "tjpkg_a", "VALUE = 'a1'\n", ["torch", "psutil"])
    a2 = _build_wheel(base / "src-a2", files, "tjpkg-a", "2.0", "tjpkg_a", "VALUE = 'a2'\n", ["torch"])
    b = _build_wheel(base / "src-b", files, "tjpkg-b", "1.0", "tjpkg_b", "VALUE = 'b'\n", [])
    return {"main": _simple_index(base / "main", [a1, a2]), "extra": _simple_index(base / "extra", [b]), "files": files}


@pytest.fixture(autouse=True)
def _isolated_installer(tmp_path, monkeypatch):
    """uv gets its own cache, and pip's configuration (machine-wide indexes, find-links) is off."""
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)


def _env_events(client, job_id):
    return [e for e in client.get_job_events(job_id) if e.reason in ("InstallingPackages", "EnvironmentReady")]


def _entries(home: Path) -> list[str]:
    root = home / envs.ENVS_DIR
    return sorted(p.name for p in root.iterdir() if p.name != envs.LOCKS_DIR) if root.exists() else []


# ---- planning (pure) -------------------------------------------------------------------------
def _base(dists=("torch-2.13.0+cpu.dist-info",)) -> envplan.BaseEnv:
    return envplan.BaseEnv(python=sys.executable, version=sys.version, site_dirs=("/base/site-packages",), dists=tuple(dists))


def test_plan_splits_indexes_and_keys_on_what_matters(tmp_path):
    pip = envplan.PipSettings(index_url="https://pip.example/simple", extra_index_urls=("https://x.example/simple",), find_links=(str(tmp_path), "/does/not/exist"))
    plan = envplan.plan_for(["b==1", "a"], ["file:///i1", "file:///i2", "file:///i3"], pip=pip, base=_base())
    # Indexes reach uv through its environment (they may carry credentials); find-links through argv.
    assert plan.index_options() == (["--find-links", str(tmp_path)], {"UV_DEFAULT_INDEX": "file:///i1", "UV_INDEX": "file:///i2 file:///i3"})
    # No job indexes: pip's configured ones.
    assert envplan.plan_for(["a"], None, pip=pip, base=_base()).index_options()[1] == {"UV_DEFAULT_INDEX": "https://pip.example/simple", "UV_INDEX": "https://x.example/simple"}
    same = envplan.plan_for(["a", "b==1"], ["file:///i1", "file:///i2", "file:///i3"], pip=pip, base=_base())
    assert same.key == plan.key  # requirement order does not matter
    assert envplan.plan_for(["a", "b==1"], ["file:///i1"], pip=pip, base=_base()).key != plan.key
    assert envplan.plan_for(["a", "b==2"], ["file:///i1", "file:///i2", "file:///i3"], pip=pip, base=_base()).key != plan.key
    upgraded = _base(("torch-2.14.0+cpu.dist-info",))
    assert envplan.plan_for(["a", "b==1"], ["file:///i1", "file:///i2", "file:///i3"], pip=pip, base=upgraded).key != plan.key


@pytest.mark.parametrize("bad", ["", "  ", "--index-url=https://evil.example", "a\n--extra-index-url x", 3])
def test_plan_rejects_what_is_not_a_requirement(bad):
    with pytest.raises(envs.PackageInstallError, match=r"packages_to_install\[1\]"):
        envplan.plan_for(["ok", bad], None, pip=envplan.PipSettings(), base=_base())


def test_pip_settings_reads_config_files_and_env(tmp_path):
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://a.example/simple\nfind-links = /w1 /w2\n[install]\nextra-index-url = https://b.example/simple https://c.example/simple\n")
    s = envplan.pip_settings({"PIP_CONFIG_FILE": str(conf), "HOME": str(tmp_path)})
    assert s == envplan.PipSettings("https://a.example/simple", ("https://b.example/simple", "https://c.example/simple"), ("/w1", "/w2"))
    s = envplan.pip_settings({"PIP_CONFIG_FILE": str(conf), "HOME": str(tmp_path), "PIP_FIND_LINKS": "/w3"})
    assert s.find_links == ("/w3",)
    assert envplan.pip_settings({"PIP_CONFIG_FILE": os.devnull, "HOME": str(tmp_path)}) == envplan.PipSettings()


# ---- real jobs -------------------------------------------------------------------------------
def test_install_then_cache_hit(client, home, index):
    trainer = CustomTrainer(func=jobs.use_package, func_args={"module": "tjpkg_a"}, packages_to_install=["tjpkg-a==1.0"], pip_index_urls=[index["main"]])
    first = client.train(trainer)
    client.wait_for_job_completion(first, timeout=180)
    value = client.get_job_result(first).return_value
    env_path = Path(value["prefix"])
    assert value["value"] == "a1"
    assert Path(value["file"]).is_relative_to(env_path)  # the package comes from the job's environment
    assert not Path(value["torch"]).is_relative_to(env_path)  # torch from the base, not reinstalled
    assert env_path.parent == home / envs.ENVS_DIR
    site_packages = envs._site_packages_of(env_path)
    assert not (site_packages / "torch").exists() and not (site_packages / "psutil").exists()
    (built,) = [e for e in _env_events(client, first) if e.reason == "EnvironmentReady"]
    assert built.data["cached"] is False and built.data["seconds"] > 0
    log = "\n".join(client.get_job_logs(first, step="supervisor"))
    assert "+ tjpkg-a==1.0" in log  # the installer's own output is in the job's log

    second = client.train(trainer)
    client.wait_for_job_completion(second, timeout=120)
    assert client.get_job_result(second).return_value["prefix"] == str(env_path)
    events = _env_events(client, second)
    assert [e.reason for e in events] == ["EnvironmentReady"]  # nothing installed
    assert events[0].data["cached"] is True
    assert events[0].data["seconds"] < 0.5
    assert _entries(home) == [env_path.name]


def test_a_package_environment_has_its_own_warm_process(client, home, index, monkeypatch):
    """Issue 16: a cached package environment gets a warm process of its own Python; the next job
    of that environment forks from it and imports the job's package from the environment."""
    from trainjob.backends.local.warm import client as warm_client, common as warm_common

    monkeypatch.setenv(warm_common.ENABLE_ENV, "1")
    trainer = CustomTrainer(func=jobs.use_package, func_args={"module": "tjpkg_a"}, packages_to_install=["tjpkg-a==1.0"], pip_index_urls=[index["main"]])
    try:
        first = client.train(trainer)
        client.wait_for_job_completion(first, timeout=180)
        env_prefix = client.get_job_result(first).return_value["prefix"]
        (cold,) = [e for e in client.get_job_events(first) if e.reason in ("WarmStart", "ColdStart")]
        assert cold.reason == "ColdStart" and "a warm process for this environment is starting" in cold.message, cold.message

        def env_server():
            return next((i for i in warm_client.list_servers(home) if i.venv and Path(i.venv) == Path(env_prefix)), None)

        deadline = time.monotonic() + 180
        while (info := env_server()) is None or info.state != "ready":
            assert time.monotonic() < deadline, f"the environment's warm process never became ready: {info}"
            assert info is None or info.state in ("starting", "ready"), info
            time.sleep(0.2)
        assert Path(info.python).is_relative_to(env_prefix)  # the environment's own interpreter

        second = client.train(trainer)
        client.wait_for_job_completion(second, timeout=120)
        value = client.get_job_result(second).return_value
        assert value["value"] == "a1" and value["prefix"] == env_prefix and Path(value["file"]).is_relative_to(env_prefix)
        (warm,) = [e for e in client.get_job_events(second) if e.reason in ("WarmStart", "ColdStart")]
        assert warm.reason == "WarmStart" and warm.data["warm_pid"] == info.pid, warm.message
    finally:
        warm_client.stop_servers(home, wait=15)


def test_extra_index_and_a_newer_version_of_a_package(client, home, index):
    trainer = CustomTrainer(
        func=jobs.use_package,
        func_args={"module": "tjpkg_b"},
        packages_to_install=["tjpkg-a==2.0", "tjpkg-b"],
        pip_index_urls=[index["main"], index["extra"]],
    )
    job = client.train(trainer)
    client.wait_for_job_completion(job, timeout=180)
    value = client.get_job_result(job).return_value
    assert value["value"] == "b"  # from the extra index
    assert "a2" in (envs._site_packages_of(Path(value["prefix"])) / "tjpkg_a" / "__init__.py").read_text()
    ready = [e for e in client.get_job_events(job) if e.reason == "EnvironmentReady"][0]
    assert ready.data["index_url"] == index["main"] and ready.data["extra_index_urls"] == [index["extra"]]


def test_failing_requirement_fails_the_job_with_the_installers_message(client, home, index):
    job = client.train(CustomTrainer(func=jobs.quick_value, packages_to_install=["tjpkg-missing"], pip_index_urls=[index["main"]]))
    with pytest.raises(JobFailedError) as info:
        client.wait_for_job_completion(job, timeout=120)
    text = str(info.value)
    assert "PackageInstallError" in text and "tjpkg-missing" in text
    assert "was not found in the package registry" in text  # uv's own words
    assert "Traceback" not in text  # an install failure is not a supervisor crash
    j = client.get_job(job)
    assert j.status == "Failed" and "tjpkg-missing" in j.message
    assert not any(e.reason == "Started" for e in client.get_job_events(job))
    assert _entries(home) == []  # no half-built entry, no leftover build folder
    assert envcache.list_envs(home) == []


def test_two_concurrent_jobs_build_once(client, home, index):
    trainer = CustomTrainer(func=jobs.use_package, func_args={"module": "tjpkg_b"}, packages_to_install=["tjpkg-b==1.0"], pip_index_urls=[index["extra"]])
    a, b = client.train(trainer), client.train(trainer)
    for j in (a, b):
        client.wait_for_job_completion(j, timeout=180)
    prefixes = {client.get_job_result(j).return_value["prefix"] for j in (a, b)}
    assert len(prefixes) == 1
    installs = [e for j in (a, b) for e in client.get_job_events(j) if e.reason == "InstallingPackages"]
    assert len(installs) == 1
    ready = sorted(e.data["cached"] for j in (a, b) for e in client.get_job_events(j) if e.reason == "EnvironmentReady")
    assert ready == [False, True]
    assert len(_entries(home)) == 1


def _ensure_in_process(home: str, index_url: str, barrier, results) -> None:
    import io

    plan = envplan.plan_for(["tjpkg-a==1.0"], [index_url], pip=envplan.PipSettings())
    log = io.StringIO()
    barrier.wait()
    path, cached = envs.ensure_env(Path(home), plan, log)
    results.put((str(path), cached, log.getvalue().count("building environment")))


def test_concurrent_builders_of_one_environment_build_it_once(tmp_path, index):
    """Two processes ask for the same environment at the same instant: one builds, the other waits for it."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    ps = [ctx.Process(target=_ensure_in_process, args=(str(tmp_path / "h"), index["main"], barrier, results)) for _ in range(2)]
    for p in ps:
        p.start()
    got = [results.get(timeout=120) for _ in ps]
    for p in ps:
        p.join(timeout=30)
    assert len({path for path, _, _ in got}) == 1
    assert sorted(cached for _, cached, _ in got) == [False, True]
    assert sum(builds for _, _, builds in got) == 1


def test_list_and_prune(client, home, index, tmp_path):
    job = client.train(CustomTrainer(func=jobs.quick_value, packages_to_install=["tjpkg-b"], pip_index_urls=[index["extra"]]))
    client.wait_for_job_completion(job, timeout=180)
    (info,) = envcache.list_envs(home)
    assert info.requirements == ["tjpkg-b"] and info.index_url == index["extra"]
    assert info.size_bytes > 0 and not info.in_use and info.build_seconds > 0
    assert envcache.prune_envs(home, older_than=3600) == []  # used seconds ago
    # In use: a process holding the environment (as a running job's supervisor does) keeps it.
    plan = envplan.plan_for(["tjpkg-b"], [index["extra"]], pip=envplan.PipSettings())
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sys,io,time; from pathlib import Path; from trainjob.backends.local import envplan, envs; envs.ensure_env(Path({str(home)!r}), envplan.plan_for(['tjpkg-b'], [{index['extra']!r}], pip=envplan.PipSettings()), io.StringIO()); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert plan.key == info.key
        assert envcache.list_envs(home)[0].in_use
        assert envcache.prune_envs(home) == []
    finally:
        holder.kill()
        holder.wait()
    removed = envcache.prune_envs(home)
    assert [r.key for r in removed] == [info.key]
    assert envcache.list_envs(home) == [] and _entries(home) == []
    with pytest.raises(ValueError, match="older_than"):
        envcache.prune_envs(home, older_than=-1)


def test_prune_removes_what_a_killed_build_left(home):
    leftover = home / envs.ENVS_DIR / ".building-0123456789abcdef0123-4242"
    leftover.mkdir(parents=True)
    (leftover / "half").write_text("x")
    envcache.prune_envs(home)
    assert not leftover.exists()
