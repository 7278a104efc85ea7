"""Redis goes away under a running worker and comes back: batches are retried, nothing lost, nothing doubled."""

from __future__ import annotations

import time
from collections import Counter

import redis

from fusionrec.infra.stack import Stack, free_port
from fusionrec.stores.profiles import ProfileStore
from tests.integration.workers import WorkerProcess, expected_counts, make_events, send


def test_worker_survives_a_redis_outage(worker_settings, tmp_path):
    # broker_storage=s3 makes the embedded Redis persist (the broker here is the session's, started elsewhere).
    conf = worker_settings.replace(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", state_dir=tmp_path / "own-redis", broker_storage="s3"
    )
    own = Stack(conf)
    assert [s.state for s in own.up()] == ["external", "running"]  # the session broker, a Redis of our own
    now = int(time.time() * 1000)
    first, second = make_events(2000, seed=21, start_ms=now - 50_000), make_events(2000, seed=22, start_ms=now)
    worker = WorkerProcess(conf, tmp_path, "w")
    try:
        send(conf, first)
        worker.wait_for(lambda m: m.get("fusionrec_worker_events_total", 0) >= len(first))
        assert own.down() == ["redis"]  # Redis stops (AOF flushed on the way out)
        send(conf, second)
        worker.wait_for(lambda m: m.get("fusionrec_worker_batch_failures_total", 0) >= 1)
        own.up()  # ... and comes back with its data
        metrics = worker.wait_for(
            lambda m: m.get("fusionrec_worker_events_total", 0) >= len(first) + len(second), timeout=120
        )
        assert metrics["fusionrec_worker_events_total"] == len(first) + len(second)
        store = ProfileStore(redis.Redis.from_url(conf.redis.url), conf.redis.keys)
        expected = expected_counts(first + second)
        assert {p.user_id: Counter(p.counts) for p in store.get_many(sorted(expected))} == expected
    finally:
        worker.stop()
        own.down()
