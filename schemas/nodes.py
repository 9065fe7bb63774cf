"""Reference data: the 104 commune-level centres (official GSO codes, from
``schemas/data/hung_yen_units.csv``, a copy of shared/reference) and the provincial centre's two
sites. A node id is the 5-digit code for a commune centre, or ``site-<name>`` for a site."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

from schemas.errors import MotcuaError

NodeKind = Literal["xa", "phuong", "site"]

SITE_PHOHIEN = "site-phohien"
SITE_THAIBINH = "site-thaibinh"
SITES = (SITE_PHOHIEN, SITE_THAIBINH)


class UnknownNode(MotcuaError):
    """A node id that is neither a commune's GSO code nor a provincial site."""


@dataclass(frozen=True)
class Node:
    id: str
    name: str
    kind: NodeKind
    gso_code: str  # for a site: the code of the ward it stands in

    @property
    def is_site(self) -> bool:
        return self.kind == "site"


@cache
def all_nodes() -> tuple[Node, ...]:
    """The 104 commune centres in the order of the reference file, then the two sites."""
    text = resources.files("schemas").joinpath("data/hung_yen_units.csv").read_text("utf-8")
    nodes = []
    for row in csv.DictReader(io.StringIO(text)):
        kind: NodeKind = "phuong" if row["type"] == "phường" else "xa"
        nodes.append(Node(row["gso_code"], row["name"], kind, row["gso_code"]))
    nodes.append(Node(SITE_PHOHIEN, "Trung tâm PVHCC tỉnh – cơ sở Phố Hiến", "site", "11953"))
    nodes.append(Node(SITE_THAIBINH, "Trung tâm PVHCC tỉnh – cơ sở Thái Bình", "site", "13225"))
    return tuple(nodes)


@cache
def _by_id() -> dict[str, Node]:
    return {node.id: node for node in all_nodes()}


def node_ids() -> tuple[str, ...]:
    return tuple(node.id for node in all_nodes())


def get_node(node_id: str) -> Node:
    try:
        return _by_id()[node_id]
    except KeyError:
        raise UnknownNode(f"unknown node {node_id!r}: expected a commune's 5-digit GSO code "
                          f"(e.g. 11977) or one of {', '.join(SITES)}") from None
