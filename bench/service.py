"""Dossier service throughput: operations/s into SQLite and PostgreSQL, 1 and 4 threads, each
call its own transaction (what a desk system does), plus the simulator's batched mode.

Run: ``.venv/bin/python -m bench.service [N]`` (PostgreSQL at MOTCUA_TEST_PG_URL; a
throwaway schema is created and dropped).
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from nacl.signing import SigningKey
from sqlalchemy import Engine, text

from infra.db import make_engine
from infra.settings import load_settings
from producers.migrate import migrate
from producers.service import DossierService
from schemas.events import LOCAL_TZ
from schemas.nodes import node_ids

DUE = datetime.now(LOCAL_TZ).date() + timedelta(days=3)
NODES = node_ids()[:8]


def one_dossier(service: DossierService, node: str) -> int:
    """receive + accept + start + resolve + return: 5 operations, on the clock (as a desk)."""
    d = service.receive(node, channel="online", full_online=False, procedure_code="1.001193",
                        field="civil_status", due_date=DUE, components_digitised=True
                        ).dossier_id
    service.accept(node, d)
    service.start_processing(node, d)
    service.resolve(node, d, result_digitised=True)
    service.return_result(node, d, delivery="in_person")
    return 5


def run(engine: Engine, threads: int, dossiers: int, batched: bool = False) -> float:
    keys = {n: SigningKey.generate() for n in NODES}
    service = DossierService(engine, keys)
    per_thread = dossiers // threads
    done = [0] * threads

    failures: list[BaseException] = []

    def work(i: int) -> None:
        try:
            _work(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failures.append(exc)

    def _work(i: int) -> None:
        node = NODES[i % len(NODES)] if threads > 1 else NODES[0]
        if batched:
            with service.batch():
                for _ in range(per_thread):
                    done[i] += one_dossier(service, node)
        else:
            for _ in range(per_thread):
                done[i] += one_dossier(service, node)

    # 4 threads write to 4 nodes (one clerk per centre) except in the "one node" row
    started = time.perf_counter()
    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if failures:
        raise failures[0]
    return sum(done) / (time.perf_counter() - started)


def sqlite_engine(tmp: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp / f'{uuid.uuid4().hex}.db'}")
    migrate(engine)
    return engine


def main(dossiers: int = 600) -> None:
    settings = load_settings()
    admin = make_engine(settings.test_pg_url)
    schemas: list[str] = []

    def pg_engine() -> Engine:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        schemas.append(schema)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine = make_engine(settings.test_pg_url, schema=schema, pool_size=8)
        migrate(engine)
        return engine

    rows: list[tuple[str, str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        makers: dict[str, Callable[[], Engine]] = {
            "SQLite": lambda: sqlite_engine(Path(tmp)), "PostgreSQL": pg_engine}
        for name, make in makers.items():
            for threads in (1, 4):
                rows.append((name, f"{threads} thread(s), a transaction per call",
                             run(make(), threads, dossiers)))
            rows.append((name, "1 thread, batched (simulator mode)",
                         run(make(), 1, dossiers, batched=True)))
    with admin.begin() as conn:
        for schema in schemas:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    print(f"{dossiers} dossiers x 5 operations per row")
    print("| store | mode | operations/s |\n|---|---|---:|")
    for store, mode, rate in rows:
        print(f"| {store} | {mode} | {rate:,.0f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 600)
