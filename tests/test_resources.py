"""Resource requests: what each accepted form means, what a job costs the local scheduler, and
where a memory limit can be enforced. Pure functions; the rejections are in test_validation.py."""

from __future__ import annotations

import os

import pytest

from trainjob.backends.local import memlimit
from trainjob.core.spec import JobSpec
from trainjob.backends.local.placement import Request
from trainjob.resources import Resources, local_capacity, local_cpu_ids, parse_cpu, parse_memory, parse_resources

GI, MI = 2**30, 2**20


@pytest.mark.parametrize(
    "given, cores",
    [(2, 2.0), (1.5, 1.5), ("2", 2.0), ("500m", 0.5), ("1500m", 1.5), ("0.25", 0.25), (" 3 ", 3.0), ("1e1", 10.0)],
)
def test_cpu_forms(given, cores):
    assert parse_cpu(given) == cores


@pytest.mark.parametrize(
    "given, nbytes",
    [
        ("16Gi", 16 * GI),
        ("16G", 16 * 10**9),
        ("512Mi", 512 * MI),
        ("512M", 512 * 10**6),
        ("1.5Gi", int(1.5 * GI)),
        ("64Ki", 64 * 1024),
        ("1Ti", 2**40),
        (17179869184, 16 * GI),
        ("1000", 1000),
        (2.5e9, 2_500_000_000),
    ],
)
def test_memory_forms(given, nbytes):
    assert parse_memory(given) == nbytes


@pytest.mark.parametrize(
    "spec, expected",
    [
        (None, Resources()),
        ({}, Resources()),
        ({"cpu": 4, "memory": "16Gi", "gpu": 1}, Resources(4.0, 16 * GI, 1)),
        ({"nvidia.com/gpu": 2}, Resources(gpu=2)),
        ({"amd.com/gpu": "1"}, Resources(gpu=1)),
        ({"cpus": "250m", "mem": "1G", "gpus": 0}, Resources(0.25, 10**9, 0)),
    ],
)
def test_resources_per_node_forms(spec, expected):
    parsed, problems = parse_resources(spec)
    assert problems == [] and parsed == expected


@pytest.mark.parametrize(
    "resources, nodes, procs, expected",
    [
        ({"cpu": None, "memory": None, "gpu": 0}, 1, 1, Request(1, 1, 0, 0, 0)),  # asks nothing: costs nothing
        ({"cpu": 0.5, "memory": None, "gpu": 0}, 1, 1, Request(1, 1, 1, 0, 0)),  # a fraction rounds up to a core
        ({"cpu": 2.0, "memory": GI, "gpu": 0}, 2, 1, Request(2, 1, 2, GI, 0)),
        ({"cpu": 1.01, "memory": None, "gpu": 2}, 1, 2, Request(1, 2, 2, 0, 2)),
    ],
)
def test_what_a_job_costs(resources, nodes, procs, expected):
    req = Request.from_spec(JobSpec.from_dict({"resources": resources, "num_nodes": nodes, "procs_per_node": procs}))
    assert req == expected
    assert req.is_empty == (expected == Request(nodes, procs))


def test_machine_totals_are_this_process_view():
    cap = local_capacity()
    assert cap.cpus == len(local_cpu_ids()) == len(os.sched_getaffinity(0))
    assert cap.memory > 0


# ---- where a memory cgroup can be made (pure: /proc texts in, folder out) ---------------------
V1_MOUNTS = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
V2_MOUNTS = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def test_cgroup_v1_is_found_under_our_own_cgroup(tmp_path, monkeypatch):
    own = tmp_path / "memory" / "session-1"
    own.mkdir(parents=True)
    mounts = V1_MOUNTS.replace("/sys/fs/cgroup/memory", str(tmp_path / "memory"))
    assert memlimit.find_cgroup_base("4:memory:/session-1\n0::/\n", mounts) == (memlimit.CGROUP_V1, str(own))
    # Our cgroup not visible in the mount: the hierarchy's root.
    assert memlimit.find_cgroup_base("4:memory:/elsewhere\n", mounts) == (memlimit.CGROUP_V1, str(tmp_path / "memory"))
    assert memlimit.find_cgroup_base("4:memory:/session-1\n", mounts, writable=lambda p: False) is None


def test_cgroup_v2_needs_a_delegated_memory_controller(tmp_path):
    root = tmp_path / "cg"
    leaf = root / "user.slice" / "app.scope"
    leaf.mkdir(parents=True)
    mounts = V2_MOUNTS.replace("/sys/fs/cgroup", str(root))
    (leaf / "cgroup.subtree_control").write_text("")
    (leaf.parent / "cgroup.subtree_control").write_text("cpu io\n")
    assert memlimit.find_cgroup_base("0::/user.slice/app.scope\n", mounts) is None  # memory not delegated
    (leaf.parent / "cgroup.subtree_control").write_text("cpu memory io\n")
    assert memlimit.find_cgroup_base("0::/user.slice/app.scope\n", mounts) == (memlimit.CGROUP_V2, str(leaf.parent))


def test_enforcement_can_be_chosen(monkeypatch):
    assert memlimit.detect_mode({memlimit.MODE_ENV: "watchdog"})[0] == memlimit.WATCHDOG
    assert memlimit.detect_mode({memlimit.MODE_ENV: "off"})[0] == memlimit.OFF
    with pytest.raises(ValueError, match="auto, cgroup, watchdog, off"):
        memlimit.detect_mode({memlimit.MODE_ENV: "rlimit"})
