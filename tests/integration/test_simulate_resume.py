"""A stopped simulation resumes where it stopped (issue 14): stopped part way, even between
two calls of the same second, then resumed, the store holds exactly the rows of one
uninterrupted run with the same seed. Compared row by row on SQLite and on PostgreSQL."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from sqlalchemy import Engine, func, select

from infra.db import make_engine
from infra.node_tables import dossiers, hotline_calls, node_heads, outbox, simulation_runs
from producers.migrate import migrate
from producers.service import DossierService
from producers.sim.simulator import SimulationError, SimulationFinished, Simulator
from schemas.codec import decode
from schemas.events import GENESIS_HASH, LOCAL_TZ
from tests.conftest import _pg_schema
from tests.integration.test_broker import MOTCUA, cli_env

START, END, SEED, SCALE = date(2025, 7, 1), date(2025, 7, 2), 7, 0.03


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    """Two empty node stores on one backend."""
    if request.param == "sqlite":
        pair = (make_engine(f"sqlite:///{tmp_path / 'a.db'}"),
                make_engine(f"sqlite:///{tmp_path / 'b.db'}"))
        for engine in pair:
            migrate(engine)
        yield pair
        for engine in pair:
            engine.dispose()
        return
    admin, url = request.getfixturevalue("pg_admin"), request.getfixturevalue(
        "settings").test_pg_url
    with _pg_schema(admin, url) as a, _pg_schema(admin, url) as b:
        migrate(a)
        migrate(b)
        yield a, b


class StoppingService(DossierService):
    """The real service, which sets ``stop`` once it has written a call at ``stop_at`` (or
    its ``stop_after``-th call): the simulator then stops before its next call."""

    def __init__(self, engine: Engine, stop: threading.Event, *, stop_at: datetime | None = None,
                 stop_after: int | None = None) -> None:
        cache: dict[str, SigningKey] = {}
        super().__init__(engine, lambda node: cache.setdefault(node, SigningKey.generate()))
        self.stop_event, self.stop_at, self.stop_after, self.calls = stop, stop_at, stop_after, 0

    def _written(self, at: datetime | None) -> None:
        self.calls += 1
        if at == self.stop_at or self.calls == self.stop_after:
            self.stop_event.set()

    def _write(self, node: str, dossier_id: str | None, build: Any, at: datetime | None
               ) -> Any:
        state = super()._write(node, dossier_id, build, at)
        self._written(at)
        return state

    def call_received(self, site: str, category: Any, **kwargs: Any) -> str:
        call = super().call_received(site, category, **kwargs)
        self._written(kwargs.get("at"))
        return call

    def call_closed(self, site: str, call_id: str, category: Any, **kwargs: Any) -> None:
        super().call_closed(site, call_id, category, **kwargs)
        self._written(kwargs.get("at"))


def run(engine: Engine, **stop: Any) -> Simulator:
    event = threading.Event()
    sim = Simulator(StoppingService(engine, event, **stop), START, END, scale=SCALE,
                    seed=SEED, batch_ops=1, stop=event)
    sim.run()
    return sim


def rows(engine: Engine) -> dict[str, Any]:
    """What the store holds, minus what differs on every run (event ids, signatures,
    hashes, publication): every dossier row, every call row, every event's place and
    content, and per origin whether its chain is contiguous and linked."""
    with engine.connect() as conn:
        events = [(r.origin, r.origin_seq, decode(bytes(r.body))) for r in conn.execute(
            select(outbox.c.origin, outbox.c.origin_seq, outbox.c.body)
            .order_by(outbox.c.origin, outbox.c.origin_seq))]
        chains: dict[str, bool] = {}
        prev: dict[str, tuple[int, str]] = {}
        for origin, seq, event in events:
            last_seq, last_hash = prev.get(origin, (0, GENESIS_HASH))
            chains[origin] = chains.get(origin, True) and (
                seq == last_seq + 1 and event.prev_hash == last_hash)
            prev[origin] = (seq, event.hash)
        heads = {n: s for n, s in conn.execute(select(node_heads.c.node_id,
                                                      node_heads.c.last_seq))}
        return {
            "dossiers": [tuple(r) for r in conn.execute(
                select(dossiers).order_by(dossiers.c.dossier_id))],
            "calls": [tuple(r) for r in conn.execute(
                select(hotline_calls).order_by(hotline_calls.c.call_id))],
            "events": [(o, s, e.type, e.dossier_id, e.occurred_at,
                        e.data.model_dump_json()) for o, s, e in events],
            "chains": chains, "heads": heads,
            "by_channel": dict(list(conn.execute(select(dossiers.c.channel, func.count())
                                                 .group_by(dossiers.c.channel)))),
        }


def test_a_stopped_simulation_resumes_to_the_uninterrupted_result(
        stores: tuple[Engine, Engine]) -> None:
    whole_store, parts_store = stores
    whole = run(whole_store)
    assert whole.summary.finished and not whole.summary.refused
    expected = rows(whole_store)
    assert expected["dossiers"] and all(expected["chains"].values())

    # a second with several calls, stopped after the first of them: the resumed run must
    # make the others (and not the first again)
    with whole_store.connect() as conn:
        tied = conn.execute(select(outbox.c.occurred_at).group_by(outbox.c.occurred_at)
                            .having(func.count() >= 2).order_by(outbox.c.occurred_at)
                            ).scalars().all()
    assert tied, "no second holds two calls: pick another seed or scale"
    middle = tied[len(tied) // 2].astimezone(LOCAL_TZ)

    first = run(parts_store, stop_at=middle)
    assert not first.summary.finished and first.sim_time == middle
    second = run(parts_store, stop_after=97)  # stopped again, at some other point
    assert second.summary.resumed_from == middle and not second.summary.finished
    third = run(parts_store)
    assert third.summary.finished
    made = [first.summary.events_written, second.summary.events_written,
            third.summary.events_written]
    assert all(made) and sum(made) == whole.summary.events_written, made
    # a call made twice is refused by the service (the id exists, the move is done)
    assert not (first.summary.refused or second.summary.refused or third.summary.refused)

    got = rows(parts_store)
    assert got["by_channel"] == expected["by_channel"]
    assert got["heads"] == expected["heads"]
    assert got["chains"] == expected["chains"]
    assert got["calls"] == expected["calls"]
    assert got["events"] == expected["events"]
    assert got["dossiers"] == expected["dossiers"]

    with parts_store.connect() as conn:
        recorded = conn.execute(select(simulation_runs.c.finished, simulation_runs.c.seed)
                                .order_by(simulation_runs.c.run_id)).all()
    assert [tuple(r) for r in recorded] == [(False, SEED), (False, SEED), (True, SEED)]
    with pytest.raises(SimulationFinished, match="is finished"):
        run(parts_store)
    event = threading.Event()
    other = Simulator(StoppingService(parts_store, event), START, END, scale=SCALE,
                      seed=SEED + 1, stop=event)
    with pytest.raises(SimulationError, match=f"--seed {SEED} --scale {SCALE:g}"):
        other.run()


def cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MOTCUA, "simulate", "--from", "2025-07-01", "--to", "2025-07-01", "--speed", "max",
         "--scale", "0.01", "--no-relay", *args],
        capture_output=True, text=True, timeout=300, env=cli_env(MOTCUA_DATA_DIR=str(tmp)))


def test_the_cli_says_finished_and_refuses_other_parameters(tmp_path: Path) -> None:
    assert cli(tmp_path, "--seed", "3").returncode == 0
    again = cli(tmp_path, "--seed", "3")
    assert again.returncode == 0 and "is finished" in again.stderr, again.stderr
    other = cli(tmp_path, "--seed", "4")
    assert other.returncode == 2 and "Traceback" not in other.stderr
    line = other.stderr.strip()
    assert "\n" not in line and "--seed 3 --scale 0.01" in line and "fresh store" in line, line
