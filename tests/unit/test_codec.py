"""Round trips, canonical encoding and the upcaster hook."""

from __future__ import annotations

from datetime import UTC, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import upcasters
from schemas.codec import canonical, content_hash, decode, encode
from schemas.errors import SchemaError
from schemas.events import EVENT_TYPES, DossierWithdrawn
from schemas.integrity import verify
from tests.factories import SAMPLE_DATA, Chain, registry_of


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_every_type_round_trips_and_verifies(event_type: str) -> None:
    chain = Chain("11977")
    event = chain.emit(event_type)
    raw = encode(event)
    back = decode(raw)
    assert type(back) is EVENT_TYPES[event_type]
    assert back == event
    assert encode(back) == raw  # canonical bytes are a fixed point
    verify(back, registry_of(chain))


def test_sample_data_covers_every_type() -> None:
    assert set(SAMPLE_DATA) == set(EVENT_TYPES)


def test_canonical_is_sorted_compact_utf8() -> None:
    raw = canonical({"b": 1, "a": {"d": "Hưng Yên", "c": [1, 2]}})
    assert raw == '{"a":{"c":[1,2],"d":"Hưng Yên"},"b":1}'.encode()


def test_hash_ignores_hash_and_sig_but_covers_everything_else() -> None:
    event = Chain("11977").emit("dossier.refused")
    body = event.model_dump(mode="json")
    assert content_hash(body) == event.hash
    assert content_hash({**body, "sig": "x", "hash": "y"}) == event.hash
    assert content_hash({**body, "origin_seq": 2}) != event.hash


def non_canonical_variants() -> list[tuple[str, bytes, str]]:
    good = encode(Chain("11977").emit("dossier.received"))
    obj = orjson.loads(good)
    reordered = orjson.dumps(dict(reversed(list(obj.items()))))
    no_default = dict(obj, data={k: v for k, v in obj["data"].items() if k != "applicant_hash"})
    return [
        ("reordered keys", reordered, "<message>"),
        ("escaped unicode", good.replace("Đất".encode(), b"\\u0110\\u1ea5t"), "<message>"),
        ("whitespace", good.replace(b'","', b'", "', 1), "<message>"),
        ("repeated key", b'{"origin":"12337",' + good[1:], "<message>"),
        ("control: the canonical bytes themselves", good, ""),
        ("UTC offset spelled out", canonical(dict(
            obj, occurred_at="2025-07-01T01:00:00+00:00")), "occurred_at"),
        ("fractional zero seconds", canonical(dict(
            obj, occurred_at="2025-07-01T08:00:00.000+07:00")), "occurred_at"),
        ("default left out", canonical(no_default), "data.applicant_hash"),
    ]


@pytest.mark.parametrize(("name", "raw", "field"), non_canonical_variants(),
                         ids=[v[0] for v in non_canonical_variants()])
def test_only_the_canonical_spelling_is_accepted(name: str, raw: bytes, field: str) -> None:
    """One event, one spelling: duplicate keys cannot hide data from the hash, and
    re-encoding an accepted event never changes its bytes (so never breaks its hash)."""
    if not field:  # the control row: the canonical bytes themselves
        assert encode(decode(raw)) == raw
        return
    with pytest.raises(SchemaError, match="not in canonical form") as info:
        decode(raw)
    assert info.value.field == field


def test_local_date_uses_plus_seven() -> None:
    chain = Chain("11977")
    # 23:30 UTC on 30 June is 06:30 on 1 July in Hưng Yên
    from datetime import datetime
    event = chain.emit("dossier.resolved",
                       occurred_at=datetime(2025, 6, 30, 23, 30, tzinfo=UTC))
    assert event.local_date.isoformat() == "2025-07-01"


def test_upcaster_rewrites_old_versions_and_hash_still_checks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A v1 dossier.withdrawn that called its field ``why`` reads as the current model."""
    chain = Chain("11977")
    current = chain.emit("dossier.withdrawn")
    old = current.model_dump(mode="json")
    old["data"] = {"why": "Công dân rút hồ sơ"}
    old["hash"] = content_hash(old)  # as the old writer would have sealed it
    from schemas.integrity import sign_hash
    old["sig"] = sign_hash(old["hash"], chain.key)

    monkeypatch.setitem(upcasters.CURRENT_VERSION, "dossier.withdrawn", 2)
    monkeypatch.setitem(upcasters.UPCASTERS, ("dossier.withdrawn", 1),
                        lambda env: {**env, "data": {"reason": env["data"]["why"]}})
    event = decode(canonical(old))
    assert isinstance(event, DossierWithdrawn)
    assert event.schema_version == 2
    assert event.data.reason == "Công dân rút hồ sơ"
    verify(event, registry_of(chain))  # checked against the content as signed


def test_missing_upcaster_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = encode(Chain("11977").emit("dossier.withdrawn"))
    monkeypatch.setitem(upcasters.CURRENT_VERSION, "dossier.withdrawn", 2)
    with pytest.raises(SchemaError, match=r"no upcaster from version 1 of dossier\.withdrawn"):
        decode(raw)


@settings(max_examples=200, deadline=None)
@given(reason=st.text(min_size=1, max_size=500).filter(lambda s: "\x00" not in s),
       minutes=st.integers(min_value=0, max_value=60 * 24 * 3650))
def test_any_text_and_time_round_trip(reason: str, minutes: int) -> None:
    chain = Chain("site-phohien")
    from tests.factories import T0
    event = chain.emit("dossier.refused", occurred_at=T0 + timedelta(minutes=minutes),
                       reason=reason)
    back = decode(encode(event))
    assert back == event
    verify(back, registry_of(chain))
