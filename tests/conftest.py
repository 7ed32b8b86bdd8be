"""Shared fixtures: every test gets its own TRAINJOB_HOME, and no test leaves a process behind."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/jobs.py: training functions used by tests

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Warm start is tested in test_warm.py; elsewhere a warm process per test home would outlive its test.
os.environ.setdefault("TRAINJOB_WARM_START", "0")


# The longest test files, started first: with ``-n 2 --dist loadfile`` (scripts/test.sh) one worker
# takes them while the other works through the rest, instead of both waiting on them at the end.
LONGEST_FIRST = ("test_ray.py", "test_tracking.py", "test_fault_tolerance.py", "test_hangs.py", "test_store_faults.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file unchanged


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh trainjob home for this test (store + job folders)."""
    h = tmp_path / "tjhome"
    monkeypatch.setenv("TRAINJOB_HOME", str(h))
    return h


@pytest.fixture
def client(home):
    from trainjob import TrainerClient

    c = TrainerClient()
    yield c
    # End anything a failed test left running, so later tests (and CI) see a quiet machine.
    for job in c.list_jobs():
        if not job.status.is_terminal:
            c.delete_job(job.id)


def descendants() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def job_processes(job_dir: Path) -> list[psutil.Process]:
    """Every live process whose command line or working directory points into a job's folder."""
    found = []
    needle = str(job_dir)
    for p in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if needle in " ".join(p.info["cmdline"] or []) or (p.info["cwd"] or "").startswith(needle):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_until(predicate, timeout: float = 120, interval: float = 0.2, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy (returned); fail the test after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
