"""Publishing fused lists: the recommendations topic (compacted, keyed by user) and the Redis serving copy.

The lists are derived data: a list lost in a crash is replaced by the user's next change, so the topic is written
without waiting for each acknowledgement (failures are logged and counted), while the Redis copy is written in one
pipeline per refresh. Both carry the same JSON (:mod:`fusionrec.contracts.recommendations`).

The producer recreates itself after a fatal error (a broker restart that forgot its producer id), instead of
failing every later list: what it had queued then is lost and counted in ``publish_errors_total``, as is every
list the broker did not acknowledge (:class:`~fusionrec.infra.resilient.ResilientProducer` without re-sends:
the user's next change publishes a newer list anyway).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import redis
import redis.cluster
from confluent_kafka import KafkaError, Message

from fusionrec import __version__
from fusionrec.contracts.keys import RedisKeys
from fusionrec.contracts.recommendations import encode_message_and_copy, payload
from fusionrec.contracts.settings import Settings
from fusionrec.infra.resilient import ResilientProducer
from fusionrec.models.fused import FusedList
from fusionrec.streams.metrics import WorkerMetrics

__all__ = ["RecommendationPublisher", "list_payload"]

log = logging.getLogger("fusionrec.ranker")

#: Writes a refresh's lists in one call with one reply (a pipeline parses one reply per list, a third of what the
#: Redis write costs the worker): KEYS the list keys, ARGV[1] the TTL in seconds, then one value per key.
_SET_LISTS = """
local ttl = ARGV[1]
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ttl)
end
return #KEYS
"""


def list_payload(
    fused: FusedList, *, model_version: str, generated_at: int, newest_event_ts: int, partition: int | None = None
) -> dict:
    """The topic message for one fused list (the JSON object of :func:`fusionrec.contracts.recommendations.payload`)."""
    ranked, pull = fused.ranked, fused.pull
    return payload(
        user_id=ranked.user_id,
        columns=ranked.rounded_columns(),
        sources=ranked.source_lists,
        segment=fused.segment,
        policy=(pull.arm, pull.action, pull.propensity, pull.weights),
        weights_version=pull.version,
        model_version=model_version,
        generated_at=generated_at,
        newest_event_ts=newest_event_ts,
        partition=partition,
        ranker=fused.ranker,
    )


class RecommendationPublisher:
    """Sends lists to the recommendations topic and Redis; observes freshness per reflected event."""

    def __init__(
        self,
        client: redis.Redis,
        keys: RedisKeys,
        producer_config: dict[str, Any],
        *,
        topic: str,
        list_ttl_s: int,
        metrics: WorkerMetrics | None = None,
    ):
        self.client = client
        self.keys = keys
        self.topic = topic
        self.list_ttl_s = list_ttl_s
        self.metrics = metrics
        self.producer = ResilientProducer(
            producer_config, name="list publisher", keep_unacked=False, on_reset=self._reset
        )
        self.errors = 0
        # A Redis Cluster spreads the users' keys over slots, which one script call cannot span: a pipeline there.
        self._set_lists = None if isinstance(client, redis.cluster.RedisCluster) else client.register_script(_SET_LISTS)
        if metrics is not None:
            metrics.producer_stall.labels("ranker").set_function(lambda: self.producer.stall_s)

    def _reset(self, reason: str) -> None:  # noqa: ARG002 - logged by the producer
        if self.metrics:
            self.metrics.producer_resets.labels("ranker").inc()

    @classmethod
    def from_settings(
        cls, settings: Settings, client: redis.Redis, metrics: WorkerMetrics | None = None
    ) -> RecommendationPublisher:
        """The worker's publisher: the recommendations topic, the list TTL, and a producer of its own."""
        return cls(
            client,
            settings.redis.keys,
            settings.producer_config(**{"client.id": f"{settings.kafka.client_id}-ranker"}),
            topic=settings.topic.recommendations,
            list_ttl_s=settings.ranker.list_ttl_s,
            metrics=metrics,
        )

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors += 1
            if self.metrics:
                self.metrics.publish_errors.inc()
            if self.errors <= 5 or self.errors % 1000 == 0:
                log.error("list for user %r not published: %s (%d so far)", msg.key(), err, self.errors)

    def publish_many(self, groups: list[tuple[list[FusedList], dict[str, list[int]], int, int]]) -> int:
        """Publish the lists of several partitions, ``(lists, changed, partition, offset)`` each, with one Redis
        call and one poll of the producer for all of them."""
        generated_at = int(time.time() * 1000)
        keys = self.keys
        topic = self.topic
        produce = self.producer.produce
        encode = encode_message_and_copy
        names: list[str] = []
        values: list[bytes] = []
        for lists, changed, partition, offset in groups:
            model_version = f"fusionrec-{__version__} p{partition}@{offset}"
            for fused in lists:
                stamps = changed.get(fused.user_id) or [generated_at]
                message, copy = encode(
                    list_payload(
                        fused,
                        model_version=model_version,
                        generated_at=generated_at,
                        newest_event_ts=max(stamps),
                        partition=partition,
                    )
                )
                produce(topic, message, fused.user_id.encode(), on_delivery=self._delivered)
                names.append(keys.recommendation(fused.user_id))
                values.append(copy)
        if not names:
            return 0
        self._write(names, values)
        self.producer.poll(0)
        published_at = time.time() * 1000
        if self.metrics:
            m = self.metrics
            m.published.inc(len(names))
            observe = m.freshness.observe
            by_policy: Counter[tuple[str, str]] = Counter()
            for lists, changed, _partition, _offset in groups:
                for fused in lists:
                    for ts in changed.get(fused.user_id, ()):
                        observe(max(published_at - ts, 0.0) / 1000.0)
                    by_policy[fused.pull.arm, fused.pull.action.split(":")[0]] += 1
            for (arm, action), count in by_policy.items():
                m.lists.labels(arm, action).inc(count)
        return len(names)

    def _write(self, names: list[str], values: list[bytes]) -> None:
        """The serving copies, each with the list TTL: one script call, or a pipeline on a Redis Cluster."""
        if self._set_lists is not None:
            self._set_lists(keys=names, args=[self.list_ttl_s, *values])
            return
        pipe = self.client.pipeline(transaction=False)
        for name, value in zip(names, values, strict=True):
            pipe.execute_command("SET", name, value, "EX", self.list_ttl_s)
        pipe.execute()

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for outstanding lists to be acknowledged; return how many are still unacknowledged."""
        return self.producer.flush(timeout)
