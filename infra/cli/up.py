"""``motcua up``: the whole system on one machine.

It starts the embedded broker (unless ``MOTCUA_KAFKA_BOOTSTRAP`` names a cluster), provisions
the registry topics, makes sure the node keystore exists, opens the node store (all 106 nodes
in ``var/nodes.db`` unless ``MOTCUA_DB_URL``), runs the outbox relay and the simulator (July
2025, an office hour per minute by default), a stream worker (``motcua streams``, a child
process) whose live figures ``motcua counters`` prints, the wall boards (``motcua display``,
a child process; it prints their URL), the audit archives (``motcua archive``, one per
site, each witnessing the other, child processes), and the sync consumers of both sites
and three communes (``motcua sync --node ID`` each, child processes; ``motcua sync status``
shows their lag). Ctrl-C (SIGINT) or SIGTERM stops everything in reverse order of start.

The embedded broker keeps nothing across restarts, while the node store does: on start with
a fresh embedded broker every stored event is marked unpublished, so the relay rebuilds the
log from the stores (the outbox is each node's copy of its own history). The stream worker's
store describes positions in the old log, so it is emptied and refolded from the new one.
The replicas keep their events and rows and read the new log from its start (every event is
then a duplicate); a replica is emptied only when it holds another history than the node
stores (they were made anew: new events would reuse the same places in each chain). The
archive likewise reads the new log from its start; one of another history is evidence, not
a cache: it is moved aside (``var/archive.<time>``), never emptied.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from consumers.audit.store import Archive
from infra import logs
from infra.broker import EmbeddedBroker
from infra.cli.audit import archive_dir, audit_keys
from infra.cli.bootstrap import open_replica, provision, replica_exists
from infra.cli.display import board_url
from infra.cli.ops import start_metrics
from infra.cli.supervise import Child, Supervisor
from infra.kafka.cluster import KafkaCluster, lib_dir
from infra.process import Loop, StopSignals
from infra.settings import Settings
from producers import store
from producers.migrate import open_store
from producers.relay import Relay
from producers.service import DossierService
from producers.sim.simulator import Simulator
from schemas.errors import MotcuaError
from schemas.keys import Keyring, init_keystore
from schemas.nodes import SITES, get_node, node_ids
from streams.store import reset_store, stored_progress

Say = Callable[[str], None]


def local_cluster(settings: Settings, brokers: int | None = None, port: int | None = None,
                  directory: Path | None = None) -> KafkaCluster:
    """The cluster ``motcua kafka up`` and ``motcua up --broker kafka`` run: its log under
    ``var/kafka/cluster`` (kept across restarts), its jars under ``var/kafka/lib``."""
    return KafkaCluster(directory or settings.kafka_dir / "cluster",
                        brokers or settings.kafka_brokers,
                        port=port or settings.kafka_port, lib=lib_dir(settings.data_dir))


def describe_nodes(cluster: KafkaCluster) -> list[str]:
    return [f"node {n.node_id}: {n.address} pid {n.pid} log {n.log_path}" for n in cluster.nodes]


@dataclass(frozen=True)
class UpOptions:
    port: int | None = None
    broker: str = "tansu"  # "tansu" (embedded, memory) | "kafka" (local Apache Kafka, disk)
    simulate: bool = True
    speed: float | None = 60.0
    scale: float = 1.0
    start: date = date(2025, 7, 1)
    end: date = date(2025, 7, 30)


def run_up(settings: Settings, say: Say, options: UpOptions | None = None) -> int:
    options = options or UpOptions()
    port = options.port
    broker: EmbeddedBroker | None = None
    cluster: KafkaCluster | None = None
    with StopSignals() as signals, ExitStack() as stack:
        if settings.kafka_bootstrap:
            bootstrap = settings.kafka_bootstrap
            say(f"using the cluster at {bootstrap}")
        elif options.broker == "kafka":
            cluster = local_cluster(settings, port=port)
            say(f"kafka: starting {cluster.size} Apache Kafka node(s), log in "
                f"{cluster.directory}")
            stack.enter_context(cluster)
            bootstrap = cluster.bootstrap
            # from here on it is a cluster like any other (group timing, children's env)
            settings = settings.model_copy(update={"kafka_bootstrap": bootstrap})
            say(f"bootstrap={bootstrap}  (local Apache Kafka, log on disk)")
            for line in describe_nodes(cluster):
                say(f"kafka: {line}")
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
        engine = open_store(settings.store_url)
        stack.callback(engine.dispose)
        if broker is not None:  # a fresh in-memory log: rebuild it from the stores
            again = store.republish_all(engine)
            if again:
                say(f"store: {again:,} stored events will be published again to the fresh "
                    "in-memory broker")
            dropped = reset_store(settings.streams_store_url)
            if dropped:
                say("streams: store emptied (its positions were in the previous broker's log); "
                    "refolding from the new log")
            _reset_replicas(settings, engine, say)
            for site in SITES:
                _reset_archive(settings, engine, say, site)
        sup = Supervisor(settings, bootstrap, say)
        own_port = sup.own_port = sup.next_port()  # MOTCUA_METRICS_PORT, unless taken
        metrics = sup.metrics = start_metrics(settings, "relay", own_port)
        # the relay's and the simulator's client libraries: rate-limited, and their Kafka
        # errors make this process not ready (infra/logs.py)
        logs.setup("WARNING", settings.log_format, metrics.kafka_trouble)
        stack.callback(sup.stop_all)
        worker = sup.start("streams", ["streams"])
        say(f"streams: worker pid {worker.proc.pid}, store {settings.streams_store_url}, log "
            f"{worker.log}; `motcua counters` prints its figures")
        display = sup.start("display", ["display"])
        say(f"display: wall boards at {board_url(settings.display_host, settings.display_port)}"
            f" (pid {display.proc.pid}, log {display.log})")
        # one archive per provincial site, as in production: each signs its checkpoints
        # and cosigns the other's (docs/audit.md)
        audit_keys(settings)  # both keys before both children, which would race to make them
        archivers = {site: sup.start(_archive_log(settings, site), ["archive", "--site", site])
                     for site in SITES}
        say("archive: every verified event, twice, each site witnessing the other: "
            + "; ".join(f"{site} in {archive_dir(settings, None, site)} (pid {child.proc.pid})"
                        for site, child in archivers.items()))
        syncs = {node: sup.start(f"sync-{node}", ["sync", "--node", node])
                 for node in [get_node(n).id for n in settings.sync_node_ids]}  # unknown: stop
        say(f"sync: {len(syncs)} replicas ("
            + ", ".join(f"{node} pid {child.proc.pid}" for node, child in syncs.items())
            + f") under {settings.replica_url('{node}')[0]}; `motcua sync status` shows their "
            "lag")
        say(f"metrics: /metrics, /healthz and /readyz of this process (relay) on port "
            f"{own_port}, of the others on {', '.join(str(c.metrics_port) for c in sup.children)}"
            "; `motcua status` shows them all")
        stop = threading.Event()
        relay = Relay(engine, settings.kafka_config(bootstrap),
                      topic_prefix=settings.topic_prefix, metrics=metrics)
        _loop(stack, relay.run, stop, "relay")
        say(f"relay: publishing every node's outbox from {settings.store_url}")
        sim = None
        if options.simulate:
            sim = Simulator(DossierService(engine, Keyring(settings.keys_path)), options.start,
                            options.end, scale=options.scale, speed=options.speed, stop=stop)
            _loop(stack, lambda _stop: _simulate(sim, say), stop, "simulator")
            pace = "max" if options.speed is None else f"x{options.speed:g}"
            say(f"simulator: {options.start} to {options.end}, scale {options.scale:g}, "
                f"speed {pace}")
        say("motcua is up; press Ctrl-C to stop")
        name = signals.wait(lambda: say(_progress(sim, relay, engine, worker, settings)
                                        + "; " + _sync_status(syncs, settings)
                                        + _display_status(display, settings)
                                        + _archive_status(archivers, settings)),
                            watch=lambda: _watch(sup, broker, cluster))
        if name.startswith("error:"):
            say(f"{name}; stopping")
            stop.set()
            return 1
        say(f"{name} received; stopping")
        stop.set()  # every loop ends; the stack then joins them and stops the broker last
    say("stopped")
    return 0


def cluster_gone(cluster: KafkaCluster) -> str | None:
    """Why a local cluster can no longer serve, or None while any node runs."""
    if any(n.running() for n in cluster.nodes):
        return None
    return f"error: every Kafka node exited (see the logs under {cluster.directory})"


def _watch(sup: Supervisor, broker: EmbeddedBroker | None, cluster: KafkaCluster | None
           ) -> str | None:
    """Every half second: children restarted as needed; a reason to stop if the broker
    itself is gone (nothing can go on without it)."""
    sup.check()
    return _broker_gone(broker, cluster)


def _broker_gone(broker: EmbeddedBroker | None, cluster: KafkaCluster | None = None
                 ) -> str | None:
    if cluster is not None and (gone := cluster_gone(cluster)):
        return f"{gone}; its log is on disk: `motcua up --broker kafka` again goes on from it"
    if broker is None or broker.running():
        return None
    return (f"error: the embedded broker exited (see {broker.log_path}); its log is lost, "
            "`motcua up` again rebuilds it from the node stores")


def _loop(stack: ExitStack, target: Callable[[threading.Event], None],
          stop: threading.Event, name: str) -> None:
    stack.callback(Loop(target, name, stop).join, 30)


def _simulate(sim: Simulator, say: Say) -> None:
    try:
        resumed = sim.resume_point()  # another or a finished simulation: said, not run
        if resumed is not None:
            say(f"simulator: resuming this store's simulation where it stopped, at "
                f"{resumed:%Y-%m-%d %H:%M:%S}")
        summary = sim.run()
    except MotcuaError as exc:
        say(f"simulator: {exc}")
        return
    how = "stopped" if sim.stop.is_set() else "done"
    say(f"simulator: {how}, {summary.events_written:,} events written "
        f"({sum(summary.received_by_node.values()):,} dossiers received)")


def _other_history(stores: Mapping[str, tuple[str, int]], starts: Mapping[str, str],
                   heads: Mapping[str, int]) -> list[str]:
    """The origins whose held chain is not the node stores' (``store.chain_starts``:
    origin -> (hash of seq 1, head seq)): another first event, or more events than the
    store ever had."""
    return [o for o, h in starts.items()
            if o not in stores or stores[o][0] != h or heads[o] > stores[o][1]]


def _reset_replicas(settings: Settings, engine: Engine, say: Say) -> None:
    """The new log holds the node stores' events at new offsets. A replica holding the same
    history reads it again (duplicates); one holding another history (the node stores
    were made anew, or restored from an older copy) is emptied, or the stores' new events
    would be refused as forks."""

    starts = store.chain_starts(engine)
    for node in settings.sync_node_ids:
        if not replica_exists(settings, node):
            continue
        replica = open_replica(settings, node)
        try:
            if _other_history(starts, replica.chain_starts(), replica.chain_heads()):
                replica.clear()
                say(f"sync {node}: replica emptied (it held another history than the node "
                    "stores)")
            else:
                replica.forget_positions()
        finally:
            replica.engine.dispose()


def _reset_archive(settings: Settings, engine: Engine, say: Say, site: str) -> None:
    """As for the replicas: the archive reads the new log from its start (what it holds
    comes again as duplicates). An archive of another history than the node stores is
    never emptied (it is evidence): it is moved aside, and a new one begins."""
    root = archive_dir(settings, None, site)
    if not (root / "index.db").exists():
        return
    starts = store.chain_starts(engine)
    archive = Archive.open(root)
    try:
        other = _other_history(starts, archive.chain_starts(), archive.chain_heads())
        if not other:
            archive.forget_positions()
    finally:
        archive.close()
    if other:
        aside = root.with_name(f"{root.name}.{datetime.now(UTC):%Y%m%dT%H%M%S}")
        root.rename(aside)
        say(f"archive: it held another history than the node stores ({len(other)} origins); "
            f"moved aside to {aside.resolve()}, a new archive begins")


def _archive_log(settings: Settings, site: str) -> str:
    """A site's archive child logs under its archive folder's name."""
    return archive_dir(settings, None, site).name


def _archive_status(archivers: dict[str, Child], settings: Settings) -> str:
    return "".join(f"; the archive of {site} is DOWN (exited with {child.last_exit}, see "
                   f"{child.log})" for site, child in archivers.items() if not child.running)


def _sync_status(syncs: dict[str, Child], settings: Settings) -> str:

    parts = []
    for node, child in syncs.items():
        if not child.running:
            parts.append(f"{node} DOWN (exited with {child.last_exit}, see {child.log})")
            continue
        try:
            replica = open_replica(settings, node, create=False)
            try:
                held = replica.status()
            finally:
                replica.engine.dispose()
            parts.append(f"{node} {held['dossiers']:,} dossiers")
        except (MotcuaError, SQLAlchemyError):
            parts.append(f"{node} not readable yet")
    return "sync: " + ", ".join(parts)


def _streams_status(worker: Child, settings: Settings) -> str:
    if not worker.running:
        return f"streams worker DOWN (exited with {worker.last_exit}, see {worker.log})"
    try:
        folded, dead = stored_progress(settings.streams_store_url)
    except SQLAlchemyError:
        return "streams: store not readable yet"
    return f"streams: {folded:,} records folded, {dead:,} dead letters"


def _display_status(display: Child, settings: Settings) -> str:
    if display.running:
        return ""
    return f"; display DOWN (exited with {display.last_exit}, see {display.log})"


def _progress(sim: Simulator | None, relay: Relay, engine: Engine,
              worker: Child | None = None,
              settings: Settings | None = None) -> str:
    waiting = store.count_unpublished(engine)
    parts = []
    if sim is not None and sim.sim_time is not None:
        parts.append(f"sim time {sim.sim_time:%Y-%m-%d %H:%M}, "
                     f"{sim.summary.events_written:,} events written")
    parts.append(f"{relay.stats.published:,} published, {waiting:,} in the outbox")
    if relay.stats.last_error:
        parts.append(f"last relay error: {relay.stats.last_error}")
    if worker is not None and settings is not None:
        parts.append(_streams_status(worker, settings))
    return "status: " + "; ".join(parts)
