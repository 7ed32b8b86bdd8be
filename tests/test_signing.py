"""Signed envelopes (``trainjob.core.signing``) and JSON-first return values (issue 15): no Ray here.

The Ray tests (tests/test_ray.py) check the same rules end to end: a forged return value in the
cluster's GCS is refused, and a client from another home reads JSON values but unpickles nothing.
"""

from __future__ import annotations

import os
import stat

import pytest

from trainjob.core import signing
from trainjob.core.records import dump_return_value, is_json_return_value, is_plain, load_return_value


def test_client_key_is_private_made_once_and_refused_when_shared(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINJOB_HOME", str(tmp_path / "home"))
    key = signing.client_key()
    path = tmp_path / "home" / signing.KEY_FILE
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert signing.client_key() == key  # the same key on every later use
    assert signing.client_key(tmp_path / "other") != key  # another home, another key
    os.chmod(path, 0o644)
    with pytest.raises(signing.SignatureError, match="chmod 600"):
        signing.client_key()
    os.chmod(path, 0o600)
    path.write_text("not a key")
    with pytest.raises(signing.SignatureError, match="not a trainjob signing key"):
        signing.client_key()


def test_envelopes_verify_only_with_the_key_purpose_and_job_they_were_signed_for():
    key, other = b"k" * 32, b"o" * 32
    jk = signing.job_key(key, "job-a")
    assert jk != signing.job_key(key, "job-b") and jk != signing.job_key(other, "job-a")
    blob = signing.sign(jk, "return", "job-a", b"data")
    assert signing.verify(jk, "return", "job-a", blob) == b"data"
    for k, purpose, job in [(signing.job_key(other, "job-a"), "return", "job-a"), (jk, "payload", "job-a"), (jk, "return", "job-b")]:
        with pytest.raises(signing.SignatureError, match="does not match its signature"):
            signing.verify(k, purpose, job, blob)
    tampered = blob[:-1] + b"X"
    with pytest.raises(signing.SignatureError, match="job job-a"):
        signing.verify(jk, "return", "job-a", tampered)
    with pytest.raises(signing.SignatureError, match="not signed"):
        signing.verify(jk, "return", "job-a", b"\x80\x05plain pickle")
    assert signing.unsigned_part(blob) == b"data" and signing.fingerprint(key) != signing.fingerprint(other)


def test_plain_return_values_are_json_and_the_rest_pickled():
    import collections

    for value in [{"loss": 0.5, "steps": [1, 2], "ok": True, "name": None}, 3, "x", [], 2.5]:
        data = dump_return_value(value)
        assert is_json_return_value(data) and load_return_value(data) == value
    Point = collections.namedtuple("Point", "x y")
    for value in [(1, 2), {1: "int key"}, float("nan"), Point(1, 2), {"a": {1, 2}}]:
        assert not is_plain(value)
        data = dump_return_value(value)
        assert not is_json_return_value(data)
    assert load_return_value(dump_return_value(Point(1, 2))) == Point(1, 2)
    assert load_return_value(dump_return_value({1: "int key"})) == {1: "int key"}
