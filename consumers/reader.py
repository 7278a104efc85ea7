"""Read a topic from the start without joining a consumer group: for checks, demos and benchmarks.

Tansu's end offsets are wrong (``ListOffsets latest`` returns the newest batch's first offset + 1), so "read to
the end" cannot be trusted there; :func:`read_topic` stops after ``max_messages`` or when nothing has arrived
for ``idle_timeout`` seconds instead.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from fusionrec.contracts.control import MARKER as CONTROL_MARKER
from fusionrec.contracts.control import Control, parse_control
from fusionrec.contracts.events import validate
from fusionrec.contracts.settings import Settings

__all__ = ["read_topic", "EventSummary", "summarize_events"]


def read_topic(
    settings: Settings,
    topic: str,
    *,
    max_messages: int | None = None,
    idle_timeout: float = 5.0,
    batch: int = 10_000,
    overrides: dict | None = None,
) -> Iterator[tuple[int, int, bytes | None, bytes | None]]:
    """Yield ``(partition, offset, key, value)`` for every record of ``topic``, partition by partition interleaved."""
    conf = settings.consumer_config(f"{settings.kafka.client_id}-reader", **(overrides or {}))
    consumer = Consumer(conf | {"enable.auto.commit": False, "fetch.min.bytes": 1})
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None:
            raise KafkaException(f"topic {topic!r} does not exist" if meta is None else meta.error)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(meta.partitions)])
        seen = 0
        last = time.monotonic()
        while max_messages is None or seen < max_messages:
            want = batch if max_messages is None else min(batch, max_messages - seen)
            messages = consumer.consume(want, timeout=0.2)
            if not messages:
                if time.monotonic() - last > idle_timeout:
                    return
                continue
            last = time.monotonic()
            for msg in messages:
                if msg.error():
                    raise KafkaException(msg.error())
                seen += 1
                yield msg.partition(), msg.offset(), msg.key(), msg.value()
    finally:
        consumer.close()


@dataclass
class EventSummary:
    """What a topic of events holds: counts by type, distinct ids, invalid records and the time span."""

    records: int = 0
    valid: int = 0
    invalid: int = 0
    controls: int = 0  # control records (fusionrec forget's requests): neither events nor invalid
    by_type: Counter = field(default_factory=Counter)
    by_partition: Counter = field(default_factory=Counter)
    users: set = field(default_factory=set)
    items: set = field(default_factory=set)
    event_ids: set = field(default_factory=set)
    duplicates: int = 0
    key_mismatches: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


def summarize_events(
    records: Iterator[tuple[int, int, bytes | None, bytes | None]],
    on_record: Callable[[], None] | None = None,
) -> EventSummary:
    """Validate and count every record; checks that each record's key is its user id."""
    summary = EventSummary()
    started = last = time.perf_counter()
    for partition, _offset, key, value in records:
        last = time.perf_counter()
        summary.records += 1
        summary.by_partition[partition] += 1
        result = validate(value, max_future_skew_ms=10**12)
        if on_record is not None:
            on_record()
        event = result.event
        if event is None:
            if value is not None and CONTROL_MARKER in value and type(parse_control(value, key)) is Control:
                summary.controls += 1
            else:
                summary.invalid += 1
            continue
        summary.valid += 1
        summary.by_type[event.type] += 1
        summary.users.add(event.user_id)
        summary.items.add(event.item_id)
        if event.event_id in summary.event_ids:
            summary.duplicates += 1
        summary.event_ids.add(event.event_id)
        if key != event.key:
            summary.key_mismatches += 1
    summary.seconds = last - started  # up to the last record, not through the idle timeout
    return summary
