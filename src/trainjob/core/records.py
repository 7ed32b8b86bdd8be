"""The records a rank leaves behind, in the same shape on every backend: its error and its return value.

Built inside ranks (``runtime.bootstrap``, the Ray worker) and read by clients; these functions
only build and parse bytes and dicts, the caller writes them where its backend keeps them.
"""

from __future__ import annotations

import json
import math
import pickle
import time
import traceback
from typing import Any, Iterable

from trainjob.core.hints import hint_for
from trainjob.masking import mask_text

TRACEBACK_LINES = 40


def error_record(rank: int | None, exc: BaseException, known: Iterable[str] = (), **extra: Any) -> dict[str, Any]:
    """The record of a failed rank: type, message, traceback tail, a hint for renamed arguments.

    ``known``: the job's secret values, masked in the message and traceback (the record is stored
    and shown). ``extra`` is added as is (the attempt, errno details). Returns the record; the
    whole masked traceback is ``record_traceback(exc, known)``.
    """
    tb = record_traceback(exc, known)
    message = mask_text(str(exc) if not isinstance(exc, SystemExit) else f"exit code {exc.code}", known)
    return {
        "rank": rank,
        "type": type(exc).__name__,
        "message": message,
        "traceback": "\n".join(tb.rstrip().splitlines()[-TRACEBACK_LINES:]),
        "time": time.time(),
        "hint": hint_for(type(exc).__name__, message),
        **extra,
    }


def record_traceback(exc: BaseException, known: Iterable[str] = ()) -> str:
    """The whole traceback of ``exc``, the job's secret values masked (for the rank's log)."""
    return mask_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), known)


def dump_return_value(value: Any, max_bytes: int | None = None, too_large: str = "too large to keep") -> bytes:
    """Rank 0's return value as bytes: JSON ``{"value": ...}`` when the value is plain data that
    JSON gives back unchanged (safe for any reader to load), else cloudpickle ``{"value": ...}``.

    An unpicklable value, or one over ``max_bytes``, is kept as its repr and why it is not the value.
    """
    import cloudpickle

    if is_plain(value):
        data = json.dumps({"value": value}, allow_nan=False).encode()
        if max_bytes is None or len(data) <= max_bytes:
            return data

    try:
        data = cloudpickle.dumps({"value": value})
    except Exception as e:  # noqa: BLE001 - an unpicklable return value is reported, not fatal
        return cloudpickle.dumps({"value": None, "unpicklable": f"{type(value).__name__}: {e}", "repr": repr(value)[:2000]})
    if max_bytes is not None and len(data) > max_bytes:
        return cloudpickle.dumps({"value": None, "unpicklable": f"{len(data)} bytes is {too_large}", "repr": repr(value)[:2000]})
    return data


def is_json_return_value(data: bytes) -> bool:
    """Whether ``dump_return_value`` wrote ``data`` as JSON (pickles start with a protocol byte)."""
    return data[:1] == b"{"


def load_return_value(data: bytes | None) -> Any:
    """What ``dump_return_value`` wrote; None if there is none.

    Unpickles: the caller makes sure ``data`` is trusted (written by its own job: a local job
    folder, or verified with ``trainjob.core.signing``). A value the client cannot unpickle (a
    class only the job could import) comes back as a message saying so, and an unpicklable one as
    its repr.
    """
    if data is None:
        return None
    if is_json_return_value(data):
        return json.loads(data).get("value")
    try:
        loaded = pickle.loads(data)
    except Exception as e:  # noqa: BLE001 - any import/unpickling failure is reported the same way
        return f"<return value could not be loaded here: {type(e).__name__}: {e}>"
    return loaded.get("value") if "unpicklable" not in loaded else loaded.get("repr")


def is_plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is plain JSON data (str, finite number, bool, None, lists and str-keyed dicts of
    them) that ``json.loads(json.dumps(value))`` gives back equal and of the same types."""
    if depth > 64:
        return False
    t = type(value)
    if value is None or t in (str, bool, int):
        return True
    if t is float:
        return math.isfinite(value)
    if t is list:
        return all(is_plain(v, depth + 1) for v in value)
    if t is dict:
        return all(type(k) is str and is_plain(v, depth + 1) for k, v in value.items())
    return False
