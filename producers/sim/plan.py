"""The simulator's calibrated workload plan: how many dossiers each node receives each day,
by channel. Pure and deterministic for a seed.

Calibration (the only facts used; see ../shared/seed): 1/7–30/7/2025 at scale 1 gives
exactly 201,034 dossiers received, exactly 167,972 of them online (83.55%), ~6,700 a day.
Everything else here is a stated assumption of the simulation, not a fact about the province:
weekday weights, ward/commune/site volume ratios, per-kind online propensities, the postal
and full-online shares. Totals for any period follow from the same daily rate, rounded once
for the whole period; the split across days, nodes and channels uses largest remainders, so
the totals are exact and no cell is off by more than one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from fractions import Fraction

from schemas.errors import MotcuaError
from schemas.nodes import Node, all_nodes

JULY_FROM, JULY_TO = date(2025, 7, 1), date(2025, 7, 30)
JULY_RECEIVED, JULY_ONLINE = 201_034, 167_972

# Assumptions (see module docstring).
WEEKDAY_WEIGHT = (1.0, 1.0, 1.0, 1.0, 1.0, 0.4, 0.08)  # Mon..Sun
KIND_WEIGHT = {"xa": 1.0, "phuong": 2.2, "site": 4.0}
KIND_ONLINE = {"xa": 0.80, "phuong": 0.88, "site": 0.90}
POSTAL_SHARE_OF_OFFLINE = 0.03
FULL_ONLINE_SHARE = 0.45
HOTLINE_CALLS_PER_WEEKDAY = 25


class PlanError(MotcuaError, ValueError):
    """A simulation period or scale that makes no sense."""


def allocate(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` in proportion to ``weights``: floors, then the largest remainders get
    one more (ties by position). Exact, deterministic, each share within 1 of its quota."""
    if total < 0:
        raise ValueError("total must be >= 0")
    mass = sum(weights)
    if mass <= 0:
        if total:
            raise ValueError("cannot allocate a positive total over zero weights")
        return [0] * len(weights)
    quotas = [total * w / mass for w in weights]
    shares = [int(q) for q in quotas]
    short = total - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - shares[i]), i))
    for i in order[:short]:
        shares[i] += 1
    return shares


def days_between(start: date, end: date) -> list[date]:
    if end < start:
        raise PlanError(f"--to {end} is before --from {start}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def _day_weight(day: date) -> float:
    return WEEKDAY_WEIGHT[day.weekday()]


# Dossiers per unit of day weight, calibrated on July 2025 (a Fraction, so the July total
# comes out exact rather than 201,033.9999).
_JULY_MASS = sum(Fraction(_day_weight(d)) for d in days_between(JULY_FROM, JULY_TO))
_PER_WEIGHT = Fraction(JULY_RECEIVED) / _JULY_MASS
_ONLINE_RATE = Fraction(JULY_ONLINE, JULY_RECEIVED)


@dataclass(frozen=True)
class Cell:
    """What one node receives on one day."""

    day: date
    node: Node
    in_person: int
    postal: int
    online_full: int
    online_partial: int

    @property
    def total(self) -> int:
        return self.in_person + self.postal + self.online_full + self.online_partial

    @property
    def online(self) -> int:
        return self.online_full + self.online_partial


def node_weights(seed: int, nodes: Sequence[Node]) -> list[float]:
    """Volume weight of each node: its kind's weight times a fixed, seeded jitter (0.7-1.3),
    so communes differ from each other as real ones do."""
    rng = random.Random(seed)
    return [KIND_WEIGHT[n.kind] * rng.uniform(0.7, 1.3) for n in nodes]


def plan(start: date, end: date, *, scale: float = 1.0, seed: int = 1) -> list[Cell]:
    """Every (day, node) cell of the period with its channel counts."""
    if scale <= 0:
        raise PlanError(f"--scale must be positive (got {scale})")
    days = days_between(start, end)
    nodes = all_nodes()
    scale_q = Fraction(scale).limit_denominator(10**9)
    expected = [_PER_WEIGHT * Fraction(_day_weight(d)) * scale_q for d in days]
    total = round(sum(expected))
    online_total = round(total * _ONLINE_RATE)
    per_day = allocate(total, [float(e) for e in expected])
    weights = node_weights(seed, nodes)
    counts = [allocate(n, weights) for n in per_day]  # [day][node]

    # Online: one allocation over all cells, each weighted by its size and its kind's
    # propensity; the propensities are low enough that no cell gets more online than it has.
    flat = [(di, ni) for di in range(len(days)) for ni in range(len(nodes))]
    propensity = [counts[di][ni] * KIND_ONLINE[nodes[ni].kind] for di, ni in flat]
    online = allocate(online_total, propensity)
    offline = [counts[di][ni] - on for (di, ni), on in zip(flat, online, strict=True)]
    if min(offline, default=0) < 0:
        raise AssertionError("a cell got more online dossiers than it has")
    # Postal and full-online shares are small: split them over all cells at once, or
    # per-cell rounding would round most of them away.
    postal = allocate(round(sum(offline) * POSTAL_SHARE_OF_OFFLINE), offline)
    full = allocate(round(online_total * FULL_ONLINE_SHARE), online)
    return [Cell(days[di], nodes[ni], off - po, po, fu, on - fu)
            for (di, ni), on, off, po, fu in zip(flat, online, offline, postal, full,
                                                 strict=True)]


def hotline_plan(start: date, end: date, *, scale: float = 1.0) -> list[int]:
    """Calls per day (~25 on a weekday)."""
    days = days_between(start, end)
    expected = [HOTLINE_CALLS_PER_WEEKDAY * _day_weight(d) * scale for d in days]
    return allocate(round(sum(expected)), expected)
