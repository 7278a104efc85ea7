"""The shared item side: two halves learn what one model learns, and the replica's state depends on the events
alone, not on how the partitions interleave."""

from __future__ import annotations

import random

import orjson
import pytest

from fusionrec.contracts.events import Event
from fusionrec.contracts.partitioning import partition_for
from fusionrec.contracts.settings import load_settings
from fusionrec.models import SOURCES, Recommender
from fusionrec.models.item_side import ItemSide, TickClock, split_models
from fusionrec.streams.state import PartitionState, build_item_side, build_models, partition_clock

TYPES = ["view"] * 6 + ["add_to_cart", "favourite", "purchase", "remove_from_cart"]
T0 = 1_700_000_000_000
SPLIT = sorted(name for name, cls in SOURCES.items() if cls.splits())


def stream(n: int, seed: int, users: int = 60, step_ms: int = 700) -> list[Event]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        item = rng.randrange(120)
        category = f"c{item % 7}" if rng.random() < 0.95 else None  # an item keeps its category; a few events omit it
        if rng.random() < 0.01:
            category = f"c{rng.randrange(7)}"  # and now and then an item moves
        out.append(
            Event(
                f"e{i}",
                f"u{rng.randrange(users)}",
                f"i{item}",
                rng.choice(TYPES),
                T0 + step_ms * i + rng.randrange(-300, 300),  # a little out of order
                category_id=category,
                session_id=f"s{rng.randrange(30)}" if rng.random() < 0.3 else None,
            )
        )
    return out


def answers(model: Recommender, users: int = 60) -> list:
    now = model.clock_ms
    items = [f"i{n}" for n in range(120)]
    return [
        (model.candidates(f"u{u}", 8, now), model.score(f"u{u}", items, now).round(9).tolist()) for u in range(users)
    ]


def test_the_splittable_sources_are_the_item_side_ones():
    assert SPLIT == ["category", "covisit", "itemcf", "popular", "sknn", "successor", "trending"]


@pytest.mark.parametrize("name", SPLIT)
def test_two_halves_answer_like_one_model(name):
    """User side on one instance, item side (after a JSON round trip) on another: the joined view answers what a
    model that learned whole events answers."""
    whole, users, items = SOURCES[name](), SOURCES[name](), SOURCES[name]()
    for event in stream(2500, seed=3):
        whole.learn_one(event)
        context = users.learn_user_side(event)
        if context is not None:
            items.learn_item_side(event.item_id, event.ts, orjson.loads(orjson.dumps(context)))
    view = users.with_item_side(items)
    assert answers(view) == answers(whole)
    assert view.category_of("i3") == whole.category_of("i3")


def test_tick_clock_closes_ticks_as_event_time_passes_them():
    clock = TickClock(1000)
    assert clock.closed is None
    assert [clock.stamp(ts) for ts in (5_100, 5_900, 7_200, 6_500)] == [5, 5, 7, 7]
    assert clock.closed == 6
    clock.close_through(9)
    assert clock.stamp(8_000) == 10 and clock.closed == 9


def run_partitions(events: list[Event], partitions: int, order_seed: int | None) -> tuple[ItemSide, list]:
    """Learn ``events`` on ``partitions`` partition states (users placed by murmur2), handing each partition's
    records to one replica in batches whose order between partitions is shuffled by ``order_seed``."""
    settings = load_settings(model_item_sync_ms=1000)
    side = build_item_side(settings, partitions)
    states = [PartitionState(p, build_models(settings, p), clock=partition_clock(settings)) for p in range(partitions)]
    by_partition: list[list[tuple[Event, int]]] = [[] for _ in range(partitions)]
    for event in events:
        p = partition_for(event.user_id.encode(), partitions)
        by_partition[p].append((event, len(by_partition[p])))
    rng = random.Random(order_seed)
    cursors = [0] * partitions
    while any(c < len(b) for c, b in zip(cursors, by_partition, strict=True)):
        p = rng.choice([p for p in range(partitions) if cursors[p] < len(by_partition[p])])
        n = rng.randrange(1, 60)
        chunk = by_partition[p][cursors[p] : cursors[p] + n]
        cursors[p] += len(chunk)
        states[p].learn(chunk, chunk[-1][1])
        side.receive(p, *states[p].take_outbox())
        if rng.random() < 0.3:
            side.apply()
    for state in states:  # the end of the stream: every partition closes its last tick
        state.clock.close_through(side.newest_tick())
        side.close(state.partition, state.clock.closed)
    side.apply()
    return side, states


def test_the_replica_does_not_depend_on_how_partitions_interleave():
    events = stream(3000, seed=11)
    first, _ = run_partitions(events, 4, order_seed=1)
    second, _ = run_partitions(events, 4, order_seed=2)
    assert first.records_applied == second.records_applied > 2000
    for name in first.models:
        assert first.models[name].snapshot() == second.models[name].snapshot(), name


