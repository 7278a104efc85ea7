"""Co-visitation: which pairs link, how strongly, and what a user is offered, worked out by hand."""

from __future__ import annotations

import pytest

from fusionrec.contracts.events import Event
from fusionrec.models import CoVisitation

T0 = 1_700_000_000_000
MINUTE = 60_000
HOUR = 3_600_000


def ev(user: str, item: str, kind: str, ts: int, session: str | None = None) -> Event:
    return Event(f"{user}-{item}-{kind}-{ts}", user, item, kind, ts, session_id=session)


def test_each_direction_is_weighted_by_the_event_on_its_target():
    model = CoVisitation(half_life_ms=HOUR)
    model.learn_many([ev("u", "kettle", "view", T0, "s"), ev("u", "mug", "purchase", T0, "s")])
    assert model.neighbours("kettle", 5) == [("mug", 5.0)]
    assert model.neighbours("mug", 5) == [("kettle", 1.0)]


def test_links_decay_with_the_half_life():
    model = CoVisitation(half_life_ms=HOUR)
    model.learn_many(
        [
            ev("u1", "a", "view", T0, "s1"),
            ev("u1", "b", "view", T0, "s1"),
            ev("u2", "a", "view", T0 + HOUR, "s2"),
            ev("u2", "b", "add_to_cart", T0 + HOUR, "s2"),
        ]
    )
    # a -> b: 1 at T0, 3 at T0 + 1h; read at T0 + 2h: 0.25 + 1.5
    assert model.neighbours("a", 5, now_ms=T0 + 2 * HOUR) == [("b", 1.75)]


@pytest.mark.parametrize(
    ("first", "second", "linked"),
    [
        ((0, "s1"), (MINUTE, "s1"), True),  # same session
        ((0, "s1"), (MINUTE, "s2"), False),  # another session, however close
        ((0, "s1"), (2 * HOUR, "s1"), True),  # a session is one visit, however long
        ((0, None), (29 * MINUTE, None), True),  # no sessions: within the 30-minute window
        ((0, None), (31 * MINUTE, None), False),  # no sessions: outside it
        ((0, "s1"), (29 * MINUTE, None), True),  # one session unknown: the window decides
        ((0, "s1"), (31 * MINUTE, None), False),
    ],
)
def test_what_counts_as_one_visit(first, second, linked):
    model = CoVisitation(window_ms=30 * MINUTE)
    model.learn_many([ev("u", "a", "view", T0 + first[0], first[1]), ev("u", "b", "view", T0 + second[0], second[1])])
    assert bool(model.neighbours("a", 5)) is linked
    assert bool(model.neighbours("b", 5)) is linked


def test_only_the_last_max_recent_items_pair_with_a_new_event():
    model = CoVisitation(max_recent=2)
    model.learn_many([ev("u", item, "view", T0 + n, "s") for n, item in enumerate("abcd")])
    assert sorted(item for item, _ in model.neighbours("d", 5)) == ["b", "c"]  # a had left the list when d came
    assert sorted(item for item, _ in model.neighbours("a", 5)) == ["b", "c"]


def test_an_item_seen_again_is_not_its_own_neighbour_and_moves_to_the_front():
    model = CoVisitation()
    model.learn_many([ev("u", "a", "view", T0, "s"), ev("u", "b", "view", T0, "s"), ev("u", "a", "view", T0, "s")])
    assert model.neighbours("a", 5) == [("b", 2.0)]  # a-b paired twice; a never with itself
    assert model.neighbours("b", 5) == [("a", 2.0)]


def test_candidates_weigh_recent_items_by_one_over_rank_and_leave_them_out():
    model = CoVisitation()
    history = [
        # other shoppers: x follows a, y follows b, and b also leads to a
        ev("o1", "a", "view", T0, "s1"),
        ev("o1", "x", "view", T0, "s1"),
        ev("o2", "b", "view", T0, "s2"),
        ev("o2", "y", "view", T0, "s2"),
        ev("o3", "b", "view", T0, "s3"),
        ev("o3", "a", "view", T0, "s3"),
        # the shopper viewed a, then b
        ev("me", "a", "view", T0, "mine"),
        ev("me", "b", "view", T0, "mine"),
    ]
    model.learn_many(history)
    # b is the latest (weight 1): y 1; a second (weight 1/2): x 1/2; a and b themselves are left out
    assert model.candidates("me", 5) == [("y", 1.0), ("x", 0.5)]
    assert model.score("me", ["y", "x", "a", "b", "zzz"]).tolist() == [1.0, 0.5, 0.0, 0.0, 0.0]
    assert model.candidates("stranger", 5) == []


def test_neighbour_lists_keep_the_strongest():
    model = CoVisitation(max_neighbours=4)  # pruned back to 4 once above 4 + 2
    events = []
    for strong in range(4):
        for n in range(3):
            session = f"strong{strong}-{n}"
            events += [ev(session, "hub", "view", T0, session), ev(session, f"s{strong}", "view", T0, session)]
    for weak in range(10):
        session = f"weak{weak}"
        events += [ev(session, "hub", "view", T0, session), ev(session, f"w{weak}", "view", T0, session)]
    model.learn_many(events)
    assert len(model.neighbours("hub", 100)) <= 6
    assert model.neighbours("hub", 4) == [(f"s{n}", 3.0) for n in (3, 2, 1, 0)]


def test_idle_and_capped_items_take_their_links_with_them():
    model = CoVisitation(max_idle_ms=HOUR)
    model.learn_many(
        [
            ev("u1", "old", "view", T0, "s1"),
            ev("u1", "a", "view", T0, "s1"),
            ev("u2", "a", "view", T0 + 2 * HOUR, "s2"),
            ev("u2", "b", "view", T0 + 2 * HOUR, "s2"),
        ]
    )
    assert model.evict(T0 + 2 * HOUR) == 2  # u1 and "old"
    assert [item for item, _ in model.neighbours("a", 5)] == ["b"]
    capped = CoVisitation(max_items=16)
    capped.learn_many([ev("u", f"i{n}", "view", T0 + n, "s") for n in range(20)])
    assert capped.n_items == 16
    assert "i0" not in {item for item, _ in capped.neighbours("i5", 100)}
