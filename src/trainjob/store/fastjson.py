"""JSON decoding for the store's hot reads: ``orjson`` (about 3x the standard decoder on metric
histories) with the standard ``json`` module as the fallback.

Texts are still written by ``json.dumps``, which spells non-finite floats ``NaN``/``Infinity``
(a diverging loss logs them): orjson refuses those, so such a text is decoded by ``json.loads``
and reads back exactly as it was written.
"""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency; kept optional for vendored installs
    orjson = None


def loads(text: str | bytes) -> Any:
    """Decode one JSON text (standard ``json`` semantics, NaN and Infinity included)."""
    if orjson is not None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)
