"""What the worker serves from its models: the ranked lists of users whose state changed, and the bandit weights.

:class:`Refresher` ranks, on the state thread and between batches, the users each held partition
(:class:`~fusionrec.streams.state.PartitionRegistry`) marked as changed, and hands their fused lists to the
:class:`~fusionrec.streams.publisher.RecommendationPublisher`; it keeps the shop's set of unavailable items cached
for a second, and writes each partition's bandit weights to Redis. The worker (:mod:`fusionrec.streams.app`)
decides when: slices of ``RANK_BATCH`` users every ranker interval, weights every snapshot interval.
"""

from __future__ import annotations

import time
from itertools import islice

import orjson
import redis

from fusionrec.contracts.keys import RedisKeys
from fusionrec.streams.metrics import WorkerMetrics
from fusionrec.streams.publisher import RecommendationPublisher
from fusionrec.streams.state import PartitionRegistry

__all__ = ["MAX_USERS_PER_REFRESH", "RANK_BATCH", "Refresher"]

#: Most users ranked in one call of :meth:`Refresher.refresh` (one batched tensor pass per partition, and one
#: turn of the state thread: batches wait at most this long), and the most refreshed in one tick: under a backlog
#: the rest wait for the next tick, so batches keep flowing and freshness, not throughput, gives way.
RANK_BATCH = 128
MAX_USERS_PER_REFRESH = 4096
#: How long the set of unavailable items read from Redis is reused.
UNAVAILABLE_TTL_S = 1.0


class Refresher:
    """Ranks and publishes changed users' lists; publishes the bandit weights of the held partitions."""

    def __init__(
        self,
        partitions: PartitionRegistry,
        publisher: RecommendationPublisher,
        client: redis.Redis,
        keys: RedisKeys,
        topic: str,
        metrics: WorkerMetrics | None = None,
    ):
        self.partitions = partitions
        self.publisher = publisher
        self.client = client
        self.keys = keys
        self.topic = topic  # the events topic, whose partitions the weights are keyed by
        self.metrics = metrics
        self._unavailable: tuple[float, frozenset[str]] = (0.0, frozenset())
        self._turn = 0  # which partition ranks first in the next refresh

    def unavailable(self) -> frozenset[str]:
        """Items the shop marked unavailable (the Redis set ``{prefix}unavailable``), re-read at most once a second."""
        read_at, items = self._unavailable
        now = time.monotonic()
        if now - read_at >= UNAVAILABLE_TTL_S:
            members = self.client.smembers(self.keys.unavailable)
            items = frozenset(m.decode() for m in members)
            self._unavailable = (now, items)
        return items

    def refresh(self, max_users: int = MAX_USERS_PER_REFRESH) -> int:
        """Rank and publish the lists of up to ``max_users`` users whose state changed since their last list;
        return how many.

        Runs on the state thread between batches (the models do not move underneath it). Each partition's users
        are ranked longest-waiting first, in tensor batches of at most ``RANK_BATCH``; partitions take turns at
        going first, so under a backlog none waits behind the others. The worker calls it in slices of
        ``RANK_BATCH`` users (:mod:`fusionrec.streams.app`), so batches are processed between slices instead of
        waiting for every changed user to be ranked.
        """
        if max_users <= 0:
            return 0
        item_side = self.partitions.item_side
        if item_side is not None:  # what every partition taught the items since the last refresh
            item_side.drain()
            item_side.close_quiet(self.partitions)
        states = [state for state in self.partitions.states.values() if state.changed and state.fusion is not None]
        if not states:
            return 0
        started = time.perf_counter()
        first = self._turn % len(states)
        self._turn += 1
        unavailable = self.unavailable()
        budget = max_users
        groups = []
        ranked = []
        for state in states[first:] + states[:first]:
            taken = 0
            while budget > 0 and taken < len(state.changed):
                users = list(islice(state.changed, taken, taken + min(budget, RANK_BATCH)))  # longest-waiting first
                taken += len(users)
                budget -= len(users)
                models = self.partitions.ranking_models(state)
                lists = state.fusion.recommend(models, users, now_ms=state.clock_ms, unavailable=unavailable)
                groups.append((lists, {user: state.changed[user] for user in users}, state.partition, state.offset))
                ranked.append((state, users))
        published = self.publisher.publish_many(groups)  # every partition's lists with one Redis call
        for state, users in ranked:  # only now: a failed refresh leaves them for the next one
            for user in users:
                del state.changed[user]
            state.dirty = True  # the served lists are part of the snapshot
        if published and self.metrics:
            self.metrics.refresh_seconds.observe(time.perf_counter() - started)
        return published

    def publish_weights(self) -> dict[int, dict]:
        """Write each held partition's bandit weights to Redis (``{prefix}weights:{topic}:{partition}``, JSON),
        set the weight gauges to their mean over the partitions, and return them:
        ``{partition: {"weights": {segment: {source: w}}, "version": n, "rewards": n, "learned": {...}}}`` (the
        learned ranker's progress: ready, lists learned, targets outside its pools, last loss)."""
        report = {}
        pipe = self.client.pipeline(transaction=False)
        for partition, state in self.partitions.states.items():
            if state.fusion is None:
                continue
            bandit = state.fusion.bandit
            entry = {
                "weights": state.fusion.weights(),
                "version": 0 if bandit is None else bandit.version,
                "rewards": state.fusion.rewards,
                "updated_at": int(time.time() * 1000),
            }
            local, serving = state.fusion.learned, state.fusion.serving_ranker
            if local is not None and serving is not None:  # serving: the partition's own, or the shared one
                entry["learned"] = {
                    "ready": serving.ready,
                    "lists_learned": serving.lists_learned,
                    "misses": local.misses,
                    "loss": serving.last_loss,
                    "shared": serving is not local,
                }
            report[partition] = entry
            pipe.set(self.keys.weights(self.topic, partition), orjson.dumps(entry))
        if report:
            pipe.execute()
            if self.metrics:
                learned = [e["learned"] for e in report.values() if "learned" in e]
                if learned:
                    shared = all(e["shared"] for e in learned)  # one model: count its lists once
                    self.metrics.learned_lists.set(
                        learned[0]["lists_learned"] if shared else sum(e["lists_learned"] for e in learned)
                    )
                    self.metrics.learned_ready.set(sum(e["ready"] for e in learned))
                    losses = [e["loss"] for e in learned if e["loss"] is not None]
                    if losses:
                        self.metrics.learned_loss.set(sum(losses) / len(losses))
                for segment, weights in next(iter(report.values()))["weights"].items():
                    for source in weights:
                        mean = sum(e["weights"][segment][source] for e in report.values()) / len(report)
                        self.metrics.weights.labels(segment, source).set(mean)
        return report
