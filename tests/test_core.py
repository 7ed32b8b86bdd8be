"""The backend-neutral lifecycle core (``trainjob.core``): pure decisions, no jobs started."""

from __future__ import annotations

import json
import os
from pathlib import Path

from trainjob.core.resume import carry_workdir, plan_resume


def _checkpoint(root: Path, step: int, complete: bool) -> Path:
    ckpt = root / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"weights %d" % step)
    if complete:
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return ckpt


def test_resume_links_only_complete_checkpoints(tmp_path):
    src, dst = tmp_path / "old" / "workdir", tmp_path / "new" / "workdir"
    out = src / "output"
    _checkpoint(out, 5, complete=True)
    _checkpoint(out, 10, complete=False)
    (out / "model.safetensors").write_bytes(b"final")
    (src / "data.txt").write_text("data")
    os.symlink("data.txt", src / "alias")

    plan = plan_resume(src)
    assert plan.links == (Path("output/checkpoint-5"),)
    assert set(plan.copies) == {Path("data.txt"), Path("output/model.safetensors"), Path("output/checkpoint-10/model.safetensors")}
    assert plan.symlinks == (Path("alias"),)

    carry_workdir(src, dst)
    same = lambda rel: (src / rel).stat().st_ino == (dst / rel).stat().st_ino  # noqa: E731
    assert same("output/checkpoint-5/model.safetensors") and same("output/checkpoint-5/trainer_state.json")
    assert not same("output/checkpoint-10/model.safetensors") and not same("output/model.safetensors")
    assert os.readlink(dst / "alias") == "data.txt"
    for rel in ("output/checkpoint-10/model.safetensors", "output/model.safetensors"):
        with open(dst / rel, "r+b") as f:  # the new job overwrites in place
            f.write(b"NEW")
    assert (out / "checkpoint-10" / "model.safetensors").read_bytes() == b"weights 10" and (out / "model.safetensors").read_bytes() == b"final"


def test_resume_of_a_job_without_a_workdir_carries_nothing(tmp_path):
    assert carry_workdir(tmp_path / "missing", tmp_path / "dst") == plan_resume(tmp_path / "missing")
    assert not (tmp_path / "dst").exists()
