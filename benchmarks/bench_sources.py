"""What each source costs, side by side in one run: learning per event and proposing candidates per list.

    .venv/bin/python benchmarks/bench_sources.py ../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz

Every source the settings enable (``FUSIONREC_MODEL_SOURCES``; by default the old six and sknn, successor and
itemcf) is built as the worker builds it (``build_models``), learns the file's events whole (``learn_many``: both
halves on one instance, in batches of 500 like a partition's), and then proposes ``FUSIONREC_RANKER_CANDIDATES``
candidates for a sample of the users active in the last part of the file, as a refresh asks them. Prints µs per
event learned, µs per list proposed, and the learn cost of each source per event of the stream in lists made at
the worker's rate (``--lists-per-event``, about one list per event on the Taobao slice).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from fusionrec.contracts.settings import load_settings
from fusionrec.producers.datasets import read_dataset
from fusionrec.streams.app import tune_runtime
from fusionrec.streams.state import build_models

BATCH = 500


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--limit", type=int, default=None, help="only the first N events")
    parser.add_argument("--users", type=int, default=2000, help="users whose candidates are timed")
    parser.add_argument("--lists-per-event", type=float, default=1.0, help="lists made per event, for the total")
    args = parser.parse_args()

    tune_runtime()
    settings = load_settings()
    events = read_dataset(args.path, limit=args.limit).events
    models = build_models(settings, 0)
    k = settings.ranker.candidates
    tail = events[-max(len(events) // 5, 1) :]
    active = sorted({event.user_id for event in tail})
    users = random.Random(0).sample(active, min(args.users, len(active)))
    now = events[-1].ts
    rows = []
    for name, model in models.items():
        started = time.perf_counter()
        for start in range(0, len(events), BATCH):
            model.learn_many(events[start : start + BATCH])
        learn_s = time.perf_counter() - started
        candidates = model.candidates
        started = time.perf_counter()
        proposed = sum(len(candidates(user, k, now)) for user in users)
        rank_s = time.perf_counter() - started
        learn_us = learn_s / len(events) * 1e6
        list_us = rank_s / len(users) * 1e6
        rows.append((name, learn_us, list_us, learn_us + args.lists_per_event * list_us, proposed / len(users)))
    print(f"{args.path.name}: {len(events):,} events, candidates for {len(users):,} users (k={k}); µs, one thread")
    print(f"{'source':<10} {'learn/event':>12} {'candidates/list':>16} {'per event':>10} {'mean listed':>12}")
    for name, learn_us, list_us, total, listed in rows:
        print(f"{name:<10} {learn_us:>12.1f} {list_us:>16.1f} {total:>10.1f} {listed:>12.1f}")
    old = {"cf", "covisit", "popular", "trending", "category", "recent"}
    for label, chosen in (("old sources", old), ("new sources", set(models) - old)):
        picked = [row for row in rows if row[0] in chosen]
        if picked:
            print(
                f"{label:<10}: learn {sum(r[1] for r in picked):.1f} µs/event, candidates "
                f"{sum(r[2] for r in picked):.1f} µs/list ({', '.join(r[0] for r in picked)})"
            )


if __name__ == "__main__":
    main()
