"""The event envelope and every event type (DESIGN.md "Events"), as frozen pydantic v2 models.

Field names are the contract between nodes; JSON Schema for each type is exported to
``schemas/json/`` by ``motcua schemas export`` and a test fails when the two drift apart.
No citizen personal data travels: an applicant is at most a salted hash.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import Annotated, Any, ClassVar, Generic, Literal, Self, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from schemas.enums import Channel, DossierStatus, HotlineCategory

#: Asia/Ho_Chi_Minh has had no DST since 1975: a fixed +07:00 offset is exact for our period.
LOCAL_TZ = timezone(timedelta(hours=7), "Asia/Ho_Chi_Minh")

#: Hash of "no previous event": the prev_hash of every origin's origin_seq 1.
GENESIS_HASH = "0" * 64

# A 5-digit GSO code for a commune centre, or ``site-<name>`` for a provincial site.
NodeId = Annotated[str, Field(pattern=r"^(\d{5}|site-[a-z0-9]{1,32})$")]
SubjectId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
# 64-byte Ed25519 signature, standard base64 with padding. The last character before "=="
# carries 4 unused bits; requiring them zero leaves one spelling per signature.
Signature = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{85}[AQgw]==$")]
# UUID (canonical, lowercase; we issue UUIDv7) or ULID.
EventId = Annotated[
    str,
    Field(pattern=r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
                  r"|[0-9A-HJKMNP-TV-Z]{26})$"),
]
# No NUL in free text: PostgreSQL text cannot hold it, so a store or replica there could
# never take an event that SQLite ones take (replicas would diverge by backend).
Reason = Annotated[str, Field(min_length=1, max_length=500, pattern=r"^[^\x00]+$")]
ShortText = Annotated[str, Field(min_length=1, max_length=80, pattern=r"^[^\x00]+$")]
ProcedureCode = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")]
EventTime = Annotated[AwareDatetime, Field(ge=datetime(2000, 1, 1, tzinfo=UTC),
                                           lt=datetime(2100, 1, 1, tzinfo=UTC))]


class Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


D = TypeVar("D", bound=Payload)


class Event(BaseModel, Generic[D]):
    """The envelope shared by every event. Subclasses pin ``type`` and ``data``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    TYPE: ClassVar[str] = ""

    event_id: EventId
    type: str
    schema_version: int = Field(ge=1)
    occurred_at: EventTime
    origin: NodeId
    origin_seq: int = Field(ge=1, le=2**63 - 1)
    dossier_id: SubjectId
    prev_hash: Sha256Hex
    hash: Sha256Hex
    sig: Signature
    data: D

    # sha256 of the content as it arrived on the wire, set by the decoder so verification does
    # not depend on re-serialising (and so still holds after an upcast rewrote the content).
    _wire_hash: str | None = PrivateAttr(default=None)

    # A copy is not the decoded event: whatever changed in it must be hashed again.
    # (pydantic's model_copy goes through these two.)
    def __copy__(self) -> Self:
        clone = super().__copy__()
        clone._wire_hash = None
        return clone

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        clone = super().__deepcopy__(memo)
        clone._wire_hash = None
        return clone

    @property
    def local_date(self) -> date:
        """The local (+07:00) calendar day the event belongs to: periods are counted by it."""
        return self.occurred_at.astimezone(LOCAL_TZ).date()


# --- payloads -----------------------------------------------------------------------------


class DossierReceivedData(Payload):
    procedure_code: ProcedureCode
    field: ShortText  # lĩnh vực, e.g. "land", "civil_status"
    channel: Channel
    full_online: bool  # toàn trình; only meaningful (and only allowed) for online dossiers
    receiving_node: NodeId
    due_date: date  # ngày hẹn trả, a local date
    components_digitised: bool
    applicant_hash: Sha256Hex | None = None  # salted hash; never the citizen's identity

    @model_validator(mode="after")
    def _full_online_needs_online(self) -> DossierReceivedData:
        if self.full_online and self.channel is not Channel.online:
            raise ValueError(f"full_online: true, but channel is {self.channel.value!r}; "
                             "only online dossiers can be fully online")
        return self


class DossierStatusChangedData(Payload):
    from_status: DossierStatus
    to_status: DossierStatus
    reason: Reason | None = None

    @model_validator(mode="after")
    def _changes(self) -> DossierStatusChangedData:
        if self.from_status == self.to_status:
            raise ValueError(f"to_status: same as from_status ({int(self.to_status)}); "
                             "a status change must change the status")
        return self


