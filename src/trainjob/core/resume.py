"""Resume planning: what a resumed job takes from the job it resumes, and how.

A resumed job starts with a copy of its source job's workdir. Files inside a complete
``checkpoint-N`` folder are never written again (a resumed Trainer saves new, higher-numbered
ones), so they are shared as hard links, which saves the space and time of a copy. Everything
else (a partial checkpoint, final model files in ``output_dir`` that the new job overwrites in
place, logs, data) is copied, so the new job can never change the source job's files.

``plan_resume`` only reads the source tree; ``carry_workdir`` is the one place that writes, into
the new job's folder. Both backends call ``carry_workdir`` (local: the client, Ray: the driver).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from trainjob.checkpoints import is_complete


@dataclass(frozen=True)
class ResumePlan:
    """Paths relative to the source workdir, each carried one way."""

    dirs: tuple[Path, ...] = ()  # made afresh (mode 0700)
    links: tuple[Path, ...] = ()  # complete checkpoints: every file hard-linked
    copies: tuple[Path, ...] = ()  # files copied
    symlinks: tuple[Path, ...] = ()  # symlinks recreated as they are
    skipped: tuple[Path, ...] = ()  # neither file, folder nor symlink (a socket, a FIFO)


def plan_resume(src: Path) -> ResumePlan:
    """How to carry ``src`` (an ended job's workdir) into a new job's; empty if it does not exist."""
    dirs: list[Path] = []
    links: list[Path] = []
    copies: list[Path] = []
    symlinks: list[Path] = []
    skipped: list[Path] = []

    def walk(d: Path) -> None:
        for entry in sorted(d.iterdir()):
            rel = entry.relative_to(src)
            if entry.is_symlink():
                symlinks.append(rel)
            elif entry.is_dir():
                if is_complete(entry):
                    links.append(rel)
                else:
                    dirs.append(rel)
                    walk(entry)
            elif entry.is_file():
                copies.append(rel)
            else:
                skipped.append(rel)

    if src.is_dir():
        walk(src)
    return ResumePlan(tuple(dirs), tuple(links), tuple(copies), tuple(symlinks), tuple(skipped))


def carry_workdir(src: Path, dst: Path) -> ResumePlan:
    """Carry ``src`` into ``dst`` as ``plan_resume`` says; hard links fall back to copies (another filesystem)."""
    plan = plan_resume(src)

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    if not src.is_dir():
        return plan
    dst.mkdir(parents=True, exist_ok=True, mode=0o700)
    for rel in plan.dirs:
        (dst / rel).mkdir(parents=True, exist_ok=True, mode=0o700)
    for rel in plan.links:
        shutil.copytree(src / rel, dst / rel, copy_function=link, dirs_exist_ok=True, symlinks=True)
    for rel in plan.copies:
        shutil.copy2(src / rel, dst / rel)
    for rel in plan.symlinks:
        if not (dst / rel).exists() and not (dst / rel).is_symlink():
            os.symlink(os.readlink(src / rel), dst / rel)
    return plan
