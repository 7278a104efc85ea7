"""The learned ranker inside the worker, on the real broker and Redis: users' next events label the lists they were
served, the shared ranker learns them through the item-side topic, and once it has learned enough the published
lists say it ordered them, with every item's sources."""

from __future__ import annotations

import time

from fusionrec.contracts.events import Event
from fusionrec.producers.producer import EventProducer
from tests.integration.test_recommendations import ListWatcher
from tests.integration.workers import WorkerProcess

ITEMS = [f"item-{i}" for i in range(12)]  # a small catalogue: every next item is among the popular candidates
USERS = [f"user-{u}" for u in range(40)]


def test_the_shared_learned_ranker_learns_from_next_events_and_serves(worker_settings, tmp_path):
    settings = worker_settings.replace(ranker_interval_ms=100, ranker_learned_min_lists=20, model_item_sync_ms=200)
    worker = WorkerProcess(settings, tmp_path, "w")
    watcher = ListWatcher(settings)
    producer = EventProducer(settings)
    start = int(time.time() * 1000)
    sent = 0
    try:
        worker.wait_for(lambda m: m.get("fusionrec_worker_assigned_partitions", 0) >= 1)
        for round_ in range(6):  # each round every user views one more item; lists are made between rounds
            for u, user in enumerate(USERS):
                item = ITEMS[(u + round_ * 5) % len(ITEMS)]
                ts = start + round_ * 1_500 + u
                producer.send(Event(f"e{round_}-{u}", user, item, "view", ts, category_id=f"cat-{u % 3}"))
                sent += 1
            producer.flush()
            worker.wait_for(
                lambda m, sent=sent: (
                    m.get("fusionrec_worker_events_total", 0) >= sent
                    and m.get("fusionrec_recommendations_published_total", 0) >= sent - len(USERS) * 0.5
                ),
                timeout=60,
            )
            time.sleep(0.5)  # ticks close and the labels reach the shared ranker
        metrics = worker.wait_for(lambda m: m.get("fusionrec_learned_ranker_ready_partitions", 0) >= 1, timeout=60)
        assert metrics["fusionrec_learned_ranker_lists"] >= 20
        # one more event: its user's new list is ordered by the learned ranker
        probe = Event("probe", USERS[0], ITEMS[3], "view", start + 20_000, category_id="cat-0")
        producer.send(probe)
        producer.flush()
        rec, _ = watcher.wait_for(USERS[0], lambda r: r.newest_event_ts == probe.ts, timeout=30)
        assert rec.ranker == "learned"
        assert rec.items and all(item.contributions for item in rec.items)
        assert all(set(item.contributions) <= set(rec.sources) for item in rec.items)
    finally:
        watcher.close()
        worker.stop()
