"""The process's Dramatiq encoder: the same JSON as Dramatiq's ``JSONEncoder``, written by orjson.

Why: every message is encoded once by its sender (the callback encodes one per request, on the
event loop that also serves HTTP; the scheduler thousands per tick) and decoded once by a
worker. ``json.dumps`` through ``dramatiq.JSONEncoder`` costs several microseconds a message;
orjson (https://github.com/ijl/orjson) a fraction of one. The wire stays JSON (README "For other
modules: tokens and messages", docs/publishing.md), so producers and consumers on Dramatiq's stock
encoder and this one read each other's messages.

Dramatiq's encoder is process-global (``dramatiq.set_encoder``, its documented extension point:
https://dramatiq.io/reference.html#dramatiq.set_encoder). Nothing installs it on import: :func:`install_encoder` is
called by whatever builds the process's broker (``workers.broker.build_broker``, which every
entry point reaches through ``workers.runtime.Runtime``).

What it writes and reads, compared with the stock encoder (``tests/test_encoding.py``):

* encoding: the same JSON value for everything the stock encoder takes. What orjson refuses
  (integers beyond 64 bits, strings with lone surrogates, non-string keys it cannot convert,
  datetimes, dataclasses) goes to the stock encoder, so it is written, or refused with the same
  ``TypeError``, as before. Two differences: NaN and the infinities, which JSON does not have,
  are written ``null`` (the stock encoder writes the non-JSON ``NaN``/``Infinity``); UUIDs and
  enums are written as their string/value (the stock encoder refuses them). Non-ASCII text is
  written as UTF-8 rather than ``\\u`` escapes: the same JSON string.
* decoding: the same dict as the stock decoder for any bytes it reads, and ``DecodeError`` for
  any it refuses (``social_accounts.fastjson``: what orjson would read differently, an integer
  beyond 64 bits, or refuses, ``NaN`` and lone surrogate escapes, goes to the stock decoder).
"""

from __future__ import annotations

import dramatiq
import orjson
from dramatiq.encoder import Encoder, JSONEncoder, MessageData

from social_accounts import fastjson

__all__ = ["FastJSONEncoder", "install_encoder"]

#: orjson's own conversions that would change what the stock encoder does are passed back to us
_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class FastJSONEncoder(Encoder):
    """Dramatiq's JSON wire format through orjson, the stock ``JSONEncoder`` for what orjson refuses."""

    def __init__(self) -> None:
        self._stock = JSONEncoder()

    def encode(self, data: MessageData) -> bytes:
        try:
            return orjson.dumps(data, option=_OPTIONS)
        except TypeError:
            return self._stock.encode(data)  # same output or the same TypeError as before

    def decode(self, data: bytes) -> MessageData:
        return fastjson.loads(data, self._stock.decode)  # the stock value, or its DecodeError


def install_encoder() -> Encoder:
    """Make :class:`FastJSONEncoder` Dramatiq's encoder for this process (idempotent)."""
    current = dramatiq.get_encoder()
    if isinstance(current, FastJSONEncoder):
        return current
    encoder = FastJSONEncoder()
    dramatiq.set_encoder(encoder)
    return encoder
