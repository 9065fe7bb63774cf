"""``motcua up``: the whole system on one machine.

Today it starts the embedded broker (unless ``MOTCUA_KAFKA_BOOTSTRAP`` names a cluster),
provisions the registry topics and makes sure the node keystore exists. Later parts (relay,
streams, sync, display, simulator) join here. Ctrl-C (SIGINT) or SIGTERM stops everything in
reverse order of start.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from contextlib import ExitStack
from types import FrameType

from infra.broker import EmbeddedBroker
from infra.nodes import node_ids
from infra.settings import Settings
from infra.topics import admin_client, ensure_topics
from schemas.keys import init_keystore
from schemas.topics import topic_specs

Say = Callable[[str], None]


def wait_for_stop_signal() -> str:
    """Block until SIGINT or SIGTERM; returns the signal's name."""
    stop = threading.Event()
    received: list[str] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return received[0]


def provision(settings: Settings, bootstrap: str, say: Say) -> None:
    admin = admin_client(settings.kafka_config(bootstrap), settings.kafka_bootstrap_timeout_ms)
    try:
        statuses = ensure_topics(admin, topic_specs(settings.topic_prefix))
    finally:
        admin.close()
    for status in statuses:
        note = f" ({status.note})" if status.note else ""
        say(f"topic {status.name}: {status.status}{note}")
    created = sum(s.status == "created" for s in statuses)
    say(f"topics: {created} created, {len(statuses) - created} already existed"
        + ("" if created else "; nothing changed"))


def run_up(settings: Settings, say: Say, port: int | None = None) -> int:
    with ExitStack() as stack:
        if settings.kafka_bootstrap:
            bootstrap = settings.kafka_bootstrap
            say(f"using the cluster at {bootstrap}")
        else:
            broker = EmbeddedBroker(port or settings.broker_port, binary=settings.tansu_bin,
                                    log_path=settings.data_dir / "log" / "broker.log")
            stack.enter_context(broker)
            bootstrap = broker.bootstrap
            say(f"bootstrap={bootstrap}  (embedded tansu broker, memory storage, pid "
                f"{broker.pid})")
        provision(settings, bootstrap, say)
        created, kept = init_keystore(settings.keys_path, node_ids())
        say(f"keys: {created} created, {kept} kept in {settings.keys_path}")
        say("motcua is up; press Ctrl-C to stop")
        name = wait_for_stop_signal()
        say(f"{name} received; stopping")
    say("stopped")
    return 0
