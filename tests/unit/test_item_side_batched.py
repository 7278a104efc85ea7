"""The batched event path leaves the state the record-by-record path leaves, exactly: the replica learning a tick
source by source (``learn_item_side_many``, the guard deciding the whole tick first) against the per-record loop it
replaced, and the partitions' user sides learning a batch source by source (``learn_user_side_many``).

The models are built with small caps, half-lives and neighbour lists, and the guard with tight limits and a tiny
Bloom filter, so that every rare path (a cap dropping entries, pruning, a forward-decay rebase, eviction, capped,
unvoted and qualifying records, false positives) runs many times in a short stream."""

from __future__ import annotations

import random

import orjson
import pytest

from fusionrec.contracts.events import Event
from fusionrec.models import (
    CategoryAffinity,
    CoVisitation,
    ItemCF,
    Popularity,
    Recommender,
    SessionKNN,
    Successors,
    Trending,
)
from fusionrec.models import item_side as item_side_module
from fusionrec.models.guard import USER, ItemSideGuard, _slots, user_digest
from fusionrec.models.item_side import LABELS, ItemSide, TickClock

T0 = 1_700_000_000_000
TYPES = ["view"] * 6 + ["add_to_cart", "favourite", "purchase", "remove_from_cart", "rate"]


def sources() -> dict[str, Recommender]:
    """Every splittable source, with limits small enough that their rare paths run often."""
    idle = 90_000
    return {
        "popular": Popularity(half_life_ms=600_000, top_n=5, max_items=50, max_idle_ms=idle),
        "trending": Trending(half_life_ms=40, top_n=3, max_items=30, max_idle_ms=idle),
        "covisit": CoVisitation(half_life_ms=90, max_neighbours=3, max_items=40, max_users=25, max_idle_ms=idle),
        "successor": Successors(half_life_ms=90, max_successors=2, max_items=40, max_users=25, max_idle_ms=idle),
        "itemcf": ItemCF(half_life_ms=90, max_neighbours=3, max_items=40, max_users=25, max_idle_ms=idle),
        "category": CategoryAffinity(
            user_half_life_ms=200,
            item_half_life_ms=70,
            items_per_category=3,
            max_categories_per_user=2,
            max_items=40,
            max_users=25,
            max_idle_ms=idle,
        ),
        "sknn": SessionKNN(
            sample_size=3, max_session_items=4, max_sessions=20, max_items=40, max_users=25, max_idle_ms=idle
        ),
    }


def guard() -> ItemSideGuard:
    return ItemSideGuard(
        window_ms=20_000, user_cap=4, min_users=2, unvoted_cap=1, jump_min=3, jump_factor=1.5, bits=256, max_pending=10
    )


def stream(n: int, seed: int) -> list[Event]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        item = rng.randrange(150)
        out.append(
            Event(
                f"e{i}",
                f"u{rng.randrange(40)}",
                f"i{item}",
                rng.choice(TYPES),
                T0 + 400 * i + rng.randrange(-900, 900),  # out of order across tick and window boundaries
                category_id=f"c{item % 9}" if rng.random() < 0.9 else None,
                session_id=f"s{rng.randrange(20)}" if rng.random() < 0.3 else None,
                rating=rng.choice([1.0, 3.0, 5.0]),
            )
        )
    return out


def reference_admit(guard: ItemSideGuard, user: int | None, item: str, ts: int) -> tuple[bool, bool]:
    """The guard's decision for one record, written out as the per-record code had it (Bloom positions from
    ``_slots``): what the batched loop must match."""

    def member(bits, value) -> bool:
        return all(bits.data[slot >> 3] & (1 << (slot & 7)) for slot in _slots(value, bits.bits, bits.hashes))

    def add(bits, value) -> None:
        for slot in _slots(value, bits.bits, bits.hashes):
            bits.data[slot >> 3] |= 1 << (slot & 7)

    window = ts // guard.window_ms
    if guard._window is None:
        guard._window = window
    elif window > guard._window:
        for new in guard._new_users:
            add(guard._known, new)
        guard._new_users = set()
        guard._user_counts = {}
        guard._previous_counts = guard._item_counts if window == guard._window + 1 else {}
        guard._item_counts = {}
        guard._flagged_now = set()
        guard._window = window
    count = guard._item_counts.get(item, 0) + 1
    guard._item_counts[item] = count
    if count >= guard.jump_min and item not in guard._flagged_now:
        previous = guard._previous_counts.get(item, 0)
        if count >= guard.jump_factor * (previous + 1):
            guard._flagged_now.add(item)
            guard.jumps += 1
            guard.flagged = [*guard.flagged[-19:], (item, count, previous)]
    if user is None:
        return True, True
    known = member(guard._known, user)
    if not known:
        guard._new_users.add(user)
    if guard.user_cap:
        used = guard._user_counts[user] = guard._user_counts.get(user, 0) + 1
        if used > guard.user_cap:
            guard.capped += 1
            return False, False
    if guard.min_users <= 1 or member(guard._qualified, item):
        return True, True
    entry = guard._voters.get(item)
    if entry is None:
        if len(guard._voters) >= guard.max_pending:
            guard._voters = {}
        entry = guard._voters[item] = [0, set()]
    if known:
        entry[1].add(user)
        if len(entry[1]) >= guard.min_users:
            add(guard._qualified, item)
            del guard._voters[item]
            return True, True
    if entry[0] < guard.unvoted_cap:
        entry[0] += 1
        return True, True
    guard.unvoted += 1
    return True, False


