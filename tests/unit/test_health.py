"""The probes: liveness from the loop's beats, readiness from the rebalance hooks, served with the metrics."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from fusionrec.streams.health import Health, HealthServer
from fusionrec.streams.metrics import WorkerMetrics


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_live_while_starting_then_only_while_the_loop_beats():
    clock = Clock()
    health = Health(stall_after_s=30, startup_grace_s=600, clock=clock)
    assert health.live()[0]  # no beat yet: starting
    clock.now += 601
    assert not health.live()[0]  # never beat within the grace
    health.beat()
    clock.now += 30
    assert health.live() == (True, {"live": True, "reason": "event loop responsive", "last_beat_s": 30.0})
    clock.now += 1
    ok, body = health.live()
    assert not ok and body["reason"] == "event loop stalled: no beat for 31 s"


def test_ready_only_once_the_current_assignment_is_restored():
    seen = []
    health = Health(on_ready=seen.append)
    assert health.ready() == (
        False,
        {"ready": False, "reason": "starting: no partitions assigned yet", "partitions": []},
    )
    generation = health.assigned([2, 0])
    assert not health.is_ready and health.ready()[1]["partitions"] == [0, 2]
    assert health.restored(generation)
    assert health.ready() == (
        True,
        {"ready": True, "reason": "ready: partitions [0, 2] assigned and restored", "partitions": [0, 2]},
    )
    health.revoked()
    assert not health.is_ready
    stale = health.assigned([1])
    health.revoked()  # a second rebalance before the first restore finished
    assert not health.restored(stale) and not health.is_ready
    assert health.restored(health.assigned([]))  # an empty assignment: a settled standby
    health.stopping()
    assert not health.is_ready
    assert seen == [False, True, False, False, False, False, True, False]


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def served():
    registry = CollectorRegistry()
    Counter("fusionrec_test_things_total", "Things.", registry=registry).inc(3)
    health = Health()
    server = HealthServer("127.0.0.1", 0, health, registry)
    yield server, health
    server.close()


def test_probes_and_metrics_on_one_port(served):
    server, health = served
    status, body = get(server.port, "/readyz")
    assert status == 503 and json.loads(body)["reason"] == "starting: no partitions assigned yet"
    assert get(server.port, "/livez")[0] == 200
    health.restored(health.assigned([0, 1, 2]))
    status, body = get(server.port, "/readyz")
    assert status == 200 and json.loads(body)["partitions"] == [0, 1, 2]
    status, body = get(server.port, "/metrics")
    assert status == 200 and b"fusionrec_test_things_total 3.0" in body


def test_build_info_and_lag_series():
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    metrics.set_build_info("cpu")
    (sample,) = [s for f in registry.collect() if f.name == "fusionrec_build_info" for s in f.samples]
    import platform

    import torch

    from fusionrec import __version__

    assert sample.value == 1
    assert sample.labels == {
        "version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": "cpu",
    }
    metrics.set_lag({0: 5, 1: 0})
    metrics.set_lag({1: 7}, gone=[0, 4])  # 4 never had a series
    lag = {
        s.labels["partition"]: s.value
        for f in registry.collect()
        if f.name == "fusionrec_worker_consumer_lag_records"
        for s in f.samples
    }
    assert lag == {"1": 7}


def test_lag_is_the_end_minus_the_applied_position():
    from fusionrec.streams.app import lag_of

    assert lag_of(applied=100, highwater=130, fetched=110) == 30
    # a high watermark behind what was fetched already (stale, from an earlier fetch) is not the end
    assert lag_of(applied=100, highwater=101, fetched=120) == 20
    assert lag_of(applied=120, highwater=101, fetched=120) == 0
    assert lag_of(applied=100, highwater=None, fetched=None) is None  # not fetched yet
    assert lag_of(applied=None, highwater=5, fetched=5) is None
