"""The item side over Kafka: every partition's item-side records on one topic, read in full by every worker.

The pattern is Kafka Streams' global table: a derived topic (``FUSIONREC_TOPIC_ITEM_SIDE``, by default
``{group}-item-side``; the workers create it) that each worker consumes from end to end, outside the consumer
group, into a local replica (:class:`~fusionrec.models.item_side.ItemSide`). The owner of an events partition
publishes, after each batch, the item-side halves of the events its models learned (``[offset, item, ts, {source:
context}]``, by sync tick) and the last tick the partition has closed; every worker's replica applies a tick once
all partitions have closed it, so all replicas pass through the same states (docs/worker.md).

Exactly once in effect:

- A partition's snapshot at offset ``o`` is written only after its records up to ``o`` are acknowledged by the
  broker (:meth:`ItemSideLink.flush` before every snapshot), so a crash loses none: the replay re-publishes what
  was not yet snapshotted.
- The replay may publish records again; the replica drops records at offsets it has received (per partition).
- The replica's snapshot (Redis ``{prefix}items:{topic}``) holds its models, its clocks and queued records, and the
  topic positions it had read to: a restarted worker resumes reading there.

A quiet partition (caught up, and no batch for ``QUIET_S``) would hold every tick back, so its owner closes it up
to the tick before the newest one the replica knows of; an event that reaches it later with an older time joins the
tick after that. This is the only timing-dependent step, and only for partitions that go quiet while older events
for them are still on their way.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterable

import orjson
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from fusionrec.contracts.settings import Settings
from fusionrec.contracts.topics import topic_specs
from fusionrec.infra.admin import ensure_topics
from fusionrec.infra.resilient import ResilientProducer
from fusionrec.models import Recommender
from fusionrec.models.item_side import ItemSide, Record, records_by_tick
from fusionrec.streams.metrics import WorkerMetrics
from fusionrec.streams.state import PartitionRegistry, PartitionState

__all__ = ["MAX_AHEAD_TICKS", "MAX_MESSAGE_BYTES", "QUIET_S", "ItemSideLink", "load_replica", "split_message"]

log = logging.getLogger("fusionrec.item_side")

#: A partition caught up and without a batch for this long is closed (up to the tick before the newest known), so
#: it holds no tick back.
QUIET_S = 1.0
#: How many sync ticks a partition may run ahead of the last tick the item side applied before its owner pauses
#: fetching it (a replay of a backlog: the others catch up first, and the records waiting for them stay bounded).
MAX_AHEAD_TICKS = 120
#: Most messages taken from the consumer in one poll.
POLL_BATCH = 500
#: Largest item-side message published: a publish over it is split (:func:`split_message`), under Kafka's default
#: 1 MB ``message.max.bytes`` with room for the key and the record headers.
MAX_MESSAGE_BYTES = 900_000


class ItemSideLink:
    """Publishes this worker's partitions' item-side records and feeds every partition's into the replica.

    The producer side runs on the state thread (:meth:`publish`, :meth:`flush`); a daemon thread polls the topic
    and queues what it reads; :meth:`drain`, on the state thread, moves it into the replica and applies what is
    ready.
    """

    def __init__(
        self,
        settings: Settings,
        replica: ItemSide,
        client: redis.Redis,
        metrics: WorkerMetrics | None = None,
    ):
        self.settings = settings
        self.replica = replica
        self.client = client
        self.metrics = metrics
        self.topic = settings.item_side_topic
        self.key = settings.redis.keys.item_side(self.topic)
        # Recreated after a fatal error (a broker restart), re-sending what was not acknowledged, in order.
        self.producer = ResilientProducer(
            {**settings.producer_config(), "client.id": "fusionrec-item-side", "compression.type": "lz4"},
            name="item-side link",
            on_reset=self._reset,
        )
        if metrics is not None:
            metrics.producer_stall.labels("item_side").set_function(lambda: self.producer.stall_s)
        self.positions: dict[int, int] = {}  # item-side topic partition -> next offset to read
        self._sent_closed: dict[int, int | None] = {}  # events partition -> the closed tick last published
        #: This link's id in message keys, and the partitions whose last message sent through the topic alone it
        #: has read back: from then on, everything published before about them has been read too (the topic is
        #: one ordered partition), so their new records go into the replica directly, and their echoes are skipped
        #: undecoded.
        self.instance = uuid.uuid4().hex[:12]
        self._echoed: set[int] = set()
        self._awaiting_echo: dict[int, bytes] = {}  # partition -> key of its last message sent through the topic
        self.delivery_errors = 0
        self._guard_seen = (0, 0, 0)  # the guard's counters last turned into metrics (capped, unvoted, jumps)
        self._failed: list[str] = []
        self._inbox: queue.Queue = queue.Queue()
        self._consumer: Consumer | None = None
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()

    # --- the replica's snapshot --------------------------------------------------------------------------------

    def restore(self) -> None:
        """Load the replica's last snapshot from Redis (if any): models, clocks, queued records, positions."""
        data = self.client.hgetall(self.key)
        if not data:
            return
        for raw, blob in data.items():
            name = raw.decode()
            if name.startswith("model:") and name[6:] in self.replica.models:
                self.replica.models[name[6:]] = Recommender.restore(blob)
        self.replica.load_meta(orjson.loads(data[b"meta"]))
        guard = self.replica.guard
        if guard is not None:  # the counters restored are not new
            self._guard_seen = (guard.capped, guard.unvoted, guard.jumps)
        self.positions = {int(p): int(o) for p, o in orjson.loads(data[b"positions"]).items()}
        log.info(
            "restored the item side at tick %s (%d records applied), resuming %s at %s",
            self.replica.applied,
            self.replica.records_applied,
            self.topic,
            self.positions,
        )

    def save(self, client: redis.Redis | None = None) -> int:
        """Write the replica's snapshot atomically; return its size in bytes."""
        client = client or self.client
        mapping: dict[str, bytes] = {f"model:{name}": model.snapshot() for name, model in self.replica.models.items()}
        mapping["meta"] = orjson.dumps(self.replica.meta())
        mapping["positions"] = orjson.dumps({str(p): o for p, o in self.positions.items()})
        pipe = client.pipeline(transaction=True)
        pipe.delete(self.key)
        pipe.hset(self.key, mapping=mapping)
        pipe.execute()
        return sum(len(v) for v in mapping.values())

    # --- publishing (the state thread) -------------------------------------------------------------------------

    def publish(self, state: PartitionState) -> int:
        """Send the partition's new item-side records and its closed tick; return how many records."""
        groups, closed = state.take_outbox()
        partition = state.partition
        if not groups and closed == self._sent_closed.get(partition):
            return 0
        self._sent_closed[partition] = closed
        parts = split_message(partition, groups, closed, self.instance)
        if partition in self._echoed:  # this worker's own records need no round trip through the topic
            self.replica.receive(partition, groups, closed)
        else:  # until the last part comes back, the replica learns the partition from the topic
            self._awaiting_echo[partition] = parts[-1][0]
        for key, value in parts:
            self._produce(key, value)
        return sum(len(records) for _, records in groups)

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions this worker no longer holds: their next owner's records come through the topic again."""
        for partition in partitions:
            self._echoed.discard(partition)
            self._awaiting_echo.pop(partition, None)
            self._sent_closed.pop(partition, None)

    def _produce(self, key: bytes, value: bytes) -> None:
        self.producer.produce(self.topic, value, key, on_delivery=self._delivered)
        self.producer.poll(0)

    def _reset(self, reason: str) -> None:  # noqa: ARG002 - logged by the producer
        if self.metrics:
            self.metrics.producer_resets.labels("item_side").inc()

    def _delivered(self, err, msg) -> None:  # noqa: ARG002 - confluent-kafka's callback signature
        if err is not None:
            self.delivery_errors += 1
            self._failed.append(str(err))
            log.error("item-side record lost by the broker: %s", err)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every record published so far is acknowledged; raise if any was not (a snapshot must not
        cover records the replicas never got)."""
        left = self.producer.flush(timeout_s)
        if left:
            raise RuntimeError(f"{left} item-side messages not acknowledged after {timeout_s:.0f} s")
        if self._failed:
            failed, self._failed = self._failed, []
            raise RuntimeError(f"{len(failed)} item-side messages failed: {failed[0]}")

    def close_quiet(self, partitions: PartitionRegistry) -> None:
        """Close every quiet partition this worker holds (:meth:`PartitionRegistry.quiet`) up to the tick before
        the newest one the replica knows, so it holds no older tick back.

        Not the newest tick itself: an event of that tick may still be on its way to the quiet partition, and
        would then be stamped with a later tick than in a run where it arrived in time. A tick is applied once
        some partition has seen an event of a later one.
        """
        self._observe_lag(partitions)
        newest = self.replica.newest_tick()
        if newest is None:
            return
        newest -= 1
        for state in list(partitions.states.values()):
            clock = state.clock
            if clock is None or not partitions.quiet(state.partition, QUIET_S):
                continue
            if clock.closed is None or clock.closed < newest:
                clock.close_through(newest)
                state.dirty = True
                self.publish(state)

    def ahead(self, partitions: PartitionRegistry) -> set[int]:
        """The held partitions whose open tick is more than ``MAX_AHEAD_TICKS`` past the last tick applied: their
        owner pauses them until the slowest partition has caught up (stream-time synchronisation, as Kafka Streams
        does across a task's partitions), so the records waiting in the replica stay bounded."""
        applied = self.replica.applied
        if applied is None:
            return set()
        return {
            partition
            for partition, state in partitions.states.items()
            if state.clock is not None and state.clock.open is not None and state.clock.open - applied > MAX_AHEAD_TICKS
        }

    def _observe_lag(self, partitions: PartitionRegistry) -> None:
        """The lag gauge: event time between the newest event this worker learned and the end of the last tick
        its replica applied."""
        if self.metrics is None or not partitions.states:
            return
        newest_ms = max(state.clock_ms for state in partitions.states.values())
        applied = self.replica.applied
        applied_ms = 0 if applied is None else (applied + 1) * self.settings.model.item_sync_ms
        self.metrics.item_side_lag.set(max(newest_ms - applied_ms, 0) / 1000 if newest_ms else 0.0)

    # --- consuming (a daemon thread, then the state thread) ----------------------------------------------------

    def ensure_topic(self) -> None:
        """Create the item-side topic if it is missing (at start, and after the broker lost its topics)."""
        item_specs = [spec for spec in topic_specs(self.settings) if spec.role == "item_side"]
        for topic_state in ensure_topics(self.settings, item_specs):
            for problem in topic_state.problems:
                log.warning("%s: %s", self.topic, problem)

    def start(self) -> None:
        """Start reading the item-side topic in full from the restored positions (the start without any)."""
        if self._poller is not None:
            return
        config = {
            **self.settings.consumer_config(f"{self.settings.worker.group}-item-side-reader"),
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
        self.ensure_topic()
        consumer = Consumer(config)
        events = self.settings.topic.events
        for topic in (self.topic, events):
            metadata = consumer.list_topics(topic, timeout=30).topics[topic]
            if metadata.error is not None or not metadata.partitions:
                consumer.close()
                raise RuntimeError(f"topic {topic} is missing ({metadata.error}): run `fusionrec topics` first")
        count = len(consumer.list_topics(events, timeout=30).topics[events].partitions)
        if count != self.replica.partitions:
            consumer.close()
            raise RuntimeError(
                f"{events} has {count} partitions but FUSIONREC_TOPIC_EVENTS_PARTITIONS says "
                f"{self.replica.partitions}: the item side must wait for every partition, so they must agree"
            )
        partitions = sorted(consumer.list_topics(self.topic, timeout=30).topics[self.topic].partitions)
        consumer.assign([TopicPartition(self.topic, p, self.positions.get(p, OFFSET_BEGINNING)) for p in partitions])
        self._consumer = consumer
        self._poller = threading.Thread(target=self._poll, name="fusionrec-item-side", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stop.is_set():
            try:
                messages = consumer.consume(POLL_BATCH, 0.1)
            except Exception:
                log.exception("reading %s failed", self.topic)
                time.sleep(1.0)
                continue
            batch = []
            for message in messages:
                err = message.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("reading %s: %s", self.topic, err)
                    continue
                batch.append((message.partition(), message.offset(), message.key(), message.value()))
            if batch:
                self._inbox.put(batch)

    def drain(self) -> int:
        """Move everything read so far into the replica and apply the ticks that are ready; return the records
        applied."""
        if self._poller is None:
            self.start()
        replica = self.replica
        while True:
            try:
                batch = self._inbox.get_nowait()
            except queue.Empty:
                break
            for partition, offset, key, value in batch:
                self.positions[partition] = offset + 1
                known = parse_key(key)
                if known is not None and known[0] < replica.partitions:
                    source, last, closed, instance = known
                    if instance == self.instance and self._awaiting_echo.get(source) == key:
                        del self._awaiting_echo[source]
                        self._echoed.add(source)
                    seen_closed = replica.closed[source]
                    if last <= replica.seen[source] and (
                        closed is None or (seen_closed is not None and closed <= seen_closed)
                    ):
                        continue  # nothing new: this worker's own records, or a replay's
                message = orjson.loads(value)
                source = message["p"]
                if source >= replica.partitions:
                    log.error("item-side message from partition %d of %d ignored", source, replica.partitions)
                    continue
                replica.receive(source, message["t"], message["c"])
        applied = replica.apply()
        if self.metrics:
            self.metrics.item_side_records.inc(applied)
            self.metrics.item_side_waiting_ticks.set(replica.lag_ticks())
        if replica.guard is not None:
            self._observe_guard(replica.guard)
        return applied

    def _observe_guard(self, guard) -> None:
        """The abuse limits' counters as metrics, and a warning for each new rate jump."""
        capped, unvoted, jumps = self._guard_seen
        if guard.jumps > jumps:
            for item, count, previous in guard.flagged[-min(guard.jumps - jumps, len(guard.flagged)) :]:
                log.warning(
                    "item %r jumped to %d events in one guard window (previous window: %d); popular and trending "
                    "count it only with enough returning users",
                    item,
                    count,
                    previous,
                )
        if self.metrics:
            m = self.metrics
            if guard.capped > capped:
                m.guard_capped.inc(guard.capped - capped)
            if guard.jumps > jumps:
                m.guard_rate_jumps.inc(guard.jumps - jumps)
            if guard.unvoted > unvoted:
                m.guard_unvoted_records.inc(guard.unvoted - unvoted)
            m.guard_unvoted.set(guard.pending_items)
        self._guard_seen = (guard.capped, guard.unvoted, guard.jumps)

    def stop(self) -> None:
        """Stop reading; wait for what was published (best effort: the snapshot path flushed already)."""
        self.producer.flush(5.0)
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def split_message(
    partition: int,
    groups: list[tuple[int, list[Record]]],
    closed: int | None,
    instance: str,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> list[tuple[bytes, bytes]]:
    """One publish as ``(key, value)`` messages of at most ``max_bytes`` each (a lone record larger than that goes
    alone): the records in offset order, cut in halves until each part fits, and the closed tick in the last part
    only, so that a reader that has applied the last part has applied them all (the topic is one ordered partition).

    A batch of sources with long contexts (itemcf's history, successor's predecessors) easily passes Kafka's default
    1 MB message limit; the parts are ordinary messages, read and deduplicated by offset like any other.
    """
    whole = orjson.dumps({"p": partition, "t": groups, "c": closed})
    last = groups[-1][1][-1][0] if groups else -1
    if len(whole) <= max_bytes:
        return [(message_key(partition, last, closed, instance), whole)]
    flat = [(tick, record) for tick, records in groups for record in records]
    pieces: list[bytes] = []
    ends: list[int] = []

    def cut(chunk: list[tuple[int, Record]], final: bool) -> None:
        value = orjson.dumps({"p": partition, "t": records_by_tick(chunk), "c": closed if final else None})
        if len(value) <= max_bytes or len(chunk) == 1:
            pieces.append(value)
            ends.append(chunk[-1][1][0])
            return
        half = len(chunk) // 2
        cut(chunk[:half], False)
        cut(chunk[half:], final)

    cut(flat, True)
    return [
        (message_key(partition, end, closed if n == len(pieces) - 1 else None, instance), value)
        for n, (end, value) in enumerate(zip(ends, pieces, strict=True))
    ]


def message_key(partition: int, last_offset: int, closed: int | None, instance: str) -> bytes:
    """``partition:last record offset:closed tick:publisher``: what a reader needs to skip a message it has nothing
    new from without decoding it, and to recognise its own."""
    return f"{partition}:{last_offset}:{'' if closed is None else closed}:{instance}".encode()


def parse_key(key: bytes | None) -> tuple[int, int, int | None, str] | None:
    """The fields of :func:`message_key` (None for a key of another shape)."""
    try:
        partition, last, closed, instance = (key or b"").decode().split(":")
        return int(partition), int(last), int(closed) if closed else None, instance
    except ValueError:
        return None


def load_replica(settings: Settings, client: redis.Redis) -> ItemSide | None:
    """The item side as the workers last snapshotted it (None without one): for tools that show what the worker
    built, and tests that compare runs."""
    from fusionrec.streams.state import build_item_side

    if not settings.model.item_sync_ms or not client.exists(settings.redis.keys.item_side(settings.item_side_topic)):
        return None
    link = ItemSideLink(settings, build_item_side(settings, settings.topic.events_partitions), client)  # type: ignore[arg-type]
    link.restore()
    return link.replica
