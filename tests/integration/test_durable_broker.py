"""Durable embedded storage: with broker_storage=s3, acknowledged events survive a kill -9 of the broker."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from fusionrec.consumers.reader import read_topic
from fusionrec.contracts.events import Event
from fusionrec.contracts.settings import load_settings
from fusionrec.infra.admin import ensure_topics
from fusionrec.infra.stack import Stack, free_port
from fusionrec.producers.producer import EventProducer

N = 2000


def test_acknowledged_events_survive_a_broker_crash(tmp_path):
    settings = load_settings(
        state_dir=tmp_path,
        broker_storage="s3",
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        topic_events_partitions=2,
        kafka_idempotence=False,
    )
    stack = Stack(settings)
    try:
        services = stack.up()
        assert services[0].detail == "tansu, s3 storage"
        ensure_topics(settings)
        now = int(time.time() * 1000)
        with EventProducer(settings) as producer:
            for i in range(N):
                producer.send(Event(f"e{i}", f"u{i % 50}", f"i{i % 300}", "view", now))
        assert producer.stats.delivered == N

        broker_pid = stack.status()[0].pid
        stack.kill_broker()
        assert stack.status()[0].state == "down"
        restarted = stack.up()
        assert restarted[0].state == "running" and restarted[0].pid != broker_pid

        ids = {value for _p, _o, _k, value in read_topic(settings, settings.topic.events, idle_timeout=4)}
        assert len(ids) == N
    finally:
        stopped = stack.down()
        assert set(stopped) >= {"broker", "s3"}


CRASHES = 6


@pytest.mark.parametrize("idempotence", [True, False], ids=["idempotent", "not-idempotent"])
def test_no_acknowledged_event_is_lost_when_the_broker_dies_mid_write(tmp_path, idempotence):
    """Issue 12, finding 2: Tansu's s3 storage writes an idempotent batch's producer sequence before the batch; a
    broker killed between the two answers the retry "duplicate sequence", which librdkafka reports as delivered
    (no offset) although nothing was stored: 1,475 and 2,055 of ~5,000 acknowledged events missing in two runs of
    this test before the producer sent such records again (fusionrec.infra.resilient). Every acknowledged event
    is on the topic after ``CRASHES`` kills in the middle of a stream of writes, idempotent or not."""
    settings = load_settings(
        state_dir=tmp_path,
        broker_storage="s3",
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        topic_events_partitions=3,
        kafka_idempotence=idempotence,
    )
    stack = Stack(settings)
    acked: dict[str, int] = {}

    def delivered(err, msg) -> None:
        if err is None:
            acked[msg.value().decode()] = -1 if msg.offset() is None else msg.offset()

    try:
        stack.up()
        ensure_topics(settings)
        producer = EventProducer(settings, validate=False, on_delivery=delivered)
        now = int(time.time() * 1000)
        sent = 0
        for _crash in range(CRASHES):
            # a stream of small batches: the broker is in the middle of a produce most of the time
            first = len(acked)
            while len(acked) < first + 300:
                for _ in range(20):
                    producer.send_raw(f"u{sent % 50}".encode(), f"e{sent}".encode(), timestamp_ms=now)
                    sent += 1
                producer.poll(0.01)
            stack.kill_broker()
            producer.poll(0.2)
            stack.up()
        assert producer.flush(90) == 0
        assert producer.stats.delivered == sent and producer.stats.failed == 0
        on_topic = Counter(
            value.decode() for _p, _o, _k, value in read_topic(settings, settings.topic.events, idle_timeout=4)
        )
        missing = sorted(set(acked) - set(on_topic))
        print(
            f"sent {sent}, acknowledged without an offset and sent again {producer.unplaced}, missing {len(missing)} "
            f"(reported at offsets {sorted(acked[e] for e in missing)[:10]}), copies on the topic "
            f"{sum(on_topic.values()) - len(on_topic)}"
        )
        assert not missing, f"{len(missing)} acknowledged events not on the topic, e.g. {missing[:5]}"
    finally:
        stack.down()