class PerRecordItemSide(ItemSide):
    """The replica as it learned before: record by record, each record's sources in turn."""

    def _learn(self, records):
        for _offset, item, ts, contexts in records:
            teaches, popular = True, True
            if self.guard is not None:
                teaches, popular = reference_admit(self.guard, contexts.get(USER), item, ts)
            for source, context in contexts.items():
                if source == LABELS or not teaches or (not popular and source in self.guard.sources):
                    continue
                model = self.models.get(source)
                if model is not None:
                    model.learn_item_side(item, ts, context)


def records(events: list[Event]) -> list[tuple[int, list]]:
    """One partition's item-side records ``(tick, record)``, from per-event user sides, after a JSON round trip."""
    users = sources()
    clock = TickClock(1000)
    out = []
    for offset, event in enumerate(events):
        tick = clock.stamp(event.ts)
        contexts = {}
        for name, model in users.items():
            context = model.learn_user_side(event)
            if context is not None:
                contexts[name] = context
        if contexts:
            contexts[USER] = None if offset % 50 == 7 else user_digest(event.user_id)  # now and then an old record
            out.append((tick, orjson.loads(orjson.dumps([offset, event.item_id, event.ts, contexts]))))
    return out


def state(model: object) -> dict:
    return {name: value for name, value in vars(model).items() if not callable(value)}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_replica_learns_a_tick_at_once_as_it_learned_record_by_record(seed, monkeypatch):
    monkeypatch.setattr(item_side_module, "EVICT_EVERY_RECORDS", 300)  # eviction runs too
    batched = ItemSide(sources(), partitions=1, guard=guard())
    reference = PerRecordItemSide(sources(), partitions=1, guard=guard())
    stamped = records(stream(3000, seed))
    for start in range(0, len(stamped), 97):  # several ticks per apply, cut anywhere
        chunk = stamped[start : start + 97]
        for side in (batched, reference):
            for tick, record in chunk:
                side.offer(0, tick, [record])
            side.close(0, chunk[-1][0] - 1)
            side.apply()
    waiting = len(batched._pending[stamped[-1][0]][0])  # the last tick is not closed
    assert batched.records_applied == reference.records_applied == len(stamped) - waiting
    g = batched.guard
    assert g.capped and g.unvoted and g.jumps and g._qualified.data.count(0) < len(g._qualified.data)  # paths ran
    assert g.to_state() == reference.guard.to_state()
    for name, model in batched.models.items():
        assert model.snapshot() == reference.models[name].snapshot(), name
        assert state(model) == state(reference.models[name]), name


def test_learn_item_side_many_defaults_to_the_per_record_loop():
    calls = []

    class Probe(Popularity):
        def learn_item_side(self, item_id, ts, context):
            calls.append((item_id, ts, context))

    Recommender.learn_item_side_many(Probe(), [("a", 1, 1.0), ("b", 2, 2.0)])
    assert calls == [("a", 1, 1.0), ("b", 2, 2.0)]


def test_the_guard_admits_a_batch_as_it_admits_each_record():
    rng = random.Random(5)
    offered = [
        [n, f"i{rng.randrange(30)}", T0 + 300 * n, {USER: user_digest(f"u{rng.randrange(25)}")}] for n in range(4000)
    ]
    batched, single, reference = guard(), guard(), guard()
    answers = batched.admit_many(offered)
    assert answers == [single.admit(c[USER], item, ts) for _o, item, ts, c in offered]
    assert answers == [reference_admit(reference, c[USER], item, ts) for _o, item, ts, c in offered]
    assert batched.to_state() == single.to_state() == reference.to_state()


@pytest.mark.parametrize("name", sorted(sources()))
@pytest.mark.parametrize("seed", [1, 2])
def test_a_user_side_learns_a_batch_as_it_learns_each_event(name, seed):
    events = stream(3000, seed)
    batched, single = sources()[name], sources()[name]
    contexts = []
    for start in range(0, len(events), 83):
        contexts += batched.learn_user_side_many(events[start : start + 83])
    assert contexts == [single.learn_user_side(event) for event in events]
    assert batched.snapshot() == single.snapshot()
    assert state(batched) == state(single)
