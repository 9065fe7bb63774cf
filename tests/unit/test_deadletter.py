"""Dead letters stay publishable whatever they carry (DESIGN.md G5): a huge key, value or
reason is cut, with its length (and for values its sha256) kept."""

from __future__ import annotations

import orjson

from schemas.deadletter import MAX_KEY, MAX_ORIGINAL, MAX_REASON, DeadLetter, parse
from schemas.errors import MotcuaError
from schemas.integrity import checked_event


def test_a_huge_key_value_and_reason_give_a_small_letter() -> None:
    key, value = b"k" * 400_000, b"v" * 900_000
    reason = "why " * 20_000
    letter = DeadLetter(reason, "dossier-events", 3, 42, key, value, "sync:11977")
    out_key, out_value = letter.record()
    assert out_key == b"dossier-events" and len(out_value) < 120_000
    body = parse(out_value)
    assert body["key_bytes"] == len(key) and body["key_truncated"]
    assert body["original_bytes"] == len(value) and body["original_truncated"]
    assert len(body["original"]) == MAX_ORIGINAL and len(body["reason"]) < MAX_REASON + 10
    assert body["source"] == {"topic": "dossier-events", "partition": 3, "offset": 42}
    assert orjson.loads(out_value)["key_b64"] is not None and MAX_KEY < len(key)


def test_a_key_that_is_not_the_subject_id_is_named_shortly() -> None:
    from schemas.codec import encode
    from tests.factories import Chain

    event = Chain("11977").emit("dossier.received")
    try:
        checked_event(b"x" * 10_000, encode(event), None, signatures=False)
        raise AssertionError("a wrong key must be refused")
    except MotcuaError as exc:
        assert "is not the subject id" in str(exc) and len(str(exc)) < 400
