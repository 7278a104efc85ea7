"""Fault: a flood of fake accounts pushes a new item (issue 12, finding 6): how many users' lists show it.

A private stack (Tansu + Redis on free loopback ports) and one worker. The shop's history: the first ``--warm``
events of a real file, their times spread over the last ``--history-min`` minutes (so its users are returning users
by the time the flood comes). Then ``--fakes`` brand-new accounts view one new item each (``--flood-s`` seconds),
in the shop's most common category (the attacker's best choice). Then 300 new users and 300 of the history's users
act once each (a view of an item from the history), and their published lists are read from Redis: the share that
shows the pushed item is the flood's reach. ``--no-guard`` runs the same without the item side's abuse limits
(``FUSIONREC_MODEL_GUARD_USER_CAP=0``, ``FUSIONREC_MODEL_GUARD_MIN_USERS=0``).

    python benchmarks/fault_reach.py ../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz
    python benchmarks/fault_reach.py ../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz --no-guard
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import redis

from fusionrec.consumers.client import RecommendationStore
from fusionrec.contracts.events import Event
from fusionrec.infra.admin import ensure_topics
from fusionrec.infra.stack import Stack, private_settings
from fusionrec.producers.datasets import read_dataset
from fusionrec.producers.producer import EventProducer
from fusionrec.producers.replay import replay_events
from fusionrec.streams.child import WorkerChild

PUSHED = "pushed-item"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path")
    parser.add_argument("--warm", type=int, default=20_000)
    parser.add_argument("--history-min", type=float, default=10.0)
    parser.add_argument("--fakes", type=int, default=2000)
    parser.add_argument("--flood-s", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=300, help="new and returning users measured (each)")
    parser.add_argument("--no-guard", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    history = read_dataset(args.path, limit=args.warm).events
    now = int(time.time() * 1000)
    first, last = history[0].ts, history[-1].ts
    span = args.history_min * 60_000
    start = now - span - 30_000
    history = [e._replace(ts=int(start + (e.ts - first) * span / max(last - first, 1))) for e in history]
    category = Counter(e.category_id for e in history if e.category_id).most_common(1)[0][0]

    tmp = Path(tempfile.mkdtemp(prefix="fault-reach-"))
    settings = private_settings(tmp / "state", topic_events_partitions=3)
    overrides = {"FUSIONREC_STATE_DIR": str(tmp / "w"), "FUSIONREC_LOG_LEVEL": "WARNING"}
    if args.no_guard:
        overrides |= {"FUSIONREC_MODEL_GUARD_USER_CAP": "0", "FUSIONREC_MODEL_GUARD_MIN_USERS": "0"}
    stack = Stack(settings)
    stack.up()
    ensure_topics(settings)
    worker = WorkerChild(settings, tmp / "worker.log", **overrides)
    client = redis.Redis.from_url(settings.redis.url)
    try:
        producer = EventProducer(settings, validate=False)
        replay_events(history, producer, timestamps="original")
        worker.wait_for(lambda m: m.get("fusionrec_worker_events_total", 0) >= len(history), timeout=300)

        flood = [
            Event(f"fake-{i}", f"fake-user-{i}", PUSHED, "view", 0, category_id=category) for i in range(args.fakes)
        ]
        flooded_at = time.monotonic()
        replay_events(flood, producer, rate=args.fakes / args.flood_s, timestamps="wallclock")
        worker.wait_for(lambda m: m.get("fusionrec_worker_events_total", 0) >= len(history) + len(flood), timeout=120)
        time.sleep(2.0)  # a sync tick or two: the item side has learned the flood

        known_users = sorted({e.user_id for e in history})
        returning = rng.sample(known_users, args.users)
        popular_items = [item for item, _ in Counter(e.item_id for e in history).most_common(200)]
        new = [f"new-user-{i}" for i in range(args.users)]
        probes = [
            Event(f"probe-{user}", user, rng.choice(popular_items), "view", 0, category_id=None)
            for user in new + returning
        ]
        published = worker.metrics().get("fusionrec_recommendations_published_total", 0)
        replay_events(probes, producer, timestamps="wallclock")
        metrics = worker.wait_for(
            lambda m: m.get("fusionrec_recommendations_published_total", 0) >= published + len(probes), timeout=120
        )
        time.sleep(1.0)
        store = RecommendationStore(client, settings.redis.keys)
        lists = store.get_many(new + returning)
        reach = {}
        for name, users in (("new", new), ("returning", returning)):
            got = [lists.get(u) for u in users]
            shown = sum(1 for rec in got if rec is not None and any(i.item_id == PUSHED for i in rec.items))
            sources = Counter(
                s for rec in got if rec is not None for i in rec.items if i.item_id == PUSHED for s in i.contributions
            )
            reach[name] = (shown, sum(1 for rec in got if rec is not None), dict(sources))
        metrics = worker.metrics()
    finally:
        worker.stop()
        client.close()
        stack.down()

    mode = "without the guard" if args.no_guard else "with the guard (defaults)"
    print(
        f"{args.fakes:,} fake accounts, one view each of a new item in category {category}, over "
        f"{time.monotonic() - flooded_at:.0f} s incl. measuring; {mode}:"
    )
    for name, (shown, listed, sources) in reach.items():
        print(f"  {name} users: {shown}/{listed} lists show it; sources behind it: {sources}")
    print(
        "  guard: capped {:.0f}, unvoted records {:.0f}, items waiting for voters {:.0f}, rate jumps {:.0f}".format(
            metrics.get("fusionrec_guard_capped_total", 0),
            metrics.get("fusionrec_guard_unvoted_records_total", 0),
            metrics.get("fusionrec_guard_unvoted_items", 0),
            metrics.get("fusionrec_guard_item_rate_jumps_total", 0),
        )
    )


if __name__ == "__main__":
    main()