class DossierSupplementRequestedData(Payload):
    reason: Reason


class DossierDeadlineExtendedData(Payload):
    previous_due_date: date
    new_due_date: date
    reason: Reason  # the apology notice (phiếu xin lỗi và hẹn lại ngày trả)

    @model_validator(mode="after")
    def _later(self) -> DossierDeadlineExtendedData:
        if self.new_due_date <= self.previous_due_date:
            raise ValueError(f"new_due_date: {self.new_due_date} is not after "
                             f"previous_due_date {self.previous_due_date}")
        return self


class DossierResolvedData(Payload):
    result_digitised: bool


class DossierReturnedData(Payload):
    delivery: Channel  # how the result went back to the citizen


class DossierWithdrawnData(Payload):
    reason: Reason | None = None


class DossierRefusedData(Payload):
    reason: Reason


class HotlineCallReceivedData(Payload):
    category: HotlineCategory


class HotlineCallClosedData(Payload):
    category: HotlineCategory  # may differ from the category at pick-up
    resolved: bool


# --- event types ---------------------------------------------------------------------------


class DossierReceived(Event[DossierReceivedData]):
    TYPE: ClassVar[str] = "dossier.received"
    type: Literal["dossier.received"]

    @model_validator(mode="after")
    def _due_not_before_receipt(self) -> DossierReceived:
        if self.data.due_date < self.local_date:
            raise ValueError(f"data.due_date: {self.data.due_date} is before the local "
                             f"receive date {self.local_date}")
        return self


class DossierStatusChanged(Event[DossierStatusChangedData]):
    TYPE: ClassVar[str] = "dossier.status_changed"
    type: Literal["dossier.status_changed"]


class DossierSupplementRequested(Event[DossierSupplementRequestedData]):
    TYPE: ClassVar[str] = "dossier.supplement_requested"
    type: Literal["dossier.supplement_requested"]


class DossierDeadlineExtended(Event[DossierDeadlineExtendedData]):
    TYPE: ClassVar[str] = "dossier.deadline_extended"
    type: Literal["dossier.deadline_extended"]


class DossierResolved(Event[DossierResolvedData]):
    TYPE: ClassVar[str] = "dossier.resolved"
    type: Literal["dossier.resolved"]


class DossierReturned(Event[DossierReturnedData]):
    TYPE: ClassVar[str] = "dossier.returned"
    type: Literal["dossier.returned"]


class DossierWithdrawn(Event[DossierWithdrawnData]):
    TYPE: ClassVar[str] = "dossier.withdrawn"
    type: Literal["dossier.withdrawn"]


class DossierRefused(Event[DossierRefusedData]):
    TYPE: ClassVar[str] = "dossier.refused"
    type: Literal["dossier.refused"]


class HotlineCallReceived(Event[HotlineCallReceivedData]):
    TYPE: ClassVar[str] = "hotline.call_received"
    type: Literal["hotline.call_received"]


class HotlineCallClosed(Event[HotlineCallClosedData]):
    TYPE: ClassVar[str] = "hotline.call_closed"
    type: Literal["hotline.call_closed"]


AnyEvent = Event[Any]  # any event type; Event is invariant in its payload

EVENT_TYPES: dict[str, type[Event]] = {  # type: ignore[type-arg]
    cls.TYPE: cls
    for cls in (
        DossierReceived, DossierStatusChanged, DossierSupplementRequested,
        DossierDeadlineExtended, DossierResolved, DossierReturned, DossierWithdrawn,
        DossierRefused, HotlineCallReceived, HotlineCallClosed,
    )
}


def _init_private(self: Event, context: Any, /) -> None:  # type: ignore[type-arg]
    object.__setattr__(self, "__pydantic_private__", {"_wire_hash": None})


# pydantic wraps the private-attribute set-up once more at each level of a generic subclass
# (Event -> Event[Data] -> DossierReceived), so every decode set ``_wire_hash`` three times:
# 40% of a decode (measured, bench/engine.py). The validator looks ``model_post_init`` up by
# name on the instance's class, so one plain set-up per concrete type replaces the chain.
for _cls in EVENT_TYPES.values():
    _cls.model_post_init = _init_private  # type: ignore[method-assign, assignment]

PAYLOADS: dict[str, type[Payload]] = {
    name: cls.model_fields["data"].annotation  # type: ignore[misc]
    for name, cls in EVENT_TYPES.items()
}
