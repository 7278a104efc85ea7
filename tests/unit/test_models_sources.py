"""The session and sequence sources and item CF (issue 11): each finds the pattern planted for it, stays within its
bounds, round-trips through a snapshot and gives the same answers for the same events.

Expected items come from how each stream is built, never from the model under test.
"""

from __future__ import annotations

import random

import orjson
import pytest

from fusionrec.contracts.events import Event
from fusionrec.contracts.settings import load_settings
from fusionrec.models import ItemCF, Recommender, SessionKNN, Successors
from fusionrec.streams.state import build_fusion, build_item_side, build_models, enabled_sources

T0 = 1_700_000_000_000
MINUTE = 60_000
HOUR = 3_600_000

NEW = {"sknn": SessionKNN, "successor": Successors, "itemcf": ItemCF}


def noise(rng: random.Random, n: int, start: int, users: int = 50, items: int = 200) -> list[Event]:
    """Random views, spread out so that no two of a user's events share a session."""
    return [
        Event(f"z{start}-{m}", f"noise{rng.randrange(users)}", f"n{rng.randrange(items)}", "view", start + m * HOUR)
        for m in range(n)
    ]


# --- planted patterns ----------------------------------------------------------------------------------------


def test_sknn_finds_the_items_of_sessions_like_the_current_one():
    """Sessions of a "camping" pattern (tent, bag, stove, lamp in random order, one item missing each time) among
    noise sessions: a session holding tent and bag is offered the other camping items first."""
    rng = random.Random(1)
    camping = ["tent", "bag", "stove", "lamp"]
    events, ts = [], T0
    for n in range(40):
        items = rng.sample(camping, 3) if n % 2 else [f"n{rng.randrange(100)}" for _ in range(3)]
        for m, item in enumerate(items):
            events.append(Event(f"e{n}-{m}", f"u{n}", item, "view", ts + m * 1000))
        ts += 10 * MINUTE
    model = SessionKNN()
    model.learn_many(events)
    model.learn_many([Event("q1", "shopper", "tent", "view", ts), Event("q2", "shopper", "bag", "view", ts + 1)])
    top = [item for item, _ in model.candidates("shopper", k=2)]
    assert sorted(top) == ["lamp", "stove"]
    assert "tent" not in {item for item, _ in model.candidates("shopper", k=50)}  # the session's own items


def test_sknn_cuts_sessions_by_gap_and_by_session_id():
    model = SessionKNN(session_gap_ms=10 * MINUTE)
    model.learn_many(
        [
            Event("a", "ann", "x", "view", T0),
            Event("b", "ann", "y", "view", T0 + MINUTE),  # same session (1 min)
            Event("c", "ann", "z", "view", T0 + HOUR),  # new session (gap)
            Event("d", "bob", "x", "view", T0, session_id="s1"),
            Event("e", "bob", "y", "view", T0 + 2 * HOUR, session_id="s1"),  # same session_id, whatever the gap
            Event("f", "bob", "z", "view", T0 + 2 * HOUR + 1, session_id="s2"),  # a new session_id
        ]
    )
    assert model.n_sessions == 4
    assert sorted(len(items) for items in model._sessions.values()) == [1, 1, 2, 2]


def test_sknn_prefers_recent_neighbours():
    """Two equally similar neighbour sessions; the recent one's continuation wins."""
    events = [
        Event("o1", "old", "a", "view", T0),
        Event("o2", "old", "stale", "view", T0 + 1),
        Event("n1", "new", "a", "view", T0 + 10 * 86_400_000),
        Event("n2", "new", "fresh", "view", T0 + 10 * 86_400_000 + 1),
        Event("q", "shopper", "a", "view", T0 + 11 * 86_400_000),
    ]
    model = SessionKNN()
    model.learn_many(events)
    assert [item for item, _ in model.candidates("shopper", k=2)] == ["fresh", "stale"]


def test_successor_finds_what_comes_next_not_what_came_before():
    """A then B then C, many times, among noise: after B comes C (not A, which is before it)."""
    rng = random.Random(2)
    events = noise(rng, 100, T0)
    for n in range(30):
        start = T0 + n * HOUR
        for m, item in enumerate(["A", "B", "C"]):
            events.append(Event(f"p{n}-{m}", f"u{n}", item, "view", start + m * 1000))
    events.sort(key=lambda e: e.ts)
    model = Successors()
    model.learn_many(events)
    model.learn_one(Event("q", "shopper", "B", "view", T0 + 200 * HOUR))
    top = model.candidates("shopper", k=3)
    assert top[0][0] == "C"
    assert "A" not in {item for item, _ in top}
    assert model.successors("A", k=2)[0][0] == "B"  # gap 1 outweighs gap 2 (C)
    weights = dict(model.successors("A", k=2, now_ms=model.clock_ms))
    assert weights["B"] == pytest.approx(2 * weights["C"], rel=1e-3)


def test_successor_does_not_link_across_sessions():
    model = Successors(session_gap_ms=10 * MINUTE)
    model.learn_many([Event("a", "ann", "x", "view", T0), Event("b", "ann", "y", "view", T0 + HOUR)])
    assert model.successors("x", k=5) == []


