"""The online-evaluation service: reads the recommendations and events topics from Kafka into a
:class:`~fusionrec.consumers.online_eval.TimeOrderedJoin` and serves the counts as Prometheus metrics
(``fusionrec online-eval``)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from fusionrec.consumers.online_eval import (
    MAX_HELD_LISTS,
    MAX_PENDING_EVENTS,
    OnlineEvaluator,
    TimeOrderedJoin,
)
from fusionrec.contracts.events import validate
from fusionrec.contracts.privacy import Pseudonymiser
from fusionrec.contracts.recommendations import RecommendationFormatError, decode
from fusionrec.contracts.settings import Settings

__all__ = ["OnlineEvalCollector", "run_online_eval"]

log = logging.getLogger("fusionrec.online_eval")


# --- metrics -----------------------------------------------------------------------------------------------------
class OnlineEvalCollector(Collector):
    """Prometheus view of an :class:`OnlineEvaluator`, read at scrape time (the evaluator is the only tally).

    ``lock`` is held while reading; hold it while feeding the evaluator from another thread.
    """

    def __init__(self, evaluator: OnlineEvaluator, lock: threading.Lock | None = None):
        self._evaluator = evaluator
        self._lock = lock or threading.Lock()

    def collect(self) -> Iterator[Any]:
        with self._lock:
            summary = self._evaluator.summary()
        targets = CounterMetricFamily(
            "fusionrec_online_targets",
            "Target events judged against a list in effect, by variant (fused or a source) and target kind.",
            labels=["variant", "kind"],
        )
        hits = CounterMetricFamily(
            "fusionrec_online_hits",
            "Target events whose item was in the variant's top k, by variant and target kind.",
            labels=["variant", "kind"],
        )
        rate = GaugeMetricFamily(
            "fusionrec_online_hit_rate",
            "Hit rate at k since the evaluator started, by variant (hits / targets; absent before the first target).",
            labels=["variant"],
        )
        for variant, cells in summary["variants"].items():
            for kind, cell in cells["by_kind"].items():
                targets.add_metric([variant, kind], cell["targets"])
                hits.add_metric([variant, kind], cell["hits"])
            if cells["hit_rate"] is not None:
                rate.add_metric([variant], cells["hit_rate"])
        unserved = CounterMetricFamily(
            "fusionrec_online_unserved", "Target events whose user had no list in effect.", value=summary["unserved"]
        )
        yield from (targets, hits, rate, unserved)


# --- I/O ---------------------------------------------------------------------------------------------------------
def _partitions(consumer: Consumer, topic: str) -> list[int]:
    meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None:
        reason = "it does not exist" if meta is None else meta.error.str()
        raise KafkaException(f"cannot read topic {topic!r}: {reason} (`fusionrec topics` creates it)")
    return sorted(meta.partitions)


def run_online_eval(
    settings: Settings,
    *,
    k: int,
    metrics_port: int | None = None,
    max_events: int | None = None,
    idle_timeout: float | None = None,
    grace_ms: int = 2000,
    from_beginning: bool = True,
    sources: Iterable[str] | None = None,
    registry: CollectorRegistry | None = None,
    stop: threading.Event | None = None,
    evaluator: OnlineEvaluator | None = None,
    lock: threading.Lock | None = None,
) -> dict[str, Any]:
    """Evaluate the published lists against the events topic; return :meth:`OnlineEvaluator.summary`.

    One consumer, without a group, is assigned every partition of both topics, and the two streams are joined in
    event time (:class:`TimeOrderedJoin`): while lists are arriving, an event is judged once every partition
    that delivers them has delivered one made ``grace_ms`` after the event; while none is arriving, ``grace_ms``
    of wall time after it was consumed. Either way the lists generated before it have arrived from the other
    topic. A list reaches the evaluator only when the events before it have been judged, so reading one topic
    ahead of the other (a backlog, a run from the beginning) judges the same events against the same lists as
    reading them live. Invalid event records are skipped (the worker dead-letters them), as are records that are
    not valid lists.

    Parameters
    ----------
    k
        Hit rate at ``k``.
    metrics_port
        Serve the metrics on ``settings.metrics.bind:metrics_port`` while running (``None`` or 0: not served).
    max_events
        Stop after this many valid events (once each is judged). ``None``: no limit.
    idle_timeout
        Stop once nothing has arrived on either topic for this many seconds. ``None``: run until ``stop``.
    from_beginning
        Read the events topic from its beginning, or only events published from now on. The recommendations
        topic is always read from its beginning: the lists in effect for the first events were published before.
        (On Tansu, whose end offsets point into a partition's newest batch, "from now on" also judges the rest of
        that batch.)
    sources
        Passed to :class:`OnlineEvaluator`.
    registry
        Where the metrics are registered (default: a new registry, so repeated runs never collide).
    stop
        Set it (from a signal handler, another thread) to stop; events still waiting for their lists are judged
        with the lists that have arrived.

    evaluator, lock
        To watch the counts while it runs (``fusionrec demo``'s live view): the evaluator to feed (``k`` and
        ``sources`` are then its own) and the lock held while feeding it; read ``evaluator.summary()`` under it.

    The summary has an extra ``"consumed"`` entry: events, invalid event records and invalid list records read.
    """
    evaluator = evaluator if evaluator is not None else OnlineEvaluator(k, sources)
    lock = lock if lock is not None else threading.Lock()
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    registry.register(OnlineEvalCollector(evaluator, lock))
    server = start_http_server(metrics_port, addr=settings.metrics.bind, registry=registry)[0] if metrics_port else None
    conf = settings.consumer_config(f"{settings.kafka.client_id}-online-eval-{uuid.uuid4().hex[:8]}")
    consumer = Consumer(conf | {"enable.auto.commit": False})
    rec_topic, event_topic = settings.topic.recommendations, settings.topic.events
    hide = Pseudonymiser.from_settings(settings).event  # lists are by pseudonym when the key is set
    consumed = {"events": 0, "invalid_events": 0, "invalid_lists": 0}
    try:
        event_partitions = [TopicPartition(event_topic, p) for p in _partitions(consumer, event_topic)]
        rec_partitions = [TopicPartition(rec_topic, p) for p in _partitions(consumer, rec_topic)]
        consumer.assign(
            [TopicPartition(rec_topic, tp.partition, OFFSET_BEGINNING) for tp in rec_partitions]
            + [
                TopicPartition(event_topic, tp.partition, OFFSET_BEGINNING if from_beginning else OFFSET_END)
                for tp in event_partitions
            ]
        )
        join = TimeOrderedJoin(
            evaluator,
            grace_ms,
            [tp.partition for tp in rec_partitions],
            [tp.partition for tp in event_partitions],
            time.monotonic(),
        )
        events_paused = False  # for flow control (events_done pauses them for good)
        events_done = False  # no more events wanted: drain the pending ones, still reading lists
        last_arrival = time.monotonic()
        while not (events_done and not join.pending):
            if stop is not None and stop.is_set():
                break
            messages = consumer.consume(1000, timeout=0.1)
            now = time.monotonic()
            if messages:
                last_arrival = now
            with lock:
                for msg in messages:
                    err = msg.error()
                    if err is not None:
                        if err.fatal():
                            raise KafkaException(err)
                        log.warning("online eval consumer: %s", err)
                    elif msg.topic() == rec_topic:
                        if msg.value() is None:
                            continue
                        try:
                            join.add_list(msg.partition(), decode(msg.value()), now)
                        except RecommendationFormatError as exc:
                            consumed["invalid_lists"] += 1
                            log.warning(
                                "skipping invalid list at %s[%d]@%d: %s", rec_topic, msg.partition(), msg.offset(), exc
                            )
                    elif not events_done:
                        event = validate(
                            msg.value(),
                            max_bytes=settings.event.max_bytes,
                            max_future_skew_ms=settings.event.max_future_skew_ms,
                        ).event
                        if event is None:
                            consumed["invalid_events"] += 1
                            continue
                        join.add_event(msg.partition(), hide(event), now)
                        consumed["events"] += 1
                        if max_events is not None and consumed["events"] >= max_events:
                            events_done = True
                            consumer.pause(event_partitions)
                join.judge_due(now)
            # Flow control: what one topic has read ahead of the other waits in memory; bound it.
            if not join.lists_paused and len(join.held) >= MAX_HELD_LISTS:
                consumer.pause(rec_partitions)
                join.lists_paused = True
            elif join.lists_paused and len(join.held) <= MAX_HELD_LISTS // 2:
                consumer.resume(rec_partitions)
                join.lists_paused = False
            if not events_done:
                if not events_paused and len(join.pending) >= MAX_PENDING_EVENTS:
                    consumer.pause(event_partitions)
                    events_paused = True
                elif events_paused and len(join.pending) <= MAX_PENDING_EVENTS // 2:
                    consumer.resume(event_partitions)
                    events_paused = False
            if not events_done and idle_timeout is not None and now - last_arrival >= idle_timeout:
                events_done = True
                consumer.pause(event_partitions)
        with lock:
            join.drain()
            summary = evaluator.summary()
    finally:
        consumer.close()
        if server is not None:
            server.shutdown()
            server.server_close()
    summary["consumed"] = consumed
    return summary
