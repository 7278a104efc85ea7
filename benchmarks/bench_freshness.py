"""Recommendation freshness at a fixed offered rate, side by side with the worker's processing latency.

Replays a dataset at ``--rate`` events/s (timestamps stamped when sent, as a live shop's are) through one real
``fusionrec worker`` on a private embedded stack, and reads from the worker's own histograms, over the same events:

  * **freshness**: event time → the user's list reflecting it published (topic + Redis),
    ``fusionrec_recommendations_freshness_seconds``;
  * **baseline floor**: event time → profile written (``fusionrec_worker_processing_latency_seconds``): a list
    can never be fresher than the batch that learned the event;
  * lists published, ranker refresh time (``fusionrec_ranker_refresh_seconds``), lists per refresh, and the
    worker's CPU time (utime + stime, forked snapshot children included) and RSS over the replay.

Quantiles are Prometheus-style (linear within a bucket), so p99.9 is "-ish": it is only as fine as the buckets.
Then, unless ``--no-profile``: the refresh in-process (``Refresher.refresh`` after every tick's worth of
events, ``rate × interval``), timed per call and per user and broken down by stage under cProfile.

    python benchmarks/bench_freshness.py ../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz
    python benchmarks/bench_freshness.py DATA --rate 1000 --limit 30000 --interval-ms 100
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from fusionrec.contracts.settings import Settings
from fusionrec.infra.admin import ensure_topics
from fusionrec.infra.stack import Stack, private_settings
from fusionrec.producers.datasets import read_dataset
from fusionrec.producers.producer import EventProducer
from fusionrec.producers.replay import replay_events
from fusionrec.streams.child import WorkerChild
from fusionrec.streams.metrics import histogram_quantile

FRESHNESS = "fusionrec_recommendations_freshness_seconds"
PROCESSING = "fusionrec_worker_processing_latency_seconds"
REFRESH = "fusionrec_ranker_refresh_seconds"
GOAL_P99_S = 0.5
QUANTILES = (0.5, 0.99, 0.999)


def quantiles(m: Counter, name: str) -> tuple[list[float], int]:
    return [histogram_quantile(m, name, q) for q in QUANTILES], int(m.get(f"{name}_count", 0))


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its reaped children (the forked snapshot writers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def ms(values: list[float]) -> str:
    return " / ".join(f"{v * 1000:,.0f}" if v >= 0.1 else f"{v * 1000:,.1f}" for v in values)


def refresh_profile(settings: Settings, events, tick_events: int) -> dict:
    """Feed ``events`` through an in-process :class:`BatchApplier` one tick's worth at a time, refreshing after
    each (:class:`Refresher`); return per-refresh times, users per refresh and a cProfile breakdown of the refresh
    by stage."""
    from bench_refresh import clean, rig, tick_batches

    client, conf, applier, refresher = rig(settings, "bench-refresh:")
    partitions = settings.topic.events_partitions
    offsets = [0] * partitions
    now = int(time.time() * 1000)
    times: list[float] = []
    users: list[int] = []
    profiler = cProfile.Profile()
    for start in range(0, len(events), tick_events):
        for batch in tick_batches(events[start : start + tick_events], partitions, offsets, now):
            applier.apply(batch)
        began = time.perf_counter()
        profiler.enable()
        n = refresher.refresh()
        profiler.disable()
        times.append(time.perf_counter() - began)
        users.append(n)
        now += 1  # keep event times moving
    stats = pstats.Stats(profiler)
    stages = {
        ("refresh", "refresh.py"): "refresh, all",
        ("recommend", "fused.py"): "  FusedRecommender.recommend",
        ("candidates_many", "cf.py"): "    CF candidates (exhaustive top-k, torch)",
        ("gather", "ranker.py"): "    gather, all sources",
        ("prepare", "ranker.py"): "    prepare (gather + filter + normalise)",
        ("order", "ranker.py"): "    bandit fusion: order (weights, product, sort)",
        ("keep", "ranker.py"): "    bandit fusion: keep (cut to k, category cap)",
        ("_remember_served", "fused.py"): "    bandit fusion: remember served, expose sources",
        ("_learned_lists", "fused.py"): "    learned ranker: learn, features, score, select",
        ("lists", "ranker.py"): "    lists (the served items, contributions)",
        ("publish_many", "publisher.py"): "  publish (encode, produce, one Redis call, metrics)",
        ("unavailable", "refresh.py"): "  unavailable items (Redis SMEMBERS, cached 1 s)",
    }
    rows: dict[str, float] = {}
    per_source: dict[str, float] = {}
    for (filename, _line, func), (_cc, _nc, _tt, cumtime, _callers) in stats.stats.items():
        label = stages.get((func, Path(filename).name))
        if label is not None:
            rows[label] = rows.get(label, 0.0) + cumtime
        elif func == "candidates" and "/models/" in filename:
            name = Path(filename).stem
            per_source[name] = per_source.get(name, 0.0) + cumtime
    clean(client, conf)
    client.close()
    ordered = [(label, rows.get(label, 0.0)) for label in stages.values()]
    ordered += [(f"      candidates: {name}", s) for name, s in sorted(per_source.items(), key=lambda kv: -kv[1])]
    return {"times": times, "users": users, "stages": ordered, "total": sum(times)}


def print_profile(settings: Settings, events, rate: float) -> None:
    """The in-process refresh after every tick's worth of events at ``rate``, timed and broken down by stage."""
    interval = settings.ranker.interval_ms
    tick = max(1, round(rate * interval / 1000))
    prof = refresh_profile(settings, events, tick)
    times, users = prof["times"], prof["users"]
    ranked = sum(users)
    per_user = prof["total"] / max(ranked, 1)
    q99 = sorted(times)[min(len(times) - 1, int(0.99 * len(times)))]
    print(
        f"\nin-process refresh, after each {tick} events (one {interval} ms tick at {rate:,.0f} ev/s), "
        f"{len(times)} refreshes: {statistics.median(times) * 1000:,.0f} ms median, {q99 * 1000:,.0f} ms "
        f"p99, {max(times) * 1000:,.0f} ms max; {statistics.median(users):,.0f} users median per refresh; "
        f"{per_user * 1000:,.3f} ms per user ranked and published ({ranked / max(prof['total'], 1e-9):,.0f} users/s)"
    )
    print("where the refresh time goes (cProfile, cumulative, share of all refresh time):")
    for label, seconds in prof["stages"]:
        print(f"  {label:<60}{100 * seconds / max(prof['total'], 1e-9):>6.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--limit", type=int, default=30_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s offered")
    parser.add_argument(
        "--interval-ms",
        type=int,
        default=None,
        help="FUSIONREC_RANKER_INTERVAL_MS for the worker (default: the setting's, 200)",
    )
    parser.add_argument("--fetch-wait-ms", type=int, default=50, help="the worker's fetch max wait")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="the ranker's device")
    parser.add_argument("--no-profile", action="store_true", help="skip the in-process refresh profile")
    parser.add_argument(
        "--profile-only", action="store_true", help="only the in-process refresh profile (Redis, no broker or worker)"
    )
    args = parser.parse_args()

    dataset = read_dataset(args.path, limit=args.limit)
    events = dataset.events
    n = len(events)
    tmp = Path(tempfile.mkdtemp(prefix="fusionrec-bench-"))
    if args.profile_only:
        print_profile(Settings().replace(topic_events_partitions=6), events, args.rate)
        return
    overrides = {"ranker_interval_ms": args.interval_ms} if args.interval_ms else {}
    settings = private_settings(
        tmp / "stack",
        "bench",
        topic_events_partitions=6,
        kafka_fetch_wait_max_ms=args.fetch_wait_ms,
        ranker_device=args.device,
        **overrides,
    )
    stack = Stack(settings)
    stack.up()
    ensure_topics(settings)
    worker = None
    try:
        worker = WorkerChild(
            settings, tmp / "worker.log", FUSIONREC_STATE_DIR=str(tmp / "worker"), FUSIONREC_LOG_LEVEL="WARNING"
        )
        # Warm up: the worker owns every partition and has ranked once before the clock starts.
        producer = EventProducer(settings, validate=False)  # one long-lived producer, as a shop has
        warm = events[:300]
        before = worker.warm_up(producer, warm, lists=True)
        cpu_before, wall_before = cpu_seconds(worker.pid), time.perf_counter()
        producer.stats = type(producer.stats)()
        result = replay_events(events, producer, rate=args.rate, timestamps="wallclock")
        after = worker.wait_for(
            lambda m: m["fusionrec_worker_events_total"] >= n + len(warm) and m[f"{FRESHNESS}_count"] >= n + len(warm),
            timeout=600,
        )
        cpu = cpu_seconds(worker.pid) - cpu_before
        wall = time.perf_counter() - wall_before
        rss = rss_mb(worker.pid)
        delta = after - before
        fresh, fresh_n = quantiles(delta, FRESHNESS)
        floor, floor_n = quantiles(delta, PROCESSING)
        refresh = [histogram_quantile(delta, REFRESH, q) for q in (0.5, 0.99)]
        refreshes = int(delta[f"{REFRESH}_count"])
        published = int(delta["fusionrec_recommendations_published_total"])
        producer.close()  # before the broker stops: it waits for open connections
        worker.stop()
        worker = None

        interval = settings.ranker.interval_ms
        from fusionrec.models.topk import pick_device

        device = pick_device(settings.ranker.device)
        print(
            f"\n{n:,} events from {args.path.name} offered at {result.rate:,.0f} ev/s (timestamps stamped at "
            f"send); one worker, ranker every {interval} ms on {device.type}; after a {len(warm)}-event "
            "warm-up. Quantiles from the worker's histograms, interpolated within buckets."
        )
        print(f"{'event time →':<44}{'p50 / p99 / p99.9 ms':>24}{'events':>10}")
        print(f"{'  profile written (processing, the floor)':<44}{ms(floor):>24}{floor_n:>10,}")
        print(f"{'  user list published (freshness)':<44}{ms(fresh):>24}{fresh_n:>10,}")
        met = "met" if fresh[1] <= GOAL_P99_S else "NOT met"
        print(
            f"freshness p99 goal ≤ {GOAL_P99_S * 1000:.0f} ms: {met}; freshness − floor at p50: "
            f"{(fresh[0] - floor[0]) * 1000:,.0f} ms"
        )
        print(
            f"lists published: {published:,} in {refreshes:,} refreshes ({published / max(refreshes, 1):,.1f} "
            f"lists per refresh; {published / max(wall, 1e-9):,.0f} lists/s); refresh time p50 / p99: "
            f"{ms(refresh)} ms"
        )
        print(
            f"worker CPU: {cpu:,.1f} s over {wall:,.1f} s = {100 * cpu / wall:.0f} % of one core; "
            f"RSS {rss:,.0f} MB at the end"
        )

        if not args.no_profile:
            print_profile(settings, events, args.rate)
    finally:
        if worker is not None:
            worker.stop()
        stack.down()


if __name__ == "__main__":
    main()
