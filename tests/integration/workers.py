"""Helpers for tests that run real worker processes against the session's broker and Redis."""

from __future__ import annotations

import random
import time
from collections import Counter

import orjson
import redis

from fusionrec.contracts.events import Event
from fusionrec.producers.producer import EventProducer
from fusionrec.streams.child import WorkerChild

TYPES = ["view"] * 6 + ["add_to_cart", "favourite", "purchase", "remove_from_cart"]


def make_events(n: int, seed: int, start_ms: int) -> list[Event]:
    rng = random.Random(seed)
    return [
        Event(
            f"ev-{seed}-{i}",
            f"user-{rng.randrange(300)}",
            f"item-{rng.randrange(500)}",
            rng.choice(TYPES),
            start_ms + i,
            category_id=f"cat-{rng.randrange(20)}",
        )
        for i in range(n)
    ]


MALFORMED = [
    b"not json",
    b'{"event_id": "x", "type": "view"}',
    b"\xff\xfe",
    b"[]",
    orjson.dumps({"event_id": "y", "user_id": "u", "item_id": "i", "type": "click", "ts": 1}),
]


class WorkerProcess(WorkerChild):
    """A worker child with its own state dir and a short snapshot interval (tests finish sooner)."""

    def __init__(self, settings, tmp_path, name: str):
        super().__init__(
            settings,
            tmp_path / f"{name}.log",
            FUSIONREC_STATE_DIR=str(tmp_path / name),
            FUSIONREC_WORKER_SNAPSHOT_INTERVAL_S="0.5",
        )


def handled(metrics) -> float:
    return (
        metrics.get("fusionrec_worker_events_total", 0)
        + metrics.get("fusionrec_worker_duplicates_skipped_total", 0)
        + metrics.get("fusionrec_worker_dead_letter_total", 0)
    )


def expected_counts(events: list[Event]) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for event in events:
        out.setdefault(event.user_id, Counter())[event.type] += 1
    return out


def send(settings, events, raw=(), duplicates=()):
    with EventProducer(settings) as producer:
        for event in events:
            producer.send(event)
        for event in duplicates:
            producer.send(event)
        for value in raw:
            producer.send_raw(b"bad-key", value)
    assert producer.stats.delivered == len(events) + len(raw) + len(duplicates)


def load_item_side(settings):
    """The item-side replica as the workers last snapshotted it (None without a snapshot)."""
    from fusionrec.streams.item_side import load_replica

    return load_replica(settings, redis.Redis.from_url(settings.redis.url))


def model_fingerprint(settings) -> dict:
    """What the models would recommend, per partition snapshot, ranked against the item-side snapshot; and the
    item side's own state: comparable across runs."""
    from fusionrec.models.item_side import LABELS
    from fusionrec.streams.state import SnapshotStore

    client = redis.Redis.from_url(settings.redis.url)
    replica = load_item_side(settings)
    out: dict = {}
    for state in SnapshotStore(client, settings, settings.topic.events).load_all():
        users = sorted({f"user-{i}" for i in range(0, 300, 7)})
        models = state.models if replica is None else replica.views(state.models)
        out[state.partition] = (
            state.offset,
            state.clock.open if state.clock is not None else None,
            {name: [model.candidates(user, 5) for user in users] for name, model in sorted(models.items())},
        )
    if replica is not None:
        meta = replica.meta()
        out["item_side"] = (
            # the learned state, insertion order and exact floats included (repr), not the pickle, whose memo
            # depends on which strings happen to be shared objects
            {name: repr(model._get_state()) for name, model in sorted(replica.models.items())},
            # the queued records without the learned ranker's labels: which events carry them depends on when
            # lists were made (like the bandit's exposures), the item side's models do not
            [
                [tick, [[[o, i, ts, {k: v for k, v in c.items() if k != LABELS}] for o, i, ts, c in r] for r in slots]]
                for tick, slots in meta["pending"]
            ],
            meta["records_applied"],
            meta["seen"],
        )
    return out


def item_side_settled(settings, events: list[Event]) -> bool:
    """True when the item-side snapshot has received every partition's records up to its last offset, and applied
    every tick but the newest (which waits for a later event: docs/worker.md)."""
    replica = load_item_side(settings)
    if replica is None:
        return False
    newest = max(event.ts for event in events) // settings.model.item_sync_ms
    if replica.applied is None or replica.applied < newest - 1:
        return False
    time.sleep(1.5)  # three snapshot intervals: the newest tick's records have all arrived when nothing changes
    again = load_item_side(settings)
    return again is not None and again.meta() == replica.meta()


def all_snapshotted(settings, total: int) -> bool:
    """True when the partition snapshots together cover ``total`` records (offsets are per partition)."""
    client = redis.Redis.from_url(settings.redis.url)
    keys = list(client.scan_iter(match=settings.redis.keys.snapshots(settings.topic.events)))
    covered = sum(int(client.hget(k, "offset")) + 1 for k in keys)
    client.close()
    return covered >= total
