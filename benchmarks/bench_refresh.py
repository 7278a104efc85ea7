"""What the worker's two state-thread jobs cost per unit, in process, for this checkout and other revisions side by
side: applying event batches (µs per event) and refreshing lists (µs per user ranked *and published*).

The data set is cut into ticks of ``--tick`` events stamped with the time they would arrive at ``--rate`` events/s
from now on (a tick's events share its time), as a live shop's are, so the shared item side applies its sync ticks
as in a worker; each tick is placed on the events partitions (murmur2, as the producer does), applied batch by
batch with :class:`~fusionrec.streams.apply.BatchApplier`, then one :meth:`Refresher.refresh
<fusionrec.streams.refresh.Refresher.refresh>` ranks and publishes every changed user (Redis on loopback; the
producer points at no broker, so lists wait in its queue: what it costs to hand them over is in the figure, the
network is not). No profiler runs: the figures are wall clock and process CPU time. ``--tick 200`` is one 200 ms
ranker tick at 1,000 events/s; smaller ticks show the per-call costs (a few users per partition per call).

Each ``--tree`` (a git worktree of another revision, e.g. ``git worktree add /tmp/rev 61d5c9c``) runs in its own
process through ``benchmarks/revision_shim`` (the editable install's packages pointed at the tree), alternating
with this checkout for ``--rounds`` rounds; the first run of a fresh tree also compiles its bytecode, so compare
the later rounds.

    python benchmarks/bench_refresh.py ../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz
    python benchmarks/bench_refresh.py DATA --tree /tmp/rev --rounds 2 --tick 60
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rig(settings, prefix: str):
    """``(client, conf, applier, refresher)``: the worker's batch path and refresher in process on ``settings``'
    Redis under ``prefix``, the GC and torch threads tuned as the worker tunes them. The producer points at no
    broker: lists wait in its queue (what handing them over costs is counted, the network is not)."""
    import redis
    import torch

    from fusionrec.stores.profiles import ProfileStore
    from fusionrec.streams import app
    from fusionrec.streams.apply import BatchApplier
    from fusionrec.streams.publisher import RecommendationPublisher
    from fusionrec.streams.refresh import Refresher
    from fusionrec.streams.state import PartitionRegistry, SnapshotStore, build_ranker

    (getattr(app, "tune_runtime", None) or app.tune_gc)()  # as the worker does (named tune_gc before 2072f9a)
    if settings.ranker.threads:
        torch.set_num_threads(settings.ranker.threads)
    client = redis.Redis.from_url(settings.redis.url)
    conf = settings.replace(redis_prefix=prefix)
    registry = PartitionRegistry(SnapshotStore(client, conf, "bench", build_ranker(conf.ranker)))
    applier = BatchApplier(registry, ProfileStore.from_settings(conf, client), conf.event)
    publisher = RecommendationPublisher(
        client,
        conf.redis.keys,
        conf.producer_config(log_level=0),
        topic=conf.topic.recommendations,
        list_ttl_s=conf.ranker.list_ttl_s,
    )
    return client, conf, applier, Refresher(registry, publisher, client, conf.redis.keys, "bench")


def tick_batches(events, partitions: int, offsets: list[int], now: int) -> list:
    """One tick's events stamped ``now`` and placed on the partitions by the producer's partitioner (murmur2), as
    one :class:`~fusionrec.streams.batching.RecordBatch` per partition; ``offsets`` advance."""
    from fusionrec.contracts.partitioning import partition_for
    from fusionrec.streams.batching import Record, RecordBatch

    by_partition: dict[int, list] = {}
    for event in events:
        by_partition.setdefault(partition_for(event.key, partitions), []).append(event._replace(ts=now))
    batches = []
    for partition, chunk in by_partition.items():
        records = []
        for event in chunk:
            records.append(Record(offsets[partition], event.key, event.to_json(), event.ts))
            offsets[partition] += 1
        batches.append(RecordBatch("bench", partition, records))
    return batches


def clean(client, conf) -> None:
    """Delete every key the rig wrote."""
    keys = list(client.scan_iter(match=conf.redis.keys.everything))
    for first in range(0, len(keys), 1000):
        client.delete(*keys[first : first + 1000])


def measure(path: Path, limit: int, tick: int, rate: float = 1000.0) -> str:
    """One run in this process (whatever ``fusionrec`` it imports): the result line."""
    import logging

    logging.disable(logging.CRITICAL)  # the producer's "broker down" lines: there is no broker here
    from fusionrec.contracts.settings import Settings
    from fusionrec.producers.datasets import read_dataset

    events = read_dataset(path, limit=limit).events
    settings = Settings().replace(topic_events_partitions=6)
    client, conf, applier, refresher = rig(settings, f"bench-refresh-{os.getpid()}:")
    offsets = [0] * conf.topic.events_partitions
    now = int(time.time() * 1000)
    apply_wall = refresh_wall = refresh_cpu = 0.0
    users = 0
    try:
        for start in range(0, len(events), tick):
            batches = tick_batches(events[start : start + tick], conf.topic.events_partitions, offsets, now)
            began = time.perf_counter()
            for batch in batches:
                applier.apply(batch)
            ranked_at, cpu = time.perf_counter(), time.process_time()
            users += refresher.refresh()
            refresh_wall += time.perf_counter() - ranked_at
            refresh_cpu += time.process_time() - cpu
            apply_wall += ranked_at - began
            now += max(1, round(tick * 1000 / rate))  # the tick's duration at the offered rate
    finally:
        clean(client, conf)
    return (
        f"apply {apply_wall / len(events) * 1e6:6.1f} us/event   refresh {refresh_wall / max(users, 1) * 1e6:5.0f} "
        f"us/user wall, {refresh_cpu / max(users, 1) * 1e6:5.0f} us/user CPU ({users:,} users ranked and published, "
        f"{users / max(refresh_wall, 1e-9):,.0f}/s)"
    )


def run_tree(tree: str, args: argparse.Namespace) -> str:
    """One run of ``tree`` (``"here"``: this checkout) in a child process: its result line."""
    env = dict(os.environ)
    if tree != "here":
        env["PYTHONPATH"] = f"{REPO / 'benchmarks' / 'revision_shim'}{os.pathsep}{tree}"
        env["FR_REVISION_TREE"] = tree
    command = [sys.executable, __file__, str(args.path), "--limit", str(args.limit), "--tick", str(args.tick)]
    command += ["--rate", str(args.rate), "--one"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("apply ")]
    return lines[-1] if lines else f"failed: {done.stderr.strip().splitlines()[-1:]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--limit", type=int, default=30_000, help="events replayed")
    parser.add_argument("--tick", type=int, default=200, help="events per refresh")
    parser.add_argument("--rate", type=float, default=1000.0, help="offered events/s: how fast event time moves")
    parser.add_argument("--tree", action="append", default=[], help="another revision's worktree (repeatable)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child run: measure, print, exit
    args = parser.parse_args()
    args.path = args.path.resolve()
    if args.one:
        print(measure(args.path, args.limit, args.tick, args.rate))
        return
    print(f"{args.path.name}: {args.limit:,} events, refresh after every {args.tick} (6 partitions), in process")
    for round_ in range(1, args.rounds + 1):
        for tree in [*args.tree, "here"]:
            label = "this checkout" if tree == "here" else tree
            print(f"round {round_}  {label:<28} {run_tree(tree, args)}", flush=True)


if __name__ == "__main__":
    main()
