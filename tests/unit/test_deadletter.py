"""Dead letters stay publishable whatever they carry (DESIGN.md G5): a huge key, value or
reason is cut, with its length (and for values its sha256) kept. One bad message filed by
several readers reads as one letter naming them (issue 14)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from schemas.deadletter import (
    MAX_KEY,
    MAX_ORIGINAL,
    MAX_REASON,
    DeadLetter,
    Logical,
    filtered,
    group,
    local_iso,
    local_text,
    parse,
    parse_since,
    read,
)
from schemas.errors import MotcuaError
from schemas.events import LOCAL_TZ
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


# --- one logical letter per bad message (issue 14) ------------------------------------------

T0 = datetime(2025, 7, 1, 1, 2, 3, 456789, tzinfo=UTC)  # 08:02:03.456789 in Hưng Yên
GARBAGE = b"\x00\xffnot json at all"


def filed(value: bytes | None, offset: int, stage: str, after: float = 0.0,
          reason: str = "not valid UTF-8", topic: str = "dossier-events",
          partition: int = 0) -> dict[str, object]:
    """A dead letter as the command reads it back from the topic."""
    _, out = DeadLetter(reason, topic, partition, offset, b"k", value, stage).record(
        T0 + timedelta(seconds=after))
    body = read(out)
    assert body is not None
    return body


def test_the_same_message_filed_by_every_reader_is_one_letter_naming_them_all() -> None:
    stages = ["sync:site-thaibinh", "streams", "sync:site-phohien", "sync:11953"]
    letters = group([filed(GARBAGE, 7, s, after=i) for i, s in enumerate(stages)]
                    + [filed(GARBAGE, 7, "streams", after=9)])  # filed again after a restart
    [one] = letters
    assert one.readers == ("streams", "sync:11953", "sync:site-phohien", "sync:site-thaibinh")
    assert one.raw == 5 and one.source == ("dossier-events", 0, 7)
    assert one.first_filed == T0 and one.last_filed == T0 + timedelta(seconds=9)
    head, why = one.lines()
    assert "found by streams, sync 11953, sync site-phohien, sync site-thaibinh" in head
    assert head.startswith("2025-07-01 08:02:03  dossier-events[0]@7  dossier -  origin -")
    assert why == "    not valid UTF-8"
    d = one.as_dict()
    assert d["raw_letters"] == 5 and d["readers"][0] == "streams"
    assert d["source"] == {"topic": "dossier-events", "partition": 0, "offset": 7}
    assert d["first_filed"] == "2025-07-01T08:02:03+07:00"
    assert d["last_filed"] == "2025-07-01T08:02:12+07:00"
    assert d["dossier_id"] is None and d["origin"] is None


@pytest.mark.parametrize(("a", "b", "apart"), [
    ((GARBAGE, 7, "dossier-events", 0), (GARBAGE, 8, "dossier-events", 0), True),
    ((GARBAGE, 7, "dossier-events", 0), (GARBAGE, 7, "dossier-events", 1), True),
    ((GARBAGE, 7, "dossier-events", 0), (GARBAGE, 7, "hotline-events", 0), True),
    # a recreated topic (or a restarted in-memory broker) holds another message there
    ((GARBAGE, 7, "dossier-events", 0), (b"{not json", 7, "dossier-events", 0), True),
    ((None, 7, "dossier-events", 0), (None, 7, "dossier-events", 0), False),
    ((GARBAGE, 7, "dossier-events", 0), (GARBAGE, 7, "dossier-events", 0), False),
])
def test_letters_are_one_message_by_source_position_and_original_bytes(
        a: tuple[bytes | None, int, str, int], b: tuple[bytes | None, int, str, int],
        apart: bool) -> None:
    letters = [filed(v, off, stage, topic=t, partition=p)
               for (v, off, t, p), stage in ((a, "streams"), (b, "sync:site-phohien"))]
    assert len(group(letters)) == (2 if apart else 1)


def test_a_letter_without_a_source_position_goes_by_its_original_bytes() -> None:
    bodies = [filed(GARBAGE, 1, "streams"), filed(GARBAGE, 2, "sync:11953"),
              filed(b"other", 3, "streams")]
    for body in bodies:
        del body["source"]
    del bodies[1]["original_sha256"]  # an older letter: the digest comes from the bytes
    one, other = group(bodies)
    assert one.raw == 2 and one.source is None and other.raw == 1
    assert one.lines()[0].split("  ")[1] == "-" and one.as_dict()["source"] is None


def test_letters_come_in_the_order_they_were_first_filed_then_by_position() -> None:
    bodies = [filed(GARBAGE, 9, "streams", after=1), filed(b"x", 3, "streams", after=5),
              filed(b"y", 2, "sync:11953", after=1, partition=1),
              filed(b"x", 3, "sync:11953", after=0.5)]
    assert [g.source for g in group(bodies)] == [
        ("dossier-events", 0, 3), ("dossier-events", 0, 9), ("dossier-events", 1, 2)]


def test_the_dossier_id_and_origin_come_from_the_original_when_it_is_an_event() -> None:
    from schemas.codec import encode
    from tests.factories import Chain

    event = Chain("11977").emit("dossier.received", "D-11977-42")
    [good] = group([filed(encode(event), 1, "streams", reason="signature does not verify")])
    assert (good.dossier_id, good.origin) == ("D-11977-42", "11977")
    assert "dossier D-11977-42  origin 11977" in good.lines()[0]
    odd = [filed(b'{"dossier_id": 5, "origin": ""}', 2, "streams"),
           filed(b"[1, 2]", 3, "streams"), filed(None, 4, "streams"),
           filed(b'{"dossier_id": "D' + b"x" * 100_000 + b'"}', 5, "streams")]  # cut: unreadable
    assert [(g.dossier_id, g.origin) for g in group(odd)] == [(None, None)] * 4


def test_filters_by_first_filing_time_and_by_reason() -> None:
    bodies = [filed(b"a", 1, "streams", reason="Signature does NOT verify"),
              filed(b"a", 1, "sync:11953", after=7200, reason="refused: fork at 11977/3"),
              filed(b"b", 2, "streams", after=3600, reason="not JSON")]
    letters = group(bodies)

    def offsets(kept: list[Logical]) -> list[int]:
        return [g.source[2] for g in kept if g.source is not None]

    assert offsets(filtered(letters, reason="signature")) == [1]
    assert offsets(filtered(letters, reason="FORK")) == [1]  # another reader's reason
    assert filtered(letters, reason="chain break") == []
    since = parse_since("2025-07-01 08:30")  # local: between the two first filings
    assert offsets(filtered(letters, since=since)) == [2]
    assert len(filtered(letters, since=parse_since("2025-07-01"))) == 2
    assert filtered(letters, since=since, reason="signature") == []
    assert letters[0].lines()[1] == "    Signature does NOT verify (+1 other reason: --json)"


@pytest.mark.parametrize(("text", "expected"), [
    ("2025-07-01", datetime(2025, 7, 1, tzinfo=LOCAL_TZ)),
    ("2025-07-01 08:30", datetime(2025, 7, 1, 8, 30, tzinfo=LOCAL_TZ)),
    ("2025-07-01T08:30:15", datetime(2025, 7, 1, 8, 30, 15, tzinfo=LOCAL_TZ)),
    ("2025-07-01T01:30:00+00:00", datetime(2025, 7, 1, 8, 30, tzinfo=LOCAL_TZ)),
])
def test_since_is_a_local_date_or_time(text: str, expected: datetime) -> None:
    assert parse_since(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "2025-13-01", "01/07/2025", ""])
def test_a_since_that_is_no_time_is_refused_with_the_formats_named(text: str) -> None:
    with pytest.raises(ValueError, match=r"YYYY-MM-DD HH:MM"):
        parse_since(text)


def test_times_are_local_to_the_second() -> None:
    assert local_text(T0) == "2025-07-01 08:02:03"
    assert local_iso(T0) == "2025-07-01T08:02:03+07:00"
    assert local_text(datetime(2025, 7, 1, 20, 0, tzinfo=UTC)) == "2025-07-02 03:00:00"


@pytest.mark.parametrize("value", [b"", b"not json", b"[1]", b'{"reason": "x"}',
                                   b'{"rejected_at": "2025-07-01T08:00:00"}',  # naive
                                   b'{"rejected_at": "x"}', None,
                                   b'{"rejected_at": "2025-07-01T01:00:00+00:00", '
                                   b'"original_b64": "%%%"}'])
def test_a_record_on_the_topic_that_is_no_dead_letter_reads_as_none(
        value: bytes | None) -> None:
    assert read(value) is None


def test_a_long_multi_line_reason_is_one_cut_line_and_whole_in_json() -> None:
    reason = "first line\n" + "x" * 5000
    [one] = group([filed(GARBAGE, 1, "streams", reason=reason)])
    _, why = one.lines(width=100)
    assert "\n" not in why and len(why) == 100 and why.endswith("…")
    assert one.as_dict()["reason"].startswith("first line\nxxx")
