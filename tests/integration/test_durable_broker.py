"""Durable embedded storage: with broker_storage=s3, acknowledged events survive a kill -9 of the broker."""

from __future__ import annotations

import time

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
