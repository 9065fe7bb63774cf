"""``motcua simulate``: drives the dossier service of all 106 nodes with the calibrated
workload of producers/sim/plan.py and producers/sim/lifecycle.py, in event-time order.

``speed=None`` runs as fast as the store allows (calls grouped into transactions of
``batch_ops``, each call still in its own savepoint); ``speed=60`` plays an hour of office
time per minute. Calls due after the end of the period are not made: those dossiers stay
open, as real ones do at a month's end. The workload is deterministic for a seed (event ids
and signatures are not: they are fresh on every run).

A stopped run resumes: the store records each run's period, seed and scale, and the calls
commit in event-time order, so the store's newest event time T in the period says where the
last run stopped. The next run with the same parameters replays the schedule without
writing up to T (at T itself, it skips the calls whose dossier or call already has an
event at T) and goes on from there: the same calls as one uninterrupted run, none twice.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from infra.node_tables import dossiers
from producers import store
from producers.errors import ServiceError
from producers.service import DossierService
from producers.sim.calendar import add_office_hours, at
from producers.sim.lifecycle import Op, lifecycle, receipt_time
from producers.sim.plan import Cell, days_between, hotline_plan, plan
from schemas.enums import HotlineCategory
from schemas.errors import MotcuaError
from schemas.events import LOCAL_TZ
from schemas.nodes import SITES, all_nodes


class SimulationError(MotcuaError):
    """The simulation cannot run as asked."""


class SimulationFinished(SimulationError):
    """The store's simulation of this period has run to its end: nothing is left to do."""


_CATEGORY_WEIGHTS = {  # assumption: what 1022 callers ask about
    HotlineCategory.procedure: 35, HotlineCategory.dossier_status: 25,
    HotlineCategory.land: 15, HotlineCategory.project_progress: 5,
    HotlineCategory.commune_police: 7, HotlineCategory.complaint: 8,
    HotlineCategory.other: 5,
}


@dataclass
class Summary:
    start: date
    end: date
    scale: float
    seed: int
    received: Counter[str] = field(default_factory=Counter)
    received_by_node: Counter[str] = field(default_factory=Counter)
    operations: Counter[str] = field(default_factory=Counter)
    hotline_calls: int = 0
    refused: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    final_status: dict[str, int] = field(default_factory=dict)
    resumed_from: datetime | None = None  # simulated time an earlier run stopped at
    skipped: int = 0  # calls an earlier run made (replayed without writing)
    finished: bool = False

    @property
    def events_written(self) -> int:
        return sum(self.operations.values())

    def as_dict(self) -> dict[str, Any]:
        total = sum(self.received_by_node.values())
        online = self.received["online"]
        return {
            "period": {"from": self.start.isoformat(), "to": self.end.isoformat()},
            "scale": self.scale, "seed": self.seed,
            "received": {"total": total, "in_person": self.received["in_person"],
                         "online": online, "postal": self.received["postal"],
                         "full_online": self.received["full_online"],
                         "online_rate": f"{100 * online / total:.2f}%" if total else None},
            "received_by_node": dict(sorted(self.received_by_node.items())),
            "final_status": self.final_status,
            "hotline_calls": self.hotline_calls,
            "operations": dict(sorted(self.operations.items())),
            "events_written": self.events_written,
            "resumed_from": None if self.resumed_from is None
            else self.resumed_from.astimezone(LOCAL_TZ).isoformat(),
            "calls_made_by_earlier_runs": self.skipped, "finished": self.finished,
            "refused_operations": len(self.refused), "refused_examples": self.refused[:5],
            "elapsed_s": round(self.elapsed_s, 2),
            "events_per_s": round(self.events_written / self.elapsed_s) if self.elapsed_s
            else None,
        }


