"""``loads``: JSON read by orjson wherever it gives what ``json.loads`` gives.

Why: the callback reads a signed state per request and every worker decodes every message;
orjson (https://github.com/ijl/orjson) does it in a fraction of the time. Where orjson would
read the same bytes differently, the standard reader decides instead, so callers see exactly the
values (and the refusals) they saw before: an integer beyond 64 bits (orjson returns a float) and
what orjson refuses outright (an escaped lone surrogate, ``NaN``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["loads"]

#: digits enough to overflow 64 bits (-9223372036854775809 has 19): orjson would return a float
_LONG_NUMBER = re.compile(rb"[0-9]{19}")


def loads(data: bytes, fallback: Callable[[bytes], Any] = json.loads) -> Any:
    """The value of ``data``: orjson's when it reads the same as ``json.loads``, else
    ``fallback(data)``'s (its value or its error: ``json.loads`` raises ``ValueError``)."""
    if _LONG_NUMBER.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return fallback(data)
