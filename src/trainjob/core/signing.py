"""Signed bytes: what a client stores in a shared place and later trusts (payloads, return values).

A Ray cluster's key-value store is writable by every user of the cluster, and a client that
unpickles a value from there would run whatever code another user put in it. So every pickled
thing that crosses the cluster travels in an envelope signed with HMAC-SHA256:

- the **client key** is 32 random bytes in ``<TRAINJOB_HOME>/signing.key`` (mode 0600, made on
  first use); it never leaves the submitter's machine;
- each job gets its own **job key**, ``HMAC(client key, "job:" + job id)``, which the client
  gives the job (through the job's secret channel); the job signs its return value with it;
- an envelope names its purpose and job id inside the signed bytes, so a value cannot be moved
  from one job, or one purpose, to another.

A client recomputes the job key from its own client key: a job submitted from another home (or a
value forged by another cluster user) does not verify there. The threat model is in docs/ray.md.
This module does no I/O except ``client_key``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from trainjob.errors import TrainJobError

MAGIC = b"TJS1"
KEY_FILE = "signing.key"
_MAC = 32


class SignatureError(TrainJobError, RuntimeError):
    """Signed bytes did not verify (forged, corrupted, or signed with another client's key), or
    this client holds no key that could verify them."""


def client_key(home: str | os.PathLike | None = None) -> bytes:
    """This client's signing key, ``<home>/signing.key`` (default ``$TRAINJOB_HOME``), made 0600 on first use.

    Safe to call from several processes at once: the file is created exclusively, a loser reads
    the winner's key. A key file that is readable by others is refused (it would let them forge).
    """
    from trainjob import contract

    folder = Path(home).expanduser() if home is not None else contract.home()
    path = folder / KEY_FILE
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32).hex().encode())
    if path.stat().st_mode & 0o077:
        raise SignatureError(f"{path} is readable by other users (mode {path.stat().st_mode & 0o777:o}); make it private: chmod 600 {path}")
    raw = path.read_bytes().strip()
    try:
        key = bytes.fromhex(raw.decode())
    except ValueError:
        key = b""
    if len(key) < 16:
        raise SignatureError(f"{path} is not a trainjob signing key (64 hex digits); remove it to make a new one")
    return key


def job_key(key: bytes, job_id: str) -> bytes:
    """The key of one job, derived from the client key (the job gets this, never the client key)."""
    return hmac.new(key, b"job:" + job_id.encode(), hashlib.sha256).digest()


def fingerprint(key: bytes) -> str:
    """A short public name of a client key (kept in job records: "signed by the key named ...")."""
    return hashlib.sha256(b"trainjob-key-id:" + key).hexdigest()[:16]


def sign(key: bytes, purpose: str, job_id: str, data: bytes) -> bytes:
    """``data`` in an envelope signed with ``key`` for ``purpose`` (``"payload"``, ``"return"``) of ``job_id``."""
    return MAGIC + _mac(key, purpose, job_id, data) + data


def is_signed(blob: bytes) -> bool:
    return blob[: len(MAGIC)] == MAGIC and len(blob) >= len(MAGIC) + _MAC


def unsigned_part(blob: bytes) -> bytes:
    """The data inside an envelope, NOT verified: only for data that is safe to parse untrusted (JSON)."""
    return blob[len(MAGIC) + _MAC :] if is_signed(blob) else blob


def verify(key: bytes, purpose: str, job_id: str, blob: bytes) -> bytes:
    """The data inside ``blob`` if ``key`` signed it for ``purpose`` of ``job_id``; else ``SignatureError`` naming the job."""
    if not is_signed(blob):
        raise SignatureError(f"the {purpose} of job {job_id} is not signed: it was not written by trainjob for this job; refusing to load it")
    mac, data = blob[len(MAGIC) : len(MAGIC) + _MAC], blob[len(MAGIC) + _MAC :]
    if not hmac.compare_digest(mac, _mac(key, purpose, job_id, data)):
        raise SignatureError(
            f"the {purpose} of job {job_id} does not match its signature: it was changed by someone without the job's key "
            "(another user of the cluster, or a corruption); refusing to load it"
        )
    return data


def _mac(key: bytes, purpose: str, job_id: str, data: bytes) -> bytes:
    h = hmac.new(key, f"{purpose}\0{job_id}\0".encode(), hashlib.sha256)
    h.update(data)
    return h.digest()
