"""Category affinity: shares of the user's affinity times shares of the category, worked out by hand."""

from __future__ import annotations

import pytest

from fusionrec.contracts.events import Event
from fusionrec.models import CategoryAffinity

T0 = 1_700_000_000_000
HOUR = 3_600_000


def close(actual: list[tuple[str, float]], expected: list[tuple[str, float]]) -> bool:
    """Same items in the same order, scores equal to within rounding."""
    return [i for i, _ in actual] == [i for i, _ in expected] and [v for _, v in actual] == pytest.approx(
        [v for _, v in expected]
    )


def ev(user: str, item: str, kind: str, ts: int, category: str | None) -> Event:
    return Event(f"{user}-{item}-{kind}-{ts}", user, item, kind, ts, category_id=category)


def test_score_is_the_users_category_share_times_the_items_share_of_it():
    model = CategoryAffinity()
    model.learn_many(
        [
            ev("ann", "green", "view", T0, "tea"),
            ev("ann", "black", "purchase", T0, "tea"),
            ev("ann", "mug", "view", T0, "kitchen"),
            ev("bob", "oolong", "add_to_cart", T0, "tea"),
        ]
    )
    # ann: tea 6/7, kitchen 1/7; tea: green 1, black 5, oolong 3 of 9; kitchen: mug 1 of 1
    expected = {"black": 6 / 7 * 5 / 9, "oolong": 6 / 7 * 3 / 9, "green": 6 / 7 * 1 / 9, "mug": 1 / 7}
    assert close(model.candidates("ann", 10), sorted(expected.items(), key=lambda p: -p[1]))
    assert model.score("ann", ["mug", "black", "unknown"]).tolist() == pytest.approx([1 / 7, 30 / 63, 0.0])
    assert model.score("bob", ["mug", "oolong"]).tolist() == pytest.approx([0.0, 3 / 9])


def test_a_cold_user_gets_nothing_and_a_new_item_shows_at_once():
    model = CategoryAffinity()
    model.learn_many([ev("ann", "old", "view", T0, "tea"), ev("bob", "brand-new", "view", T0 + 1, "tea")])
    assert model.candidates("newcomer", 5) == []
    assert "brand-new" in {item for item, _ in model.candidates("ann", 5)}


def test_an_event_without_category_uses_the_items_known_one():
    model = CategoryAffinity()
    model.learn_many(
        [
            ev("ann", "green", "view", T0, "tea"),
            ev("bob", "green", "purchase", T0, None),
            ev("bob", "mystery", "purchase", T0, None),
        ]
    )
    assert model.candidates("bob", 5) == [("green", 1.0)]
    assert model.n_items == 1  # "mystery" has no known category: nothing to learn


def test_candidates_come_from_the_top_categories_only():
    model = CategoryAffinity(top_categories=2)
    model.learn_many([ev("ann", f"{c}-item", "view", T0 + n, c) for n, c in enumerate("aabbbcd")])
    assert sorted(item for item, _ in model.candidates("ann", 10)) == ["a-item", "b-item"]
    assert model.score("ann", ["c-item"]).tolist() == pytest.approx([1 / 7])  # scored, not proposed


def test_affinity_decays_with_the_user_half_life():
    model = CategoryAffinity(user_half_life_ms=HOUR, item_half_life_ms=HOUR)
    model.learn_many([ev("ann", "a1", "view", T0, "a"), ev("ann", "b1", "view", T0 + HOUR, "b")])
    # at any time, a's event weighs half of b's: shares 1/3 and 2/3
    assert close(model.candidates("ann", 2), [("b1", 2 / 3), ("a1", 1 / 3)])


def test_an_item_that_changes_category_leaves_the_old_one():
    model = CategoryAffinity()
    model.learn_many(
        [
            ev("ann", "kettle", "view", T0, "tea"),
            ev("ann", "pot", "view", T0, "tea"),
            ev("bob", "kettle", "view", T0, "kitchen"),
        ]
    )
    assert close(model.candidates("ann", 5), [("pot", 0.5)])  # tea's total still counts kettle's view
    assert model.candidates("bob", 5) == [("kettle", 1.0)]


def test_lists_are_pruned_to_the_strongest():
    model = CategoryAffinity(max_categories_per_user=2, items_per_category=2)
    events = [ev("ann", f"strong{n}", "purchase", T0, "big") for n in range(2)]
    events += [ev("ann", f"weak{n}", "view", T0, "big") for n in range(5)]
    events += [
        ev("ann", "x", "add_to_cart", T0, "cat-x"),
        ev("ann", "y", "view", T0, "cat-y"),
        ev("ann", "z", "view", T0, "cat-z"),
    ]
    model.learn_many(events)
    # "big" kept strong0, strong1 and the latest weak item; ann kept "big" (15) and "cat-x" (3), not y or z
    assert {item for item, _ in model.candidates("ann", 50)} == {"strong0", "strong1", "weak4", "x"}
    assert close(model.candidates("ann", 2), [("strong1", 15 / 18 * 5 / 15), ("strong0", 15 / 18 * 5 / 15)])


def test_evicting_items_drops_emptied_categories():
    model = CategoryAffinity(max_idle_ms=HOUR)
    model.learn_many([ev("ann", "old", "view", T0, "gone"), ev("bob", "new", "view", T0 + 2 * HOUR, "stays")])
    assert model.evict(T0 + 2 * HOUR) == 2  # ann and "old"
    assert model.candidates("bob", 5) == [("new", 1.0)]
    assert model._category_items.keys() == {"stays"}
