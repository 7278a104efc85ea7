"""A Redis that restarts empty (no RDB, no AOF) under a running worker: the loss is reported — metric, ERROR log,
readiness — within seconds, and the worker then applies no more events and writes no snapshot over the empty
Redis (docs/worker.md, "When Redis loses its data")."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import orjson
import pytest
import redis

from tests.integration.redis_servers import VolatileRedis
from tests.integration.workers import WorkerProcess, make_events, send


@pytest.fixture
def volatile(tmp_path):
    server = VolatileRedis(tmp_path / "redis")
    yield server
    server.stop()


def _readyz(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def test_a_redis_restarted_empty_is_reported_not_absorbed(worker_settings, volatile, tmp_path):
    conf = worker_settings.replace(redis_url=volatile.url)
    keys = conf.redis.keys
    now = int(time.time() * 1000)
    first, later = make_events(1000, seed=41, start_ms=now - 30_000), make_events(300, seed=42, start_ms=now)
    worker = WorkerProcess(conf, tmp_path, "w")
    try:
        send(conf, first)
        client = redis.Redis.from_url(volatile.url)
        worker.wait_for(
            lambda m: (
                m.get("fusionrec_worker_events_total", 0) >= len(first)
                and m.get("fusionrec_worker_ready", 0) == 1
                and any(True for _ in client.scan_iter(match=keys.snapshots(conf.topic.events)))
                and client.exists(keys.epoch)
            ),
            timeout=60,
        )
        assert worker.metrics().get("fusionrec_redis_state_lost", 0) == 0
        client.close()

        volatile.restart()  # back on the same port, empty
        restarted = time.monotonic()
        metrics = worker.wait_for(lambda m: m.get("fusionrec_redis_state_lost", 0) == 1, timeout=10)
        noticed_s = time.monotonic() - restarted
        print(f"loss noticed {noticed_s:.2f} s after the restart")
        assert noticed_s < 5, noticed_s
        assert metrics["fusionrec_redis_state_losses_total"] == 1
        assert metrics["fusionrec_worker_ready"] == 0
        status, body = _readyz(worker.metrics_port)
        assert status == 503 and "Redis lost the worker state" in body["reason"], body

        applied = metrics["fusionrec_worker_events_total"]
        send(conf, later)  # not applied: the worker stopped applying events
        time.sleep(3)
        after = worker.metrics()
        assert after["fusionrec_worker_events_total"] == applied
        assert after["fusionrec_redis_state_lost"] == 1
    finally:
        code = worker.stop()
    assert code == 0
    log = (tmp_path / "w.log").read_text()
    assert "ERROR" in log and "Redis lost the worker state: its epoch key" in log
    assert "fusionrec rebuild" in log
    assert "no final snapshot: Redis lost the worker state" in log and "final snapshot written" not in log
    client = redis.Redis.from_url(volatile.url)
    # no snapshot, periodic or final, was written over the empty Redis: nothing pins an offset there
    assert not list(client.scan_iter(match=keys.snapshots(conf.topic.events)))
    assert not client.exists(keys.item_side(conf.item_side_topic))
    assert not client.exists(keys.epoch)  # and the epoch is not quietly re-established


def test_a_snapshot_written_while_redis_restarts_empty_is_removed(worker_settings, monkeypatch):
    """The race of a background snapshot: it checked the epoch, then Redis restarted empty and the client
    reconnected into it. The epoch is checked again after the writes, and what was written is removed."""
    from fusionrec.stores.client import connect
    from fusionrec.streams.state import PartitionState, SnapshotStore, build_fusion, build_models

    conf = worker_settings
    client = connect(conf.redis)
    store = SnapshotStore(client, conf, conf.topic.events)
    epoch = (conf.redis.keys.epoch, b"token-1")
    client.set(*epoch)
    state = PartitionState(0, build_models(conf, 0), build_fusion(conf, 0))
    save = store.save

    def save_then_lose(one, target=None):  # the restart lands while the snapshot is being written
        size = save(one, target)
        client.delete(conf.redis.keys.epoch)
        return size

    monkeypatch.setattr(store, "save", save_then_lose)
    with pytest.raises(RuntimeError, match="while the snapshot was written"):
        store.save_all_fresh_connection([state], None, epoch)
    assert not client.exists(store.key(0))
    monkeypatch.setattr(store, "save", save)  # and with the epoch in place, a snapshot is written as before
    client.set(*epoch)
    store.save_all_fresh_connection([state], None, epoch)
    assert client.exists(store.key(0))
    client.delete(store.key(0), conf.redis.keys.epoch)
