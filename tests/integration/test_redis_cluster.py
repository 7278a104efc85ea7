"""fusionrec on a real three-node Redis Cluster (FUSIONREC_REDIS_CLUSTER=true): the worker's batch path, dedup,
snapshots and weights, ``fusionrec forget``, the serving API's reads and ``rebuild`` — every multi-key operation
within one hash slot, so none is refused (CROSSSLOT) and nothing is lost or doubled."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections import Counter

import orjson
import pytest
from redis.crc import key_slot

from fusionrec.apps.serve.child import ServerChild
from fusionrec.contracts.recommendations import decode
from fusionrec.stores.client import connect
from fusionrec.stores.profiles import ProfileStore
from fusionrec.streams.rebuild import rebuild_state
from tests.integration.redis_servers import RedisCluster3
from tests.integration.workers import WorkerProcess, expected_counts, make_events, send


@pytest.fixture
def cluster(tmp_path):
    servers = RedisCluster3(tmp_path / "cluster")
    yield servers
    servers.stop()


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return orjson.loads(response.read())


def test_worker_forget_api_and_rebuild_on_a_redis_cluster(worker_settings, cluster, tmp_path):
    conf = worker_settings.replace(redis_url=cluster.url, redis_cluster=True)
    client = connect(conf.redis)
    keys = conf.redis.keys
    now = int(time.time() * 1000)
    events = make_events(1500, seed=31, start_ms=now - 60_000)
    duplicates = events[:100]  # re-sent with their ids: skipped, across many users and slots
    expected = expected_counts(events)
    gone = max(expected.items(), key=lambda kv: sum(kv[1].values()))[0]
    kept = sorted(u for u in expected if u != gone)
    listed = kept[0]
    assert len({key_slot(keys.profile(u).encode()) for u in expected}) > 100  # the users spread over the slots

    def snapshotted() -> int:
        return sum(int(client.hget(k, "offset")) + 1 for k in client.scan_iter(match=keys.snapshots(conf.topic.events)))

    worker = WorkerProcess(conf, tmp_path, "w")
    try:
        send(conf, events, duplicates=duplicates)
        worker.wait_for(
            lambda m: (
                m.get("fusionrec_worker_events_total", 0) >= len(events)
                and m.get("fusionrec_worker_duplicates_skipped_total", 0) >= len(duplicates)
                and client.exists(keys.recommendation(listed), keys.recommendation(gone)) == 2
                and snapshotted() >= len(events) + len(duplicates)
                and any(True for _ in client.scan_iter(match=keys.all_weights(conf.topic.events)))
            ),
            timeout=60,
        )
        store = ProfileStore.from_settings(conf, client)
        assert {p.user_id: Counter(p.counts) for p in store.get_many(sorted(expected))} == expected

        out = subprocess.run(
            [sys.executable, "-m", "fusionrec.apps.cli", "forget", gone, "--yes"],
            env=worker.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        metrics = worker.wait_for(lambda m: m.get("fusionrec_worker_forgotten_users_total", 0) >= 1, timeout=30)
        assert store.get(gone).is_new and len(store.seen(gone)) == 0
        assert not client.exists(keys.recommendation(gone))
        assert metrics["fusionrec_worker_events_total"] == len(events)
        assert metrics["fusionrec_worker_duplicates_skipped_total"] == len(duplicates)
        assert metrics.get("fusionrec_worker_batch_failures_total", 0) == 0

        with ServerChild(conf, tmp_path / "api.log") as api:
            stored = decode(client.get(keys.recommendation(listed)))
            served = _get_json(f"{api.url}/v1/users/{listed}/recommendations?k=100")
            assert not served["fallback"] and served["items"]
            assert [i["item_id"] for i in served["items"]] == stored.item_ids[:100]
            weights = _get_json(f"{api.url}/v1/weights")
            assert weights["partitions"]  # every partition's weights, one MGET in one slot
            nobody = _get_json(f"{api.url}/v1/users/{gone}/recommendations")
            assert nobody["fallback"]  # forgotten: no list of theirs
    finally:
        assert worker.stop() == 0, (tmp_path / "w.log").read_text()[-3000:]
    log = (tmp_path / "w.log").read_text()
    assert "CROSSSLOT" not in log and "same key slot" not in log

    report = rebuild_state(conf)
    assert report.keys_deleted > len(expected)
    assert not any(True for _ in client.scan_iter(match=keys.everything))
