"""``motcua kafka install`` and ``motcua kafka up``: a local Apache Kafka (KRaft) cluster."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    p.add_argument("--brokers", type=int, help="nodes, each broker + controller (default 3)")
    p.add_argument("--port", type=int,
                   help="first client port (default 19092; node i: port+i)")
    p.add_argument("--dir", type=Path, help="storage (default var/kafka/cluster)")
    p.set_defaults(func=lambda a, s: cmd_kafka(a, s, say))