def overlap(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> float:
    left, right = {item for item, _ in a}, {item for item, _ in b}
    return len(left & right) / max(len(left | right), 1)


def test_every_partition_ranks_against_the_whole_shop():
    """With one shared item side, a user of any partition gets what one partition learning every event would give
    (up to the order of events within a tick); with the item side kept per partition, far less so."""
    events = stream(3000, seed=5)
    now = max(e.ts for e in events)
    six, states = run_partitions(events, 6, order_seed=3)
    one, single = run_partitions(events, 1, order_seed=3)
    apart = [PartitionState(p, build_models(load_settings(model_item_sync_ms=0), p)) for p in range(6)]
    for n, event in enumerate(events):
        apart[partition_for(event.user_id.encode(), 6)].learn([(event, n)], n)
    shared, separate = [], []
    for u in range(60):
        user = f"u{u}"
        p = partition_for(user.encode(), 6)
        mine, alone = six.views(states[p].models), one.views(single[0].models)
        for name in SPLIT:
            truth = alone[name].candidates(user, 10, now)
            if truth:
                shared.append(overlap(mine[name].candidates(user, 10, now), truth))
                separate.append(overlap(apart[p].models[name].candidates(user, 10, now), truth))
    assert sum(shared) / len(shared) > 0.95
    assert sum(separate) / len(separate) < 0.75


def test_records_already_received_are_dropped():
    side = ItemSide(split_models(build_models(load_settings(), 0)), partitions=1)
    record = [7, "mug", T0, {"popular": 1.0}]
    assert side.offer(0, 5, [record]) == 1
    assert side.offer(0, 5, [record]) == 0  # a replay after a crash sends it again
    side.close(0, 5)
    assert side.apply() == 1
    assert side.models["popular"].candidates("anyone", 1)[0][0] == "mug"


def test_a_late_tick_is_applied_next_not_lost():
    side = ItemSide(split_models(build_models(load_settings(), 0)), partitions=2)
    side.close_all(10)
    side.apply()
    assert side.applied == 10
    side.offer(1, 4, [[0, "late", T0, {"popular": 1.0}]])  # a partition closed while quiet, then an old event
    side.close_all(11)
    assert side.apply() == 1


def test_meta_round_trips_through_json():
    events = stream(400, seed=2)
    side, _ = run_partitions(events, 2, order_seed=4)
    other = build_item_side(load_settings(), 2)
    assert other.learned is not None  # the shared learned ranker's state travels in the meta too
    other.load_meta(orjson.loads(orjson.dumps(side.meta())))
    assert other.meta() == side.meta()
    with pytest.raises(ValueError, match="2 partitions, not 3"):
        ItemSide({}, partitions=3).load_meta(side.meta())


def test_partitions_far_ahead_of_the_item_side_are_named_for_pausing():
    from fusionrec.streams.item_side import MAX_AHEAD_TICKS, ItemSideLink
    from fusionrec.streams.state import PartitionRegistry

    settings = load_settings(model_item_sync_ms=1000)
    registry = PartitionRegistry(None)
    link = ItemSideLink.__new__(ItemSideLink)  # no Kafka needed for the decision
    link.replica = build_item_side(settings, 3)
    for p, open_tick in ((0, 10), (1, 10 + MAX_AHEAD_TICKS + 1), (2, None)):
        registry.states[p] = PartitionState(p, {}, clock=TickClock(1000, open_tick))
    assert link.ahead(registry) == set()  # nothing applied yet: no reference point
    link.replica.close_all(9)
    link.replica.apply()
    assert link.ahead(registry) == {1}


def test_a_large_publish_is_split_into_parts_under_the_limit():
    """Item-side messages over Kafka's 1 MB limit (long itemcf/successor contexts) go as parts: each under the
    limit, the records in offset order, the closed tick in the last part only; a replica fed the parts ends where
    one fed the whole publish does."""
    from fusionrec.streams.item_side import MAX_MESSAGE_BYTES, parse_key, split_message

    settings = load_settings(model_item_sync_ms=1000)
    state = PartitionState(0, build_models(settings, 0), clock=partition_clock(settings))
    events = stream(1500, seed=9)
    state.learn([(e, n) for n, e in enumerate(events)], len(events) - 1)
    groups, closed = state.take_outbox()
    whole = split_message(0, groups, closed, "me")
    assert len(whole) == 1 and len(whole[0][1]) <= MAX_MESSAGE_BYTES
    parts = split_message(0, groups, closed, "me", max_bytes=20_000)
    assert len(parts) > 5
    assert all(len(value) <= 20_000 for _, value in parts)
    keys = [parse_key(key) for key, _ in parts]
    assert [k[2] for k in keys] == [None] * (len(parts) - 1) + [closed]
    offsets = [record[0] for _, value in parts for _, records in orjson.loads(value)["t"] for record in records]
    assert offsets == [record[0] for _, records in groups for record in records]
    assert [k[1] for k in keys] == sorted(k[1] for k in keys) and keys[-1][1] == offsets[-1]
    one, split = build_item_side(settings, 1), build_item_side(settings, 1)
    one.receive(0, orjson.loads(whole[0][1])["t"], closed)
    for _, value in parts:
        message = orjson.loads(value)
        split.receive(message["p"], message["t"], message["c"])
    one.apply(), split.apply()
    assert one.records_applied == split.records_applied > len(offsets) - 50  # the open tick waits in both
    for name in one.models:
        assert one.models[name].snapshot() == split.models[name].snapshot(), name
    big = [[0, "x", T0, {"itemcf": ["y" * 5000]}], [1, "x", T0, {"itemcf": ["z"]}]]
    alone = split_message(0, [(5, big)], 4, "me", max_bytes=1000)
    assert len(alone) == 2 and len(alone[0][1]) > 1000  # a record over the limit cannot be cut: it goes alone
