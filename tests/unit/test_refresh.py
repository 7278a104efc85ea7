"""Refresher.refresh: slices within a budget, partitions take turns, a user leaves the work list only once
their list is published."""

from __future__ import annotations

import pytest

from fusionrec.contracts.events import Event
from fusionrec.contracts.settings import load_settings
from fusionrec.streams import refresh as refresh_module
from fusionrec.streams.refresh import Refresher
from fusionrec.streams.state import PartitionRegistry, PartitionState, build_fusion, build_models


class _Redis:
    def smembers(self, key):
        return {b"i3"} if key.endswith("unavailable") else set()


class _Publisher:
    """Records what would be published; ``fail`` makes the next publish raise (Redis down)."""

    def __init__(self):
        self.calls: list[tuple[int, list[str], dict[str, list[int]]]] = []
        self.items: list[str] = []
        self.fail = False

    def publish(self, lists, changed, *, partition, offset):
        if self.fail:
            raise ConnectionError("redis down")
        self.calls.append((partition, [fused.user_id for fused in lists], changed))
        self.items += [item for fused in lists for item in fused.ranked.item_ids]
        return len(lists)

    def publish_many(self, groups):
        if self.fail:
            raise ConnectionError("redis down")
        self.publishes = getattr(self, "publishes", 0) + 1
        return sum(self.publish(lists, changed, partition=p, offset=o) for lists, changed, p, o in groups)


def partition(settings, number: int, users: int) -> PartitionState:
    state = PartitionState(number, build_models(settings, number), build_fusion(settings, number))
    events = [
        (
            Event(f"e{number}-{u}-{n}", f"p{number}u{u}", f"i{(u + n) % 7}", "view", 1_700_000_000_000 + 10 * u + n),
            u * 2 + n,
        )
        for u in range(users)
        for n in range(2)
    ]
    state.learn(events, events[-1][1])
    return state


@pytest.fixture
def refresher():
    settings = load_settings(ranker_device="cpu", ranker_k=5)
    partitions = PartitionRegistry(store=None)
    partitions.states = {p: partition(settings, p, users) for p, users in ((0, 5), (1, 3), (2, 4))}
    return Refresher(partitions, _Publisher(), _Redis(), settings.redis.keys, settings.topic.events)


def test_a_slice_ranks_at_most_its_budget_longest_waiting_first_then_the_rest(refresher, monkeypatch):
    monkeypatch.setattr(refresh_module, "RANK_BATCH", 2)  # tensor batches of 2 within a partition
    assert [len(s.changed) for s in refresher.partitions.states.values()] == [5, 3, 4]
    assert refresher.refresh(max_users=4) == 4
    first = refresher.publisher.calls
    assert [(p, users) for p, users, _ in first] == [(0, ["p0u0", "p0u1"]), (0, ["p0u2", "p0u3"])]
    assert first[0][2] == {
        "p0u0": [1_700_000_000_000, 1_700_000_000_001],
        "p0u1": [1_700_000_000_010, 1_700_000_000_011],
    }  # each event's time, for freshness
    assert list(refresher.partitions.states[0].changed) == ["p0u4"]
    assert refresher.publisher.publishes == 1  # the slices' lists went out together
    # The next call starts with the next partition, and everything left fits in the default budget.
    assert refresher.refresh() == 8
    assert [p for p, _, _ in refresher.publisher.calls[2:]] == [1, 1, 2, 2, 0]
    assert not any(s.changed for s in refresher.partitions.states.values())
    assert refresher.refresh() == 0


def test_a_failed_publish_leaves_the_users_for_the_next_tick(refresher):
    refresher.publisher.fail = True
    with pytest.raises(ConnectionError):
        refresher.refresh(max_users=3)
    assert [len(s.changed) for s in refresher.partitions.states.values()] == [5, 3, 4]
    refresher.publisher.fail = False
    assert refresher.refresh() == 12


def test_unavailable_items_never_reach_a_list(refresher):
    assert refresher.refresh() == 12
    # The shop marked i3 unavailable (the stub Redis set); the popular items i0..i6 fill the lists otherwise.
    assert refresher.unavailable() == frozenset({"i3"})
    assert refresher.publisher.items and "i3" not in refresher.publisher.items
    assert {"i0", "i1", "i2", "i4", "i5", "i6"} & set(refresher.publisher.items)
