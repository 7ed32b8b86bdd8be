"""What a client that reaches only the Jobs API hands a new job: one zip, uploaded as a Ray package.

A client with a GCS connection writes the job's record, signed payload, job key and secrets into
the GCS itself (``submit``). A client that reaches only the dashboard cannot: it packs them into a
zip and uploads it with the dashboard's package endpoint (``PUT /api/packages/gcs/<name>.zip``,
what Ray's SDK does for a ``working_dir``); the Ray job's entrypoint names it
(``driver JOB_ID --bundle gcs://<name>.zip``) and the driver, on the cluster, puts the contents
into the job's GCS keys as the client would have, then deletes the package.

The package is not part of the job's ``runtime_env``: Ray would unpack it on every node that runs
one of the job's workers (with the secrets). It is pinned for Ray's temporary-reference time
(``RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S``, 600 s by default) and Ray deletes it then
if the driver has not (a job stopped before its driver started leaves nothing behind). Who can
read it meanwhile: whoever reaches the GCS, who can read the job's keys anyway (docs/ray.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from typing import Any

from trainjob.backends.ray.state import KV, EventWriter, Keys, dumps

RECORD, PAYLOAD, SIGNING, SECRETS, CREATED = "record.json", "payload.bin", "signing.hex", "secrets.json", "created.txt"


# ---- client side ---------------------------------------------------------------------------------
def pack(record: dict[str, Any], signed_payload: bytes | None, job_key_hex: str, secrets_json: str | None, created: str) -> bytes:
    """The zip the driver unpacks (``load``)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(RECORD, dumps(record))
        z.writestr(SIGNING, job_key_hex)
        z.writestr(CREATED, created)
        if signed_payload is not None:
            z.writestr(PAYLOAD, signed_payload)
        if secrets_json:
            z.writestr(SECRETS, secrets_json)
    return buf.getvalue()


def package_uri(data: bytes) -> str:
    """Ray's name for an uploaded package (``gcs://_ray_pkg_<hash>.zip``); the hash covers the job key, so it is the job's alone."""
    return f"gcs://_ray_pkg_{hashlib.sha1(data).hexdigest()}.zip"  # noqa: S324 - a name, as Ray's own packages are named


def upload(api, data: bytes) -> str:
    """Upload ``data`` through the dashboard; the package's URI."""
    uri = package_uri(data)
    name = uri.removeprefix("gcs://")
    try:
        api.call_raw("GET", f"/api/packages/gcs/{name}")  # pins it for Ray's temporary-reference time (404: not there yet)
    except Exception:  # noqa: BLE001 - only the pin; the upload below says whether the dashboard takes packages
        pass
    api.call_raw("PUT", f"/api/packages/gcs/{name}", data, content_type="application/octet-stream")
    return uri


# ---- driver side ---------------------------------------------------------------------------------
class BundleError(RuntimeError):
    pass


def load(kv: KV, job_id: str, uri: str) -> None:
    """Put the bundle's contents into the job's GCS keys (first writer wins, as the client's writes), then delete the package."""
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get

    raw = _internal_kv_get(uri)
    keys = Keys(job_id)
    if raw is None:
        if kv.get(keys.job) is not None:
            return  # a second start of this driver (Ray restarted it): the keys are there
        raise BundleError(
            f"job {job_id}: its submission package {uri} is gone from the cluster (Ray deletes an unused package "
            "RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S, 600 s by default, after upload): submit the job again"
        )
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        names = set(z.namelist())
        record = json.loads(z.read(RECORD))
        if record.get("id") != job_id:
            raise BundleError(f"the submission package {uri} is for job {record.get('id')!r}, not {job_id!r}")
        if not kv.claim(keys.job, z.read(RECORD)):
            if kv.get(keys.job) != z.read(RECORD):
                raise BundleError(f"job {job_id} already has another record in the Ray GCS (a job of that name was never deleted)")
        from trainjob.backends.ray.integrity import signing_key_name

        kv.claim(signing_key_name(keys), z.read(SIGNING))
        if PAYLOAD in names:
            kv.put(keys.payload, z.read(PAYLOAD))
        if SECRETS in names:
            kv.put(keys.secrets, z.read(SECRETS))
        if not kv.keys(keys.events()):
            event = EventWriter(kv, keys, "cli")
            event.write({"time": float(record.get("created_at") or time.time()), "reason": "Created", "message": z.read(CREATED).decode(), "data": {}, "attempt": None})
    _internal_kv_del(uri)
