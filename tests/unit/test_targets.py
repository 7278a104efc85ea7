"""The target rule shared by the offline and online evaluations: which events test a list, and of which kind."""

from __future__ import annotations

import pickle

import pytest

from fusionrec.contracts.events import Event
from fusionrec.models.targets import TargetFilter


def ev(user, item, type, rating=None, ts=1_700_000_000_000):
    return Event(f"{user}-{item}-{type}", user, item, type, ts, rating=rating)


@pytest.mark.parametrize(
    ("type", "rating", "kind"),
    [
        ("view", None, "new"),
        ("favourite", None, "new"),
        ("add_to_cart", None, "new"),
        ("purchase", None, "new"),
        ("rate", 4.0, "new"),
        ("rate", 5.0, "new"),
        ("rate", 3.9, None),
        ("rate", 1.0, None),
        ("impression", None, None),
        ("remove_from_cart", None, None),
    ],
)
def test_first_interaction_with_an_item(type, rating, kind):
    assert TargetFilter().classify(ev("ann", "tea", type, rating)) == kind


@pytest.mark.parametrize(
    ("type", "rating", "kind"),
    [
        ("view", None, None),
        ("favourite", None, None),
        ("add_to_cart", None, "repeat"),
        ("purchase", None, "repeat"),
        ("rate", 5.0, None),
        ("rate", 1.0, None),
        ("impression", None, None),
        ("remove_from_cart", None, None),
    ],
)
def test_interaction_with_an_item_seen_before(type, rating, kind):
    targets = TargetFilter()
    assert targets.classify(ev("ann", "tea", "view")) == "new"
    assert targets.classify(ev("ann", "tea", type, rating)) == kind


def test_a_shopping_journey():
    targets = TargetFilter()
    stream = [
        (ev("ann", "tea", "impression"), None),  # shown, not chosen: not a target, not seen
        (ev("ann", "tea", "view"), "new"),  # so the click after the impression is a discovery
        (ev("ann", "tea", "view"), None),
        (ev("ann", "tea", "favourite"), None),
        (ev("ann", "tea", "add_to_cart"), "repeat"),
        (ev("ann", "tea", "remove_from_cart"), None),
        (ev("ann", "tea", "add_to_cart"), "repeat"),
        (ev("ann", "tea", "purchase"), "repeat"),
        (ev("ann", "mug", "rate", 2.0), None),  # a low rating marks the item seen
        (ev("ann", "mug", "view"), None),
        (ev("ann", "mug", "purchase"), "repeat"),
        (ev("ann", "pot", "remove_from_cart"), None),  # so does any other interaction
        (ev("ann", "pot", "add_to_cart"), "repeat"),
        (ev("bob", "tea", "view"), "new"),  # users are independent
    ]
    assert [targets.classify(event) for event, _ in stream] == [kind for _, kind in stream]
    assert targets.seen("ann", "pot") and not targets.seen("bob", "mug") and not targets.seen("cid", "tea")
    assert len(targets) == 2


def test_each_user_remembers_at_most_max_items_dropping_the_least_recently_touched():
    targets = TargetFilter(max_items_per_user=2)
    assert [targets.classify(ev("ann", item, "view")) for item in ("a", "b", "c")] == ["new"] * 3  # a forgotten
    assert targets.classify(ev("ann", "a", "view")) == "new"  # drops b: remembered c, a
    assert targets.classify(ev("ann", "c", "view")) is None  # touching c makes a the oldest
    assert targets.classify(ev("ann", "b", "view")) == "new"  # drops a: remembered c, b
    assert [targets.seen("ann", item) for item in "abc"] == [False, True, True]


def test_users_beyond_the_cap_drop_the_least_recently_active_sixteenth():
    targets = TargetFilter(max_users=32)  # drops 2 at a time
    for n in range(32):
        targets.classify(ev(f"u{n}", "x", "view"))
    targets.classify(ev("u0", "y", "view"))  # u0 is now the most recently active
    targets.classify(ev("u0", "z", "impression"))  # impressions are not activity: nothing changes
    targets.classify(ev("u32", "x", "view"))
    assert len(targets) == 31
    assert [targets.seen(f"u{n}", "x") for n in (0, 1, 2, 3, 31, 32)] == [True, False, False, True, True, True]
    assert targets.classify(ev("u1", "x", "purchase")) == "new"  # forgotten users read as new again


def test_state_survives_pickling():
    targets = TargetFilter(max_items_per_user=10)
    targets.classify(ev("ann", "tea", "view"))
    copy = pickle.loads(pickle.dumps(targets))
    assert copy.classify(ev("ann", "tea", "purchase")) == "repeat"
    assert copy.max_items_per_user == 10


@pytest.mark.parametrize("kwargs", [{"max_items_per_user": 0}, {"max_users": 0}])
def test_caps_must_be_positive(kwargs):
    with pytest.raises(ValueError):
        TargetFilter(**kwargs)
