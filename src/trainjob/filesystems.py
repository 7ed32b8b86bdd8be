"""What trainjob needs to know about the disks it writes to: free space, full disks, network mounts.

Loaded by every kind of process (ranks, supervisors, the client, the CLI), so it imports nothing
heavy. Three concerns:

- **A full disk** is recognised from the error itself (``ENOSPC`` anywhere in the exception chain,
  or the wording libraries use when they hide the errno) and explained as "no space left on
  <mount point>" with the free space there.
- **Space reserves**: a small file allocated up front that a process deletes when a write fails
  with ``ENOSPC``, so that the few writes of its failure path (an error record, a final status)
  still fit. See :class:`Reserve`.
- **Network file systems**: SQLite's WAL mode needs a local disk (its locks and shared-memory
  index do not work across hosts), so the store warns when ``TRAINJOB_HOME`` is on one.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")

NEARLY_FULL_BYTES = 16 * 2**20
"""A file system with less free space than this is "full" when explaining a failure that did not say why."""

# How libraries word ENOSPC when they do not raise an OSError: CPython, Rust's std::io (safetensors,
# tokenizers), SQLite, the kernel's quota error.
_NO_SPACE = re.compile(r"No space left on device|os error 28|StorageFull|ENOSPC|database or disk is full|Disk quota exceeded|EDQUOT", re.IGNORECASE)
# Write failures that do not say why (torch.save: "unexpected pos 576 vs 534", "file write failed").
_WRITE_FAILED = re.compile(r"unexpected pos \d+ vs \d+|file write failed|iostream error|short write", re.IGNORECASE)

NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs", "lustre", "gpfs",
        "beegfs", "ocfs2", "gfs2", "davfs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs",
        "fuse.glusterfs", "fuse.cephfs", "fuse.rclone", "fuse.mountpoint-s3",
    }
)  # fmt: skip


# ---- full disks ------------------------------------------------------------------------------
def is_no_space(exc: BaseException) -> bool:
    """True if ``exc`` (or an exception it was raised from) is ENOSPC/EDQUOT, by errno or by its wording."""
    for e in exception_chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if _NO_SPACE.search(str(e)):
            return True
    return False


def says_no_space(text: str) -> bool:
    """True if an error message or traceback says a disk was full."""
    return bool(_NO_SPACE.search(text or ""))


def says_write_failed(text: str) -> bool:
    """True if an error message says a write failed without saying why (then the disk may be full)."""
    return bool(_WRITE_FAILED.search(text or ""))


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or during (``__cause__``, ``__context__``), each once."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out and len(out) < 20:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def oserror_details(exc: BaseException) -> dict[str, object]:
    """The errno and file name of the first ``OSError`` in the chain (for an error record), if any."""
    for e in exception_chain(exc):
        if isinstance(e, OSError) and e.errno is not None:
            out: dict[str, object] = {"errno": e.errno}
            if e.filename is not None:
                out["filename"] = os.fsdecode(e.filename)
            return out
    return {}


@dataclass(frozen=True)
class DiskUsage:
    """Space on the file system that holds ``path``."""

    path: str  # the mount point
    free: int  # bytes an unprivileged process may still write
    total: int

    @property
    def nearly_full(self) -> bool:
        return self.free < NEARLY_FULL_BYTES


def disk_usage(path: str | os.PathLike) -> DiskUsage | None:
    """Free and total space of the file system holding ``path`` (or its nearest existing parent)."""
    p = existing_ancestor(path)
    if p is None:
        return None
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return DiskUsage(str(mount_point(p)), st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


def fullest(paths: Iterable[str | os.PathLike | None]) -> DiskUsage | None:
    """Of the file systems holding ``paths``, the one with the least free space (None if none exists)."""
    usages = [u for u in (disk_usage(p) for p in paths if p) if u is not None]
    return min(usages, key=lambda u: u.free, default=None)


def existing_ancestor(path: str | os.PathLike) -> Path | None:
    p = Path(path).absolute()
    for candidate in (p, *p.parents):
        if candidate.exists():
            return candidate
    return None


def mount_point(path: str | os.PathLike) -> Path:
    """The mount point of the file system that holds ``path`` (which must exist)."""
    p = Path(os.path.realpath(path))
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


# ---- network file systems --------------------------------------------------------------------
def filesystem_type(path: str | os.PathLike, mountinfo: str | None = None) -> str | None:
    """The type (``ext4``, ``nfs4``, ``tmpfs``...) of the file system holding ``path``; None where unknown.

    Reads ``/proc/self/mountinfo`` (Linux) unless ``mountinfo`` is given: the mount whose mount
    point is the longest prefix of the real path wins (the last one mounted, for stacked mounts).
    """
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        mnt = _unescape(fields[4])
        inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
        if inside and (best is None or len(mnt) >= best[0]):
            best = (len(mnt), right.split()[0])
    return best[1] if best else None


def is_network_filesystem(fstype: str | None) -> bool:
    return fstype is not None and (fstype in NETWORK_FILESYSTEMS or fstype.split(".")[0] in {"nfs", "nfs4", "cifs", "smb3"})


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (\040 ...).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


# ---- space reserves --------------------------------------------------------------------------
class Reserve:
    """A pre-allocated file whose blocks a process gives back when the disk is full.

    ``ensure()`` allocates it (real blocks, ``posix_fallocate``) when there is room to spare;
    ``release()`` deletes it, so the next write has ``size`` bytes to use. Any process may release
    a shared reserve; it is made again by a later ``ensure()`` once the disk has room, never while
    it is nearly full (that would take back the space a failing process was just given).
    """

    def __init__(self, path: str | os.PathLike, size: int, keep_free: int = 2 * NEARLY_FULL_BYTES) -> None:
        self.path = Path(path)
        self.size = size
        self.keep_free = keep_free  # allocate only if this much is still free afterwards

    def ensure(self) -> bool:
        """Allocate the reserve if it is missing or short and there is room. True if it is in place."""
        try:
            st = self.path.stat()
            if st.st_blocks * 512 >= self.size:
                return True
        except FileNotFoundError:
            pass
        except OSError:
            return False
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return False
        if st.f_bavail * st.f_frsize < self.size + self.keep_free:
            return False
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError:
            return False
        try:
            _allocate(fd, self.size)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def refill(self, margin: int = 64 * 1024) -> int:
        """Take back what a write just after ``release()`` left free, up to ``size``, leaving ``margin``; bytes held.

        On a full disk the room a released reserve gives is open to every process: ranks still
        writing checkpoints would take it all, and the next write of the failure path would find
        none. Called right after that write, this keeps the rest for the writes after it.
        """
        try:
            st = os.statvfs(self.path.parent)
            held = self.path.stat().st_blocks * 512 if self.path.exists() else 0
        except OSError:
            return 0
        target = min(self.size, held + st.f_bavail * st.f_frsize - margin)
        if target <= held:
            return held
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError:
            return held
        try:
            _allocate(fd, target)
            return target
        except OSError:
            return held
        finally:
            os.close(fd)

    def release(self) -> bool:
        """Delete the reserve; True if it existed (there is now room for a few writes)."""
        try:
            self.path.unlink()
            return True
        except OSError:
            return False

    @property
    def in_place(self) -> bool:
        try:
            return self.path.stat().st_blocks * 512 >= self.size
        except OSError:
            return False


def _allocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except (AttributeError, OSError) as e:
        if isinstance(e, OSError) and e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", -1)):
            raise
        # No fallocate here (some file systems, macOS): write real zeros instead of leaving a hole.
        os.lseek(fd, 0, os.SEEK_SET)
        chunk = b"\0" * 65536
        for _ in range(0, size, len(chunk)):
            os.write(fd, chunk)
        os.fsync(fd)


def with_reserve(write: Callable[[], T], reserve: Reserve | None) -> T:
    """Run ``write``; if it fails for lack of space, release ``reserve`` and run it once more."""
    try:
        return write()
    except OSError as e:
        if reserve is None or not is_no_space(e) or not reserve.release():
            raise
    return write()
