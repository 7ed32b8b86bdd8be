"""trainjob.options, names as identifiers, labels, commands, refused Kubeflow trainers (issue 13)."""

from __future__ import annotations

import sqlite3
import warnings

import pytest

from trainjob import BuiltinTrainer, CustomTrainer, CustomTrainerContainer, TransformersTrainer, ValidationError
from trainjob.options import ActiveDeadlineSeconds, Annotations, Labels, Name, RuntimePatch, TrainerArgs, TrainerCommand, apply_options


def noop():
    return None


@pytest.mark.parametrize("bad", ["", "Upper", "1st", "has_underscore", "ends-", "a" * 64, "dots.not.ok", 7, None])
def test_name_is_dns_1035(bad):
    with pytest.raises(ValueError, match="DNS-1035") as e:
        Name(bad)
    assert e.value.fields == ["Name"]


def test_name_limits_accept():
    assert Name("a").name == "a" and Name("a" * 63).name == "a" * 63 and Name("fine-tune-1").name == "fine-tune-1"


def test_labels_and_annotations_are_checked():
    Labels({"team": "nlp", "example.com/tier": "gold", "empty": ""})
    with pytest.raises(ValueError) as e:
        Labels({"team": "n l p", "bad key!": "x", "n": 3})
    assert e.value.fields == ["Labels['team']", "Labels['bad key!']", "Labels['n']"]
    Annotations({"note": "any text, even spaces: fine"})
    with pytest.raises(ValueError, match="a dict of str to str"):
        Annotations(["not", "a", "dict"])
    with pytest.raises(ValueError, match="an int >= 1"):
        ActiveDeadlineSeconds(0)


def test_options_that_do_not_apply_name_the_backend():
    with pytest.raises(ValueError) as e:
        apply_options([RuntimePatch(), "not-an-option"], CustomTrainer(func=noop), "local")
    msg = str(e.value)
    assert "the local backend" in msg and "kubernetes" in msg and "an option from trainjob.options" in msg
    assert e.value.fields == ["options[0]", "options[1]"]


