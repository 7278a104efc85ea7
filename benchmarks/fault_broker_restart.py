"""Fault: the embedded broker (memory storage) restarts in the middle of a replay (issue 12, finding 1).

A private stack (Tansu + Redis on free loopback ports) and one worker; a paced replay of real events; half-way
the broker is killed (``kill -9``), left down for ``--down`` seconds, and started again empty (topics created
again, as ``fusionrec up`` does) while the replay goes on. Then every acknowledged event is compared with what the
worker applied, user by user (profiles in Redis):

* **acknowledged**: events the brokers acknowledged to the replay (old broker and new);
* **gone with the old broker**: acknowledged by the old broker but not read by the worker before it died
  (memory storage keeps nothing: no client can bring them back; ``--storage s3`` keeps them);
* **lost**: acknowledged, not gone with the broker, and not applied — must be 0;
* **doubled**: applied more often than sent — must be 0.

    python benchmarks/fault_broker_restart.py ../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import redis

from fusionrec.infra.admin import ensure_topics
from fusionrec.infra.stack import Stack, private_settings
from fusionrec.producers.datasets import read_dataset
from fusionrec.producers.producer import EventProducer
from fusionrec.producers.replay import replay_events
from fusionrec.stores.profiles import ProfileStore
from fusionrec.streams.child import WorkerChild


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path")
    parser.add_argument("--limit", type=int, default=40_000)
    parser.add_argument("--rate", type=float, default=4000.0, help="replay rate, events/s")
    parser.add_argument("--down", type=float, default=3.0, help="seconds the broker stays down")
    parser.add_argument("--storage", default="memory", choices=["memory", "s3"])
    parser.add_argument("--idempotence", default="true", choices=["true", "false"])
    args = parser.parse_args()

    events = read_dataset(args.path, limit=args.limit).events
    tmp = Path(tempfile.mkdtemp(prefix="fault-restart-"))
    settings = private_settings(
        tmp / "state",
        topic_events_partitions=3,
        broker_storage=args.storage,
        kafka_idempotence=args.idempotence == "true",
    )
    stack = Stack(settings)
    stack.up()
    ensure_topics(settings)
    worker = WorkerChild(settings, tmp / "worker.log", FUSIONREC_STATE_DIR=str(tmp / "w"), FUSIONREC_LOG_LEVEL="INFO")
    acked: dict[str, float] = {}  # event id -> wall time of its (first) acknowledgement

    def delivered(err, msg) -> None:
        if err is None:
            event_id = msg.value().split(b'"event_id":"', 1)[1].split(b'"', 1)[0].decode()
            # sent at its (wall-clock) timestamp, acknowledged its latency later: old broker or new, whenever the
            # report is served
            acked.setdefault(event_id, msg.timestamp()[1] / 1000 + (msg.latency() or 0.0))

    producer = EventProducer(settings, validate=False, on_delivery=delivered)
    report: dict[str, float] = {}

    def restart_half_way() -> None:
        while len(acked) < len(events) // 2:
            time.sleep(0.01)
        stack.kill_broker()
        killed_at = time.monotonic()
        report["killed_wall"] = time.time()
        applied, settled = -1.0, 0  # the worker finishes what it had fetched: what it applied stops changing
        while settled < 10:
            time.sleep(0.1)
            now = worker.metrics().get("fusionrec_worker_events_total", 0)
            settled = settled + 1 if now == applied else 0
            applied = now
        report["applied_at_kill"] = applied
        time.sleep(max(args.down - (time.monotonic() - killed_at), 0.0))
        stack.up()
        ensure_topics(settings)
        report["down_s"] = time.monotonic() - killed_at

    try:
        worker.wait_for(lambda m: m.get("fusionrec_worker_assigned_partitions", 0) >= 3, timeout=120)
        restarter = threading.Thread(target=restart_half_way, daemon=True)
        restarter.start()
        started = time.monotonic()
        result = replay_events(events, producer, rate=args.rate, flush_timeout=120)
        restarter.join(60)
        acked_by_old = {e for e, at in acked.items() if at < report["killed_wall"]}
        print(
            f"replay: {result.sent:,} sent, {result.delivered:,} acknowledged, {result.failed} failed, "
            f"{result.undelivered} undelivered in {time.monotonic() - started:.1f} s; producer recreated "
            f"{result.resets}x, {result.resent:,} re-sent, longest stall seen {result.max_stall_s:.1f} s; broker down "
            f"{report.get('down_s', 0):.1f} s"
        )
        target = len(acked) - len(acked_by_old) + report.get("applied_at_kill", 0)
        try:  # events the old broker had written but not acknowledged come again: duplicates, skipped
            worker.wait_for(
                lambda m: (
                    (
                        m.get("fusionrec_worker_ready", 0) == 1
                        and m.get("fusionrec_worker_events_total", 0)
                        + m.get("fusionrec_worker_duplicates_skipped_total", 0)
                        + m.get("fusionrec_worker_dead_letter_total", 0)
                        >= target
                    )
                    or m.get("fusionrec_worker_events_total", 0) >= len(acked)
                ),
                timeout=120,
            )
        except TimeoutError as exc:
            print(f"not settled: {exc}")
        time.sleep(3)  # the last batches and snapshots
        metrics = worker.metrics()
    finally:
        worker.stop()
        stack_client = redis.Redis.from_url(settings.redis.url)
        profiles = ProfileStore.from_settings(settings, stack_client)
        by_id = {event.event_id: event for event in events}
        expected: dict[str, Counter] = {}
        for event_id in acked:
            event = by_id[event_id]
            expected.setdefault(event.user_id, Counter())[event.type] += 1
        got = {p.user_id: Counter(p.counts) for p in profiles.get_many(sorted(expected))}
        stack_client.close()
        stack.down()

    missing = sum(max(n - got.get(u, Counter())[t], 0) for u, c in expected.items() for t, n in c.items())
    doubled = sum(max(got.get(u, Counter())[t] - n, 0) for u, c in expected.items() for t, n in c.items())
    # what the old broker acknowledged and the worker had not read when it died: gone with the broker's memory
    gone = max(len(acked_by_old) - int(report.get("applied_at_kill", 0)), 0) if args.storage == "memory" else 0
    print(
        f"acknowledged {len(acked):,} distinct events ({len(acked_by_old):,} by the old broker); the worker applied "
        f"{int(metrics.get('fusionrec_worker_events_total', 0)):,} (duplicates skipped "
        f"{int(metrics.get('fusionrec_worker_duplicates_skipped_total', 0)):,}, redelivered "
        f"{int(metrics.get('fusionrec_worker_redelivered_total', 0)):,})"
    )
    print(
        f"gone with the old broker ({args.storage} storage): {gone:,}; missing from profiles: {missing:,}; "
        f"lost beyond the broker's memory: {max(missing - gone, 0):,}; doubled: {doubled:,}"
    )
    print(
        f"worker: topic losses detected {int(metrics.get('fusionrec_events_topic_losses_total', 0))}, ready "
        f"{int(metrics.get('fusionrec_worker_ready', 0))}, lists published "
        f"{int(metrics.get('fusionrec_recommendations_published_total', 0)):,} (errors "
        f"{int(metrics.get('fusionrec_recommendations_publish_errors_total', 0))}), producer resets "
        f"{int(metrics.get('fusionrec_kafka_producer_resets_total', 0))}; log {tmp / 'worker.log'}"
    )


if __name__ == "__main__":
    main()
