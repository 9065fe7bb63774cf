"""One simulated dossier's life, as a list of service calls with their times (an assumption
about the province's workload, tuned to look like one; see producers/sim/plan.py for what is
calibrated to fact). Pure: a seeded ``random.Random`` decides everything."""

from __future__ import annotations

import random
from datetime import date, datetime, time, timedelta
from typing import Any

from producers.sim.calendar import add_business_days, add_office_hours, at, open_at_or_after
from schemas.nodes import SITE_PHOHIEN, SITE_THAIBINH, Node

# when, node, service method, dossier (or call) id, the method's other arguments
Op = tuple[datetime, str, str, str, dict[str, Any]]

# (field code, promised working days, weight, procedure codes)
FIELDS = (
    ("civil_status", 1, 30, ("1.001193", "1.000656", "1.004746")),
    ("certification", 0, 22, ("2.000815", "2.000884")),
    ("commune_police", 3, 12, ("1.010076", "2.001159")),
    ("land", 10, 14, ("1.004227", "1.005398", "2.000889")),
    ("social_welfare", 7, 8, ("1.001776", "2.000286")),
    ("business", 3, 7, ("2.000720", "1.001612")),
    ("construction", 15, 4, ("1.009994",)),
    ("agriculture", 5, 3, ("1.003596",)),
)
_FIELD_WEIGHTS = [f[2] for f in FIELDS]

P_SITE_HANDLES = 0.12   # commune dossiers processed at a provincial site, returned locally
P_REFUSED = 0.015       # online dossiers refused at intake
P_WITHDRAWN = 0.008
P_SUPPLEMENT = 0.06
P_FEES = 0.08
P_STOPPED = 0.004
P_LATE = 0.04
P_EXTEND_IF_LATE = 0.5
P_STILL_LATE_AFTER_EXTENSION = 0.3
P_RESULT_DIGITISED = 0.7


def site_for(node: Node) -> str:
    """The provincial site nearer a commune: by GSO code, communes of former Hưng Yên
    (codes below 12400) look to Phố Hiến, those of former Thái Bình to Thái Bình."""
    if node.is_site:
        return node.id
    return SITE_PHOHIEN if int(node.id) < 12400 else SITE_THAIBINH


def receipt_time(rng: random.Random, day: date, online: bool) -> datetime:
    """Online dossiers arrive around the clock (mostly by day); the others in office hours
    (weekend walk-ins on the morning session)."""
    if online:
        hour = rng.choices(range(24), weights=_ONLINE_HOURS)[0]
        return at(day, time(hour)) + timedelta(seconds=rng.randrange(3600))
    start = at(day, time(7, 30))
    span = 7.5 if day.weekday() < 5 else 4.0
    return add_office_hours(start, rng.uniform(0, span - 0.01)) if day.weekday() < 6 else (
        start + timedelta(seconds=rng.randrange(4 * 3600)))


_ONLINE_HOURS = (1, 1, 1, 1, 1, 2, 4, 8, 10, 10, 9, 8, 5, 6, 9, 9, 8, 6, 5, 5, 4, 3, 2, 1)


def lifecycle(rng: random.Random, dossier_id: str, node: Node, day: date, channel: str,
              full_online: bool) -> list[Op]:
    """The dossier's calls, at whole seconds, each at least a second after the one before:
    the fold orders events by time, so a tie between two nodes' events would order them
    by node id instead of by what happened."""
    ops = _calls(rng, dossier_id, node, day, channel, full_online)
    spaced: list[Op] = []
    for when, *rest in ops:
        when = when.replace(microsecond=0)
        if spaced and when <= spaced[-1][0]:
            when = spaced[-1][0] + timedelta(seconds=1)
        spaced.append((when, *rest))  # type: ignore[arg-type]
    return spaced


