"""Memory of the worker's model state with a large synthetic catalogue: what the caps bound, measured.

    .venv/bin/python benchmarks/bench_memory.py --items 1000000 --users 200000 --events 2000000

Feeds synthetic events (items and users drawn uniformly, so nearly every item is new: the worst case for memory)
through the worker's own classes in process — six partition states (user side, CF, recent, bandit) and the shared
item side (popularity, trending, co-visitation, category) — and prints the process RSS as it grows, then the
state's size per model. No broker or Redis: this is the models' memory, the bulk of a worker's RSS.
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

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
