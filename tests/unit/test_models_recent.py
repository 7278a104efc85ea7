"""Recent items: intent weight times recency, bought items out, worked out by hand."""

from __future__ import annotations

from fusionrec.contracts.events import Event
from fusionrec.models import RecentItems

T0 = 1_700_000_000_000
HOUR = 3_600_000


def ev(item: str, kind: str, ts: int, user: str = "ann") -> Event:
    return Event(f"{user}-{item}-{kind}-{ts}", user, item, kind, ts)


def test_a_carted_item_outscores_a_fresher_view_for_log2_3_half_lives():
    model = RecentItems(half_life_ms=HOUR)
    model.learn_many([ev("cart", "add_to_cart", T0), ev("look", "view", T0 + HOUR)])
    # cart: 3 * 2**-1 = 1.5; look: 1 * 2**0 = 1
    assert model.candidates("ann", 5) == [("cart", 1.5), ("look", 1.0)]
    model.learn_one(ev("look2", "view", T0 + 2 * HOUR))
    # now T0 + 2h: cart 3/4 = 0.75 < look2 1.0; look 0.5
    assert model.candidates("ann", 5) == [("look2", 1.0), ("cart", 0.75), ("look", 0.5)]


def test_the_strongest_intent_shown_counts():
    model = RecentItems(half_life_ms=HOUR)
    model.learn_many([ev("a", "favourite", T0), ev("a", "view", T0), ev("b", "view", T0)])
    assert model.score("ann", ["a", "b", "c"], now_ms=T0).tolist() == [2.0, 1.0, 0.0]


def test_bought_items_leave_and_stay_out_until_carted_again():
    model = RecentItems(half_life_ms=HOUR)
    model.learn_many([ev("kettle", "add_to_cart", T0), ev("mug", "view", T0), ev("kettle", "purchase", T0 + 1)])
    assert [item for item, _ in model.candidates("ann", 5)] == ["mug"]
    model.learn_one(ev("kettle", "view", T0 + 2))  # the order page
    assert model.score("ann", ["kettle"]).tolist() == [0.0]
    model.learn_one(ev("kettle", "add_to_cart", T0 + 3))  # buying it again
    assert model.candidates("ann", 1)[0][0] == "kettle"


def test_removing_from_the_cart_withdraws_the_cart_intent_only():
    model = RecentItems(half_life_ms=HOUR)
    model.learn_many(
        [
            ev("viewed-then-carted", "view", T0),
            ev("viewed-then-carted", "add_to_cart", T0),
            ev("only-carted", "add_to_cart", T0),
            ev("viewed-then-carted", "remove_from_cart", T0),
            ev("only-carted", "remove_from_cart", T0),
            ev("never-carted", "remove_from_cart", T0),
        ]
    )
    assert model.candidates("ann", 5) == [("viewed-then-carted", 1.0)]


def test_a_full_list_drops_its_weakest_item():
    model = RecentItems(half_life_ms=HOUR, max_items_per_user=3)
    model.learn_many(
        [ev("cart", "add_to_cart", T0), ev("v1", "view", T0 + 1), ev("v2", "view", T0 + 2), ev("v3", "view", T0 + 3)]
    )
    # the oldest view goes, not the older but stronger cart
    assert sorted(item for item, _ in model.candidates("ann", 5)) == ["cart", "v2", "v3"]
    assert model.n_items == 3


def test_remembered_purchases_are_capped_oldest_first():
    model = RecentItems(max_purchased_per_user=2)
    model.learn_many([ev(f"p{n}", "purchase", T0 + n) for n in range(3)])
    model.learn_many([ev(f"p{n}", "view", T0 + 10 + n) for n in range(3)])
    assert [item for item, _ in model.candidates("ann", 5)] == ["p0"]  # p0's purchase was forgotten
    assert model.n_items == 3  # p0 as a recent item, p1 and p2 remembered as bought


def test_users_do_not_see_each_others_items():
    model = RecentItems()
    model.learn_many([ev("a", "view", T0, user="ann"), ev("b", "add_to_cart", T0, user="bob")])
    assert [item for item, _ in model.candidates("ann", 5)] == ["a"]
    assert model.score("bob", ["a", "b"], now_ms=T0).tolist() == [0.0, 3.0]


def test_user_cap_and_idle_eviction_count_users_and_entries():
    model = RecentItems(max_users=16, max_idle_ms=HOUR)
    model.learn_many([ev("x", "view", T0 + n, user=f"u{n}") for n in range(20)])
    assert model.n_users == 16  # u0..u3 made room, one at a time (16 // 16)
    assert model.candidates("u3", 5) == [] and model.candidates("u4", 5) != []
    model.learn_many([ev("y", "view", T0 + 2 * HOUR, user="u19"), ev("z", "purchase", T0 + 2 * HOUR, user="u19")])
    # everyone but u19 is idle: 15 users with one entry each
    assert model.evict(T0 + 2 * HOUR) == 30
    assert (model.n_users, model.n_items) == (1, 3)
