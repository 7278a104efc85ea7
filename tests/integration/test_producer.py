"""The shop-facing producer against the real broker: deliveries counted, bad events refused, failures surfaced."""

from __future__ import annotations

import time

import pytest

from fusionrec.consumers.reader import read_topic
from fusionrec.contracts.events import Event, InvalidEvent
from fusionrec.contracts.partitioning import partition_for
from fusionrec.contracts.settings import load_settings
from fusionrec.infra.admin import ensure_topics
from fusionrec.infra.stack import free_port
from fusionrec.producers.producer import DeliveryFailed, EventProducer


def test_events_are_delivered_keyed_by_user(settings):
    ensure_topics(settings)
    now = int(time.time() * 1000)
    seen = []
    events = [Event(f"e{i}", f"u{i % 4}", f"i{i}", "view", now) for i in range(50)]
    with EventProducer(settings, on_delivery=lambda err, msg: seen.append(err)) as producer:
        for event in events:
            producer.send(event)
    assert producer.stats.delivered == 50 and producer.stats.failed == 0 and producer.stats.in_flight == 0
    assert seen == [None] * 50
    records = list(read_topic(settings, settings.topic.events, max_messages=50, idle_timeout=5))
    assert len(records) == 50
    by_user: dict[bytes, set[int]] = {}
    for partition, _offset, key, _value in records:
        by_user.setdefault(key, set()).add(partition)
    assert len(by_user) == 4 and all(len(parts) == 1 for parts in by_user.values())


def test_users_land_on_the_partition_the_java_client_would_choose(settings):
    """The producer's placement of a key is murmur2's, not librdkafka's CRC32: a user is never split between this
    producer and a shop service that produces with the Java client."""
    settings = settings.replace(topic_events_partitions=6)
    ensure_topics(settings)
    now = int(time.time() * 1000)
    users = [f"user-{n}" for n in range(60)]
    with EventProducer(settings) as producer:
        for n, user in enumerate(users):
            producer.send(Event(f"p{n}", user, "i1", "view", now))
    records = list(read_topic(settings, settings.topic.events, max_messages=60, idle_timeout=5))
    placed = {key.decode(): partition for partition, _offset, key, _value in records}
    assert placed == {user: partition_for(user, 6) for user in users}
    assert len(set(placed.values())) == 6  # the check would be vacuous with one partition


def test_invalid_event_is_refused_before_sending(settings):
    producer = EventProducer(settings)
    with pytest.raises(InvalidEvent, match="unknown type"):
        producer.send(Event("e", "u", "i", "teleport", int(time.time() * 1000)))
    assert producer.stats.sent == 0
    producer.close()


def test_undeliverable_events_are_reported(tmp_path):
    dead = load_settings(state_dir=tmp_path, kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    producer = EventProducer(dead, overrides={"message.timeout.ms": 1000})
    producer.send(Event("e", "u", "i", "view", int(time.time() * 1000)))
    with pytest.raises(DeliveryFailed, match="failed"):
        producer.flush(5, raise_on_failure=True)
    assert producer.stats.failed == 1 and producer.stats.delivered == 0
    assert "timed out" in producer.stats.errors[0].lower()
