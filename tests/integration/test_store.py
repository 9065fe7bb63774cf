"""Node store contract, run on SQLite and on PostgreSQL: the service writes state and its
signed event in one transaction, refuses illegal moves without writing, keeps origin_seq
contiguous and the chain intact, and its dossier rows equal the fold of the outbox."""

from __future__ import annotations

import itertools
import threading
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from nacl.signing import SigningKey
from sqlalchemy import Engine, func, select

from infra.node_tables import dossiers, hotline_calls, metadata, node_heads, outbox
from producers import store
from producers.errors import (
    DossierExists,
    DossierNotFound,
    DossierTransitionError,
    InvalidRequest,
)
from producers.migrate import migrate
from producers.service import DossierService
from schemas.codec import decode
from schemas.enums import DossierStatus, Timeliness
from schemas.events import GENESIS_HASH, LOCAL_TZ
from schemas.fold import fold
from schemas.integrity import KeyRegistry, verify
from schemas.nodes import UnknownNode

NODES = ("11977", "12337", "site-phohien", "site-thaibinh")
T0 = datetime(2025, 7, 1, 8, 0, tzinfo=LOCAL_TZ)


@pytest.fixture
def keys() -> dict[str, SigningKey]:
    return {n: SigningKey.generate() for n in NODES}


@pytest.fixture
def service(db_engine: Engine, keys: dict[str, SigningKey]) -> DossierService:
    migrate(db_engine)
    return DossierService(db_engine, keys)


def receive(service: DossierService, node: str = "11977", at: datetime = T0,
            **overrides: Any) -> str:
    args: dict[str, Any] = {"channel": "online", "full_online": True,
                            "procedure_code": "1.004227", "field": "Hộ tịch",
                            "due_date": date(2025, 7, 4), "components_digitised": True}
    args.update(overrides)
    return service.receive(node, at=at, **args).dossier_id


