"""Every topic fusionrec reads or writes, with its intended layout: names come from the settings.

Partition counts are fixed at creation (Tansu cannot add partitions, and adding them on Kafka would move users
between partitions); :mod:`fusionrec.infra.admin` creates missing topics and reports layouts that differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fusionrec.contracts.settings import Settings

__all__ = ["TopicSpec", "topic_specs"]


@dataclass(frozen=True)
class TopicSpec:
    role: str
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    purpose: str = ""


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic fusionrec reads or writes, with its intended layout."""
    return [
        TopicSpec(
            "events",
            settings.topic.events,
            settings.topic.events_partitions,
            {"cleanup.policy": "delete", "retention.ms": str(7 * 24 * 3600 * 1000)},
            "the shop's events (contract v1), keyed by user_id",
        ),
        TopicSpec(
            "dead_letter",
            settings.topic.dead_letter,
            settings.topic.dead_letter_partitions,
            {"cleanup.policy": "delete", "retention.ms": str(30 * 24 * 3600 * 1000)},
            "rejected events: original bytes, reasons, source topic/partition/offset",
        ),
        TopicSpec(
            "item_side",
            settings.item_side_topic,
            1,
            {"cleanup.policy": "delete", "retention.ms": str(7 * 24 * 3600 * 1000)},
            "item-side halves of the events, by sync tick, keyed by events partition; read in full by every worker",
        ),
        TopicSpec(
            "recommendations",
            settings.topic.recommendations,
            settings.topic.recommendations_partitions,
            {"cleanup.policy": "compact"},
            "latest fused list per user (compacted, keyed by user_id)",
        ),
    ]