def test_itemcf_finds_items_liked_by_the_same_users_months_apart():
    """Two tastes; users of a taste touch its items over months (no session ties them): a user who touched some of
    taste 1 is offered the rest of taste 1, none of taste 0."""
    rng = random.Random(3)
    events = []
    for user in range(40):
        taste = user % 2
        for m, item in enumerate(rng.sample(range(10), 6)):
            events.append(Event(f"e{user}-{m}", f"u{user}", f"t{taste}-{item}", "view", T0 + (m * 40 + user) * HOUR))
    events.sort(key=lambda e: e.ts)
    model = ItemCF()
    model.learn_many(events)
    model.learn_many(
        [
            Event("q1", "shopper", "t1-0", "view", T0 + 400 * HOUR),
            Event("q2", "shopper", "t1-1", "view", T0 + 401 * HOUR),
        ]
    )
    top = [item for item, _ in model.candidates("shopper", k=8)]
    assert len(top) == 8 and all(item.startswith("t1-") for item in top)
    assert not {"t1-0", "t1-1"} & set(top)


# --- bounds, snapshots, determinism -----------------------------------------------------------------------------


def busy_stream(seed: int, n: int = 3000) -> list[Event]:
    rng = random.Random(seed)
    ts = T0
    out = []
    for m in range(n):
        ts += rng.randint(1, 120) * 1000
        out.append(Event(f"e{m}", f"u{rng.randrange(400)}", f"i{rng.randrange(600)}", "view", ts))
    return out


def test_sknn_bounds_sessions_index_and_session_length():
    model = SessionKNN(max_sessions=100, sample_size=8, max_session_items=5, max_users=50, max_items=80)
    for start in range(0, 3000, 100):
        model.learn_many(busy_stream(4)[start : start + 100])
        assert model.n_sessions <= 100 and model.n_users <= 50 and model.n_items <= 80
        assert all(len(keys) <= 8 + 4 for keys in model._index.values())
        assert all(len(items) <= 5 for items in model._sessions.values())
        assert all(count > 0 for count in model._df.values())
    assert model.n_sessions > 50


@pytest.mark.parametrize("name", sorted(NEW))
def test_neighbour_lists_stay_bounded(name):
    params = {"sknn": {}, "successor": {"max_successors": 4}, "itemcf": {"max_neighbours": 4}}[name]
    model = NEW[name](**params)
    model.learn_many(busy_stream(5))
    links = model._links if name == "successor" else getattr(model, "_pairs", None)
    if links is not None:
        assert max(len(v) for v in links.values()) <= 2 * 4


@pytest.mark.parametrize("name", sorted(NEW))
def test_snapshot_round_trip_answers_the_same_and_learns_on(name):
    events = busy_stream(6)
    model = NEW[name](max_idle_ms=6 * HOUR)
    model.learn_many(events[:2000])
    model.evict(model.clock_ms)
    restored = Recommender.restore(model.snapshot())
    assert type(restored) is NEW[name]
    users = [f"u{n}" for n in range(0, 400, 7)]
    assert [restored.candidates(u, 10) for u in users] == [model.candidates(u, 10) for u in users]
    model.learn_many(events[2000:])
    restored.learn_many(events[2000:])
    assert restored.snapshot() == model.snapshot()


@pytest.mark.parametrize("name", sorted(NEW))
def test_the_same_events_give_the_same_state(name):
    first, second = NEW[name](), NEW[name]()
    first.learn_many(busy_stream(7))
    for event in busy_stream(7):
        second.learn_one(event)
    assert first.snapshot() == second.snapshot()


@pytest.mark.parametrize("name", sorted(NEW))
def test_item_side_contexts_cross_json(name):
    """What the user side hands the item side is plain JSON, and the two halves answer like one model."""
    whole, users, items = NEW[name](), NEW[name](), NEW[name]()
    for event in busy_stream(8, n=1500):
        whole.learn_one(event)
        context = users.learn_user_side(event)
        if context is not None:
            items.learn_item_side(event.item_id, event.ts, orjson.loads(orjson.dumps(context)))
    view = users.with_item_side(items)
    for u in range(0, 400, 5):
        assert view.candidates(f"u{u}", 10) == whole.candidates(f"u{u}", 10)


# --- wiring: the settings choose the sources -------------------------------------------------------------------


def test_the_settings_choose_the_sources_and_their_parameters():
    settings = load_settings(model_sources="popular,itemcf,sknn", model_sknn_neighbours=7, model_session_gap_ms=5000)
    assert list(enabled_sources(settings)) == ["popular", "itemcf", "sknn"]
    models = build_models(settings, 0)
    assert list(models) == ["popular", "itemcf", "sknn"]
    assert models["sknn"].neighbours == 7 and models["sknn"].session_gap_ms == 5000
    fusion = build_fusion(settings, 0)
    assert fusion.sources == ("popular", "itemcf", "sknn")
    assert fusion.learned is not None and fusion.learned.sources == ("popular", "itemcf", "sknn")
    assert sorted(build_item_side(settings, 2).models) == ["itemcf", "popular", "sknn"]
    default = enabled_sources(load_settings())
    assert {"sknn", "successor", "itemcf", "cf", "covisit"} <= set(default)
    with pytest.raises(ValueError, match="unknown sources"):
        enabled_sources(load_settings(model_sources="popular,nope"))
