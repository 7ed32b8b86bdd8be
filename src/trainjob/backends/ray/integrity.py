"""Signed payloads and return values on Ray (the policy; the envelope is ``trainjob.core.signing``).

Ray's GCS key-value store is writable by every user of the cluster. The client signs a job's
payload with the job's key and gives the job that key in ``<id>/signing``; the driver and the
ranks refuse a payload that does not verify, and rank 0 signs the return value with it. The
client recomputes the job key from the client key in its own ``TRAINJOB_HOME`` and unpickles
only a return value that verifies: a value another cluster user wrote (even with a job key of
their own) does not, and a client from another home cannot verify it at all. Plain-JSON return
values are readable by every client (JSON runs no code); see docs/ray.md for the threat model.

Which process runs what: ``sign_payload``/``read_return_value`` in the client; ``job_key_of``,
``verified_payload`` and ``signed_return_value`` in the driver and the ranks.
"""

from __future__ import annotations

from typing import Any

from trainjob.backends.ray.state import KV, Keys
from trainjob.core import signing
from trainjob.core.records import dump_return_value, is_json_return_value, load_return_value

RETURN = "return value"  # the purposes signed (and named in errors)
PAYLOAD = "payload"


def signing_key_name(keys: Keys) -> str:
    """``<id>/signing``: the job key, hex (under the job's prefix, so ``delete_job`` removes it)."""
    return f"{keys.job_id}/signing"


# ---- client side -------------------------------------------------------------------------------
def client_identity() -> tuple[bytes, str]:
    """This client's key (``$TRAINJOB_HOME/signing.key``, made on first use) and its fingerprint."""
    key = signing.client_key()
    return key, signing.fingerprint(key)


def sign_payload(client_key: bytes, job_id: str, payload: bytes) -> bytes:
    return signing.sign(signing.job_key(client_key, job_id), PAYLOAD, job_id, payload)


def give_job_key(kv: KV, keys: Keys, client_key: bytes) -> None:
    """Store the job's key for its driver and ranks (put-if-absent: the first writer wins)."""
    kv.claim(signing_key_name(keys), signing.job_key(client_key, keys.job_id).hex())


def read_return_value(raw: bytes | None, job_id: str, record: dict[str, Any]) -> Any:
    """The job's return value as this client may load it; ``SignatureError`` if it may not.

    Verified with this client's job key: a match is loaded (unpickled if pickled). A mismatch
    on a job this client signed (its key's fingerprint is the record's ``signer``) is a forgery
    and refused. A job signed by another client: a JSON value is returned (safe to parse, not
    proven), a pickled one refused.
    """
    if raw is None:
        return None
    key, mine = client_identity()
    try:
        return load_return_value(signing.verify(signing.job_key(key, job_id), RETURN, job_id, raw))
    except signing.SignatureError:
        if record.get("signer") == mine:
            raise
    data = signing.unsigned_part(raw)
    if is_json_return_value(data):
        return load_return_value(data)
    raise signing.SignatureError(
        f"the return value of job {job_id} is pickled and signed by another trainjob client (key {record.get('signer') or 'unknown'}, "
        f"this client's is {mine}): only the client holding that key (its TRAINJOB_HOME/{signing.KEY_FILE}) loads it; "
        "return plain JSON data (dicts, lists, str, numbers) to let every client read it"
    )


# ---- job side (driver, ranks) ------------------------------------------------------------------
def job_key_of(kv: KV, keys: Keys) -> bytes:
    raw = kv.get(signing_key_name(keys))
    if not raw:
        raise signing.SignatureError(f"job {keys.job_id} has no signing key in the Ray GCS ({signing_key_name(keys)}): it was not submitted by this trainjob version, or was deleted")
    return bytes.fromhex(raw.decode())


def verified_payload(kv: KV, keys: Keys) -> bytes | None:
    """The job's payload, verified with its key; None if there is none; ``SignatureError`` if it was changed."""
    raw = kv.get(keys.payload)
    if raw is None:
        return None
    return signing.verify(job_key_of(kv, keys), PAYLOAD, keys.job_id, raw)


def signed_return_value(kv: KV, keys: Keys, value: Any, max_bytes: int) -> bytes:
    """Rank 0's return value (JSON when plain, else pickled), signed with the job's key."""
    data = dump_return_value(value, max_bytes, "too large to keep in the Ray GCS")
    return signing.sign(job_key_of(kv, keys), RETURN, keys.job_id, data)