def outbox_events(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        rows = conn.execute(select(outbox.c.body).order_by(outbox.c.origin,
                                                           outbox.c.origin_seq))
        return [decode(bytes(r.body)) for r in rows]


def snapshot(engine: Engine) -> tuple[Any, ...]:
    """Everything a refused call could have touched: outbox, heads, dossier rows, calls."""
    with engine.connect() as conn:
        return tuple(tuple(tuple(r) for r in conn.execute(select(t).order_by(*t.primary_key)))
                     for t in (outbox, node_heads, dossiers, hotline_calls))


def test_migrations_match_the_tables(service: DossierService) -> None:
    migrate(service.engine)  # a second run is a no-op
    with service.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_a_dossier_lifecycle_across_nodes(service: DossierService,
                                          keys: dict[str, SigningKey]) -> None:
    d = receive(service)
    h = timedelta(hours=1)
    assert service.accept("site-phohien", d, at=T0 + h).status is DossierStatus.ACCEPTED
    service.start_processing("site-phohien", d, at=T0 + 2 * h)
    service.request_supplement("site-phohien", d, "Thiếu giấy khai sinh", at=T0 + 3 * h)
    service.supplement_received("site-phohien", d, at=T0 + 4 * h)
    service.await_fees("site-phohien", d, at=T0 + 5 * h)
    service.fees_paid("site-phohien", d, at=T0 + 6 * h)
    extended = service.extend_deadline("site-phohien", d, date(2025, 7, 8),
                                       "Xin lỗi, hẹn lại", at=T0 + 7 * h)
    assert (extended.due_date, extended.original_due_date) == (date(2025, 7, 8),
                                                              date(2025, 7, 4))
    service.resolve("site-phohien", d, result_digitised=True, at=T0 + timedelta(days=6))
    final = service.return_result("11977", d, delivery="in_person", at=T0 + timedelta(days=7))

    assert final.status is DossierStatus.RESULT_RETURNED
    assert final.timeliness() is Timeliness.early  # ready 7/7, due (extended) 8/7
    events = outbox_events(service.engine)
    registry = KeyRegistry({n: k.verify_key for n, k in keys.items()})
    for event in events:
        verify(event, registry)
    assert final == fold(events)
    with service.engine.connect() as conn:
        assert store.load_dossier(conn, d) == final


def test_illegal_moves_raise_and_write_nothing(service: DossierService) -> None:
    d = receive(service)
    before = snapshot(service.engine)
    with pytest.raises(DossierTransitionError,
                       match=r"is in status 1 \(Mới đăng ký\); cannot resolve "
                             r"\(allowed from: 4 Đang xử lý\)"):
        service.resolve("11977", d, result_digitised=True)
    with pytest.raises(DossierTransitionError, match="cannot return the result"):
        service.return_result("11977", d, delivery="postal")
    with pytest.raises(DossierNotFound, match="no dossier NOPE"):
        service.accept("11977", "NOPE")
    with pytest.raises(UnknownNode, match="unknown node '99999'"):
        receive(service, node="99999")
    with pytest.raises(InvalidRequest, match=r"data\.due_date: 2025-06-30 is before"):
        receive(service, due_date=date(2025, 6, 30))
    with pytest.raises(InvalidRequest, match=r"data\.field: String should have at most 80"):
        receive(service, field="x" * 81)
    with pytest.raises(InvalidRequest, match=r"data\.procedure_code"):
        receive(service, procedure_code="-1")
    with pytest.raises(InvalidRequest, match="no time zone"):
        receive(service, at=datetime(2025, 7, 1, 8, 0))
    with pytest.raises(DossierExists, match=f"dossier {d} already exists"):
        receive(service, dossier_id=d)
    with pytest.raises(InvalidRequest, match="hotline calls are taken at the provincial"):
        service.call_received("11977", "land")
    with pytest.raises(InvalidRequest, match=r"is not after dossier .* last event"):
        service.accept("11977", d, at=T0 - timedelta(minutes=1))
    with pytest.raises(InvalidRequest, match="unknown move 'teleport'"):
        service.move("11977", d, "teleport")
    with pytest.raises(InvalidRequest, match="at: expected a datetime, got str"):
        service.accept("11977", d, at="tomorrow")  # type: ignore[arg-type]
    assert snapshot(service.engine) == before


def test_second_extension_is_refused(service: DossierService) -> None:
    d = receive(service, channel="in_person", full_online=False)
    service.start_processing("11977", d)
    service.extend_deadline("11977", d, date(2025, 7, 10), "Xin lỗi")
    before = snapshot(service.engine)
    with pytest.raises(DossierTransitionError, match="already extended once"):
        service.extend_deadline("11977", d, date(2025, 7, 20), "Xin lỗi lần hai")
    assert snapshot(service.engine) == before


def test_batch_keeps_good_calls_and_drops_refused_ones(service: DossierService) -> None:
    with service.batch():
        d = receive(service)
        with pytest.raises(DossierTransitionError):
            service.resolve("11977", d, result_digitised=False)
        service.accept("11977", d)
    assert [e.type for e in outbox_events(service.engine)] == ["dossier.received",
                                                             "dossier.status_changed"]
    assert [e.origin_seq for e in outbox_events(service.engine)] == [1, 2]


def test_batch_commits_every_n_calls_and_an_error_rolls_back_the_rest(
        service: DossierService) -> None:
    with pytest.raises(RuntimeError, match="desk crashed"), service.batch(commit_every=2):
        for i in range(5):
            receive(service, dossier_id=f"B-{i}")
        raise RuntimeError("desk crashed")
    with service.engine.connect() as conn:
        kept = [r.dossier_id for r in conn.execute(select(dossiers.c.dossier_id)
                                                   .order_by(dossiers.c.dossier_id))]
        seqs = [r.origin_seq for r in conn.execute(select(outbox.c.origin_seq))]
    assert kept == ["B-0", "B-1", "B-2", "B-3"]  # committed in pairs; B-4 rolled back
    assert sorted(seqs) == [1, 2, 3, 4]


def test_one_id_received_at_two_nodes_at_once(service: DossierService) -> None:
    """The loser gets DossierExists, never a raw database error; one dossier, one event."""
    errors: list[BaseException] = []

    def desk(node: str) -> None:
        for i in range(20):
            try:
                receive(service, node=node, dossier_id=f"SAME-{i}")
            except DossierExists:
                pass
            except BaseException as exc:  # noqa: BLE001 - asserted empty below
                errors.append(exc)

    pool = [threading.Thread(target=desk, args=(n,)) for n in ("11977", "12337")]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors
    with service.engine.connect() as conn:
        received = conn.execute(select(func.count()).select_from(outbox)).scalar_one()
        rows = conn.execute(select(func.count()).select_from(dossiers)).scalar_one()
    assert received == rows == 20


def test_hotline_calls(service: DossierService) -> None:
    call = service.call_received("site-thaibinh", "land", at=T0)
    before = snapshot(service.engine)
    with pytest.raises(InvalidRequest, match="only that site closes it"):
        service.call_closed("site-phohien", call, "land", resolved=True, at=T0)
    with pytest.raises(InvalidRequest, match="only that site closes it"):
        service.call_closed("11977", call, "land", resolved=True, at=T0)
    with pytest.raises(InvalidRequest, match=r"is before call .* was received"):
        service.call_closed("site-thaibinh", call, "land", resolved=True,
                            at=T0 - timedelta(hours=1))
    assert snapshot(service.engine) == before
    service.call_closed("site-thaibinh", call, "complaint", resolved=True, at=T0)
    with pytest.raises(DossierTransitionError, match="already closed"):
        service.call_closed("site-thaibinh", call, "complaint", resolved=True)
    with service.engine.connect() as conn:
        topics = [r.topic for r in conn.execute(select(outbox.c.topic))]
    assert topics == ["hotline-events", "hotline-events"]


def test_concurrent_writers_keep_seq_contiguous_and_chain_intact(
        service: DossierService) -> None:
    """Several threads write to one node at once: 1..N, no gap, no duplicate, one chain."""
    threads, per_thread = 4, 25
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(per_thread):
                d = receive(service, at=T0 + timedelta(seconds=i))
                service.accept("11977", d)
        except BaseException as exc:  # noqa: BLE001 - asserted empty below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors
    events = [e for e in outbox_events(service.engine) if e.origin == "11977"]
    n = threads * per_thread * 2
    assert [e.origin_seq for e in events] == list(range(1, n + 1))
    assert events[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(events):
        assert after.prev_hash == before.hash
    with service.engine.connect() as conn:
        states = {r.dossier_id: r.status for r in conn.execute(select(dossiers))}
    assert len(states) == threads * per_thread
    assert set(states.values()) == {int(DossierStatus.ACCEPTED)}


def test_a_clock_behind_another_node_still_orders_the_answer_after(
        db_engine: Engine, keys: dict[str, SigningKey]) -> None:
    """The site's clock is an hour ahead of the commune's: the commune's return (clock
    time) must still fold after the site's resolution, not before it."""
    migrate(db_engine)
    site = DossierService(db_engine, keys, clock=lambda: T0 + timedelta(hours=1))
    commune = DossierService(db_engine, keys, clock=lambda: T0)
    d = commune.receive("11977", channel="in_person", procedure_code="1.001", field="land",
                        due_date=date(2025, 7, 4), components_digitised=False).dossier_id
    site.start_processing("site-phohien", d)
    site.resolve("site-phohien", d, result_digitised=True)
    final = commune.return_result("11977", d, delivery="in_person")
    assert final.status is DossierStatus.RESULT_RETURNED
    assert final.anomalies == ()
    assert final.returned_at is not None and final.resolved_at is not None
    assert final.returned_at > final.resolved_at
