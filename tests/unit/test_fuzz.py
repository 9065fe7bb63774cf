"""Whatever bytes arrive, ``decode`` either returns an event or raises ``SchemaError``; and
whatever it returns, ``verify`` either passes or raises an ``IntegrityError``. A consumer
relies on exactly that to dead-letter a message and go on (DESIGN.md G5). And every input
that is not a signed event byte for byte is refused, with a reason that names what is
wrong: a mutation of a good event that got through would be a forgery."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import decode, encode
from schemas.errors import IntegrityError, SchemaError
from schemas.integrity import verify
from tests.factories import Chain, registry_of

CHAIN = Chain("11977")
GOOD = encode(CHAIN.emit("dossier.received"))
REGISTRY = registry_of(CHAIN)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20)


def refused(raw: bytes) -> str:
    """Why ``raw`` is refused; fails the test if it is taken. Only the sealed event itself
    may be taken, and callers never pass it here."""
    try:
        event = decode(raw)
    except SchemaError as exc:
        assert exc.field and exc.reason, exc
        return str(exc)
    try:
        verify(event, REGISTRY)
    except IntegrityError as exc:
        assert exc.reason, exc
        return str(exc)
    raise AssertionError(f"taken, but not the sealed event: {raw!r}")


def refused_unless_unchanged(raw: bytes) -> None:
    if raw == GOOD:
        verify(decode(raw), REGISTRY)  # the very event: taken
    else:
        refused(raw)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(raw: bytes) -> None:
    refused(raw)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(["", "data"]), key=st.sampled_from(
    list(orjson.loads(GOOD)) + list(orjson.loads(GOOD)["data"]) + ["x"]), value=json_values)
def test_one_field_replaced_by_any_json(path: str, key: str, value: object) -> None:
    obj = orjson.loads(GOOD)
    target = obj["data"] if path else obj
    target[key] = value
    try:
        raw = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return
    refused_unless_unchanged(raw)


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, len(GOOD) - 1), byte=st.integers(0, 255))
def test_one_byte_flipped(pos: int, byte: int) -> None:
    refused_unless_unchanged(GOOD[:pos] + bytes([byte]) + GOOD[pos + 1:])


def test_deep_nesting_and_odd_inputs() -> None:
    for depth in (10, 300, 1000, 5000):
        refused(b'{"type":"dossier.resolved","schema_version":1,"x":' + b"[" * depth
                + b"]" * depth + b"}")
    refused(b'{"type":"dossier.resolved","schema_version":1,"origin_seq":1' + b"0" * 400 + b"}")
    for text in ('{"type":"\ud800"}', '{"a":NaN}', '{"type":1e999}'):
        with pytest.raises(SchemaError):
            decode(text)
    assert decode(memoryview(GOOD)) == decode(GOOD)
