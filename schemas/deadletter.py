"""The dead-letter record (DESIGN.md "Topics", G5): one per rejected message, self-contained.

Key: the source topic's name (so one source's rejects stay in order). Value: JSON with the
reason, where the message came from, who rejected it, and the original key and bytes
(base64, since a rejected message need not be text). Shared by the stream worker and the
sync consumers, and read back by ``motcua dead-letters``.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.errors import MotcuaError, SchemaError

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
    body["original"] = None if original is None else base64.b64decode(original)
    return body
