"""The ranker inside the worker, end to end: event in → that user's list on the recommendations topic (and in
Redis) within the refresh interval; a bought item is gone from the next list."""

from __future__ import annotations

import time

import orjson
import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from fusionrec.contracts.events import Event
from fusionrec.contracts.recommendations import decode
from fusionrec.producers.producer import EventProducer
from tests.integration.workers import WorkerProcess, make_events, send

INTERVAL_MS = 200


class ListWatcher:
    """Reads the recommendations topic from the start and keeps every list per user, in arrival order."""

    def __init__(self, settings):
        conf = settings.consumer_config(f"{settings.kafka.client_id}-watch")
        self.consumer = Consumer(conf | {"enable.auto.commit": False, "fetch.wait.max.ms": 20})
        meta = self.consumer.list_topics(settings.topic.recommendations, timeout=10).topics[
            settings.topic.recommendations
        ]
        self.consumer.assign(
            [TopicPartition(settings.topic.recommendations, p, OFFSET_BEGINNING) for p in meta.partitions]
        )
        self.lists = {}

    def wait_for(self, user, predicate, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.consumer.consume(1000, timeout=0.1):
                if msg.error() is None:
                    rec = decode(msg.value())
                    assert msg.key() == rec.user_id.encode()
                    self.lists.setdefault(rec.user_id, []).append((rec, time.time() * 1000))
            for rec, arrived in self.lists.get(user, []):
                if predicate(rec):
                    return rec, arrived
        raise TimeoutError(f"no matching list for {user} in {timeout}s")

    def close(self):
        self.consumer.close()


def test_event_in_list_out_within_the_interval_and_bought_items_leave(worker_settings, tmp_path):
    now = int(time.time() * 1000)
    history = make_events(3000, seed=11, start_ms=now - 300_000)
    send(worker_settings, history)
    worker_settings = worker_settings.replace(ranker_interval_ms=INTERVAL_MS)
    worker = WorkerProcess(worker_settings, tmp_path, "w")
    watcher = ListWatcher(worker_settings)
    producer = EventProducer(worker_settings)

    def send_now(event):
        producer.send(event)
        producer.flush()

    try:
        worker.wait_for(
            lambda m: (
                m.get("fusionrec_worker_events_total", 0) >= len(history)
                and m.get("fusionrec_recommendations_published_total", 0) >= 300
            )
        )

        # a returning user views something: a new list reflecting that event appears
        sent = int(time.time() * 1000)
        view = Event("probe-view", "user-7", "item-3", "view", sent, category_id="cat-3")
        send_now(view)
        rec, arrived = watcher.wait_for("user-7", lambda r: r.newest_event_ts == view.ts)
        assert len(rec.items) == worker_settings.ranker.k
        assert rec.generated_at - view.ts <= INTERVAL_MS + 800, "list made later than the interval allows"
        assert all(
            item.contributions and abs(sum(item.contributions.values()) - item.score) < 1e-3 for item in rec.items
        )
        assert set(rec.sources) == set(worker_settings.model.sources.split(","))  # every enabled source
        assert rec.policy.arm == "bandit" and 0 < rec.policy.propensity <= 1

        # they buy the top item: the next list no longer has it
        top = rec.items[0].item_id
        buy = Event("probe-buy", "user-7", top, "purchase", int(time.time() * 1000), category_id="cat-1")
        send_now(buy)
        after, _ = watcher.wait_for("user-7", lambda r: r.newest_event_ts == buy.ts)
        assert top not in after.item_ids
        assert all(top not in ids for ids in after.sources.values())

        # the serving copy in Redis is the latest list
        client = redis.Redis.from_url(worker_settings.redis.url)
        deadline = time.monotonic() + 5
        while decode(client.get(worker_settings.redis.keys.recommendation("user-7"))).newest_event_ts != buy.ts:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.ttl(worker_settings.redis.keys.recommendation("user-7")) > 0
        # ... and compact: the topic's list without the per-source lists
        stored = decode(client.get(worker_settings.redis.keys.recommendation("user-7")))
        assert stored.items == after.items and stored.policy == after.policy and stored.sources == {}

        # a brand-new user gets a list at once (cold start: popular, trending, category)
        newcomer = Event("probe-new", "newcomer", "item-9", "view", int(time.time() * 1000), category_id="cat-9")
        send_now(newcomer)
        fresh, _ = watcher.wait_for("newcomer", lambda r: r.newest_event_ts == newcomer.ts)
        assert fresh.segment == "new" and len(fresh.items) == worker_settings.ranker.k
        assert {"trending", "category"} <= {s for item in fresh.items for s in item.contributions}

        metrics = worker.metrics()
        assert metrics["fusionrec_recommendations_freshness_seconds_count"] >= len(history)
        [key, *_] = client.scan_iter(match=f"{worker_settings.redis.prefix}weights:*")
        weights = orjson.loads(client.get(key))
        assert set(weights["weights"]) == {"new", "returning"}
        assert sum(weights["weights"]["returning"].values()) == pytest.approx(1.0)
    finally:
        producer.close()
        watcher.close()
        worker.stop()
