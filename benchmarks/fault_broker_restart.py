"""Fault: the embedded broker restarts in the middle of a replay (issue 12, findings 1 and 2).

A private stack (Tansu + Redis, and a moto S3 server for ``--storage s3``, on free loopback ports) and one worker;
a paced replay of real events; half-way the broker is killed (``kill -9``), left down for ``--down`` seconds, and
started again (with memory storage it comes back empty: topics are created again, as ``fusionrec up`` does) while
the replay goes on. Then every acknowledged event is accounted for, exactly:

* **acknowledged**: events a broker acknowledged to the replay, each with the partition and offset of its delivery
  report and which broker gave it (a report served before the new broker was started is the old broker's: no
  other broker was running);
* **gone with the old broker** (memory storage only): acknowledged by the old broker at an offset the worker had
  not read when it died. The worker records where it stopped on the old topic: the offset base it rebased each
  partition to (``{prefix}topic-id:{topic}`` in Redis, streams/rewind.py) is the count of old-topic records it
  processed. Memory storage keeps nothing, so no client can bring these back; they are counted, not estimated;
* **not on the topic** (s3 storage): acknowledged, and not on the topic read back from its start after the run;
* **lost**: acknowledged, not gone with the broker, and not applied to the user's profile: must be 0;
* **doubled**: applied more often than acknowledged: must be 0.

    python benchmarks/fault_broker_restart.py ../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz \
        --limit 30000 --rate 1500 [--storage s3] [--idempotence auto|true|false]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import redis

from fusionrec.consumers.reader import read_topic
from fusionrec.infra.admin import ensure_topics
from fusionrec.infra.stack import Stack, private_settings
from fusionrec.producers.datasets import read_dataset
from fusionrec.producers.producer import EventProducer
from fusionrec.producers.replay import replay_events
from fusionrec.stores.profiles import ProfileStore
from fusionrec.streams.child import WorkerChild

OLD, NEW = "old", "new"


def _event_id(value: bytes) -> str:
    return value.split(b'"event_id":"', 1)[1].split(b'"', 1)[0].decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path")
    parser.add_argument("--limit", type=int, default=40_000)
    parser.add_argument("--rate", type=float, default=4000.0, help="replay rate, events/s")
    parser.add_argument("--down", type=float, default=3.0, help="seconds the broker stays down")
    parser.add_argument("--storage", default="memory", choices=["memory", "s3"])
    parser.add_argument(
        "--idempotence",
        default="auto",
        choices=["auto", "true", "false"],
        help="the producers' idempotence; auto: the settings' default for the storage (FUSIONREC_KAFKA_IDEMPOTENCE)",
    )
    parser.add_argument("--json", type=Path, help="also write the counts here")
    args = parser.parse_args()

    events = read_dataset(args.path, limit=args.limit).events
    tmp = Path(tempfile.mkdtemp(prefix="fault-restart-"))
    overrides = {} if args.idempotence == "auto" else {"kafka_idempotence": args.idempotence == "true"}
    settings = private_settings(tmp / "state", topic_events_partitions=3, broker_storage=args.storage, **overrides)
    stack = Stack(settings)
    stack.up()
    ensure_topics(settings)
    worker = WorkerChild(settings, tmp / "worker.log", FUSIONREC_STATE_DIR=str(tmp / "w"), FUSIONREC_LOG_LEVEL="INFO")
    broker = {"now": OLD}  # which broker a delivery report served now comes from
    acked: dict[str, tuple[str, int, int]] = {}  # event id -> (broker, partition, offset) of its acknowledgement
    served_while_down = [0]

    def delivered(err, msg) -> None:
        if err is None:
            event_id = _event_id(msg.value())
            if event_id in acked:
                raise AssertionError(f"{event_id} acknowledged twice")
            acked[event_id] = (broker["now"], msg.partition(), msg.offset())
            if broker.get("killed"):
                served_while_down[0] += broker["now"] == OLD

    producer = EventProducer(settings, validate=False, on_delivery=delivered)
    report: dict[str, float] = {}

    def restart_half_way() -> None:
        while len(acked) < len(events) // 2:
            time.sleep(0.01)
        stack.kill_broker()
        broker["killed"] = True
        killed_at = time.monotonic()
        applied, settled = -1.0, 0  # the worker finishes what it had fetched: what it applied stops changing
        while settled < 10:
            time.sleep(0.1)
            now = worker.metrics().get("fusionrec_worker_events_total", 0)
            settled = settled + 1 if now == applied else 0
            applied = now
        report["applied_at_kill"] = applied
        time.sleep(max(args.down - (time.monotonic() - killed_at), 0.0))
        broker["now"] = NEW  # from here on a report may come from the new broker
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
        print(
            f"replay: {result.sent:,} sent, {result.delivered:,} acknowledged, {result.failed} failed, "
            f"{result.undelivered} undelivered in {time.monotonic() - started:.1f} s; producer recreated "
            f"{result.resets}x, {result.resent:,} re-sent, longest stall seen {result.max_stall_s:.1f} s; broker down "
            f"{report.get('down_s', 0):.1f} s; idempotence {settings.producer_config()['enable.idempotence']}"
        )
        # settled: ready again and every acknowledged event applied, or ready and nothing changing for 5 s
        last, still, deadline = -1.0, 0, time.monotonic() + 120
        while time.monotonic() < deadline and still < 10:
            m = worker.metrics()
            ready, applied = m.get("fusionrec_worker_ready", 0) == 1, m.get("fusionrec_worker_events_total", 0)
            if ready and applied >= len(acked):
                break
            seen = applied + m.get("fusionrec_worker_duplicates_skipped_total", 0)
            still = still + 1 if ready and seen == last else 0
            last = seen
            time.sleep(0.5)
        else:
            if still < 10:
                print("not settled after 120 s")
        time.sleep(3)  # the last batches and snapshots
        metrics = worker.metrics()
    finally:
        worker.stop()
        client = redis.Redis.from_url(settings.redis.url)
        try:
            profiles = ProfileStore.from_settings(settings, client)
            bases = {
                int(k.decode().split(":", 1)[1]): int(v)
                for k, v in client.hgetall(settings.redis.keys.topic_identity(settings.topic.events)).items()
                if k.startswith(b"base:")
            }
            by_id = {event.event_id: event for event in events}
            users = sorted({by_id[e].user_id for e in acked})
            got = {p.user_id: Counter(p.counts) for p in profiles.get_many(users)}
            on_topic = Counter(
                _event_id(value) for _p, _o, _k, value in read_topic(settings, settings.topic.events, idle_timeout=4)
            )
        finally:
            client.close()
            stack.down()

    acked_old = {e: (p, o) for e, (b, p, o) in acked.items() if b == OLD}
    if args.storage == "memory":
        # the old topic's records at or after where the worker stopped reading it: gone with the broker's memory
        gone = {e for e, (p, o) in acked_old.items() if o >= bases.get(p, 0)} if bases else set(acked_old)
    else:
        gone = set()
    expected: dict[str, Counter] = {}
    for event_id in acked:
        if event_id not in gone:
            event = by_id[event_id]
            expected.setdefault(event.user_id, Counter())[event.type] += 1
    gone_counts: dict[str, Counter] = {}
    for event_id in gone:
        event = by_id[event_id]
        gone_counts.setdefault(event.user_id, Counter())[event.type] += 1
    lost = sum(max(n - got.get(u, Counter())[t], 0) for u, c in expected.items() for t, n in c.items())
    # doubled: applied more than acknowledged, the gone ones included (one of those applied is not a double)
    doubled = sum(
        max(got.get(u, Counter())[t] - n - gone_counts.get(u, Counter())[t], 0)
        for u, c in expected.items()
        for t, n in c.items()
    )
    gone_applied = sum(
        max(got.get(u, Counter())[t] - expected.get(u, Counter())[t], 0) for u, c in gone_counts.items() for t in c
    )
    # what the topic read back should hold: everything acknowledged (s3), or what the new broker acknowledged
    kept = acked if args.storage == "s3" else {e: a for e, a in acked.items() if a[0] == NEW}
    not_on_topic = [e for e in kept if e not in on_topic]
    processed_old = sum(bases.values())
    # librdkafka takes a broker's DUPLICATE_SEQUENCE_NUMBER for "written before" and reports success, offset -1
    no_offset = [e for e, (_b, _p, o) in acked.items() if o < 0]
    figures = {
        "storage": args.storage,
        "idempotence": settings.producer_config()["enable.idempotence"],
        "sent": result.sent,
        "acknowledged": len(acked),
        "acknowledged_by_old_broker": len(acked_old),
        "old_reports_served_while_down": served_while_down[0],
        "failed": result.failed,
        "undelivered": result.undelivered,
        "producer_resets": result.resets,
        "resent": result.resent,
        "resent_unplaced": producer.unplaced,
        "down_s": round(report.get("down_s", 0.0), 1),
        "old_topic_records_processed": processed_old if args.storage == "memory" else None,
        "applied_at_kill": int(report.get("applied_at_kill", 0)),
        "gone_with_old_broker": len(gone),
        "gone_but_applied": gone_applied,
        "acknowledged_not_on_topic": len(not_on_topic),
        "acknowledged_without_offset": len(no_offset),
        "not_on_topic_without_offset": len(set(no_offset) & set(not_on_topic)),
        "applied": int(metrics.get("fusionrec_worker_events_total", 0)),
        "duplicates_skipped": int(metrics.get("fusionrec_worker_duplicates_skipped_total", 0)),
        "redelivered": int(metrics.get("fusionrec_worker_redelivered_total", 0)),
        "lost": lost,
        "doubled": doubled,
        "topic_losses": int(metrics.get("fusionrec_events_topic_losses_total", 0)),
        "ready": int(metrics.get("fusionrec_worker_ready", 0)),
        "lists_published": int(metrics.get("fusionrec_recommendations_published_total", 0)),
        "publish_errors": int(metrics.get("fusionrec_recommendations_publish_errors_total", 0)),
        "worker_producer_resets": int(metrics.get("fusionrec_kafka_producer_resets_total", 0)),
    }
    print(
        f"acknowledged {len(acked):,} distinct events ({len(acked_old):,} by the old broker, "
        f"{served_while_down[0]} of those reports served while it was down); the worker applied "
        f"{figures['applied']:,} (duplicates skipped {figures['duplicates_skipped']:,}, redelivered "
        f"{figures['redelivered']:,})"
    )
    if args.storage == "memory":
        print(
            f"the worker had processed {processed_old:,} records of the old topic when it died (bases {bases}; "
            f"{figures['applied_at_kill']:,} applied); acknowledged by the old broker after that point, gone with "
            f"its memory: {len(gone):,} ({gone_applied} of them applied anyway: must be 0)"
        )
    print(
        f"acknowledged but not on the topic read back ({'every event' if args.storage == 's3' else 'the new broker'}"
        f"'s): {len(not_on_topic):,}{' e.g. ' + ', '.join(not_on_topic[:5]) if not_on_topic else ''}"
    )
    print(
        f"acknowledged without an offset (a duplicate-sequence answer) and sent again by the producer: "
        f"{producer.unplaced:,}; reported to the replay without an offset: {len(no_offset):,}, "
        f"{figures['not_on_topic_without_offset']:,} of them not on the topic"
    )
    print(f"lost (acknowledged, not gone with the broker, not applied): {lost:,}; doubled: {doubled:,}")
    print(
        f"worker: topic losses detected {figures['topic_losses']}, ready {figures['ready']}, lists published "
        f"{figures['lists_published']:,} (errors {figures['publish_errors']}), producer resets "
        f"{figures['worker_producer_resets']}; log {tmp / 'worker.log'}; broker log {tmp / 'state' / 'logs'}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
