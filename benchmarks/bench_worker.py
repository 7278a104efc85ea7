"""Stream-worker throughput, latency and memory, side by side with baselines in one run.

Throughput (the same events, one run):
  * the broker's raw consume rate (confluent-kafka, no parsing) on the events topic;
  * River's ``BiasedMF.learn_one`` loop in-process (no broker, no Redis): the rate of one online CF model;
  * one ``fusionrec worker`` process through the full stack: Kafka → validation → Redis profiles with dedup →
    six online models (rate from its own metrics, first event to last);
  * where the worker's time goes: ``BatchApplier.apply`` in-process under cProfile, by stage.
Latency (``--latency``): events offered at a fixed rate, event time → profile written, p50/p99 from the worker's
histogram. Memory: the worker's RSS and Redis bytes per user profile after the run.

    python benchmarks/bench_worker.py ../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz
    python benchmarks/bench_worker.py ../shared/data/movielens-1m-partial/ratings_first2999users.dat.gz
    python benchmarks/bench_worker.py ../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz \
        --latency --rate 1000 --limit 30000
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from collections import Counter
from pathlib import Path

import redis

from fusionrec.consumers.reader import read_topic
from fusionrec.infra.admin import ensure_topics
from fusionrec.infra.stack import Stack, private_settings
from fusionrec.models.base import DEFAULT_EVENT_WEIGHTS
from fusionrec.producers.datasets import read_dataset
from fusionrec.producers.producer import EventProducer
from fusionrec.producers.replay import replay_events
from fusionrec.streams.child import WorkerChild
from fusionrec.streams.metrics import histogram_quantile


def latency_quantiles(m: Counter) -> tuple[float, float, int]:
    name = "fusionrec_worker_processing_latency_seconds"
    return (histogram_quantile(m, name, 0.5), histogram_quantile(m, name, 0.99), int(m.get(f"{name}_count", 0)))


def start_worker(settings, tmp: Path, name: str) -> WorkerChild:
    return WorkerChild(
        settings, tmp / f"{name}.log", FUSIONREC_STATE_DIR=str(tmp / name), FUSIONREC_LOG_LEVEL="WARNING"
    )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def river_rate(events) -> float:
    from river import reco

    model = reco.BiasedMF(n_factors=10, seed=42)
    weights = dict(DEFAULT_EVENT_WEIGHTS)
    start = time.perf_counter()
    for event in events:
        y = event.rating if event.rating is not None else weights.get(event.type, 1.0)
        model.learn_one(event.user_id, event.item_id, y)
    return len(events) / (time.perf_counter() - start)


def cf_rate(events) -> float:
    """fusionrec's CF model alone, fed in its blocks as the worker feeds it: the like-for-like River comparison."""
    from fusionrec.models import MatrixFactorization

    model = MatrixFactorization(seed=42)
    start = time.perf_counter()
    model.learn_many(events)
    return len(events) / (time.perf_counter() - start)


def _batches(events):
    from fusionrec.streams.batching import Record, RecordBatch

    return [
        RecordBatch(
            "bench",
            0,
            [Record(start + i, e.key, e.to_json(), e.ts) for i, e in enumerate(events[start : start + 5000])],
        )
        for start in range(0, len(events), 5000)
    ]


