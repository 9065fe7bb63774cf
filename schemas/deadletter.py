"""The dead-letter record (DESIGN.md "Topics", G5): one per rejected message, self-contained.

Key: the source topic's name (so one source's rejects stay in order). Value: JSON with the
reason, where the message came from, who rejected it, and the original key and bytes
(base64, since a rejected message need not be text). Shared by the stream worker and the
sync consumers, and read back by ``motcua dead-letters``.

Every reader of the event topics checks every message, so one bad message is filed once per
reader (the stream worker, each sync consumer). ``group`` folds those raw letters into one
``Logical`` letter per bad message: same source position (topic, partition, offset) and
same original bytes (their sha256: a recreated topic or a restarted in-memory broker puts
another message at the same offset); a letter without a source position goes by its
original's sha256 alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

import orjson

from schemas.errors import MotcuaError, SchemaError
from schemas.events import LOCAL_TZ

MAX_ORIGINAL = 64 * 1024  # events are refused above 16 KiB; this keeps any of them whole
MAX_KEY = 1024  # a key of any size must not make the letter too large to publish
MAX_REASON = 2000


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    source_topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    stage: str  # "streams", "sync:site-phohien", ...
    field: str | None = None  # the envelope field at fault, when known

    @classmethod
    def of(cls, exc: MotcuaError, *, source_topic: str, partition: int, offset: int,
           key: bytes | None, value: bytes | None, stage: str) -> DeadLetter:
        field = exc.field if isinstance(exc, SchemaError) else None
        return cls(str(exc), source_topic, partition, offset, key, value, stage, field)

    def record(self, now: datetime | None = None) -> tuple[bytes, bytes]:
        """(key, value) for the dead-letters topic. An original over ``MAX_ORIGINAL`` bytes
        (a key over ``MAX_KEY``, a reason over ``MAX_REASON``) is cut, with its length and
        sha256 kept: base64 of a message near the broker's size
        limit would itself be too large to publish, and its partition would stall."""
        reason = (self.reason if len(self.reason) <= MAX_REASON
                  else self.reason[:MAX_REASON] + " [...]")
        body: dict[str, Any] = {
            "reason": reason, "field": self.field, "stage": self.stage,
            "source": {"topic": self.source_topic, "partition": self.partition,
                       "offset": self.offset},
            "key_b64": (None if self.key is None
                        else base64.b64encode(self.key[:MAX_KEY]).decode()),
            "key_bytes": None if self.key is None else len(self.key),
            "key_truncated": self.key is not None and len(self.key) > MAX_KEY,
            "original_b64": (None if self.value is None
                             else base64.b64encode(self.value[:MAX_ORIGINAL]).decode()),
            "original_bytes": None if self.value is None else len(self.value),
            "original_sha256": (None if self.value is None
                                else hashlib.sha256(self.value).hexdigest()),
            "original_truncated": self.value is not None and len(self.value) > MAX_ORIGINAL,
            "rejected_at": (now or datetime.now(UTC)).isoformat(),
        }
        return self.source_topic.encode(), orjson.dumps(body)


def parse(value: bytes) -> dict[str, Any]:
    """A dead-letter value as a dict, with ``original`` decoded back to bytes."""
    body: dict[str, Any] = orjson.loads(value)
    original = body.get("original_b64")
    body["original"] = None if original is None else base64.b64decode(original, validate=True)
    return body


def read(value: bytes | None) -> dict[str, Any] | None:
    """``parse``, or None for a record on the dead-letters topic that is not a dead letter
    (not JSON, no filing time): listing the others must not stop at it."""
    try:
        body = parse(value or b"")
        body["filed_at"] = datetime.fromisoformat(body["rejected_at"])
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error):
        return None  # orjson's and base64's errors are ValueErrors
    if body["filed_at"].tzinfo is None:
        return None
    return body


@dataclass(frozen=True)
class Logical:
    """One bad message, however many readers filed it."""

    source: tuple[str, int, int] | None  # (topic, partition, offset)
    original_sha256: str | None
    readers: tuple[str, ...]  # stages, sorted: "streams", "sync:site-phohien", ...
    raw: int  # dead letters behind it
    reasons: tuple[str, ...]  # distinct, the first filed first
    first_filed: datetime
    last_filed: datetime
    dossier_id: str | None
    origin: str | None
    letter: dict[str, Any]  # the first one filed, for its original bytes and key

    @property
    def reason(self) -> str:
        return self.reasons[0]

    def as_dict(self) -> dict[str, Any]:
        """What ``motcua dead-letters --json`` prints: times in local time with offset."""
        first = self.letter
        return {
            "source": (None if self.source is None else dict(zip(
                ("topic", "partition", "offset"), self.source, strict=True))),
            "reason": self.reason, "reasons": list(self.reasons), "field": first.get("field"),
            "readers": list(self.readers), "raw_letters": self.raw,
            "dossier_id": self.dossier_id, "origin": self.origin,
            "first_filed": local_iso(self.first_filed), "last_filed": local_iso(self.last_filed),
            "original_sha256": self.original_sha256,
            **{k: first.get(k) for k in ("original_bytes", "original_truncated",
                                         "original_b64", "key_b64", "key_bytes")},
        }

    def lines(self, width: int = 160) -> list[str]:
        """Two lines for the terminal: when, where, what it was, who found it; then why."""
        where = "-" if self.source is None else "{}[{}]@{}".format(*self.source)
        head = (f"{local_text(self.first_filed)}  {where}  dossier "
                f"{one_line(self.dossier_id or '-', 64)}  origin {one_line(self.origin or '-', 32)}"
                f"  found by {', '.join(reader_name(r) for r in self.readers)}")
        more = len(self.reasons) - 1
        why = one_line(self.reason, width - 4) + (f" (+{more} other reason"
                                                  f"{'s' if more > 1 else ''}: --json)"
                                                  if more else "")
        return [head, "    " + why]


def group(bodies: Iterable[dict[str, Any]]) -> list[Logical]:
    """One ``Logical`` letter per bad message (see the module's docstring), sorted by when it
    was first filed (then source position): the order the problems came in, across both
    topics, so the newest are at the end, next to the prompt."""
    by_message: dict[tuple[tuple[str, int, int] | None, str | None], list[dict[str, Any]]] = {}
    for body in bodies:
        by_message.setdefault(_identity(body), []).append(body)
    return sorted((_logical(ident, letters) for ident, letters in by_message.items()),
                  key=lambda g: (g.first_filed, g.source or ("", -1, -1)))


def filtered(letters: Sequence[Logical], *, since: datetime | None = None,
           reason: str | None = None) -> list[Logical]:
    """The letters first filed at or after ``since`` whose reasons contain ``reason``
    (case-insensitive)."""
    needle = None if reason is None else reason.casefold()
    return [g for g in letters
            if (since is None or g.first_filed >= since)
            and (needle is None or any(needle in r.casefold() for r in g.reasons))]


def parse_since(text: str) -> datetime:
    """A local date (its midnight) or date and time, or an ISO time with its own offset."""
    try:
        return datetime.combine(date.fromisoformat(text), time(), LOCAL_TZ)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a date (YYYY-MM-DD) nor a local time "
                         "(YYYY-MM-DD HH:MM[:SS])") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=LOCAL_TZ)


def reader_name(stage: str) -> str:
    """``sync:site-phohien`` -> ``sync site-phohien``."""
    return stage.replace(":", " ", 1)


def local_text(moment: datetime) -> str:
    return moment.astimezone(LOCAL_TZ).strftime("%Y-%m-%d %H:%M:%S")


def local_iso(moment: datetime) -> str:
    return moment.astimezone(LOCAL_TZ).isoformat(timespec="seconds")


def one_line(text: str, width: int) -> str:
    """``text`` on one line of at most ``width`` characters (cut with an ellipsis)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width - 1] + "…"


