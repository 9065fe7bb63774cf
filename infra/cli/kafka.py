"""``motcua kafka install`` and ``motcua kafka up``: a local Apache Kafka (KRaft) cluster."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from infra.cli.args import absolute_path, int_between
from infra.cli.up import cluster_gone, describe_nodes, local_cluster
from infra.kafka.cluster import install
from infra.process import StopSignals
from infra.settings import Settings

Say = Callable[[str], None]


def cmd_kafka(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    if args.action == "install":
        install(settings.data_dir, say)
        return 0
    cluster = local_cluster(settings, args.brokers, args.port, args.dir)
    with StopSignals() as signals:
        with cluster.start():
            say(f"bootstrap={cluster.bootstrap}")
            for line in describe_nodes(cluster):
                say(line)
            say(f"Apache Kafka: {cluster.size} node(s), log in {cluster.directory}; Ctrl-C "
                "stops every node")
            name = signals.wait(watch=lambda: cluster_gone(cluster))
            say(f"{name}; stopping" if name.startswith("error:")
                else f"{name} received; stopping")
        say("stopped")
    return 1 if name.startswith("error:") else 0


def add_parsers(sub: Any, say: Say) -> None:
    p = sub.add_parser("kafka", help="a local Apache Kafka (KRaft) cluster from Maven jars")
    p.add_argument("action", choices=["install", "up"],
                   help="install: fetch the jars into var/kafka/lib; up: run the cluster")
    p.add_argument("--brokers", type=int_between(1, 9), metavar="N",
                   help="nodes, each broker + controller, 1-9 (default MOTCUA_KAFKA_BROKERS, "
                   "3)")
    p.add_argument("--port", type=int_between(1, 65000),
                   help="first client port, 1-65000 (default MOTCUA_KAFKA_PORT, 19092; node "
                   "i: port+i, +100 internal, +200 controller)")
    p.add_argument("--dir", type=absolute_path,
                   help="storage (default $MOTCUA_DATA_DIR/kafka/cluster)")
    p.set_defaults(func=lambda a, s: cmd_kafka(a, s, say))