def test_trainer_command_maps_onto_script_and_module(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    sub = apply_options([TrainerCommand(["python", str(script), "--lr", "1"]), Name("cmd")], None, "local")
    assert sub.trainer.script == str(script) and sub.trainer.script_args == ["--lr", "1"] and sub.name == "cmd"
    sub = apply_options([TrainerCommand(["python3", "-m", "pkg.train", "x"]), TrainerArgs(["--epochs", "2"])], None, "ray")
    assert sub.trainer.module == "pkg.train" and sub.trainer.script_args == ["x", "--epochs", "2"] and sub.trainer.script is None
    # TrainerArgs alone replace a script trainer's arguments; the deadline lands on the trainer
    sub = apply_options([TrainerArgs(["--b"]), ActiveDeadlineSeconds(30)], CustomTrainer(script=str(script), script_args=["--a"], num_nodes=2), "local")
    assert sub.trainer.script_args == ["--b"] and sub.trainer.num_nodes == 2 and sub.trainer.active_deadline_seconds == 30
    sub = apply_options([TrainerCommand(["bash", "-c", "echo $RANK"])], None, "local")
    assert (sub.trainer.command, sub.trainer.script_args, sub.trainer.entrypoint_kind) == ("bash", ["-c", "echo $RANK"], "command")
    for launcher in (["torchrun", "--nproc-per-node", "2", "train.py"], ["python", "-m", "torch.distributed.run", "x.py"], ["/usr/bin/accelerate", "launch"]):
        with pytest.raises(ValueError, match="trainjob starts the ranks itself"):
            TrainerCommand(launcher)
    with pytest.raises(ValueError, match="functions take func_args"):
        apply_options([TrainerCommand(["python", str(script)])], CustomTrainer(func=noop), "local")
    with pytest.raises(ValueError, match="TrainerArgs with a command"):
        apply_options([TrainerArgs(["--x"])], None, "local")


def test_refused_kubeflow_trainers_and_initializers(client):
    with pytest.raises(ValueError, match="runs no container images"):
        client.train(trainer=CustomTrainerContainer(image="pytorch/pytorch:2.5.1"))
    with pytest.raises(ValueError, match="no built-in \\(TorchTune\\) trainers"):
        client.train(trainer=BuiltinTrainer(config=object()))
    with pytest.raises(ValueError, match="Initializer\\(model="):
        client.train(initializer=object(), trainer=CustomTrainer(func=noop))
    from trainjob import HuggingFaceModelInitializer, Initializer
    from trainjob.initializers import plan

    init = Initializer(model=HuggingFaceModelInitializer(storage_uri="hf://org/name"))
    assert [s["step"] for s in plan(init, "ray")[0]] == ["model-initializer"]  # the Ray driver runs them too
    with pytest.raises(ValueError, match="None on the kubernetes backend"):
        plan(init, "kubernetes")
    with pytest.raises(ValueError, match="TrainerCommand"):
        client.train()
    with pytest.raises(ValueError, match="name= is the same as options"):
        client.train(CustomTrainer(func=noop), options=[Name("a")], name="b")
    assert client.list_jobs() == []


@pytest.mark.slow
def test_names_labels_and_the_legacy_calling_style(client, tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import sys\nprint('args', sys.argv[1:])\n")
    # trainjob's original style: the trainer first, name= as a keyword (an alias of Name)
    a = client.train(CustomTrainer(func=noop), name="legacy-a")
    with pytest.raises(ValueError, match="DNS-1035"):
        client.train(CustomTrainer(func=noop), name="Legacy A")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = client.train(
            trainer=CustomTrainer(None, None, "my/image:1", *[None] * 5, script=str(script)),
            options=[TrainerArgs(["--lr", "1"]), Labels({"team": "nlp"}), Annotations({"owner": "ana"})],
        )
    assert any("image='my/image:1'" in str(w.message) and "not used" in str(w.message) for w in caught), [str(w.message) for w in caught]
    c = client.train(trainer=CustomTrainer(func=noop), options=[Labels({"team": "cv"})])
    for job_name in (a, b, c):
        client.wait_for_job_status(job_name, timeout=120, polling_interval=0.2)
    assert a == "legacy-a" and client.get_job(a).id == client.get_job(a).name == "legacy-a"
    job = client.get_job(b)
    assert job.labels == {"team": "nlp"} and job.annotations == {"owner": "ana"} and job.spec["image"] == "my/image:1"
    assert "args ['--lr', '1']" in "\n".join(client.get_job_logs(b))
    assert [j.name for j in client.list_jobs(labels={"team": "nlp"})] == [b]
    assert [j.name for j in client.list_jobs(labels={"team": "cv"}, status="Complete")] == [c]
    assert client.list_jobs(labels={"team": "nlp", "owner": "ana"}) == []  # annotations are not labels
    # a deleted job's name is free again
    client.delete_job(a)
    assert client.train(CustomTrainer(func=noop), name="legacy-a") == "legacy-a"
    client.wait_for_job_status("legacy-a", timeout=120, polling_interval=0.2)


def test_stored_jobs_migrate_their_ids_become_names(tmp_path):
    """A store written before names were ids (schema v3) opens with name = id, the old name kept."""
    from trainjob.store import Store
    from trainjob.store.schema import MIGRATIONS

    path = tmp_path / "trainjob.db"
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:3]:
        conn.executescript(script)
    conn.execute("PRAGMA user_version = 3")
    insert = "INSERT INTO jobs (id, name, backend, status, created_at, num_nodes, procs_per_node, spec) VALUES (?, ?, 'local', 'Complete', 1.0, 1, 1, '{}')"
    conn.execute(insert, ("abcdefghijk1", "my old job"))
    conn.execute(insert, ("abcdefghijk2", "abcdefghijk2"))
    conn.commit()
    conn.close()
    store = Store(path)
    old, plain = store.get_job("abcdefghijk1"), store.get_job("abcdefghijk2")
    assert old.name == "abcdefghijk1" and old.annotations == {"trainjob/former-name": "my old job"}
    assert plain.name == "abcdefghijk2" and plain.annotations is None and plain.labels is None


@pytest.mark.slow
def test_trainer_command_runs_a_program_on_every_rank(client):
    """Kubeflow's pairing: a container trainer's command (the image is warned about, not used)."""
    with pytest.warns(UserWarning, match="image='img:1'"):
        ok = client.train(
            trainer=CustomTrainerContainer(image="img:1", num_nodes=2),
            options=[TrainerCommand(["bash", "-c", 'echo "rank=$RANK of $WORLD_SIZE master=$MASTER_ADDR in $(basename $PWD)" "$@"', "-"]), TrainerArgs(["--lr", "1"])],
        )
    failing = client.train(trainer=CustomTrainer(command="bash", script_args=["-c", "echo about to fail; exit 3"]))
    assert client.wait_for_job_status(ok, timeout=120, polling_interval=0.2).status == "Complete"
    job = client.get_job(ok)
    assert job.spec["entrypoint"] == "command" and job.spec["command"] == "bash" and job.num_nodes == 2
    assert "rank=0 of 2 master=127.0.0.1 in workdir --lr 1" in "\n".join(client.get_job_logs(ok, step="node-0"))
    assert "rank=1 of 2 master=127.0.0.1 in workdir --lr 1" in "\n".join(client.get_job_logs(ok, step="node-1"))
    with pytest.raises(RuntimeError, match="returned non-zero exit status 3"):
        client.wait_for_job_status(failing, timeout=120, polling_interval=0.2)
    assert "about to fail" in "\n".join(client.get_job_logs(failing))
    with pytest.raises(ValueError, match="cannot be instrumented"):
        TransformersTrainer(command="bash")
