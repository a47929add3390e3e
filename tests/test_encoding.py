"""The process's message encoder (``workers.encoding``) against Dramatiq's stock ``JSONEncoder``:
other modules publish to us and read from us with the stock one, so each must read what the
other writes, to the same values, and both must refuse the same things."""

from __future__ import annotations

import dataclasses
import enum
import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import dramatiq
import pytest
from dramatiq.encoder import JSONEncoder
from dramatiq.errors import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from social_accounts.settings import Settings
from workers import messages as wire
from workers.broker import build_broker
from workers.encoding import FastJSONEncoder, install_encoder

pytestmark = pytest.mark.unit

stock = JSONEncoder()
fast = FastJSONEncoder()


@pytest.fixture
def stock_global() -> Iterator[None]:
    """Dramatiq's stock encoder installed for one test (the previous one restored afterwards)."""
    previous = dramatiq.get_encoder()
    dramatiq.set_encoder(JSONEncoder())
    try:
        yield
    finally:
        dramatiq.set_encoder(previous)


def a_message(**kwargs: Any) -> dict[str, Any]:
    message = wire.build_message(wire.REFRESH_ACCOUNT, **kwargs)
    return message.copy(options={"redis_message_id": wire.new_id()}).asdict()


VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    2**64,  # beyond 64 bits: orjson refuses it, the stock encoder writes it
    -(2**63) - 1,
    10**40,
    0.1,
    -0.0,
    1e-7,
    1.7976931348623157e308,
    "",
    "plain",
    'quote " backslash \\ slash /',
    "é ü 中文 😀 \u2028 \u2029 \x00 \x1f \x7f",
    "\ud800 lone surrogate",  # orjson refuses it, the stock encoder escapes it
    "1234567890123456789012345 digits in a string",
    [],
    [1, "two", [3.0, None]],
    {"nested": {"deep": [{"a": 1}]}},
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_each_reads_what_the_other_writes_to_the_same_value(value: Any) -> None:
    data = a_message(account_id="acc-1", value=value)
    expected = stock.decode(stock.encode(data))
    assert fast.decode(stock.encode(data)) == expected  # a stock producer, our worker
    assert stock.decode(fast.encode(data)) == expected  # our producer, a stock consumer
    assert fast.decode(fast.encode(data)) == expected


def test_big_integers_keep_every_digit_both_ways() -> None:
    for number in (2**64, -(2**63) - 1, 10**40, -(10**40)):
        data = a_message(n=number)
        assert fast.encode(data) == stock.encode(data)  # orjson refused it: the stock bytes
        decoded = fast.decode(stock.encode(data))["kwargs"]["n"]
        assert decoded == number and isinstance(decoded, int)  # orjson alone would give a float


def test_non_string_keys_become_the_strings_the_stock_encoder_writes() -> None:
    data = a_message(mapping={1: "int", 2.5: "float", None: "none", False: "bool", "s": "str"})
    assert stock.decode(fast.encode(data)) == stock.decode(stock.encode(data))
    assert stock.decode(fast.encode(data))["kwargs"]["mapping"] == {
        "1": "int",
        "2.5": "float",
        "null": "none",
        "false": "bool",
        "s": "str",
    }


@dataclasses.dataclass
class Point:
    x: int


@pytest.mark.parametrize(
    "value", [datetime(2026, 1, 1, tzinfo=UTC), Point(1), object(), {(1, 2): "tuple key"}], ids=repr
)
def test_what_the_stock_encoder_refuses_is_refused_alike(value: Any) -> None:
    data = a_message(value=value)
    with pytest.raises(TypeError):
        stock.encode(data)
    with pytest.raises(TypeError):
        fast.encode(data)


class Colour(enum.Enum):
    RED = "red"


def test_the_documented_differences() -> None:
    # JSON has no NaN or infinities: written as null (the stock encoder writes non-JSON NaN)
    data = a_message(values=[math.nan, math.inf, -math.inf])
    assert stock.decode(fast.encode(data))["kwargs"]["values"] == [None, None, None]
    assert b"NaN" in stock.encode(data)
    # UUIDs and enums are written as their string/value; the stock encoder refuses them
    ident = uuid.uuid4()
    assert stock.decode(fast.encode(a_message(id=ident, colour=Colour.RED)))["kwargs"] == {
        "id": str(ident),
        "colour": "red",
    }
    # text is UTF-8 instead of \u escapes: the same JSON string
    assert "é".encode() in fast.encode(a_message(name="é"))


def test_non_json_the_stock_encoder_writes_is_read_alike() -> None:
    payload = stock.encode(a_message(values=[math.nan, math.inf, -math.inf]))
    values = fast.decode(payload)["kwargs"]["values"]
    assert math.isnan(values[0]) and values[1:] == [math.inf, -math.inf]


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b'{"a":1', b"not json", b'{"a":"\xff"}'], ids=repr)
def test_what_the_stock_decoder_refuses_is_refused_alike(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        stock.decode(raw)
    with pytest.raises(DecodeError):
        fast.decode(raw)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(JSON)
def test_random_values_read_the_same_both_ways(value: Any) -> None:
    data = a_message(value=value)
    expected = stock.decode(stock.encode(data))
    assert fast.decode(stock.encode(data)) == expected
    assert stock.decode(fast.encode(data)) == expected


def test_dramatiq_messages_cross_between_the_two_encoders(stock_global: None) -> None:
    message = wire.build_message(wire.SYNC_ACCOUNT, account_id="acc-é")
    from_stock = message.encode()  # the stock encoder is installed
    install_encoder()
    assert dramatiq.Message.decode(from_stock) == message
    from_fast = message.encode()
    dramatiq.set_encoder(JSONEncoder())
    assert dramatiq.Message.decode(from_fast) == message


def test_building_the_broker_installs_the_encoder_once(stock_global: None) -> None:
    assert not isinstance(dramatiq.get_encoder(), FastJSONEncoder)
    build_broker(Settings(broker_url="memory://")).close()
    installed = dramatiq.get_encoder()
    assert isinstance(installed, FastJSONEncoder)
    assert install_encoder() is installed  # idempotent


def test_a_fresh_call_uses_one_uuid_for_its_message_and_redis_ids() -> None:
    first = wire.encode_call(wire.SYNC_ACCOUNT, {"account_id": "acc-1"})
    second = wire.encode_call(wire.SYNC_ACCOUNT, {"account_id": "acc-1"})
    message = dramatiq.Message.decode(first.payload)
    assert message.message_id == message.options["redis_message_id"] == first.redis_id
    assert uuid.UUID(first.redis_id).version == 4
    assert first.redis_id != second.redis_id
