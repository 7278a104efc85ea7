"""Rebuild worker state from the events topic: the supported way to recover from lost or corrupt state.

Workers position each partition just after its state snapshot in Redis, or at the start of the topic when there
is none. So deleting every Redis key under the configured prefix (profiles, dedup entries, snapshots) while the
workers are stopped makes the next workers replay the whole topic (as far back as its retention reaches). The
group's item-side topic is derived state too: it is deleted, and the next workers create it afresh (its old
records would otherwise come back into the rebuilt item side).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fusionrec.contracts.settings import Settings
from fusionrec.infra.admin import delete_topics
from fusionrec.stores.client import connect

__all__ = ["RebuildReport", "rebuild_state"]


@dataclass
class RebuildReport:
    keys_deleted: int
    topics_deleted: list[str] = field(default_factory=list)


def rebuild_state(settings: Settings) -> RebuildReport:
    client = connect(settings.redis)
    deleted = 0
    batch = []
    try:
        for key in client.scan_iter(match=settings.redis.keys.everything, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += client.delete(*batch)
                batch.clear()
        if batch:
            deleted += client.delete(*batch)
    finally:
        client.close()
    topics = delete_topics(settings, [settings.item_side_topic]) if settings.model.item_sync_ms else []
    return RebuildReport(deleted, topics)
