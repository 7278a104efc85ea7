r"""What the shared item side costs per event, in process: the old layout (every partition learns whole events)
beside the shared one (user side per partition, item-side records serialised as the worker sends them, one
replica learning every partition's records), on the same events in one run.

    .venv/bin/python benchmarks/bench_item_side.py ../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz

Prints CPU µs per event for each stage (process time: on a shared machine it moves less than wall time), the
item-side topic's bytes per event (JSON as sent, before lz4), the replica's size and a digest of the state learned
(run this script against another revision's tree through ``benchmarks/revision_shim`` to check that a change leaves
the state as it was). Lists are not ranked here (bench_worker.py measures the whole worker).

    PYTHONPATH=benchmarks/revision_shim:/tmp/rev FR_REVISION_TREE=/tmp/rev .venv/bin/python \
        benchmarks/bench_item_side.py ../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import time
from pathlib import Path

import orjson

from fusionrec.contracts.partitioning import partition_for
from fusionrec.contracts.settings import load_settings
from fusionrec.producers.datasets import read_dataset
from fusionrec.streams.app import tune_runtime
from fusionrec.streams.state import PartitionState, build_item_side, build_models, partition_clock

BATCH = 500  # events per partition batch, about what the worker's fetches deliver under load


def batches(events, partitions: int):
    """``(partition, [(event, offset), ...])`` in file order, a partition's batch handed over once it holds
    ``BATCH`` events (as a worker's fetches interleave partitions), the rest at the end."""
    pending: list[list] = [[] for _ in range(partitions)]
    offsets = [0] * partitions
    for event in events:
        p = partition_for(event.user_id.encode(), partitions)
        pending[p].append((event, offsets[p]))
        offsets[p] += 1
        if len(pending[p]) == BATCH:
            yield p, pending[p]
            pending[p] = []
    for p, rest in enumerate(pending):
        if rest:
            yield p, rest


def run_whole(events, partitions: int, settings) -> float:
    states = [PartitionState(p, build_models(settings, p)) for p in range(partitions)]
    work = list(batches(events, partitions))
    started = time.process_time()
    for p, chunk in work:
        states[p].learn(chunk, chunk[-1][1])
    return time.process_time() - started


def run_split(events, partitions: int, settings) -> dict:
    states = [PartitionState(p, build_models(settings, p), clock=partition_clock(settings)) for p in range(partitions)]
    replica = build_item_side(settings, partitions)
    user_s = encode_s = apply_s = 0.0
    sent = 0
    work = list(batches(events, partitions))
    for p, chunk in work:
        t0 = time.process_time()
        states[p].learn(chunk, chunk[-1][1])
        groups, closed = states[p].take_outbox()
        t1 = time.process_time()
        value = orjson.dumps({"p": p, "t": groups, "c": closed})
        message = orjson.loads(value)
        sent += len(value)
        t2 = time.process_time()
        replica.receive(p, message["t"], message["c"])
        replica.apply()
        user_s += t1 - t0
        encode_s += t2 - t1
        apply_s += time.process_time() - t2
    t2 = time.process_time()
    replica.close_all(replica.newest_tick())  # the end of the file: every partition closes its last tick
    replica.apply()
    apply_s += time.process_time() - t2
    size = sum(len(pickle.dumps(m._get_state())) for m in replica.models.values())
    state = hashlib.sha256(orjson.dumps(replica.meta(), option=orjson.OPT_SORT_KEYS))
    for models in [replica.models, *(s.models for s in states)]:
        for name in sorted(models):
            state.update(models[name].snapshot())
    return {
        "state": state.hexdigest()[:16],
        "user": user_s,
        "encode": encode_s,
        "apply": apply_s,
        "bytes": sent,
        "replica_bytes": size,
        "applied": replica.records_applied,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()

    tune_runtime()  # as the worker does: the models' large heaps would be rescanned every few hundred allocations
    events = read_dataset(args.path, limit=args.limit).events
    n = len(events)
    whole = run_whole(events, args.partitions, load_settings(model_item_sync_ms=0))
    split = run_split(events, args.partitions, load_settings(model_item_sync_ms=1000))
    total = split["user"] + split["encode"] + split["apply"]
    print(f"{n:,} events from {args.path.name}, {args.partitions} partitions, batches of {BATCH}; CPU µs per event")
    print(f"{'item side per partition (whole events learned per partition)':<64}{whole / n * 1e6:>8.1f}")
    print(f"{'shared item side, in all':<64}{total / n * 1e6:>8.1f}")
    print(f"{'  user side per partition, records stamped and queued':<64}{split['user'] / n * 1e6:>8.1f}")
    print(f"{'  records to JSON and back (what the item-side topic carries)':<64}{split['encode'] / n * 1e6:>8.1f}")
    print(f"{'  replica learns every partition records (each worker does this)':<64}{split['apply'] / n * 1e6:>8.1f}")
    print(f"item-side topic: {split['bytes'] / n:,.0f} bytes per event as JSON (before lz4)")
    print(f"replica: {split['applied']:,} records applied; state {split['replica_bytes'] / 1e6:,.1f} MB pickled")
    print(f"state digest (replica, its guard and queues, every partition's models): {split['state']}")


if __name__ == "__main__":
    main()
