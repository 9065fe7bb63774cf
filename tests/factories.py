"""Builders of valid, signed events for tests: one ``Chain`` per origin keeps origin_seq and
prev_hash right, so a test states only what it cares about."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from nacl.signing import SigningKey

from schemas.events import EVENT_TYPES, GENESIS_HASH, LOCAL_TZ, AnyEvent
from schemas.integrity import KeyRegistry, seal

T0 = datetime(2025, 7, 1, 8, 0, tzinfo=LOCAL_TZ)

SAMPLE_DATA: dict[str, dict[str, Any]] = {
    "dossier.received": {
        "procedure_code": "1.001234", "field": "Đất đai", "channel": "online",
        "full_online": True, "receiving_node": "11977", "due_date": date(2025, 7, 10),
        "components_digitised": True,
    },
    "dossier.status_changed": {"from_status": 2, "to_status": 4, "reason": None},
    "dossier.supplement_requested": {"reason": "Thiếu bản sao sổ hộ khẩu"},
    "dossier.deadline_extended": {"previous_due_date": date(2025, 7, 10),
                                  "new_due_date": date(2025, 7, 15),
                                  "reason": "Phiếu xin lỗi và hẹn lại ngày trả kết quả"},
    "dossier.resolved": {"result_digitised": True},
    "dossier.returned": {"delivery": "postal"},
    "dossier.withdrawn": {"reason": "Công dân rút hồ sơ"},
    "dossier.refused": {"reason": "Hồ sơ không thuộc thẩm quyền"},
    "hotline.call_received": {"category": "land"},
    "hotline.call_closed": {"category": "land", "resolved": True},
}


class Chain:
    """One origin's signing key and position in its hash chain."""

    def __init__(self, origin: str, key: SigningKey | None = None) -> None:
        self.origin = origin
        self.key = key or SigningKey.generate()
        self.seq = 0
        self.head = GENESIS_HASH

    def emit(self, event_type: str, dossier_id: str = "D-11977-000001",
             occurred_at: datetime | None = None, **data: Any) -> AnyEvent:
        payload = {**SAMPLE_DATA[event_type], **data}
        event = seal(EVENT_TYPES[event_type], origin=self.origin, origin_seq=self.seq + 1,
                     prev_hash=self.head, dossier_id=dossier_id,
                     occurred_at=occurred_at or T0 + timedelta(minutes=self.seq),
                     data=payload, key=self.key)
        self.seq, self.head = event.origin_seq, event.hash
        return event


def registry_of(*chains: Chain) -> KeyRegistry:
    return KeyRegistry({c.origin: c.key.verify_key for c in chains})
