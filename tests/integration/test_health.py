"""The worker's probes, consumer lag and build info, on a real worker over the real broker and Redis."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from fusionrec import __version__
from tests.integration.workers import WorkerProcess, handled, make_events, send


def probe(worker: WorkerProcess, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}{path}", timeout=3) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def test_ready_once_restored_live_throughout_and_lag_drains_to_zero(worker_settings, tmp_path):
    events = make_events(3000, seed=11, start_ms=int(time.time() * 1000) - 60_000)
    send(worker_settings, events)
    worker = WorkerProcess(worker_settings, tmp_path, "w")
    try:
        readiness = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, body = probe(worker, "/readyz")
            if status:
                readiness.append((status, body.get("reason", "")))
            if status == 200:
                break
            time.sleep(0.05)
        assert readiness and readiness[-1][0] == 200, readiness[-5:]
        # not ready before the group assigned the partitions and their snapshots were read
        assert readiness[0][0] == 503 and readiness[0][1].startswith(("starting", "rebalancing", "restoring"))
        assert body["partitions"] == [0, 1, 2]

        partitions = ("0", "1", "2")

        def drained(m) -> bool:
            return (
                handled(m) >= len(events)
                and all(f'fusionrec_worker_consumer_lag_records{{partition="{p}"}}' in m for p in partitions)
                and m["fusionrec_worker_consumer_lag_records"] == 0
            )

        metrics = worker.wait_for(drained, timeout=90)
        assert metrics["fusionrec_worker_ready"] == 1
        (info,) = [key for key in metrics if key.startswith("fusionrec_build_info{")]
        assert f'version="{__version__}"' in info and 'device="cpu"' in info
        status, live = probe(worker, "/livez")
        assert status == 200 and live["reason"] == "event loop responsive" and live["last_beat_s"] < 5

        # new records: the lag of each partition is what it has not applied yet, back to 0 once applied
        more = make_events(600, seed=12, start_ms=int(time.time() * 1000))
        send(worker_settings, more)
        worker.wait_for(lambda m: handled(m) >= len(events) + len(more), timeout=60)
        worker.wait_for(lambda m: m["fusionrec_worker_consumer_lag_records"] == 0, timeout=30)
    finally:
        worker.stop()


def test_not_ready_during_a_rebalance_then_each_ready_with_its_share(worker_settings, tmp_path):
    send(worker_settings, make_events(600, seed=13, start_ms=int(time.time() * 1000) - 30_000))
    first = WorkerProcess(worker_settings, tmp_path, "first")
    second = None
    try:
        first.wait_for(lambda m: m["fusionrec_worker_ready"] == 1 and m["fusionrec_worker_assigned_partitions"] == 3)
        second = WorkerProcess(worker_settings, tmp_path, "second")
        seen_first = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            a, b = probe(first, "/readyz"), probe(second, "/readyz")
            seen_first.append(a[0])
            if a[0] == b[0] == 200 and sorted(a[1]["partitions"] + b[1]["partitions"]) == [0, 1, 2]:
                break
            time.sleep(0.05)
        assert a[0] == b[0] == 200, (a, b)
        assert a[1]["partitions"] and b[1]["partitions"]  # split between the two
        assert 503 in seen_first  # the first worker left ready while its partitions moved
        # a revoked partition's lag series goes with it
        owned = {str(p) for p in a[1]["partitions"]}
        first.wait_for(
            lambda m: {k.split('"')[1] for k in m if k.startswith("fusionrec_worker_consumer_lag_records{")} == owned,
            timeout=30,
        )
    finally:
        if second is not None:
            second.stop()
        first.stop()