def _calls(rng: random.Random, dossier_id: str, node: Node, day: date, channel: str,
           full_online: bool) -> list[Op]:
    field, days, _, codes = rng.choices(FIELDS, weights=_FIELD_WEIGHTS)[0]
    received = receipt_time(rng, day, channel == "online")
    due = add_business_days(day, days)
    ops: list[Op] = [(received, node.id, "receive", dossier_id, {
        "channel": channel, "full_online": full_online,
        "procedure_code": rng.choice(codes), "field": field, "due_date": due,
        "components_digitised": channel == "online" or rng.random() < 0.6})]
    handler = site_for(node) if node.is_site or rng.random() < P_SITE_HANDLES else node.id
    t = received
    if channel == "online":
        t = add_office_hours(t, rng.uniform(0.1, 4))
        if rng.random() < P_REFUSED:
            return [*ops, (t, handler, "refuse", dossier_id, {"reason": "Hồ sơ không hợp lệ"})]
        ops.append((t, handler, "accept", dossier_id, {}))
    if rng.random() < P_WITHDRAWN:
        t = add_office_hours(t, rng.uniform(0.5, 8))
        return [*ops, (t, handler, "withdraw", dossier_id, {"reason": "Công dân rút hồ sơ"})]
    t = add_office_hours(t, rng.uniform(0.05, 2))
    ops.append((t, handler, "start_processing", dossier_id, {}))
    t = _pauses(rng, ops, t, handler, dossier_id)
    if rng.random() < P_STOPPED:
        t = add_office_hours(t, rng.uniform(1, 16))
        return [*ops, (t, handler, "stop", dossier_id, {"reason": "Dừng xử lý theo quy định"})]
    t, due = _resolution(rng, ops, t, handler, due, dossier_id)
    digitised = rng.random() < P_RESULT_DIGITISED
    ops.append((t, handler, "resolve", dossier_id, {"result_digitised": digitised}))
    t = add_office_hours(t, rng.uniform(0.5, 40))
    delivery = "online" if full_online else channel if channel == "postal" else "in_person"
    ops.append((t, node.id, "return_result", dossier_id, {"delivery": delivery}))
    return ops


def _pauses(rng: random.Random, ops: list[Op], t: datetime, handler: str, dossier_id: str
            ) -> datetime:
    if rng.random() < P_SUPPLEMENT:
        t = add_office_hours(t, rng.uniform(2, 12))
        ops.append((t, handler, "request_supplement", dossier_id, {"reason": "Bổ sung giấy tờ"}))
        t = add_office_hours(t, rng.uniform(4, 30))
        ops.append((t, handler, "supplement_received", dossier_id, {}))
    if rng.random() < P_FEES:
        t = add_office_hours(t, rng.uniform(2, 14))
        ops.append((t, handler, "await_fees", dossier_id, {}))
        t = add_office_hours(t, rng.uniform(1, 14))
        ops.append((t, handler, "fees_paid", dossier_id, {}))
    return t


def _resolution(rng: random.Random, ops: list[Op], t: datetime, handler: str, due: date,
                dossier_id: str) -> tuple[datetime, date]:
    """When the result is ready, extending the deadline (once) for some late dossiers."""
    late = rng.random() < P_LATE
    if late and rng.random() < P_EXTEND_IF_LATE:
        when = max(t, open_at_or_after(at(due, time(7, 30))))
        if when < at(due, time(17, 0)):
            new_due = add_business_days(due, rng.randint(2, 5))
            ops.append((when, handler, "extend_deadline", dossier_id,
                        {"new_due_date": new_due, "reason": "Thư xin lỗi, hẹn lại ngày trả"}))
            t, due = when, new_due
            late = rng.random() < P_STILL_LATE_AFTER_EXTENSION
    deadline = at(due, time(17, 0))
    if late or t >= deadline:
        return add_office_hours(max(t, deadline), rng.uniform(1, 40)), due
    hours = (deadline - t).total_seconds() / 3600
    finish = add_office_hours(t, rng.uniform(0.1, max(0.2, hours * 0.5)))
    return max(t, min(finish, deadline - timedelta(minutes=1))), due