def stage_profile(settings, dataset_events) -> tuple[list[tuple[str, float]], float]:
    """The in-process batch path on up to 60k events: its rate, then a cProfile breakdown by stage."""
    from fusionrec.stores.profiles import ProfileStore
    from fusionrec.streams.app import tune_runtime
    from fusionrec.streams.apply import BatchApplier
    from fusionrec.streams.state import PartitionRegistry, SnapshotStore

    tune_runtime()  # as the worker does
    client = redis.Redis.from_url(settings.redis.url)
    events = dataset_events[:60_000]

    def applier(prefix):
        conf = settings.replace(redis_prefix=prefix)
        partitions = PartitionRegistry(SnapshotStore(client, conf, "bench"))
        return BatchApplier(partitions, ProfileStore.from_settings(conf, client), conf.event)

    timed = applier("bench-rate:")
    batches = _batches(events)
    began = time.perf_counter()
    for batch in batches:
        timed.apply(batch)
    rate = len(events) / (time.perf_counter() - began)

    profiled = applier("bench-profile:")
    profiler = cProfile.Profile()
    profiler.enable()
    for batch in batches:
        profiled.apply(batch)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    rows = []
    per_model: dict[str, float] = {}
    for (filename, _line, func), (_cc, _nc, _tt, cumtime, _callers) in stats.stats.items():
        if func == "validate" and filename.endswith("events.py"):
            rows.append(("validate (contract)", cumtime))
        elif func == "prepare" and filename.endswith("profiles.py"):
            rows.append(("Redis profiles + dedup: read, decide, merge", cumtime))
        elif func in ("learn_one", "learn_many") and "/models/" in filename and not filename.endswith("base.py"):
            name = Path(filename).stem
            per_model[name] = max(per_model.get(name, 0.0), cumtime)
        elif func == "learn" and filename.endswith("state.py"):
            rows.append(("all models' user sides (PartitionState.learn)", cumtime))
        elif func == "apply" and filename.endswith("item_side.py"):
            rows.append(("the shared item side's replica (ItemSide.apply)", cumtime))
        elif func in ("admit", "admit_many") and filename.endswith("guard.py"):
            rows.append(("  of which the abuse guard (ItemSideGuard.admit)", cumtime))
    rows += [(f"  learn {name}", seconds) for name, seconds in sorted(per_model.items())]
    for prefix in ("bench-rate:*", "bench-profile:*"):
        keys = list(client.scan_iter(match=prefix))
        if keys:
            client.delete(*keys)
    return [(label, seconds / total) for label, seconds in rows], rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--latency", action="store_true", help="measure latency at --rate instead of throughput")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--fetch-wait-ms", type=int, default=50, help="the worker's fetch max wait")
    parser.add_argument("--snapshot-interval", type=float, default=10.0, help="worker snapshot interval, seconds")
    args = parser.parse_args()

    dataset = read_dataset(args.path, limit=args.limit)
    events = dataset.events
    n = len(events)
    tmp = Path(tempfile.mkdtemp(prefix="fusionrec-bench-"))
    settings = private_settings(
        tmp / "stack",
        "bench",
        topic_events_partitions=6,
        worker_snapshot_interval_s=args.snapshot_interval,
        kafka_fetch_wait_max_ms=args.fetch_wait_ms,
    )
    stack = Stack(settings)
    stack.up()
    ensure_topics(settings)
    worker = None
    try:
        if args.latency:
            worker = start_worker(settings, tmp, "worker")
            # Warm up: the worker must have joined the group and own every partition before the clock starts.
            producer = EventProducer(settings, validate=False)  # one long-lived producer, as a shop has
            warm = events[:300]
            before = worker.warm_up(producer, warm)
            producer.stats = type(producer.stats)()
            result = replay_events(events, producer, rate=args.rate, timestamps="wallclock")
            after = worker.wait_for(lambda m: m["fusionrec_worker_events_total"] >= n + len(warm), timeout=600)
            p50, p99, count = latency_quantiles(after - before)
            print(
                f"\n{n:,} events from {args.path.name} offered at {result.rate:,.0f} ev/s; one worker "
                f"(after a {len(warm)}-event warm-up)"
            )
            print(
                f"event time → profile written: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms "
                f"({count:,} events; from the worker's histogram, interpolated within buckets)"
            )
            return

        producer = EventProducer(settings, validate=False)
        replay_events(events, producer, timestamps="original")
        start = time.perf_counter()
        consumed = sum(1 for _ in read_topic(settings, settings.topic.events, max_messages=n, idle_timeout=5))
        raw_rate = consumed / (time.perf_counter() - start)
        river = river_rate(events)
        cf = cf_rate(events)

        worker = start_worker(settings, tmp, "worker")
        progress: dict[str, float] = {}

        def note(m) -> None:
            done = m["fusionrec_worker_events_total"] + m["fusionrec_worker_duplicates_skipped_total"]
            if done and "first" not in progress:
                progress["first"], progress["first_done"] = time.perf_counter(), done

        worker.wait_for(
            lambda m: m["fusionrec_worker_events_total"] + m["fusionrec_worker_duplicates_skipped_total"] >= n,
            timeout=900,
            on_poll=note,
        )
        last = time.perf_counter()
        worker_rate = (n - progress["first_done"]) / (last - progress["first"])
        rss = rss_mb(worker.pid)
        client = redis.Redis.from_url(settings.redis.url)
        users = {e.user_id for e in events}
        sample = list(users)[:2000]
        profile_bytes = sum(client.memory_usage(settings.redis.keys.profile(u)) or 0 for u in sample) / len(sample)
        used = client.info("memory")["used_memory"]
        worker.stop()
        worker = None
        stages, inproc_rate = stage_profile(settings, events)

        print(
            f"\n{n:,} events from {args.path.name}; Tansu (memory) + Redis on loopback; 2 cores shared by "
            "broker, Redis and worker"
        )
        print(f"{'measure':<52}{'events/s':>12}")
        print(f"{'broker raw consume (confluent-kafka, no parsing)':<52}{raw_rate:>12,.0f}")
        print(f"{'River BiasedMF.learn_one loop, in-process':<52}{river:>12,.0f}")
        print(f"{'fusionrec CF model alone (learn_many), in-process':<52}{cf:>12,.0f}")
        print(f"{'fusionrec worker, full stack (1 process)':<52}{worker_rate:>12,.0f}")
        print(f"{'BatchApplier in-process (Redis, no broker)':<52}{inproc_rate:>12,.0f}")
        print(
            f"\nworker / River: {worker_rate / river:.2f}x;  CF model / River: {cf / river:.2f}x;  "
            f"worker / raw consume: {worker_rate / raw_rate:.2f}x"
        )
        print("\nwhere the in-process batch time goes (cProfile, share of the total):")
        for label, share in stages:
            print(f"  {label:<48}{100 * share:>6.1f} %")
        print(
            f"\nmemory after the run: worker RSS {rss:,.0f} MB; {len(users):,} users; profile {profile_bytes:.0f} "
            f"bytes/user (MEMORY USAGE, mean of {len(sample):,}); Redis used_memory {used / 2**20:,.1f} MB in all "
            f"({used / len(users):,.0f} bytes/user incl. dedup entries and model snapshots)"
        )
    finally:
        if worker is not None:
            worker.stop()
        stack.down()


if __name__ == "__main__":
    main()
