"""The cache of package environments under ``$TRAINJOB_HOME/envs``: what is there
(``list_envs``, what ``trainjob envs ls`` shows) and removing what no running job uses
(``prune_envs``). How an environment is planned and built is in ``envs``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from trainjob.backends.local.envs import ENVS_DIR, LAST_USED_FILE, LOCKS_DIR, MARKER_FILE, is_complete
from trainjob.masking import mask_url


@dataclass(frozen=True)
class EnvInfo:
    """One cached environment, as ``list_envs`` reports it."""

    key: str
    path: Path
    requirements: list[str]
    index_url: str | None
    extra_index_urls: list[str]
    created_at: float
    last_used_at: float
    size_bytes: int
    in_use: bool
    build_seconds: float | None = None



def list_envs(home: str | os.PathLike) -> list[EnvInfo]:
    """The cached package environments under ``home/envs``, most recently used first."""
    root = Path(home) / ENVS_DIR
    out = []
    try:
        entries = sorted(root.iterdir())
    except FileNotFoundError:
        return []
    for path in entries:
        if path.name.startswith(".") or not is_complete(path):
            continue
        try:
            marker = json.loads((path / MARKER_FILE).read_text())
        except (OSError, ValueError):
            marker = {}
        created = float(marker.get("created_at") or (path / MARKER_FILE).stat().st_mtime)
        try:
            last_used = (path / LAST_USED_FILE).stat().st_mtime
        except OSError:
            last_used = created
        out.append(
            EnvInfo(
                key=path.name,
                path=path,
                # Masked again: a marker written before masking existed may hold credentials.
                requirements=[mask_url(r) for r in marker.get("requirements") or []],
                index_url=mask_url(marker["index_url"]) if marker.get("index_url") else None,
                extra_index_urls=[mask_url(u) for u in marker.get("extra_index_urls") or []],
                created_at=created,
                last_used_at=last_used,
                size_bytes=_size(path),
                in_use=_in_use(root, path.name),
                build_seconds=marker.get("build_seconds"),
            )
        )
    return sorted(out, key=lambda e: e.last_used_at, reverse=True)


def prune_envs(home: str | os.PathLike, older_than: float | timedelta | None = None) -> list[EnvInfo]:
    """Remove cached environments no running job uses; with ``older_than``, only those unused that long.

    ``older_than`` is seconds (or a timedelta) since an environment was last used by a job. Also
    removes what killed builds left behind. Returns the environments removed. Safe while jobs run:
    an environment in use (its job holds the shared lock) or being built is skipped.
    """
    if isinstance(older_than, timedelta):
        older_than = older_than.total_seconds()
    if older_than is not None and older_than < 0:
        raise ValueError(f"older_than={older_than!r}: a number of seconds >= 0, or None for all unused environments")
    root = Path(home) / ENVS_DIR
    now = time.time()
    removed = []
    for info in list_envs(home):
        if info.in_use or (older_than is not None and now - info.last_used_at < older_than):
            continue
        if _remove_if_unlocked(root, info.key, [info.path]):
            removed.append(info)
    for leftover in root.glob(".building-*") if root.is_dir() else []:
        key = leftover.name[len(".building-") :].rsplit("-", 1)[0]
        _remove_if_unlocked(root, key, [leftover])
    return removed


def _remove_if_unlocked(root: Path, key: str, paths: list[Path]) -> bool:
    lock_path = root / LOCKS_DIR / f"{key}.lock"
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = open(lock_path, "ab")
    except OSError:
        return False
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        for p in paths:
            # Rename first: the entry disappears at once, even if removing the files takes a while.
            trash = root / f".trash-{p.name}-{os.getpid()}"
            try:
                os.rename(p, trash)
            except OSError:
                continue
            shutil.rmtree(trash, ignore_errors=True)
        return True


def _in_use(root: Path, key: str) -> bool:
    try:
        with open(root / LOCKS_DIR / f"{key}.lock", "ab") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            return False
    except OSError:
        return False


def _size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total
