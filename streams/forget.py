"""Forgetting a user on request: the worker's side of ``fusionrec forget USER`` (a control record, see
:mod:`fusionrec.contracts.control`).

The partition that owns the user reaches the record in its event order and removes, on the state thread:

- every model's per-user state (:meth:`~fusionrec.models.base.Recommender.forget_user`: CF user factors, recent
  items and purchases, co-visitation's recent items, category affinities), the user's events still waiting in a
  CF block, the fused recommender's per-user state (activity, the list last served, the target filter, the
  learned ranker's remembered pool), and the user's place in the ranker's work list — once, when the record is
  beyond what the partition's models have learned;
- in Redis, in one transaction: the profile and the stored list deleted, the dedup window replaced by an empty one
  that only remembers the control record's position, so that a redelivery of the user's older records (a restart
  from an older snapshot) is recognised and does not write the profile again; skipped when the user's window says
  this record was processed already;
- on the recommendations topic (compacted, keyed by user), a tombstone for the user's key.

What the user taught the items (popularity, trends, co-visitation links, category tallies, CF item factors, the
bandit's and the learned ranker's aggregate statistics) is not per user and stays. The partition is marked dirty,
so its next snapshot — taken after the record — no longer holds the user, and a restart from an older snapshot
re-reads the record and forgets again.
"""

from __future__ import annotations

import logging

import redis

from fusionrec.contracts.control import Control
from fusionrec.contracts.keys import RedisKeys
from fusionrec.contracts.settings import DedupSettings
from fusionrec.stores.dedup import SeenIds
from fusionrec.streams.metrics import WorkerMetrics
from fusionrec.streams.publisher import RecommendationPublisher
from fusionrec.streams.state import PartitionState

__all__ = ["Forgetter", "forget_user_state"]

log = logging.getLogger("fusionrec.worker")


def forget_user_state(state: PartitionState, user_id: str) -> list[str]:
    """Remove ``user_id`` from the partition's models, pending blocks, fusion and work list; the names of the
    parts that held something."""
    held = [name for name, model in state.models.items() if model.forget_user(user_id)]
    for name, waiting in state.pending.items():
        kept = [event for event in waiting if event.user_id != user_id]
        if len(kept) != len(waiting):
            state.pending[name] = kept
            held.append(f"pending:{name}")
    fusion = state.fusion
    if fusion is not None:
        # FusedRecommender keeps no public hook (models/fused.py); its eviction path forgets every per-user part
        if user_id in fusion._last or user_id in fusion._served:
            held.append("fusion")
        fusion._forget(user_id)
    if state.changed.pop(user_id, None) is not None:
        held.append("changed")
    state.dirty = True
    return held


class Forgetter:
    """Carries out ``forget_user`` control records for the partitions of one worker."""

    def __init__(
        self,
        client: redis.Redis,
        keys: RedisKeys,
        dedup: DedupSettings,
        publisher: RecommendationPublisher | None = None,
        metrics: WorkerMetrics | None = None,
    ):
        self.client = client
        self.keys = keys
        self.dedup = dedup
        self.publisher = publisher
        self.metrics = metrics

    def forget(self, state: PartitionState, control: Control, user_id: str, offset: int) -> bool:
        """Forget ``user_id`` (the control record's user, pseudonymised if the worker does that) as of the record
        at ``offset`` of the state's partition; whether anything was still to do (False for a redelivery)."""
        held = forget_user_state(state, user_id) if offset > state.offset else None
        keys, partition = self.keys, state.partition
        window = SeenIds.decode(self.client.get(keys.dedup(user_id)), self.dedup.max_ids)
        in_redis = not (window.partition == partition and window.offset >= offset)
        if in_redis:
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(keys.profile(user_id), keys.recommendation(user_id))
            pipe.set(
                keys.dedup(user_id), SeenIds(self.dedup.max_ids, partition, offset).encode(), ex=self.dedup.window_s
            )
            pipe.execute()
        if held is None and not in_redis:
            return False
        if self.publisher is not None:
            self._tombstone(user_id)
        if self.metrics and in_redis:  # the Redis part happens once per record: count it there
            self.metrics.forgotten.inc()
        log.info(
            "forgot user %s (request %s, partition %d offset %d): %s",
            user_id,
            control.request_id,
            partition,
            offset,
            "models already past it" if held is None else ", ".join(held) or "no model state",
        )
        return True

    def _tombstone(self, user_id: str) -> None:
        publisher = self.publisher
        key = user_id.encode()
        while True:
            try:
                publisher.producer.produce(publisher.topic, None, key, on_delivery=_tombstone_delivered)
                break
            except BufferError:  # the local queue is full: let librdkafka drain it
                publisher.producer.poll(0.1)
        publisher.producer.poll(0)


def _tombstone_delivered(err, msg) -> None:
    if err is not None:
        log.warning("tombstone for user %r on %s not published: %s", msg.key(), msg.topic(), err)
