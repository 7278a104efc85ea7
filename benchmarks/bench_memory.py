"""Memory of the worker's model state with a large synthetic catalogue: what the caps bound, measured.

    .venv/bin/python benchmarks/bench_memory.py --items 1000000 --users 200000 --events 2000000

Feeds synthetic events (items and users drawn uniformly, so nearly every item is new: the worst case for memory)
through the worker's own classes in process — six partition states (user side, CF, recent, bandit) and the shared
item side (popularity, trending, co-visitation, category) — and prints the process RSS as it grows, then the
state's size per model. No broker or Redis: this is the models' memory, the bulk of a worker's RSS.

``--redis DATA``: Redis's bytes per user instead, on a private ``redis-server`` (no persistence, stopped by its PID
at the end): ``--users`` synthetic users, each with ``--events-per-user`` events written by the worker's own
:class:`~fusionrec.stores.profiles.ProfileStore` (profile and dedup window, with their TTLs) and a fused list of the
real size and layout (full lists of ``k`` items that the worker's refresher made from the first 20,000 events of
``DATA``, in process, re-keyed per user), then ``used_memory`` over the users and ``MEMORY USAGE`` of each kind of key.

    .venv/bin/python benchmarks/bench_memory.py --users 1000000 \
        --redis ../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import time
from pathlib import Path

import orjson
from tqdm import tqdm

from fusionrec.contracts.events import Event
from fusionrec.contracts.partitioning import partition_for
from fusionrec.contracts.settings import load_settings
from fusionrec.streams.state import PartitionRegistry, PartitionState, build_fusion, build_models, partition_clock

TYPES = ["view"] * 8 + ["add_to_cart", "purchase"]


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sample_lists(path: Path, settings, client) -> list[bytes]:
    """Full fused lists (``k`` items) as the worker publishes them: the refresher of ``bench_refresh``'s rig, in
    process, over the first 20,000 events of ``path``, read back from Redis (then deleted)."""
    import logging
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_refresh import clean, rig, tick_batches

    from fusionrec.producers.datasets import read_dataset

    logging.disable(logging.CRITICAL)  # the list producer's "broker down" lines: there is no broker here
    events = read_dataset(path, limit=20_000).events
    _, conf, applier, refresher = rig(settings, "bench-memory-lists:")
    offsets = [0] * conf.topic.events_partitions
    now = int(time.time() * 1000)
    for start in range(0, len(events), 200):
        for batch in tick_batches(events[start : start + 200], conf.topic.events_partitions, offsets, now):
            applier.apply(batch)
        refresher.refresh()
    keys = list(client.scan_iter(match=conf.redis.keys.recommendation("*")))
    k = conf.ranker.k
    values = [v for v in client.mget(keys) if v and len(orjson.loads(v)["items"]) == k]
    clean(client, conf)
    logging.disable(logging.NOTSET)
    return values


def redis_main(args) -> None:
    """Redis bytes per user at ``args.users`` users (see the module docstring)."""
    import shutil
    import subprocess
    import tempfile

    import redis

    from fusionrec.infra.stack import free_port
    from fusionrec.stores.profiles import ProfileStore

    port = free_port()
    directory = tempfile.mkdtemp(prefix="bench-memory-redis-")
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", directory],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        settings = load_settings(redis_url=f"redis://127.0.0.1:{port}/0", topic_events_partitions=args.partitions)
        lists = sample_lists(args.redis, settings, client)
        if not lists:
            raise SystemExit("no list was published from the sample events")
        base = int(client.info("memory")["used_memory"])
        store = ProfileStore.from_settings(settings, client)
        keys, ttl = settings.redis.keys, settings.ranker.list_ttl_s
        rng = random.Random(args.seed)
        t0 = int(time.time() * 1000) - 3_600_000
        chunk = 5_000
        for first in tqdm(range(0, args.users, chunk), desc="users", unit_scale=chunk, mininterval=1.0):
            users = [f"u{n}" for n in range(first, min(first + chunk, args.users))]
            valid = []
            for user in users:
                p = partition_for(user.encode(), args.partitions)
                for e in range(args.events_per_user):
                    item = rng.randrange(args.items)
                    event = Event(
                        f"{user}-{e}", user, f"i{item}", rng.choice(TYPES), t0 + e, category_id=f"c{item % 5000}"
                    )
                    valid.append((event, p, e))
            _, write = store.prepare(valid)
            write()
            pipe = client.pipeline(transaction=False)
            for n, user in enumerate(users):
                value = lists[(first + n) % len(lists)]
                pipe.set(keys.recommendation(user), value, ex=ttl)
            pipe.execute()
        used = int(client.info("memory")["used_memory"]) - base
        sample = [f"u{n}" for n in range(0, args.users, max(1, args.users // 1000))]
        sizes = {
            kind: sum(client.memory_usage(key(u)) or 0 for u in sample) / len(sample)
            for kind, key in (("profile", keys.profile), ("dedup window", keys.dedup), ("list", keys.recommendation))
        }
        print(
            f"{args.users:,} users, {args.events_per_user} events each: Redis used_memory {used / 2**20:,.0f} MiB "
            f"above the empty server, {used / args.users:,.0f} bytes per user"
        )
        print(
            "MEMORY USAGE per key, mean of "
            + f"{len(sample):,} users: "
            + ", ".join(f"{kind} {size:,.0f} B" for kind, size in sizes.items())
            + f"; the lists' JSON {sum(map(len, lists)) / len(lists):,.0f} B on average ({len(lists):,} sampled)"
        )
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--redis", type=Path, metavar="DATA", help="measure Redis bytes per user instead")
    parser.add_argument("--events-per-user", type=int, default=3, help="with --redis")
    args = parser.parse_args()
    if args.redis is not None:
        redis_main(args)
        return

    settings = load_settings(topic_events_partitions=args.partitions)
    registry = PartitionRegistry(None)  # no Redis: states are built here
    from fusionrec.streams.state import LocalItemSide, build_item_side

    registry.item_side = LocalItemSide(build_item_side(settings, args.partitions))
    for p in range(args.partitions):
        registry.states[p] = PartitionState(
            p, build_models(settings, p), build_fusion(settings, p), clock=partition_clock(settings)
        )
    rng = random.Random(args.seed)
    base = rss_mb()
    t0 = int(time.time() * 1000) - args.events * 10
    pending: list[list[tuple[Event, int]]] = [[] for _ in range(args.partitions)]
    offsets = [0] * args.partitions
    checkpoints = {args.events * k // 4 for k in range(1, 5)}
    print(f"RSS before any event: {base:,.0f} MB")
    for n in tqdm(range(1, args.events + 1), desc="events", unit="ev", mininterval=1.0):
        user = f"u{rng.randrange(args.users)}"
        item = rng.randrange(args.items)
        event = Event(f"e{n}", user, f"i{item}", rng.choice(TYPES), t0 + 10 * n, category_id=f"c{item % 5000}")
        p = partition_for(user.encode(), args.partitions)
        pending[p].append((event, offsets[p]))
        offsets[p] += 1
        if len(pending[p]) >= 500 or n in checkpoints:
            for q in range(args.partitions):
                if pending[q]:
                    state = registry.states[q]
                    state.learn(pending[q], pending[q][-1][1])
                    registry.learned(state)
                    state.changed.clear()
                    pending[q] = []
        if n in checkpoints:
            gc.collect()
            replica = registry.item_side.replica
            items = {name: model.n_items for name, model in replica.models.items()}
            users = sum(s.models["recent"].n_users for s in registry.states.values())
            tqdm.write(f"{n:>10,} events: RSS {rss_mb():,.0f} MB; item side holds {items}; {users:,} users")
    print(f"RSS after {args.events:,} events over {args.items:,} items and {args.users:,} users: {rss_mb():,.0f} MB")


if __name__ == "__main__":
    main()
