"""Bytes ⇄ typed events.

``decode`` is the only door into the system for an event: it turns any bytes into a typed,
current-version event or raises one ``SchemaError`` naming the field and the reason. It never
lets a pydantic or JSON traceback through, so a consumer can dead-letter the message with a
readable reason and go on. ``canonical`` is the one encoding used for hashing and the wire.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson
from pydantic import ValidationError

from schemas.errors import SchemaError
from schemas.events import EVENT_TYPES, AnyEvent
from schemas.upcasters import CURRENT_VERSION, upcast

#: A real envelope is ~600 bytes; anything this large is garbage or an attack.
MAX_EVENT_BYTES = 16 * 1024


def canonical(obj: Any) -> bytes:
    """Sorted keys at every level, UTF-8 (not \\u escapes), no insignificant whitespace."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def content_hash(envelope: dict[str, Any]) -> str:
    """sha256 hex of the canonical envelope without ``hash`` and ``sig``."""
    body = {k: v for k, v in envelope.items() if k not in ("hash", "sig")}
    try:
        return hashlib.sha256(canonical(body)).hexdigest()
    except orjson.JSONEncodeError as exc:  # e.g. nested deeper than orjson writes
        raise SchemaError("<message>", f"cannot be put in canonical form ({exc})") from None


def encode(event: AnyEvent) -> bytes:
    """The event's canonical wire form."""
    return canonical(event.model_dump(mode="json"))


def decode(raw: bytes | bytearray | memoryview | str) -> AnyEvent:
    """Parse, upcast and validate one event. Raises ``SchemaError`` for anything wrong,
    including bytes that are valid JSON but not the canonical form (see ``canonical``):
    a signed event has exactly one spelling, so no two readers can see different events
    in the same bytes (duplicate keys) and re-encoding never breaks a hash."""
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SchemaError("<message>", f"not encodable as UTF-8 ({exc.reason} at "
                                           f"character {exc.start})") from None
    raw = bytes(raw)
    if len(raw) > MAX_EVENT_BYTES:
        raise SchemaError("<message>", f"{len(raw):,} bytes is over the {MAX_EVENT_BYTES:,}-byte "
                                       "limit for one event")
    try:
        obj = orjson.loads(raw)  # which also rejects bytes that are not UTF-8
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise SchemaError("<message>", f"not valid UTF-8 (byte {bad.start}: "
                                           f"{raw[bad.start:bad.start + 1]!r})") from None
        raise SchemaError("<message>", f"not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise SchemaError("<message>", f"expected a JSON object, got {_json_kind(obj)}")
    cls = EVENT_TYPES[_check_type(obj)]
    _check_version(obj)
    wire_hash = content_hash(obj)
    upcasted = upcast(obj)
    try:
        if upcasted is obj:
            event = cls.model_validate_json(raw, strict=True)
        else:
            event = cls.model_validate_json(canonical(upcasted), strict=True)
    except ValidationError as exc:
        raise schema_error(exc, obj["type"]) from None
    _require_canonical(raw, obj, event if upcasted is obj else None)
    event.__pydantic_private__["_wire_hash"] = wire_hash  # type: ignore[index]
    return event


def _require_canonical(raw: bytes, obj: dict[str, Any], event: AnyEvent | None) -> None:
    """The bytes must be the canonical encoding of the event they validate as."""
    if event is not None:
        normal = event.model_dump(mode="json")
        if canonical(normal) == raw:  # the usual case, in one comparison: raw is canonical
            return  # and spells the values as the model does (obj == normal follows)
        if normal != obj:
            where, have, want = _first_difference("", obj, normal)
            raise SchemaError(where, f"not in canonical form: {_spelled(have)} should be "
                                     f"written {_spelled(want)}")
    if canonical(obj) != raw:
        raise SchemaError("<message>", "not in canonical form (keys sorted at every level, "
                                       "no whitespace, no \\u escapes, no repeated keys)")


_ABSENT = object()


def _first_difference(path: str, have: Any, want: Any) -> tuple[str, Any, Any]:
    if isinstance(have, dict) and isinstance(want, dict):
        for key in sorted(set(have) | set(want)):
            a, b = have.get(key, _ABSENT), want.get(key, _ABSENT)
            if a != b:
                return _first_difference(f"{path}.{key}" if path else key, a, b)
    return path or "<event>", have, want


def _spelled(value: Any) -> str:
    return "(absent)" if value is _ABSENT else repr(value)


def _check_type(obj: dict[str, Any]) -> str:
    event_type = obj.get("type")
    if event_type is None:
        raise SchemaError("type", "required field is missing")
    if not isinstance(event_type, str):
        raise SchemaError("type", f"expected a string, got {_json_kind(event_type)}")
    if event_type not in EVENT_TYPES:
        raise SchemaError("type", f"unknown event type {event_type[:60]!r} "
                                  f"(known: {', '.join(sorted(EVENT_TYPES))})")
    return event_type


def _check_version(obj: dict[str, Any]) -> None:
    version = obj.get("schema_version")
    current = CURRENT_VERSION[obj["type"]]
    if version is None:
        raise SchemaError("schema_version", "required field is missing")
    if not isinstance(version, int) or isinstance(version, bool):
        raise SchemaError("schema_version", f"expected an integer, got {_json_kind(version)}")
    if version < 1:
        raise SchemaError("schema_version", f"{version} is not a version (versions start at 1)")
    if version > current:
        raise SchemaError("schema_version",
                          f"version {version} of {obj['type']} is from the future: this reader "
                          f"knows up to version {current}; upgrade motcua to read it")


# What a pattern-checked field should look like, in words rather than a regular expression.
_PATTERN_HINTS = {
    "event_id": "expected a UUID or a ULID",
    "origin": "expected a commune's 5-digit GSO code or site-<name>",
    "receiving_node": "expected a commune's 5-digit GSO code or site-<name>",
    "dossier_id": "expected 1-64 letters, digits or . _ : -, starting with a letter or digit",
    "hash": "expected 64 lowercase hex digits (sha256)",
    "prev_hash": "expected 64 lowercase hex digits (sha256)",
    "applicant_hash": "expected 64 lowercase hex digits (a salted sha256)",
    "sig": "expected the base64 of a 64-byte Ed25519 signature",
    "procedure_code": "expected 1-32 letters, digits or . _ -",
}
# Cross-field validators say which field they blame as "<field>: <reason>".
_BLAMED = re.compile(r"^([a-z_][a-z_.]*): (.*)$", re.DOTALL)


def schema_error(exc: ValidationError, event_type: str) -> SchemaError:
    """One readable ``SchemaError`` (field + reason) from pydantic's validation error."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = [str(part) for part in first["loc"]]
    kind = first["type"]
    if kind == "missing":
        reason = "required field is missing"
    elif kind == "extra_forbidden":
        version = CURRENT_VERSION[event_type]
        reason = f"unexpected field (not part of {event_type} version {version})"
    elif kind == "value_error":
        reason = first["msg"].removeprefix("Value error, ")
        blamed = _BLAMED.match(reason)
        if blamed:
            loc.append(blamed.group(1))
            reason = blamed.group(2)
    else:
        hint = None
        if kind == "string_pattern_mismatch" and loc:
            hint = _PATTERN_HINTS.get(loc[-1])
        reason = f"{hint or first['msg']} (got {_short(first.get('input'))})"
    where = ".".join(loc) or "<event>"
    if len(errors) > 1:
        reason += f"; and {len(errors) - 1} more problem(s)"
    return SchemaError(where, reason)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
