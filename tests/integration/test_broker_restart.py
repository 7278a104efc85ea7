"""A broker restart with memory storage (issue 12, finding 1), on a real Tansu of its own and a real Redis.

The broker comes back empty: the producer's idempotence state is gone (it used to die on "Unknown Producer Id"),
the topics are new (offsets from 0, a new topic id) and the consumer group is forgotten. What must hold: the
producer re-sends everything not acknowledged and goes on; the worker notices the recreated topic (metric, not
ready), processes every event of the new one instead of skipping those below its old offsets, and its list
publisher and item-side link go on publishing.
"""

from __future__ import annotations

import time
from collections import Counter

import redis

from fusionrec.consumers.reader import read_topic
from fusionrec.contracts.events import Event
from fusionrec.infra.admin import ensure_topics
from fusionrec.infra.stack import Stack, private_settings
from fusionrec.producers.producer import EventProducer
from fusionrec.stores.profiles import ProfileStore
from tests.integration.workers import WorkerProcess, expected_counts, make_events


def _restart(stack: Stack, settings) -> None:
    stack.kill_broker()
    stack.up()
    ensure_topics(settings)  # what `fusionrec up` does: the memory broker lost its topics


def test_the_producer_resends_what_the_restart_left_unacknowledged(tmp_path):
    """The broker is down longer than the producer waits for acknowledgements (``stall_reset_s``): the producer
    is recreated and re-sends, in order, everything the old broker did not acknowledge (a fatal "Unknown Producer
    Id" takes the same path: tests/unit/test_resilient_producer.py)."""
    settings = private_settings(tmp_path / "state", topic_events_partitions=3)
    stack = Stack(settings)
    try:
        stack.up()
        ensure_topics(settings)
        now = int(time.time() * 1000)
        events = [Event(f"e{i}", f"u{i % 97}", f"i{i % 300}", "view", now) for i in range(10_000)]
        acked_before: set[bytes] = set()
        restarted = False

        def delivered(err, msg):
            if err is None and not restarted:
                acked_before.add(msg.value())

        producer = EventProducer(settings, validate=False, on_delivery=delivered, stall_reset_s=1.0)
        for event in events[:5000]:
            producer.send(event)
        assert producer.flush(20) == 0
        for event in events[5000:5500]:  # in flight when the broker dies
            producer.send(event)
        stack.kill_broker()
        producer.poll(0)  # acknowledgements the old broker sent before it died
        restarted = True
        for i, event in enumerate(events[5500:]):  # paced as a live shop, 3 s while the broker is away
            producer.send(event)
            if i % 150 == 0:
                producer.poll(0.1)
        stack.up()
        ensure_topics(settings)  # what `fusionrec up` does: the memory broker lost its topics
        assert producer.flush(40) == 0
        assert producer.stats.delivered == len(events) and producer.stats.failed == 0
        assert producer.stats.resets >= 1

        on_topic = Counter(value for _p, _o, _k, value in read_topic(settings, settings.topic.events, idle_timeout=3))
        sent = {event.to_json() for event in events}
        # everything not acknowledged by the old broker is on the new one, in the order it was first sent
        assert sent - acked_before <= set(on_topic)
        print(
            f"acked by the old broker {len(acked_before)}, on the new topic {sum(on_topic.values())} "
            f"({len(on_topic)} distinct), resets {producer.stats.resets}, re-sent {producer.stats.resent}"
        )
    finally:
        stack.down()


