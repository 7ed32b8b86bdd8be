"""Kubeflow Trainer SDK code runs unchanged on trainjob (issue 13), on the local backend and on Ray.

The test bodies use only the public API of ``kubeflow.trainer`` (0.5.0), in the calling style of
Kubeflow's own documentation: runtimes, ``train(runtime=..., trainer=CustomTrainer(...),
options=[Name(...), Labels(...)])``, logs and events by ``name=``, waiting on a complete, a
failed and a timed-out job, and delete. To run them on Kubeflow, change only the imports:

    from trainjob import CustomTrainer, TrainerClient       -> from kubeflow.trainer import ...
    from trainjob.options import Labels, Name, ...          -> from kubeflow.trainer.options import ...

The ``client`` fixture is the one place that names a trainjob backend (Kubeflow's
``TrainerClient(backend_config)`` takes its own configs).
"""

from __future__ import annotations

import pytest

import ray_cluster
from trainjob import CustomTrainer, TrainerClient
from trainjob.options import ActiveDeadlineSeconds, Labels, Name

pytestmark = pytest.mark.slow
WAIT = 240  # seconds: a Ray job's workers take 10-20 s to start on this machine


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pytest.importorskip("ray")
    c = ray_cluster.start_loopback(tmp_path_factory.mktemp("rayhome"))
    yield c
    c.stop()


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.ray)])
def kf_client(request):
    """Kubeflow's ``TrainerClient``: trainjob's local backend, or a real local Ray cluster."""
    if request.param == "local":
        request.getfixturevalue("home")
        c = TrainerClient()
    else:
        c = TrainerClient(request.getfixturevalue("cluster").config())
    yield c
    for job in c.list_jobs():
        if job.status not in ("Complete", "Failed", "Stopped"):
            c.delete_job(job.name)


# ---- the training functions (Kubeflow's examples define them in the notebook) ---------------
def train_hello(greeting: str, steps: int):
    import os

    print(f"{greeting} from rank {os.environ.get('RANK', '0')} of {os.environ.get('WORLD_SIZE', '1')}")
    for step in range(steps):
        print(f"step={step}")


def train_broken():
    raise ValueError("the learning rate is negative")


def train_forever():
    import time

    time.sleep(600)


# ---- Kubeflow's calling code -----------------------------------------------------------------
def test_runtimes(kf_client):
    client = kf_client
    runtimes = client.list_runtimes()
    torch_runtime = None
    for runtime in runtimes:
        if runtime.name == "torch-distributed":
            torch_runtime = runtime
    assert torch_runtime is not None, [r.name for r in runtimes]
    runtime = client.get_runtime("torch-distributed")
    assert runtime.name == "torch-distributed" and runtime.trainer.framework == "torch"
    assert runtime.trainer.num_nodes == 1 and runtime.trainer.device in ("cpu", "gpu") and int(runtime.trainer.device_count) >= 1
    assert runtime.trainer.trainer_type.value == "CustomTrainer" and runtime.kind.value == "TrainingRuntime"
    packages = client.get_runtime_packages(runtime)
    assert any(p.lower().startswith("torch==") for p in packages), packages[:20]
    with pytest.raises(ValueError, match="torch-distributed"):
        client.get_runtime("deepspeed-distributed")
    with pytest.raises(ValueError, match="torch-distributed"):
        client.train(runtime="deepspeed-distributed", trainer=CustomTrainer(func=train_hello))


def test_named_job_logs_events_list_delete(kf_client):
    client = kf_client
    torch_runtime = client.get_runtime("torch-distributed")
    job_name = client.train(
        runtime=torch_runtime,
        trainer=CustomTrainer(func=train_hello, func_args={"greeting": "hello", "steps": 3}, num_nodes=1),
        options=[Name("kf-hello"), Labels({"team": "nlp"})],
    )
    assert job_name == "kf-hello"
    job = client.wait_for_job_status(name=job_name, status={"Complete"}, timeout=WAIT, polling_interval=1)
    assert job.name == "kf-hello" and job.status == "Complete" and job.num_nodes == 1
    assert job.runtime.name == "torch-distributed" and job.creation_timestamp is not None
    assert [s.name for s in job.steps] == ["node-0"] and job.steps[0].pod_name and job.steps[0].status == "Complete"

    logs = list(client.get_job_logs(name=job_name))
    assert "hello from rank 0 of 1" in "\n".join(logs) and any("step=2" in line for line in logs), logs[-20:]
    events = client.get_job_events(name=job_name)
    assert events and all(e.involved_object_name == job_name and e.involved_object_kind and e.event_time for e in events)
    reasons = [e.reason for e in events]
    assert "Created" in reasons and reasons[-1] in ("Completed", "Complete"), reasons

    assert job_name in [j.name for j in client.list_jobs()]
    assert job_name in [j.name for j in client.list_jobs(runtime=torch_runtime)]
    assert client.get_job(name=job_name).name == job_name
    with pytest.raises(ValueError, match="kf-hello"):  # a name in use, as on Kubernetes
        client.train(trainer=CustomTrainer(func=train_hello, func_args={"greeting": "again", "steps": 1}), options=[Name("kf-hello")])
    with pytest.raises(ValueError, match="DNS-1035"):
        client.train(trainer=CustomTrainer(func=train_hello), options=[Name("Not_A_Name")])

    client.delete_job(name=job_name)
    assert job_name not in [j.name for j in client.list_jobs()]
    with pytest.raises(RuntimeError):
        client.get_job(name=job_name)


def test_wait_on_failed_and_timed_out_jobs(kf_client):
    client = kf_client
    broken = client.train(trainer=CustomTrainer(func=train_broken))
    forever = client.train(trainer=CustomTrainer(func=train_forever))
    assert broken != forever and len(broken) == 12
    with pytest.raises(RuntimeError, match="the learning rate is negative"):
        client.wait_for_job_status(name=broken, timeout=WAIT, polling_interval=1)
    assert client.get_job(name=broken).status == "Failed"
    client.wait_for_job_status(name=forever, status={"Running"}, timeout=WAIT, polling_interval=1)
    with pytest.raises(TimeoutError):
        client.wait_for_job_status(name=forever, status={"Complete"}, timeout=3, polling_interval=1)
    client.delete_job(name=forever)
    client.delete_job(name=broken)
    assert client.list_jobs() == []


def test_active_deadline_seconds(kf_client):
    client = kf_client
    job_name = client.train(trainer=CustomTrainer(func=train_forever), options=[ActiveDeadlineSeconds(5)])
    with pytest.raises(RuntimeError):
        client.wait_for_job_status(name=job_name, timeout=WAIT, polling_interval=1)
    job = client.get_job(name=job_name)
    assert job.status == "Failed"
    assert "DeadlineExceeded" in [e.reason for e in client.get_job_events(name=job_name)]
    client.delete_job(name=job_name)
