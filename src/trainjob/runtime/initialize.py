"""Run one initializer step of a job: put a model or dataset in ``<workdir>/workspace/...``.

Runs in its own process, started by the job's supervisor before the ranks, with the job's Python
and environment (so ``HF_HOME``, ``HF_HUB_OFFLINE`` and the job's ``env`` apply); its output is
the step's log. ``python -m trainjob.runtime.initialize '<step json>' <workdir>``: exit 0 when the
files are in place; otherwise the error (the hub's own message) is the last line of the log and
the exit code is 1. See ``trainjob.initializers`` for the step's fields.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any


def run(step: dict[str, Any], workdir: Path) -> Path:
    """Fetch the step's source into ``workdir / step["target"]``; returns that folder."""
    target = workdir / step["target"]
    target.mkdir(parents=True, exist_ok=True)
    if step["source"] == "hf":
        source = _hub_snapshot(step)
    else:
        source = Path(step["path"])
    print(f"[{step['step']}] copying {source} -> {target}", flush=True)
    count = _link_or_copy(source, target, step.get("ignore_patterns") or [])
    print(f"[{step['step']}] {count} file(s) in place in {target}", flush=True)
    return target


def _hub_snapshot(step: dict[str, Any]) -> Path:
    """The repository's snapshot folder in the HF cache, downloaded unless already there.

    ``snapshot_download`` without ``local_dir`` honours ``HF_HUB_OFFLINE`` (the cache only) and
    shares the cache with every other job; the files are then linked into the job's folder.
    """
    from huggingface_hub import snapshot_download

    token = os.environ.get(step["token_env"]) if step.get("token_env") else None
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    print(f"[{step['step']}] {step['repo_type']} {step['repo_id']} from the HuggingFace Hub{' (offline: the local cache only)' if offline else ''}", flush=True)
    path = snapshot_download(
        repo_id=step["repo_id"],
        repo_type=step["repo_type"],
        revision=step.get("revision"),
        ignore_patterns=step.get("ignore_patterns") or None,
        token=token,
    )
    return Path(path)


def _link_or_copy(source: Path, target: Path, ignore: list[str]) -> int:
    """Hard-link (else copy) every file of ``source`` (a folder or one file) under ``target``."""
    from fnmatch import fnmatch

    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    count = 0
    for f in files:
        rel = Path(f.name) if source.is_file() else f.relative_to(source)
        if any(fnmatch(rel.name, pat) or fnmatch(str(rel), pat) for pat in ignore):
            continue
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        real = f.resolve()  # the HF cache's snapshot files are links to its blobs
        # Under a temporary name, then renamed: on Ray, the steps of several nodes may fill one
        # shared folder at once, and each file must appear whole, whichever writes last.
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.link(real, tmp)
        except OSError:
            shutil.copy2(real, tmp)
        os.replace(tmp, dest)
        tmp.unlink(missing_ok=True)  # rename() leaves both names when dest was already a link to the same file
        count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    step = json.loads(args[0])
    try:
        run(step, Path(args[1]))
    except Exception as e:  # noqa: BLE001 - any failure is reported the same way: its type and message, last
        print(f"[{step['step']}] failed: {type(e).__name__}: {e}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
