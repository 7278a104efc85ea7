"""Two workers in one group split the partitions and end with exactly the models one worker builds."""

from __future__ import annotations

import time
import uuid

import redis

from fusionrec.stores.profiles import ProfileStore
from tests.integration.workers import (
    WorkerProcess,
    all_snapshotted,
    expected_counts,
    item_side_settled,
    make_events,
    model_fingerprint,
    send,
)


def test_two_workers_match_one(worker_settings, tmp_path):
    now = int(time.time() * 1000)
    events = make_events(6000, seed=11, start_ms=now - 100_000)
    send(worker_settings, events[:3000])

    single = worker_settings
    pair = worker_settings.replace(
        redis_prefix=f"pair{uuid.uuid4().hex[:6]}:", worker_group=worker_settings.worker.group + "-pair"
    )
    one = WorkerProcess(single, tmp_path, "one")
    a = WorkerProcess(pair, tmp_path, "pair-a")
    b = None
    try:
        a.wait_for(lambda m: m.get("fusionrec_worker_events_total", 0) >= 3000)
        b = WorkerProcess(pair, tmp_path, "pair-b")  # joins: the group rebalances, a hands partitions over
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            held = [w.metrics().get("fusionrec_worker_assigned_partitions", 0) for w in (a, b)]
            if sum(held) == 3 and min(held) > 0:
                break
            time.sleep(0.3)
        send(worker_settings, events[3000:])
        for worker in (a, b):
            worker.wait_for(lambda m: m.get("fusionrec_worker_events_total", 0) > 0)
        for worker, conf in ((one, single), (a, pair)):
            worker.wait_for(
                lambda m, conf=conf: all_snapshotted(conf, len(events)) and item_side_settled(conf, events),
                timeout=120,
            )
    finally:
        for worker in (one, a, b):
            if worker is not None:
                worker.stop()
    assert sum(held) == 3 and min(held) > 0, f"the group did not split the topic: {held}"

    users = sorted(expected_counts(events))
    single_profiles = ProfileStore(redis.Redis.from_url(single.redis.url), single.redis.keys)
    pair_profiles = ProfileStore(redis.Redis.from_url(pair.redis.url), pair.redis.keys)
    assert pair_profiles.get_many(users) == single_profiles.get_many(users)
    assert model_fingerprint(pair) == model_fingerprint(single)
