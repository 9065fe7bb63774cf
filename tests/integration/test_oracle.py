"""The counting rules against a hand-worked oracle (issue 15, item 2).

Every other integration check compares the stream worker with ``schemas.counters.recount``,
which applies the very rules under test: that catches dedup, crash and rebalance bugs, not
rule bugs. Here a small scenario (a June backlog and three days of July, one commune, both
provincial sites, one offline commune) goes through the real broker and the real worker,
and every figure of ``motcua counters --json`` is compared with a value worked out BY HAND
from DESIGN.md (and, where DESIGN.md is silent, from the decisions written down in
docs/streams.md). Nothing under ``schemas/`` that counts is imported: only what builds and
signs events.

The scenario (local times, +07:00; C = commune 11977 Xã Tân Hưng, OFF = commune 12424 Xã
Tiên Tiến, offline, P = site-phohien, T = site-thaibinh):

=====  ======  ============================================================================
 id    rcv at  story
=====  ======  ============================================================================
 A     C       in person 20/6, due 27/6, in progress (4) 21/6, never handled: overdue
               backlog carried over into July, overdue every day of it
 B     C       postal 24/6, due 30/6, components digitised, in progress 25/6; overdue from
               1/7 until its deadline is extended (apology notice, 1/7 10:00) to 3/7;
               resolved 3/7 15:00 (result digitised), returned 3/7 16:00: on time
 E     C       online, fully online, 1/7 08:30, due 5/7, components digitised; in progress
               1/7; resolved 2/7 (result digitised), returned 2/7: early
 R     C       online (partly), 1/7 09:30, due 4/7; refused at intake 1/7 10:00
 W     P       in person 1/7 10:00, due 10/7, components digitised; in progress; withdrawn
               2/7 14:00: handled (7 counts as handled), early
 L     P       in person 1/7 14:00, due 2/7; in progress; resolved 3/7 10:00 (not
               digitised): late
 X     C       in person 2/7 08:00, due 2/7; handled at site T (4 at 09:00, resolved 16:00,
               result digitised): on time, counted for commune C, not for T; returned at C
               3/7 09:00
 S     T       online, fully online, 2/7 09:00, due 2/7, components digitised; in progress
               09:30, supplement requested 11:00 (paused), supplied 3/7 08:00 (back to 4),
               supplement requested again 3/7 09:00: paused and overdue at the end of 3/7
 Q     OFF     postal 1/7 16:00, due 8/7, components digitised; in progress 2/7 08:00. The
               commune was offline: both events are produced only after the worker has
               published 1/7, which must then change
 H1    P       hotline 1/7 08:10 land, closed 08:20 land, resolved
 H2    T       hotline 1/7 09:00 procedure, closed 09:10 as complaint, not resolved
 H3    P       hotline 2/7 10:00 dossier status, still open
 H4    T       hotline 3/7 11:00 commune police, closed 11:30, resolved
=====  ======  ============================================================================

Open dossiers at the end of each day (the stocks; "ovd" = past its current due date):

- 30/6: A (ovd), B (not ovd: its due date is now 3/7)      -> July backlog 2 (C: 2)
- 1/7:  A (ovd), B, E, W, L, Q, all in progress            -> 6 in progress, 1 overdue
- 2/7:  A (ovd), B, L, Q in progress; S paused             -> 4 + 1, 1 overdue
- 3/7:  A (ovd) and Q in progress; S paused (ovd)          -> 2 + 1, 1 + 1 overdue
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import encode
from schemas.events import LOCAL_TZ
from schemas.keys import init_keystore, load_signing_key
from schemas.topics import DOSSIER_EVENTS, HOTLINE_EVENTS
from tests.conftest import Broker, unique_prefix
from tests.factories import Chain
from tests.integration.test_broker import MOTCUA
from tests.streams_support import (
    WorkerProcess,
    produce,
    provision,
    store_view,
    wait_for_positions,
)
from tests.timing import budget

pytestmark = pytest.mark.integration

C, OFF, P, T = "11977", "12424", "site-phohien", "site-thaibinh"
PROVINCE, COMMUNE, SITE_P, SITE_T = "province", f"commune:{C}", f"site:{P}", f"site:{T}"

Record = tuple[str, bytes | None, bytes | None]


def at(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2025, month, day, hour, minute, tzinfo=LOCAL_TZ)


def received(node: str, channel: str, due: date, digitised: bool, full: bool = False
             ) -> dict[str, Any]:
    return {"procedure_code": "1.000001", "field": "Hộ tịch", "channel": channel,
            "full_online": full, "receiving_node": node, "due_date": due,
            "components_digitised": digitised}


def status(frm: int, to: int) -> dict[str, Any]:
    return {"from_status": frm, "to_status": to, "reason": None}


# (event time, origin, event type, subject, data): each origin signs its events in time order
Step = tuple[datetime, str, str, str, dict[str, Any]]
ON_TIME: list[Step] = [
    # A: June backlog, overdue all along
    (at(6, 20, 9), C, "dossier.received", "A", received(C, "in_person", date(2025, 6, 27),
                                                        False)),
    (at(6, 21, 8), C, "dossier.status_changed", "A", status(2, 4)),
    # B: June backlog, deadline extended once, handled on the extended date
    (at(6, 24, 9), C, "dossier.received", "B", received(C, "postal", date(2025, 6, 30), True)),
    (at(6, 25, 8), C, "dossier.status_changed", "B", status(2, 4)),
    (at(7, 1, 10), C, "dossier.deadline_extended", "B",
     {"previous_due_date": date(2025, 6, 30), "new_due_date": date(2025, 7, 3),
      "reason": "Phiếu xin lỗi và hẹn lại ngày trả kết quả"}),
    (at(7, 3, 15), C, "dossier.resolved", "B", {"result_digitised": True}),
    (at(7, 3, 16), C, "dossier.returned", "B", {"delivery": "postal"}),
    # E: early
    (at(7, 1, 8, 30), C, "dossier.received", "E",
     received(C, "online", date(2025, 7, 5), True, full=True)),
    (at(7, 1, 9), C, "dossier.status_changed", "E", status(1, 4)),
    (at(7, 2, 10), C, "dossier.resolved", "E", {"result_digitised": True}),
    (at(7, 2, 11), C, "dossier.returned", "E", {"delivery": "online"}),
    # R: refused at intake
    (at(7, 1, 9, 30), C, "dossier.received", "R", received(C, "online", date(2025, 7, 4),
                                                           False)),
    (at(7, 1, 10), C, "dossier.refused", "R", {"reason": "Hồ sơ không thuộc thẩm quyền"}),
    # W: withdrawn = handled, early
    (at(7, 1, 10), P, "dossier.received", "W", received(P, "in_person", date(2025, 7, 10),
                                                        True)),
    (at(7, 1, 10, 5), P, "dossier.status_changed", "W", status(2, 4)),
    (at(7, 2, 14), P, "dossier.withdrawn", "W", {"reason": "Công dân rút hồ sơ"}),
    # L: late
    (at(7, 1, 14), P, "dossier.received", "L", received(P, "in_person", date(2025, 7, 2),
                                                        False)),
    (at(7, 1, 15), P, "dossier.status_changed", "L", status(2, 4)),
    (at(7, 3, 10), P, "dossier.resolved", "L", {"result_digitised": False}),
    # X: received at commune C, handled at site T, returned at C: on time
    (at(7, 2, 8), C, "dossier.received", "X", received(C, "in_person", date(2025, 7, 2),
                                                       False)),
    (at(7, 2, 9), T, "dossier.status_changed", "X", status(2, 4)),
    (at(7, 2, 16), T, "dossier.resolved", "X", {"result_digitised": True}),
    (at(7, 3, 9), C, "dossier.returned", "X", {"delivery": "in_person"}),
    # S: supplements and pauses, overdue while paused
    (at(7, 2, 9), T, "dossier.received", "S",
     received(T, "online", date(2025, 7, 2), True, full=True)),
    (at(7, 2, 9, 30), T, "dossier.status_changed", "S", status(1, 4)),
    (at(7, 2, 11), T, "dossier.supplement_requested", "S", {"reason": "Thiếu bản sao"}),
    (at(7, 3, 8), T, "dossier.status_changed", "S", status(5, 4)),
    (at(7, 3, 9), T, "dossier.supplement_requested", "S", {"reason": "Thiếu chữ ký"}),
    # hotline calls
    (at(7, 1, 8, 10), P, "hotline.call_received", "H1", {"category": "land"}),
    (at(7, 1, 8, 20), P, "hotline.call_closed", "H1", {"category": "land", "resolved": True}),
    (at(7, 1, 9), T, "hotline.call_received", "H2", {"category": "procedure"}),
    (at(7, 1, 9, 10), T, "hotline.call_closed", "H2",
     {"category": "complaint", "resolved": False}),
    (at(7, 2, 10), P, "hotline.call_received", "H3", {"category": "dossier_status"}),
    (at(7, 3, 11), T, "hotline.call_received", "H4", {"category": "commune_police"}),
    (at(7, 3, 11, 30), T, "hotline.call_closed", "H4",
     {"category": "commune_police", "resolved": True}),
]
# Q: the offline commune's dossier, produced after 1/7 has been published
LATE: list[Step] = [
    (at(7, 1, 16), OFF, "dossier.received", "Q",
     received(OFF, "postal", date(2025, 7, 8), True)),
    (at(7, 2, 8), OFF, "dossier.status_changed", "Q", status(2, 4)),
]
NEWEST_EVENT = "2025-07-03T16:00:00+07:00"  # B returned


def records(steps: list[Step], chains: dict[str, Chain]) -> list[Record]:
    out: list[Record] = []
    for moment, origin, kind, subject, data in sorted(steps, key=lambda s: s[0]):
        subject_id = f"OR-{subject}"
        event = chains[origin].emit(kind, dossier_id=subject_id, occurred_at=moment, **data)
        topic = HOTLINE_EVENTS if kind.startswith("hotline.") else DOSSIER_EVENTS
        out.append((topic, subject_id.encode(), encode(event)))
    return out


# --- the oracle: every figure of `motcua counters --json`, by hand ----------------------

COUNTS = (
    "received", "received.in_person", "received.online", "received.postal",
    "received.full_online", "handled.early", "handled.on_time", "handled.late",
    "supplement_requests", "withdrawn", "refused", "digitised.components",
    "digitised.results", "hotline.calls", "hotline.calls.procedure",
    "hotline.calls.dossier_status", "hotline.calls.land", "hotline.calls.project_progress",
    "hotline.calls.commune_police", "hotline.calls.complaint", "hotline.calls.other",
    "hotline.closed", "hotline.resolved", "handled", "in_progress", "paused",
    "overdue.in_progress", "overdue.paused", "backlog_carried_over",
)
#: what `counters --json` adds besides the figures (checked apart)
META = ("status", "status_reason", "behind", "newest_snapshot_at", "snapshot_age_s", "as_of",
        "stocks_as_of", "range_chosen")


def expect(scope: str, start: str, end: str, counts: dict[str, int],
           rates: tuple[str | None, str | None, str | None]) -> dict[str, Any]:
    """The full figure set: every count not named is 0; rates are (online, late, on time)
    as published, rounded half up to two decimals."""
    unknown = set(counts) - set(COUNTS)
    assert not unknown, unknown
    online, late, on_time = rates
    return {"scope": scope, "from": start, "to": end, **dict.fromkeys(COUNTS, 0), **counts,
            "online_rate": online, "late_rate": late, "on_time_rate": on_time}


D1, D2, D3, M1, M31 = "2025-07-01", "2025-07-02", "2025-07-03", "2025-07-01", "2025-07-31"

# Province, 1/7, before the offline commune's Q arrives.
PROVINCE_D1_BEFORE_Q = expect(PROVINCE, D1, D1, {
    "received": 4,                    # E R W L
    "received.in_person": 2,          # W L
    "received.online": 2,             # E R
    "received.full_online": 1,        # E
    "refused": 1,                     # R (refused is not handled, and not open)
    "digitised.components": 2,        # E W
    "hotline.calls": 2,               # H1 H2
    "hotline.calls.land": 1,          # H1
    "hotline.calls.complaint": 1,     # H2 counts in its final category, not "procedure"
    "hotline.closed": 2,              # H1 H2
    "hotline.resolved": 1,            # H1
    "in_progress": 5,                 # A B E W L
    "overdue.in_progress": 1,         # A (B's due date is 3/7 since the extension)
    "backlog_carried_over": 2,        # A B open at the end of 30/6
}, ("50.00",                          # 2 online / 4
    "16.67",                          # 1 overdue A / (4 received + 2 backlog)
    "83.33"))

PROVINCE_D1 = expect(PROVINCE, D1, D1, {
    **{k: v for k, v in PROVINCE_D1_BEFORE_Q.items() if k in COUNTS},
    "received": 5,                    # + Q
    "received.postal": 1,             # Q
    "digitised.components": 3,        # + Q
    "in_progress": 6,                 # + Q
}, ("40.00",                          # 2 / 5
    "14.29",                          # 1 / (5 + 2) = 14.2857
    "85.71"))

PROVINCE_D2 = expect(PROVINCE, D2, D2, {
    "received": 2,                    # X S
    "received.in_person": 1,          # X
    "received.online": 1,             # S
    "received.full_online": 1,        # S
    "handled.early": 2,               # E (due 5/7), W withdrawn (due 10/7)
    "handled.on_time": 1,             # X (due 2/7, resolved 2/7 at site T)
    "handled": 3,
    "withdrawn": 1,                   # W
    "supplement_requests": 1,         # S 11:00
    "digitised.components": 1,        # S
    "digitised.results": 2,           # E X
    "hotline.calls": 1,               # H3
    "hotline.calls.dossier_status": 1,
    "in_progress": 4,                 # A B L Q
    "paused": 1,                      # S
    "overdue.in_progress": 1,         # A (L and S are due 2/7: overdue only from 3/7)
    "backlog_carried_over": 6,        # open at the end of 1/7: A B E W L Q
}, ("50.00",                          # 1 / 2
    "12.50",                          # 1 / (2 + 6)
    "87.50"))

PROVINCE_D3 = expect(PROVINCE, D3, D3, {
    "handled.on_time": 1,             # B, resolved on its extended due date 3/7
    "handled.late": 1,                # L (due 2/7); X's return 3/7 is no second handling
    "handled": 2,
    "supplement_requests": 1,         # S again, 09:00
    "digitised.results": 1,           # B (L's result not digitised)
    "hotline.calls": 1,               # H4
    "hotline.calls.commune_police": 1,
    "hotline.closed": 1,              # H4
    "hotline.resolved": 1,
    "in_progress": 2,                 # A Q
    "paused": 1,                      # S
    "overdue.in_progress": 1,         # A
    "overdue.paused": 1,              # S (due 2/7)
    "backlog_carried_over": 5,        # open at the end of 2/7: A B L Q + S
}, (None,                             # nothing received: no online rate
    "60.00",                          # (1 + 1 overdue + 1 late) / (0 + 5)
    "40.00"))

PROVINCE_MONTH = expect(PROVINCE, M1, M31, {
    "received": 7,                    # E R W L Q X S
    "received.in_person": 3,          # W L X
    "received.online": 3,             # E R S
    "received.postal": 1,             # Q (B's June receipt is June's)
    "received.full_online": 2,        # E S
    "handled.early": 2,               # E W
    "handled.on_time": 2,             # X B
    "handled.late": 1,                # L
    "handled": 5,
    "withdrawn": 1,                   # W
    "refused": 1,                     # R
    "supplement_requests": 2,         # S twice
    "digitised.components": 4,        # E W Q S (B's is June's)
    "digitised.results": 3,           # E X B
    "hotline.calls": 4,               # H1..H4
    "hotline.calls.land": 1,
    "hotline.calls.complaint": 1,
    "hotline.calls.dossier_status": 1,
    "hotline.calls.commune_police": 1,
    "hotline.closed": 3,              # H1 H2 H4
    "hotline.resolved": 2,            # H1 H4
    # stocks at the end of 3/7, the newest event's day (31/7 lies beyond it)
    "in_progress": 2,                 # A Q
    "paused": 1,                      # S
    "overdue.in_progress": 1,         # A
    "overdue.paused": 1,              # S
    "backlog_carried_over": 2,        # A B
}, ("42.86",                          # 3 / 7 = 42.857
    "33.33",                          # (1 + 1 + 1 late L) / (7 + 2)
    "66.67"))

# Commune 11977: A B E R X (received there; X although handled at site T). Not Q, no calls.
COMMUNE_D1 = expect(COMMUNE, D1, D1, {
    "received": 2,                    # E R
    "received.online": 2,
    "received.full_online": 1,        # E
    "refused": 1,                     # R
    "digitised.components": 1,        # E
    "in_progress": 3,                 # A B E
    "overdue.in_progress": 1,         # A
    "backlog_carried_over": 2,        # A B
}, ("100.00", "25.00", "75.00"))      # 2/2; 1 / (2 + 2)

COMMUNE_D2 = expect(COMMUNE, D2, D2, {
    "received": 1,                    # X
    "received.in_person": 1,
    "handled.early": 1,               # E
    "handled.on_time": 1,             # X, handled at site T, counted where received
    "handled": 2,
    "digitised.results": 2,           # E X
    "in_progress": 2,                 # A B
    "overdue.in_progress": 1,         # A
    "backlog_carried_over": 3,        # A B E
}, ("0.00", "25.00", "75.00"))        # 0/1; 1 / (1 + 3)

COMMUNE_D3 = expect(COMMUNE, D3, D3, {
    "handled.on_time": 1,             # B
    "handled": 1,
    "digitised.results": 1,           # B
    "in_progress": 1,                 # A
    "overdue.in_progress": 1,         # A
    "backlog_carried_over": 2,        # A B
}, (None, "50.00", "50.00"))          # 1 / (0 + 2)

COMMUNE_MONTH = expect(COMMUNE, M1, M31, {
    "received": 3,                    # E R X
    "received.in_person": 1,          # X
    "received.online": 2,             # E R
    "received.full_online": 1,        # E
    "handled.early": 1,               # E
    "handled.on_time": 2,             # X B
    "handled": 3,
    "refused": 1,                     # R
    "digitised.components": 1,        # E
    "digitised.results": 3,           # E X B
    "in_progress": 1,                 # A
    "overdue.in_progress": 1,         # A
    "backlog_carried_over": 2,        # A B
}, ("66.67", "20.00", "80.00"))       # 2/3; 1 / (3 + 2)

# Site Phố Hiến: W L, calls H1 H3.
SITE_P_D1 = expect(SITE_P, D1, D1, {
    "received": 2,                    # W L
    "received.in_person": 2,
    "digitised.components": 1,        # W
    "hotline.calls": 1,               # H1
    "hotline.calls.land": 1,
    "hotline.closed": 1,
    "hotline.resolved": 1,
    "in_progress": 2,                 # W L
}, ("0.00", "0.00", "100.00"))        # 0/2; 0 / (2 + 0)

SITE_P_D2 = expect(SITE_P, D2, D2, {
    "handled.early": 1,               # W withdrawn, due 10/7
    "handled": 1,
    "withdrawn": 1,                   # W
    "hotline.calls": 1,               # H3
    "hotline.calls.dossier_status": 1,
    "in_progress": 1,                 # L (due 2/7: not yet overdue)
    "backlog_carried_over": 2,        # W L
}, (None, "0.00", "100.00"))          # 0 / (0 + 2)

SITE_P_D3 = expect(SITE_P, D3, D3, {
    "handled.late": 1,                # L
    "handled": 1,
    "backlog_carried_over": 1,        # L
}, (None, "100.00", "0.00"))          # 1 late / (0 + 1)

SITE_P_MONTH = expect(SITE_P, M1, M31, {
    "received": 2,                    # W L
    "received.in_person": 2,
    "handled.early": 1,               # W
    "handled.late": 1,                # L
    "handled": 2,
    "withdrawn": 1,
    "digitised.components": 1,        # W
    "hotline.calls": 2,               # H1 H3
    "hotline.calls.land": 1,
    "hotline.calls.dossier_status": 1,
    "hotline.closed": 1,              # H1
    "hotline.resolved": 1,
}, ("0.00", "50.00", "50.00"))        # 0/2; 1 / (2 + 0)

# Site Thái Bình: S and calls H2 H4. X, which it handled, is commune 11977's.
SITE_T_MONTH = expect(SITE_T, M1, M31, {
    "received": 1,                    # S
    "received.online": 1,
    "received.full_online": 1,
    "supplement_requests": 2,         # S twice
    "digitised.components": 1,        # S
    "hotline.calls": 2,               # H2 H4
    "hotline.calls.complaint": 1,     # H2, final category
    "hotline.calls.commune_police": 1,
    "hotline.closed": 2,
    "hotline.resolved": 1,            # H4
    "paused": 1,                      # S
    "overdue.paused": 1,              # S
}, ("100.00", "100.00", "0.00"))      # 1/1; 1 overdue / (1 + 0)

FINAL = [PROVINCE_D1, PROVINCE_D2, PROVINCE_D3, PROVINCE_MONTH,
         COMMUNE_D1, COMMUNE_D2, COMMUNE_D3, COMMUNE_MONTH,
         SITE_P_D1, SITE_P_D2, SITE_P_D3, SITE_P_MONTH, SITE_T_MONTH]


# --- running it ---------------------------------------------------------------------------

def counters(worker: WorkerProcess, want: dict[str, Any]) -> dict[str, Any]:
    result = subprocess.run([*MOTCUA, "counters", "--json", "--scope", want["scope"],
                             "--from", want["from"], "--to", want["to"]],
                            env=worker.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def settled(worker: WorkerProcess, want: dict[str, Any], timeout: float = 20.0
            ) -> dict[str, Any]:
    """The output once its figures equal ``want`` (snapshots publish within a fraction of a
    second of the store's commit), or the last one read when ``timeout`` runs out."""
    deadline = time.monotonic() + budget(timeout)
    while True:
        got = counters(worker, want)
        if figures_of(got) == want or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


def figures_of(out: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in out.items() if k not in META}


def check_all(worker: WorkerProcess, wanted: list[dict[str, Any]]) -> None:
    with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
        outs = list(pool.map(lambda w: settled(worker, w), wanted))
    wrong = {}  # every range that differs, {figure: (got, hand-worked)}, in one message
    for want, got in zip(wanted, outs, strict=True):
        label = f"{want['scope']} {want['from']}..{want['to']}"
        if figures_of(got) != want:
            wrong[label] = diff(figures_of(got), want)
        assert (got["status"], got["behind"]) == ("live", 0), (label, got["status_reason"])
        assert got["as_of"] == NEWEST_EVENT, label
        # a range reaching beyond the newest event's day has its stocks judged on that day
        assert got["stocks_as_of"] == min(want["to"], D3), label
    assert not wrong, "\n".join(f"{label}: {d}" for label, d in wrong.items())


def diff(got: dict[str, Any], want: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{figure: (got, hand-worked)} where they differ."""
    return {k: (got.get(k), want.get(k)) for k in sorted(set(got) | set(want))
            if got.get(k) != want.get(k)}


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    init_keystore(directory, [C, OFF, P, T])
    return directory


@pytest.fixture
def worker(tmp_path: Path, broker: Broker, keys: Path) -> Iterator[WorkerProcess]:
    w = WorkerProcess(tmp_path, broker.bootstrap, unique_prefix("or"), keys)
    yield w
    w.stop()


def test_every_figure_equals_the_hand_worked_oracle(kafka_config: dict[str, Any], keys: Path,
                                                    worker: WorkerProcess) -> None:
    prefix = worker.env["MOTCUA_TOPIC_PREFIX"]
    chains = {node: Chain(node, load_signing_key(keys, node)) for node in (C, OFF, P, T)}
    on_time, late = records(ON_TIME, chains), records(LATE, chains)
    provision(kafka_config, prefix)
    view = store_view(worker.store_url, keys, prefix)

    ends = produce(kafka_config, prefix, on_time)
    worker.start()
    wait_for_positions(view, ends, 60, worker)
    # 1/7 as published while commune 12424 is still offline
    before = settled(worker, PROVINCE_D1_BEFORE_Q)
    assert figures_of(before) == PROVINCE_D1_BEFORE_Q, diff(figures_of(before),
                                                            PROVINCE_D1_BEFORE_Q)

    # the commune comes back: its 1/7 dossier counts in 1/7, however late it arrives
    late_ends = produce(kafka_config, prefix, late)
    wait_for_positions(view, {**ends, **{tp: max(end, ends.get(tp, 0))
                                         for tp, end in late_ends.items()}}, 60, worker)
    check_all(worker, FINAL)