def _identity(body: dict[str, Any]) -> tuple[tuple[str, int, int] | None, str | None]:
    src = body.get("source")
    where = None
    if isinstance(src, dict):
        topic, partition, offset = (src.get(k) for k in ("topic", "partition", "offset"))
        if isinstance(topic, str) and isinstance(partition, int) and isinstance(offset, int):
            where = (topic, partition, offset)
    return (where, _sha256(body))


def _sha256(body: dict[str, Any]) -> str | None:
    digest = body.get("original_sha256")
    if isinstance(digest, str):
        return digest
    original = body.get("original")  # a letter written before the digest was kept
    return None if original is None else hashlib.sha256(original).hexdigest()


def _logical(ident: tuple[tuple[str, int, int] | None, str | None],
             letters: list[dict[str, Any]]) -> Logical:
    letters.sort(key=lambda b: b["filed_at"])
    where, digest = ident
    first = letters[0]
    reasons = list(dict.fromkeys(str(b.get("reason", "?")) for b in letters))
    subject = _subject(first.get("original"), bool(first.get("original_truncated")))
    return Logical(where, digest, tuple(sorted({str(b.get("stage", "?")) for b in letters})),
                   len(letters), tuple(reasons), first["filed_at"], letters[-1]["filed_at"],
                   *subject, first)


def _subject(original: bytes | None, truncated: bool) -> tuple[str | None, str | None]:
    """(dossier id, origin) as the original bytes give them, if they are a JSON object
    (best effort: a rejected message may be anything)."""
    if original is None or truncated:
        return None, None
    try:
        doc = orjson.loads(original)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(doc, dict):
        return None, None

    def text(v: object) -> str | None:
        return v if isinstance(v, str) and v else None

    return text(doc.get("dossier_id")), text(doc.get("origin"))
