"""The records a rank leaves behind, in the same shape on every backend: its error and its return value.

Built inside ranks (``runtime.bootstrap``, the Ray worker) and read by clients; these functions
only build and parse bytes and dicts, the caller writes them where its backend keeps them.
"""

from __future__ import annotations

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
    """Rank 0's return value as bytes (cloudpickle, ``{"value": ...}``).

    An unpicklable value, or one over ``max_bytes``, is kept as its repr and why it is not the value.
    """
    import cloudpickle

    try:
        data = cloudpickle.dumps({"value": value})
    except Exception as e:  # noqa: BLE001 - an unpicklable return value is reported, not fatal
        return cloudpickle.dumps({"value": None, "unpicklable": f"{type(value).__name__}: {e}", "repr": repr(value)[:2000]})
    if max_bytes is not None and len(data) > max_bytes:
        return cloudpickle.dumps({"value": None, "unpicklable": f"{len(data)} bytes is {too_large}", "repr": repr(value)[:2000]})
    return data


def load_return_value(data: bytes | None) -> Any:
    """What ``dump_return_value`` wrote; None if there is none.

    A value the client cannot unpickle (a class only the job could import) comes back as a
    message saying so, and an unpicklable one as its repr.
    """
    if data is None:
        return None
    try:
        loaded = pickle.loads(data)
    except Exception as e:  # noqa: BLE001 - any import/unpickling failure is reported the same way
        return f"<return value could not be loaded here: {type(e).__name__}: {e}>"
    return loaded.get("value") if "unpicklable" not in loaded else loaded.get("repr")
