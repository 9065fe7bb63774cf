"""Event envelope, event types, codec, integrity and the topic registry.

Pure domain code: nothing here imports Kafka, faust or SQLAlchemy.
"""

from schemas.codec import canonical, content_hash, decode, encode
from schemas.errors import (
    BadHash,
    BadSignature,
    IntegrityError,
    MotcuaError,
    SchemaError,
    UnknownOrigin,
)
from schemas.events import EVENT_TYPES, GENESIS_HASH, LOCAL_TZ, AnyEvent, Event
from schemas.integrity import KeyRegistry, seal, verify

__all__ = [
    "EVENT_TYPES", "GENESIS_HASH", "LOCAL_TZ", "AnyEvent", "BadHash", "BadSignature", "Event",
    "IntegrityError", "KeyRegistry", "MotcuaError", "SchemaError", "UnknownOrigin", "canonical",
    "content_hash", "decode", "encode", "seal", "verify",
]
