"""Malformed input, one row each: every case gets its own clear message naming the field,
none escapes as a raw traceback, and ``motcua schemas check`` reports them line by line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from nacl.signing import SigningKey

from infra.cli.main import main
from schemas.codec import MAX_EVENT_BYTES, canonical, content_hash, decode, encode
from schemas.errors import BadHash, BadSignature, MotcuaError, SchemaError, UnknownOrigin
from schemas.integrity import KeyRegistry, sign_hash, verify
from schemas.keys import REGISTRY_FILE
from tests.factories import Chain

ALICE = Chain("11977")
REGISTRY = KeyRegistry({"11977": ALICE.key.verify_key, "site-phohien":
                        SigningKey.generate().verify_key})
GOOD = encode(ALICE.emit("dossier.received"))


def edit(change: Callable[[dict[str, Any]], None], reseal: bool = True) -> bytes:
    """Apply ``change`` to the good event; reseal so only the intended fault remains."""
    obj = orjson.loads(GOOD)
    change(obj)
    if reseal:
        obj["hash"] = content_hash(obj)
        obj["sig"] = sign_hash(obj["hash"], ALICE.key)
    return canonical(obj)


def setter(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(obj: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        for part in parents:
            obj = obj[part]
        obj[leaf] = value
    return change


def dropper(path: str) -> Callable[[dict[str, Any]], None]:
    def change(obj: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        for part in parents:
            obj = obj[part]
        del obj[leaf]
    return change


def forge(obj: dict[str, Any]) -> None:
    obj["hash"] = content_hash(obj)
    obj["sig"] = sign_hash(obj["hash"], SigningKey.generate())


def as_other_origin(obj: dict[str, Any]) -> None:
    obj["origin"] = "site-phohien"  # signed with 11977's key: writing as someone else


# (id, raw bytes, error class, field or None, words the message must contain)
CASES: list[tuple[str, bytes, type[MotcuaError], str | None, str]] = [
    ("not-json", b"{not json", SchemaError, "<message>", "not JSON"),
    ("empty", b"", SchemaError, "<message>", "not JSON"),
    ("array", b"[1, 2]", SchemaError, "<message>", "got an array"),
    ("invalid-utf8", GOOD[:40] + b"\xff\xfe" + GOOD[42:], SchemaError, "<message>",
     "not valid UTF-8"),
    ("oversized", edit(setter("data.field", "x" * (MAX_EVENT_BYTES + 1))), SchemaError,
     "<message>", "over the 16,384-byte limit"),
    ("missing-type", edit(dropper("type")), SchemaError, "type", "missing"),
    ("type-not-string", edit(setter("type", 7)), SchemaError, "type", "expected a string"),
    ("unknown-type", edit(setter("type", "dossier.teleported")), SchemaError, "type",
     "unknown event type 'dossier.teleported'"),
    ("future-version", edit(setter("schema_version", 9)), SchemaError, "schema_version",
     "from the future"),
    ("version-as-string", edit(setter("schema_version", "1")), SchemaError, "schema_version",
     "expected an integer"),
    ("version-zero", edit(setter("schema_version", 0)), SchemaError, "schema_version",
     "not a version"),
    ("missing-origin-seq", edit(dropper("origin_seq")), SchemaError, "origin_seq", "missing"),
    ("seq-as-string", edit(setter("origin_seq", "5")), SchemaError, "origin_seq",
     "valid integer"),
    ("seq-zero", edit(setter("origin_seq", 0)), SchemaError, "origin_seq", "greater than"),
    ("naive-datetime", edit(setter("occurred_at", "2025-07-01T08:00:00")), SchemaError,
     "occurred_at", "timezone"),
    ("datetime-as-number", edit(setter("occurred_at", 1751331600)), SchemaError,
     "occurred_at", "datetime"),
    ("bad-channel", edit(setter("data.channel", "fax")), SchemaError, "data.channel",
     "'fax'"),
    ("full-online-in-person", edit(setter("data.channel", "in_person")), SchemaError,
     "data.full_online",
     "only online dossiers can be fully online"),
    ("due-before-receipt", edit(setter("data.due_date", "2025-06-30")), SchemaError,
     "data.due_date",
     "before the local receive date"),
    ("bool-as-string", edit(setter("data.components_digitised", "yes")), SchemaError,
     "data.components_digitised", "valid boolean"),
    ("extra-envelope-field", edit(setter("citizen_name", "Nguyễn Văn A")), SchemaError,
     "citizen_name", "unexpected field"),
    ("extra-data-field", edit(setter("data.phone", "0912345678")), SchemaError,
     "data.phone", "unexpected field"),
    ("bad-origin-format", edit(setter("origin", "commune 7")), SchemaError, "origin",
     "5-digit GSO code"),
    ("bad-event-id", edit(setter("event_id", "42")), SchemaError, "event_id", "UUID or a ULID"),
    ("bad-hash-format", edit(setter("prev_hash", "abc")), SchemaError, "prev_hash",
     "64 lowercase hex"),
    ("same-status", encode(Chain("11977").emit("dossier.status_changed")).replace(
        b'"to_status":4', b'"to_status":2'), SchemaError, "data.to_status", "same as from"),
    ("tampered-field", edit(setter("data.channel", "postal"), reseal=False) .replace(
        b'"full_online":true', b'"full_online":false'), BadHash, None, "does not match"),
    ("forged-signature", edit(forge, reseal=False), BadSignature, None,
     "does not verify with 11977's public key"),
    ("other-origin", edit(as_other_origin, reseal=True), BadSignature, None,
     "site-phohien's public key"),
    ("unknown-origin", edit(setter("origin", "99999")), UnknownOrigin, None,
     "no key in the registry"),
]


def bad_status_change() -> bytes:
    raw = encode(Chain("11977").emit("dossier.status_changed"))
    obj = orjson.loads(raw)
    obj["data"]["to_status"] = 11
    return canonical(obj)


CASES.append(("status-code-11", bad_status_change(), SchemaError, "data.to_status", "11"))


def check(raw: bytes) -> None:
    verify(decode(raw), REGISTRY)


def test_the_good_event_passes() -> None:
    check(GOOD)


def test_at_least_twenty_distinct_cases() -> None:
    assert len(CASES) >= 20
    assert len({raw for _, raw, *_ in CASES}) == len(CASES)


@pytest.mark.parametrize(("raw", "error", "field", "words"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_its_own_clear_error(raw: bytes, error: type[MotcuaError],
                                            field: str | None, words: str) -> None:
    with pytest.raises(error) as info:
        check(raw)
    message = str(info.value)
    assert words in message
    assert "pydantic" not in message and "validation error" not in message
    if field is not None:
        assert isinstance(info.value, SchemaError)
        assert info.value.field == field, message


def test_schemas_check_reports_each_bad_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / REGISTRY_FILE).write_text(orjson.dumps(REGISTRY.to_b64()).decode())
    # a blank line is no event in JSON lines: the check skips it, so leave "empty" out
    cases = [c for c in CASES if c[1]]
    lines = [GOOD] + [raw.replace(b"\n", b" ") for _, raw, *_ in cases] + [GOOD]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    status = main(["schemas", "check", str(path), "--keys", str(keys)])

    out = capsys.readouterr().out
    assert status == 1
    reported = [line for line in out.splitlines() if line.startswith("line ")]
    assert [int(r.split(":")[0].removeprefix("line ")) for r in reported] == list(
        range(2, len(cases) + 2))
    # the last line repeats the first: a duplicate, not an error
    assert f"{len(lines)} events: 2 valid (1 duplicates), {len(cases)} invalid" in out
    for (_, _, _, _, words), line in zip(cases, reported, strict=True):
        assert words in line


def test_schemas_check_on_a_missing_file_is_one_line(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schemas", "check", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read" in err and "No such file" in err