class Simulator:
    def __init__(self, service: DossierService, start: date, end: date, *,
                 scale: float = 1.0, seed: int = 1, speed: float | None = None,
                 batch_ops: int = 500, stop: threading.Event | None = None) -> None:
        if speed is not None and speed <= 0:
            raise SimulationError(f"--speed must be positive or 'max' (got {speed})")
        self.service = service
        self.start, self.end = start, end
        self.scale, self.seed, self.speed = scale, seed, speed
        self.batch_ops = batch_ops
        self.stop = stop or threading.Event()
        self.summary = Summary(start, end, scale, seed)
        self._heap: list[tuple[datetime, int, int, list[Op]]] = []
        self._serial = 0
        self._node_index = {n.id: i for i, n in enumerate(all_nodes())}
        self.sim_time: datetime | None = None  # event time of the last call made
        self._done_at: datetime | None = None  # where an earlier run stopped
        self._done_subjects: set[str] = set()  # ids with an event at exactly _done_at

    def run(self) -> Summary:
        began = time.monotonic()
        cells = plan(self.start, self.end, scale=self.scale, seed=self.seed)
        calls = dict(zip(days_between(self.start, self.end),
                         hotline_plan(self.start, self.end, scale=self.scale), strict=True))
        self._find_stop_point()
        run_id = store.begin_simulation_run(self.service.engine, self.start, self.end,
                                            self.seed, self.scale, self._done_at)
        by_day: dict[date, list[Cell]] = {}
        for cell in cells:
            by_day.setdefault(cell.day, []).append(cell)
        cutoff = at(self.end + timedelta(days=1), datetime.min.time())
        clock = _Pacer(self.speed, self._done_at or at(self.start, datetime.min.time()))
        try:
            for day in days_between(self.start, self.end):
                for cell in by_day.get(day, []):
                    self._schedule_cell(cell)
                self._schedule_calls(day, calls[day])
                self._run_until(min(at(day + timedelta(days=1), datetime.min.time()),
                                    cutoff), clock)
                if self.stop.is_set():
                    break
            else:
                self.summary.finished = True
        finally:
            store.end_simulation_run(self.service.engine, run_id,
                                     self.sim_time or self._done_at,
                                     self.summary.events_written, self.summary.finished)
        self.summary.elapsed_s = time.monotonic() - began
        self.summary.final_status = self._final_status()
        return self.summary

    def resume_point(self) -> datetime | None:
        """Where (local time) an earlier run of this simulation stopped (None: it starts
        afresh). Raises ``SimulationError`` if the store holds another simulation,
        ``SimulationFinished`` if it holds this one to its end."""
        self._find_stop_point()
        return self._done_at

    # --- scheduling -----------------------------------------------------------------------

    def _push(self, ops: list[Op], index: int = 0) -> None:
        self._serial += 1
        heapq.heappush(self._heap, (ops[index][0], self._serial, index, ops))

    def _schedule_cell(self, cell: Cell) -> None:
        channels = (["in_person"] * cell.in_person + ["postal"] * cell.postal
                    + ["online+full"] * cell.online_full + ["online"] * cell.online_partial)
        # One generator per dossier, seeded by (seed, day, node, k): the same dossier gets
        # the same life whatever else the run contains.
        base = ((self.seed * 100_003 + cell.day.toordinal()) * 1_000 + self._node_index[
            cell.node.id]) * 100_000
        for k, channel in enumerate(channels):
            rng = random.Random(base + k)
            dossier_id = f"{cell.node.id}-{cell.day:%y%m%d}-{k:05d}"
            ops = lifecycle(rng, dossier_id, cell.node, cell.day, channel.split("+")[0],
                            channel == "online+full")
            self._push(ops)

    def _schedule_calls(self, day: date, n: int) -> None:
        rng = random.Random(self.seed * 7_919 + day.toordinal())
        for k in range(n):
            site = SITES[k % 2]
            t = receipt_time(rng, day, online=False)
            category = rng.choices(list(_CATEGORY_WEIGHTS), list(_CATEGORY_WEIGHTS.values()))
            call_id = f"call-{site.removeprefix('site-')}-{day:%y%m%d}-{k:03d}"
            closed = add_office_hours(t, rng.uniform(0.03, 0.25))
            self._push([(t, site, "call_received", call_id, {"category": category[0]}),
                        (closed, site, "call_closed", call_id,
                         {"category": category[0], "resolved": rng.random() < 0.8})])

    # --- execution ------------------------------------------------------------------------

    def _run_until(self, horizon: datetime, clock: _Pacer) -> None:
        while self._heap and self._heap[0][0] < horizon and not self.stop.is_set():
            self._skip_done(horizon)
            if not self._heap or self._heap[0][0] >= horizon:
                return
            due_by = clock.sim_now_plus(0.2)
            with self.service.batch():
                done = 0
                while (self._heap and self._heap[0][0] < horizon and done < self.batch_ops
                       and self._heap[0][0] <= due_by):
                    _, _, index, ops = heapq.heappop(self._heap)
                    if not self._made_before(ops[index]):
                        self._execute(ops[index])
                        done += 1
                    if index + 1 < len(ops):
                        self._push(ops, index + 1)
            if self._heap and self._heap[0][0] < horizon:
                clock.wait_for(self._heap[0][0], self.stop)

    def _made_before(self, op: Op) -> bool:
        """Whether an earlier run of this simulation made this call (or had it refused)."""
        if self._done_at is None:
            return False
        when = op[0].replace(microsecond=0)
        if when < self._done_at or (when == self._done_at and op[3] in self._done_subjects):
            self.summary.skipped += 1
            return True
        return False

    def _skip_done(self, horizon: datetime) -> None:
        """Replay, without a transaction, the calls an earlier run made."""
        while self._heap and self._heap[0][0] < horizon:
            _, _, index, ops = self._heap[0]
            if not self._made_before(ops[index]):
                return
            heapq.heappop(self._heap)
            if index + 1 < len(ops):
                self._push(ops, index + 1)

    def _execute(self, op: Op) -> None:
        when, node, method, subject, kwargs = op
        when = when.replace(microsecond=0)
        self.sim_time = when
        svc = self.service
        try:
            if method == "receive":
                svc.receive(node, dossier_id=subject, **kwargs, at=when)
            elif method == "call_received":
                svc.call_received(node, kwargs["category"], call_id=subject, at=when)
                self.summary.hotline_calls += 1
            else:
                getattr(svc, method)(node, subject, **kwargs, at=when)
        except ServiceError as exc:
            self.summary.refused.append(f"{when.isoformat()} {node} {method}: {exc}")
            return
        self.summary.operations[method] += 1
        if method == "receive":
            channel = kwargs["channel"]
            self.summary.received[channel] += 1
            self.summary.received["full_online"] += kwargs["full_online"]
            self.summary.received_by_node[node] += 1

    def _find_stop_point(self) -> None:
        """Check the store's recorded runs against this one and find where they stopped."""
        engine = self.service.engine
        asked = (self.start, self.end, self.seed, self.scale)
        runs = store.simulation_runs_of(engine)
        first = runs[0] if runs else None
        if first is not None and (first.start, first.end, first.seed, first.scale) != asked:
            where = (" and finished" if any(r.finished for r in runs) else
                     f", stopped at {_local(runs[-1].stopped_at)}")
            raise SimulationError(
                f"this store holds the simulation {first.describe()}{where}; run with those "
                "to continue it, or use a fresh store (--db, or delete it) for another")
        lo = at(self.start, datetime.min.time())
        hi = at(self.end + timedelta(days=1), datetime.min.time())
        latest = store.latest_event_between(engine, lo, hi)
        if first is None and latest is not None:
            raise SimulationError(
                f"this store already holds events of {self.start} … {self.end} (up to "
                f"{_local(latest)}) from a run that recorded no parameters (an older "
                "motcua); use a fresh store (--db, or delete it)")
        if first is not None and any(r.finished for r in runs):
            raise SimulationFinished(
                f"the simulation {first.describe()} in this store is finished (up to "
                f"{_local(latest)}); nothing is left to run. For another period or seed use "
                "a fresh store (--db, or delete it)")
        self._done_at = None if latest is None else latest.astimezone(LOCAL_TZ)
        self._done_subjects = set() if latest is None else store.subjects_at(engine, latest)
        self.summary.resumed_from = self._done_at

    def _final_status(self) -> dict[str, int]:
        with self.service.engine.connect() as conn:
            rows = conn.execute(select(dossiers.c.status, func.count())
                                .group_by(dossiers.c.status).order_by(dossiers.c.status))
            return {str(status): n for status, n in rows}


def _local(when: datetime | None) -> str:
    return "its start" if when is None else f"{when.astimezone(LOCAL_TZ):%Y-%m-%d %H:%M:%S}"


class _Pacer:
    """Maps simulated time to wall time at ``speed`` (None: no waiting)."""

    def __init__(self, speed: float | None, sim_start: datetime) -> None:
        self.speed = speed
        self.sim_start = sim_start
        self.wall_start = time.monotonic()

    def sim_now_plus(self, seconds: float) -> datetime:
        if self.speed is None:
            return datetime.max.replace(tzinfo=LOCAL_TZ)
        elapsed = time.monotonic() - self.wall_start + seconds
        return self.sim_start + timedelta(seconds=elapsed * self.speed)

    def wait_for(self, sim_time: datetime, stop: threading.Event) -> None:
        if self.speed is None:
            return
        wall = self.wall_start + (sim_time - self.sim_start).total_seconds() / self.speed
        delay = wall - time.monotonic()
        if delay > 0:
            stop.wait(delay)