def test_the_worker_rides_out_a_broker_restart(tmp_path):
    settings = private_settings(tmp_path / "state", topic_events_partitions=3, worker_group="restart-test")
    stack = Stack(settings)
    worker = None
    try:
        stack.up()
        ensure_topics(settings)
        now = int(time.time() * 1000)
        first, second = make_events(3000, seed=11, start_ms=now - 60_000), make_events(3000, seed=12, start_ms=now)
        with EventProducer(settings) as producer:
            for event in first:
                producer.send(event)
        worker = WorkerProcess(settings, tmp_path, "w")
        before = worker.wait_for(
            lambda m: (
                m["fusionrec_worker_events_total"] >= len(first)
                and m["fusionrec_recommendations_published_total"] > 0
                and m["fusionrec_worker_snapshots_total"] > 0
            ),
            timeout=60,
        )
        assert before["fusionrec_worker_ready"] == 1 and before["fusionrec_events_topic_losses_total"] == 0

        _restart(stack, settings)
        worker.wait_for(lambda m: m["fusionrec_events_topic_losses_total"] >= 1, timeout=30)
        with EventProducer(settings) as producer:
            for event in second:
                producer.send(event)
        assert producer.stats.delivered == len(second)
        after = worker.wait_for(
            lambda m: (
                m["fusionrec_worker_events_total"] >= len(first) + len(second)
                and m["fusionrec_worker_ready"] == 1
                and m["fusionrec_recommendations_published_total"] > before["fusionrec_recommendations_published_total"]
            ),
            timeout=60,
        )
        # nothing of the new topic was taken for a redelivery and skipped, nothing applied twice
        assert after["fusionrec_worker_events_total"] == len(first) + len(second)
        assert after["fusionrec_worker_redelivered_total"] == before["fusionrec_worker_redelivered_total"]
        assert after["fusionrec_events_rewound"] == 0
        profiles = ProfileStore.from_settings(settings, redis.Redis.from_url(settings.redis.url))
        expected = expected_counts(first + second)
        assert {p.user_id: Counter(p.counts) for p in profiles.get_many(sorted(expected))} == expected
        print(
            "published before",
            before["fusionrec_recommendations_published_total"],
            "after",
            after["fusionrec_recommendations_published_total"],
            "publish errors",
            after["fusionrec_recommendations_publish_errors_total"],
            "producer resets",
            after["fusionrec_kafka_producer_resets_total"],
        )
    finally:
        if worker is not None:
            worker.stop()
        stack.down()


def test_a_worker_assigned_while_the_topic_is_gone_reads_the_new_one_from_its_start(tmp_path):
    """The broker comes back empty and the worker rejoins its group before anyone creates the topics again: it is
    assigned the partitions while the topic is missing and resumes at its old offsets. Once the topic is back, the
    batches it then reads from the old offsets are dropped and the partitions read again from offset 0. Before,
    every event below the old offsets was skipped: 2,928 of 3,000 in one run."""
    settings = private_settings(tmp_path / "state", topic_events_partitions=3, worker_group="late-topics")
    stack = Stack(settings)
    worker = None
    try:
        stack.up()
        ensure_topics(settings)
        now = int(time.time() * 1000)
        first, second = make_events(3000, seed=21, start_ms=now - 60_000), make_events(3000, seed=22, start_ms=now)
        with EventProducer(settings) as producer:
            for event in first:
                producer.send(event)
        worker = WorkerProcess(settings, tmp_path, "w")
        worker.wait_for(lambda m: m["fusionrec_worker_events_total"] >= len(first), timeout=60)
        stack.kill_broker()
        stack.up()
        worker.wait_for(lambda m: m["fusionrec_events_topic_lost"] == 1, timeout=30)
        time.sleep(10)  # the worker rejoins (about half the 6 s session timeout) while the topic is missing
        ensure_topics(settings)
        with EventProducer(settings) as producer:
            for event in second:
                producer.send(event)
        after = worker.wait_for(
            lambda m: m["fusionrec_worker_events_total"] >= len(first) + len(second) and m["fusionrec_worker_ready"],
            timeout=60,
        )
        assert after["fusionrec_worker_events_total"] == len(first) + len(second)
        profiles = ProfileStore.from_settings(settings, redis.Redis.from_url(settings.redis.url))
        expected = expected_counts(first + second)
        assert {p.user_id: Counter(p.counts) for p in profiles.get_many(sorted(expected))} == expected
    finally:
        if worker is not None:
            worker.stop()
        stack.down()
