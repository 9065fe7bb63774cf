"""The dossier service: the API a one-stop desk system calls at a node.

Every call writes the dossier's new state and its signed event in ONE transaction, or writes
nothing and raises a ``ServiceError`` naming what is wrong. Legal moves follow the national
status codes (DESIGN.md): e.g. a result can be returned only once it is ready (9 -> 10).
The new state is the fold of the dossier's events (schemas.fold), never computed here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from typing import Any

from nacl.signing import SigningKey
from pydantic import ValidationError
from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.exc import IntegrityError

from infra.db import is_postgresql
from infra.node_tables import hotline_calls
from producers import store
from producers.errors import (
    DossierExists,
    DossierNotFound,
    DossierTransitionError,
    InvalidRequest,
)
from schemas.codec import schema_error
from schemas.enums import Channel, HotlineCategory
from schemas.events import (
    LOCAL_TZ,
    AnyEvent,
    DossierDeadlineExtended,
    DossierReceived,
    Event,
    HotlineCallClosed,
    HotlineCallClosedData,
    HotlineCallReceived,
    HotlineCallReceivedData,
)
from schemas.fold import DossierState
from schemas.integrity import seal
from schemas.keys import Keyring
from schemas.moves import MOVES, decide
from schemas.nodes import get_node
from schemas.topics import DOSSIER_EVENTS, HOTLINE_EVENTS

Clock = Callable[[], datetime]


def local_now() -> datetime:
    return datetime.now(LOCAL_TZ)


class DossierService:
    """Operations of one store, for any node whose signing key ``keys`` provides."""

    def __init__(self, engine: Engine, keys: Mapping[str, SigningKey] | Callable[[str],
                 SigningKey], *, clock: Clock = local_now) -> None:
        self.engine = engine
        self._keys = keys
        self.clock = clock
        self._local = threading.local()  # the batch connection, per thread

    @contextmanager
    def batch(self, commit_every: int | None = None) -> Iterator[DossierService]:
        """Run many calls on one connection, committing every ``commit_every`` calls (the
        simulator's bulk mode). Each call still writes all or nothing: it runs in its own
        SAVEPOINT, and a refused call leaves the others in place. An exception out of the
        block rolls back the calls since the last commit. PostgreSQL slows down sharply
        once a transaction holds more than 64 subtransactions (its per-backend subxid
        cache overflows), hence its small default. A batch holds the head rows of every
        node it wrote to until it commits: it is meant for one writer (the simulator);
        two batches over the same nodes in different orders can deadlock on PostgreSQL."""
        if getattr(self._local, "batch", None) is not None:
            raise RuntimeError("batches do not nest")
        limit = commit_every or (50 if is_postgresql(self.engine) else 1000)
        with self.engine.connect() as conn:
            self._local.batch, self._local.limit, self._local.calls = conn, limit, 0
            conn.begin()
            try:
                yield self
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            finally:
                self._local.batch = None

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        batch: Connection | None = getattr(self._local, "batch", None)
        try:
            if batch is None:
                with self.engine.begin() as conn:
                    yield conn
                return
            with batch.begin_nested():
                yield batch
        except IntegrityError as exc:
            # only a new id can collide (existing rows are locked): another node wrote the
            # same dossier or call id at the same moment
            raise DossierExists(f"id already in use (written concurrently elsewhere): "
                                f"{exc.orig}") from None
        self._local.calls += 1
        if self._local.calls >= self._local.limit:
            batch.commit()
            batch.begin()
            self._local.calls = 0

    # --- intake -------------------------------------------------------------------------

    def receive(self, node: str, *, channel: Channel | str, procedure_code: str, field: str,
                due_date: date, components_digitised: bool, full_online: bool = False,
                applicant_hash: str | None = None, dossier_id: str | None = None,
                at: datetime | None = None) -> DossierState:
        """Record a new dossier (status 1 if it came online, else 2) and return its state."""
        data = {"procedure_code": procedure_code, "field": field, "channel": channel,
                "full_online": full_online, "receiving_node": node, "due_date": due_date,
                "components_digitised": components_digitised, "applicant_hash": applicant_hash}

        def build(state: DossierState | None, seq: int, when: datetime) -> tuple[Any, Any]:
            if state is not None:
                raise DossierExists(f"dossier {state.dossier_id} already exists (received at "
                                    f"{state.receiving_node}); a dossier id is never reused")
            return DossierReceived, data

        return self._write(node, dossier_id, build, at)

    def accept(self, node: str, dossier_id: str, *, at: datetime | None = None
               ) -> DossierState:
        return self.move(node, dossier_id, "accept", at=at)

    def refuse(self, node: str, dossier_id: str, reason: str, *, at: datetime | None = None
               ) -> DossierState:
        return self.move(node, dossier_id, "refuse", {"reason": reason}, at=at)

    # --- processing ---------------------------------------------------------------------

    def start_processing(self, node: str, dossier_id: str, *, at: datetime | None = None
                         ) -> DossierState:
        return self.move(node, dossier_id, "start processing", at=at)

    def request_supplement(self, node: str, dossier_id: str, reason: str, *,
                           at: datetime | None = None) -> DossierState:
        return self.move(node, dossier_id, "request a supplement", {"reason": reason}, at=at)

    def supplement_received(self, node: str, dossier_id: str, *, at: datetime | None = None
                            ) -> DossierState:
        return self.move(node, dossier_id, "resume after the supplement", at=at)

    def await_fees(self, node: str, dossier_id: str, *, at: datetime | None = None
                   ) -> DossierState:
        return self.move(node, dossier_id, "await fees", at=at)

    def fees_paid(self, node: str, dossier_id: str, *, at: datetime | None = None
                  ) -> DossierState:
        return self.move(node, dossier_id, "resume after fees", at=at)

    def stop(self, node: str, dossier_id: str, reason: str, *, at: datetime | None = None
             ) -> DossierState:
        return self.move(node, dossier_id, "stop", {"reason": reason}, at=at)

    def extend_deadline(self, node: str, dossier_id: str, new_due_date: date, reason: str, *,
                        at: datetime | None = None) -> DossierState:
        """Once per dossier, with an apology notice; the new date must be later."""
        return self.move(node, dossier_id, "extend the deadline",
                         {"new_due_date": new_due_date, "reason": reason}, at=at)

    def resolve(self, node: str, dossier_id: str, *, result_digitised: bool,
                at: datetime | None = None) -> DossierState:
        return self.move(node, dossier_id, "resolve", {"result_digitised": result_digitised},
                         at=at)

    def return_result(self, node: str, dossier_id: str, *, delivery: Channel | str,
                      at: datetime | None = None) -> DossierState:
        return self.move(node, dossier_id, "return the result", {"delivery": delivery}, at=at)

    def withdraw(self, node: str, dossier_id: str, reason: str | None = None, *,
                 at: datetime | None = None) -> DossierState:
        return self.move(node, dossier_id, "withdraw", {"reason": reason}, at=at)

    def move(self, node: str, dossier_id: str, verb: str, data: dict[str, Any] | None = None,
             *, at: datetime | None = None) -> DossierState:
        """Apply the named move (see ``MOVES``) to an existing dossier."""
        rule = MOVES.get(verb)
        if rule is None:
            raise InvalidRequest(f"unknown move {verb!r} (known: {', '.join(MOVES)})")
        payload = dict(data or {})

        def build(state: DossierState | None, seq: int, when: datetime) -> tuple[Any, Any]:
            if state is None:
                raise DossierNotFound(f"no dossier {dossier_id} in this store; cannot {verb}")
            refused = decide(state, verb)
            if refused is not None:
                raise DossierTransitionError(refused)
            if rule.event is DossierDeadlineExtended:
                payload["previous_due_date"] = state.due_date
            if rule.to_status is not None:
                payload.update(from_status=state.status, to_status=rule.to_status,
                               reason=payload.get("reason"))
            return rule.event, payload

        return self._write(node, dossier_id, build, at)

    # --- hotline ------------------------------------------------------------------------

    def call_received(self, site: str, category: HotlineCategory | str, *,
                      call_id: str | None = None, at: datetime | None = None) -> str:
        """Record a call to hotline 1022 at a provincial site; returns the call id."""
        if not get_node(site).is_site:
            raise InvalidRequest(f"node {site}: hotline calls are taken at the provincial "
                                 "sites (site-phohien, site-thaibinh), not at a commune")
        when = at or self.clock()
        key = self._key(site)
        with self._transaction() as conn:
            seq, head = store.lock_head(conn, site)
            call = call_id or _default_id(site, when, seq + 1)
            if conn.execute(select(hotline_calls.c.call_id)
                            .where(hotline_calls.c.call_id == call)).first():
                raise DossierExists(f"call {call} already exists")
            event = self._seal(HotlineCallReceived, site, seq, head, call, when,
                               {"category": category}, key)
            store.append(conn, event, HOTLINE_EVENTS)
            conn.execute(hotline_calls.insert().values(
                call_id=call, site=site, category=_category(event), received_at=when))
        return call

    def call_closed(self, site: str, call_id: str, category: HotlineCategory | str, *,
                    resolved: bool, at: datetime | None = None) -> None:
        """Close a call, at the site that took it, not before it was taken."""
        get_node(site)
        when = at or self.clock()
        key = self._key(site)
        with self._transaction() as conn:
            seq, head = store.lock_head(conn, site)
            row = conn.execute(select(hotline_calls).where(hotline_calls.c.call_id == call_id)
                               .with_for_update()).one_or_none()
            if row is None:
                raise DossierNotFound(f"no hotline call {call_id} in this store")
            if row.closed_at is not None:
                raise DossierTransitionError(f"call {call_id} is already closed")
            if row.site != site:
                raise InvalidRequest(f"call {call_id} was taken at {row.site}; only that site "
                                     f"closes it, not {site}")
            if _check_time(when) < row.received_at:
                raise InvalidRequest(f"at: {when.isoformat()} is before call {call_id} was "
                                     f"received ({row.received_at.isoformat()})")
            event = self._seal(HotlineCallClosed, site, seq, head, call_id, when,
                               {"category": category, "resolved": resolved}, key)
            store.append(conn, event, HOTLINE_EVENTS)
            conn.execute(update(hotline_calls).where(hotline_calls.c.call_id == call_id)
                         .values(closed_at=when, resolved=resolved,
                                 category=_category(event)))

    # --- the one write path ---------------------------------------------------------------

    def _write(self, node: str, dossier_id: str | None,
               build: Callable[[DossierState | None, int, datetime], tuple[Any, Any]],
               at: datetime | None) -> DossierState:
        get_node(node)
        key = self._key(node)
        when = _check_time(at or self.clock())
        with self._transaction() as conn:
            seq, head = store.lock_head(conn, node)
            subject = dossier_id or _default_id(node, when, seq + 1)
            state = store.load_dossier(conn, subject, lock=True)
            cls, data = build(state, seq, when)
            if state is not None and state.last_key is not None and when <= state.last_key[0]:
                last = state.last_key[0].astimezone(LOCAL_TZ).isoformat()
                if at is not None:  # validated against now, it would fold in the past
                    raise InvalidRequest(f"at: {at.isoformat()} is not after dossier "
                                         f"{subject}'s last event ({last}); a move cannot "
                                         "be back-dated")
                # The clerk acts on what the store shows, so the act comes after it: a
                # clock behind another node's must not order this event before the one it
                # answers.
                when = state.last_key[0] + timedelta(milliseconds=1)
            event = self._seal(cls, node, seq, head, subject, when, data, key)
            store.append(conn, event, DOSSIER_EVENTS)
            new = store.advance(conn, state, event)
            store.save_dossier(conn, new, exists=state is not None)
        return new

    def _seal(self, cls: type[Event], node: str, seq: int, head: str,  # type: ignore[type-arg]
              subject: str, when: datetime, data: dict[str, Any], key: SigningKey
              ) -> AnyEvent:
        _check_time(when)
        if isinstance(self._keys, Keyring):  # under the head lock: a rotation is seen here
            key = self._keys.for_seq(node, seq + 1)
        try:
            return seal(cls, origin=node, origin_seq=seq + 1, prev_hash=head,
                        dossier_id=subject, occurred_at=when, data=data, key=key)
        except ValidationError as exc:
            raise InvalidRequest(str(schema_error(exc, cls.TYPE))) from None

    def _key(self, node: str) -> SigningKey:
        if callable(self._keys):
            return self._keys(node)
        try:
            return self._keys[node]
        except KeyError:
            raise InvalidRequest(f"node {node}: no signing key in this store's keyring") from None


def _check_time(when: object) -> datetime:
    if not isinstance(when, datetime):
        raise InvalidRequest(f"at: expected a datetime, got {type(when).__name__}")
    if when.tzinfo is None:
        raise InvalidRequest(f"at: {when.isoformat()} has no time zone; pass an aware "
                             "datetime (Asia/Ho_Chi_Minh is +07:00)")
    return when


def _category(event: AnyEvent) -> str:
    data = event.data
    assert isinstance(data, HotlineCallReceivedData | HotlineCallClosedData)
    return data.category.value


def _default_id(node: str, when: datetime, seq: int) -> str:
    """``<node>.<yymmdd>.<seq>``: unique because origin_seq is unique per node."""
    return f"{node}.{when.astimezone(LOCAL_TZ):%y%m%d}.{seq:07d}"
