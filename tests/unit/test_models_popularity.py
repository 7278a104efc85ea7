"""Popularity and trending: decayed counts, worked out by hand."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusionrec.contracts.events import Event
from fusionrec.models import Popularity, Trending

T0 = 1_700_000_000_000
HOUR = 3_600_000
WEIGHTS = {"view": 1.0, "favourite": 2.0, "add_to_cart": 3.0, "purchase": 5.0}


def ev(item: str, kind: str, ts: int, n: int = 0) -> Event:
    return Event(f"{item}-{kind}-{ts}-{n}", f"u{n}", item, kind, ts)


def test_scores_halve_every_half_life():
    model = Popularity(half_life_ms=HOUR)
    model.learn_many([ev("a", "purchase", T0), ev("a", "view", T0), ev("b", "view", T0 + HOUR)])
    # a: (5 + 1) at T0; b: 1 at T0 + 1h
    assert model.score("x", ["a", "b", "c"], now_ms=T0 + HOUR).tolist() == [3.0, 1.0, 0.0]
    assert model.score("x", ["a", "b"]).tolist() == [3.0, 1.0]  # now defaults to the last event, T0 + 1h
    assert model.score("x", ["a", "b"], now_ms=T0 + 3 * HOUR).tolist() == [0.75, 0.25]
    assert model.candidates("x", k=5, now_ms=T0 + HOUR) == [("a", 3.0), ("b", 1.0)]


def test_trending_prefers_recent_activity_that_popularity_outweighs():
    events = [ev("old-hit", "purchase", T0 - 24 * HOUR, n) for n in range(10)] + [ev("new", "view", T0)]
    popular, trending = Popularity(half_life_ms=7 * 24 * HOUR), Trending(half_life_ms=HOUR)
    popular.learn_many(events)
    trending.learn_many(events)
    # popular: 50 * 2**(-1/7) ~ 45.3 vs 1; trending: 50 * 2**-24 ~ 3e-6 vs 1
    assert [item for item, _ in popular.candidates("x", 2)] == ["old-hit", "new"]
    assert [item for item, _ in trending.candidates("x", 2)] == ["new", "old-hit"]
    assert trending.source == "trending" and popular.source == "popular"
    assert Trending().half_life_ms == HOUR


def test_events_of_zero_or_negative_weight_are_ignored():
    model = Popularity(event_weights={"remove_from_cart": -1.0})
    model.learn_many([ev("a", "view", T0), ev("a", "remove_from_cart", T0), ev("b", "impression", T0)])
    assert model.candidates("x", 5) == [("a", 1.0)]


def test_far_apart_events_keep_exact_scores():
    # 600 half-lives apart: the stored numbers are re-based on the way, and nothing overflows
    model = Popularity(half_life_ms=HOUR)
    model.learn_many([ev("a", "purchase", T0), ev("b", "view", T0 + 300 * HOUR), ev("c", "favourite", T0 + 600 * HOUR)])
    now = T0 + 600 * HOUR
    assert model.score("x", ["a", "b", "c"], now_ms=now).tolist() == pytest.approx([5 * 2.0**-600, 2.0**-300, 2.0])
    assert model.score("x", ["c"], now_ms=T0).tolist() == pytest.approx([2.0 * 2.0**600])  # querying the past
    assert model.candidates("x", 1) == [("c", pytest.approx(2.0))]


def test_asking_for_more_than_top_n_scans_every_item():
    model = Popularity(top_n=2)
    model.learn_many([ev(f"i{n}", "view", T0, m) for n in range(5) for m in range(n + 1)])
    assert [item for item, _ in model.candidates("x", 2)] == ["i4", "i3"]
    assert [item for item, _ in model.candidates("x", 4)] == ["i4", "i3", "i2", "i1"]


def test_the_item_cap_drops_the_least_recently_touched():
    model = Popularity(max_items=16)  # drops 16 // 16 = 1 item when a new one would pass the cap
    model.learn_many([ev(f"i{n}", "purchase" if n < 3 else "view", T0 + n) for n in range(20)])
    assert model.n_items == 16
    assert model.score("x", ["i0", "i1", "i2", "i3", "i4"]).tolist()[:4] == [0.0, 0.0, 0.0, 0.0]
    assert model.candidates("x", 1)[0][0] == "i19"  # the purchased i0..i2 are gone; views tie, larger id first


def test_evicting_a_top_item_promotes_the_next():
    model = Popularity(max_idle_ms=HOUR, top_n=2)
    model.learn_many([ev("hit", "purchase", T0), ev("b", "view", T0 + 2 * HOUR), ev("c", "favourite", T0 + 2 * HOUR)])
    assert [item for item, _ in model.candidates("x", 2, now_ms=T0)] == ["hit", "c"]
    assert model.evict(T0 + 2 * HOUR) == 1
    assert [item for item, _ in model.candidates("x", 2)] == ["c", "b"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 9), st.sampled_from(sorted(WEIGHTS)), st.integers(0, 3)),
        min_size=1,
        max_size=60,
    ),
    st.integers(1, 4),
    st.integers(1, 6),
)
def test_cached_top_items_equal_a_brute_force_ranking(events, top_n, k):
    # event times are whole half-lives apart, so every decayed weight is an exact power of two
    model = Popularity(half_life_ms=HOUR, top_n=top_n)
    stamps = [T0 + hours * HOUR for _, _, hours in events]
    for n, (item, kind, _) in enumerate(events):
        model.learn_one(Event(f"e{n}", "u", f"i{item}", kind, stamps[n]))
    now = max(stamps)
    totals: dict[str, float] = {}
    for (item, kind, _), ts in zip(events, stamps, strict=False):
        totals[f"i{item}"] = totals.get(f"i{item}", 0.0) + WEIGHTS[kind] * 2.0 ** ((ts - now) / HOUR)
    expected = sorted(totals.items(), key=lambda p: (p[1], p[0]), reverse=True)[:k]
    assert model.candidates("anyone", k) == expected
