"""Profile folding (pure): counts, caps, bought items, category affinities."""

from fusionrec.contracts.events import Event
from fusionrec.stores.profiles import Profile


def ev(item, etype="view", ts=1, cat=None):
    return Event(f"e-{item}-{etype}-{ts}", "u", item, etype, ts, category_id=cat)


def test_profile_folds_events_with_caps_and_round_trips_fields():
    profile = Profile("u")
    for ts, (item, etype, cat) in enumerate(
        [
            ("a", "view", "x"),
            ("b", "add_to_cart", "y"),
            ("a", "purchase", "x"),
            ("c", "impression", "z"),
            ("d", "view", "w"),
        ],
        1,
    ):
        profile.learn(ev(item, etype, ts, cat), limits=(2, 5, 2))
    assert profile.counts == {"view": 2, "add_to_cart": 1, "purchase": 1, "impression": 1}
    assert profile.recent_items == ["d", "a"]  # impressions are not interactions; cap 2
    assert profile.bought_items == ["a"]
    assert profile.categories == {"x": 6.0, "y": 3.0}  # w (1.0) pushed out the weakest; impressions add nothing
    assert profile.last_seen_ms == 5
    again = Profile.decode("u", profile.encode())
    assert again == profile
    assert Profile.decode("u", None) == Profile("u")
    assert not again.is_new and Profile("v").is_new
