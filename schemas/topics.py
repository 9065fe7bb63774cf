"""The topic registry (DESIGN.md "Topics"): names, partitions, keys and configs.

Provisioning (``motcua topics create``) reads this table; nothing else hard-codes a topic
name. A prefix lets tests and side-by-side deployments keep their own set of topics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Infinite retention: the log is the source of truth. Set explicitly (not left to the broker
# default) so no cluster-wide default can silently delete history; stream libraries that
# read retention.ms also need it present.
_FOREVER = {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    key: str  # what the record key holds, for operators reading `motcua topics list`
    configs: dict[str, str] = field(default_factory=dict)
    purpose: str = ""


DOSSIER_EVENTS = "dossier-events"
HOTLINE_EVENTS = "hotline-events"
COUNTERS = "counters"
DEAD_LETTERS = "dead-letters"
CHECKPOINTS = "checkpoints"

REGISTRY: tuple[TopicSpec, ...] = (
    TopicSpec(DOSSIER_EVENTS, 12, "dossier_id", dict(_FOREVER),
              "every dossier lifecycle event; the source of truth"),
    TopicSpec(HOTLINE_EVENTS, 3, "call_id", dict(_FOREVER), "hotline 1022 calls"),
    TopicSpec(COUNTERS, 6, "scope|period|measure", {"cleanup.policy": "compact"},
              "latest counter snapshots for wall displays"),
    TopicSpec(DEAD_LETTERS, 3, "source topic", dict(_FOREVER),
              "every rejected message with its reason, source position and original bytes"),
    TopicSpec(CHECKPOINTS, 1, "signer", dict(_FOREVER),
              "the sites' signed checkpoints of their audit archives (docs/audit.md)"),
)


def topic_specs(prefix: str = "") -> tuple[TopicSpec, ...]:
    """The registry with ``prefix`` prepended to every name."""
    return tuple(TopicSpec(prefix + s.name, s.partitions, s.key, dict(s.configs), s.purpose)
                 for s in REGISTRY)


def topic_name(base: str, prefix: str = "") -> str:
    if base not in {s.name for s in REGISTRY}:
        raise KeyError(f"{base!r} is not a registry topic")
    return prefix + base
