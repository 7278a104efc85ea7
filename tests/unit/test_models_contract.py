"""The contract every recommender in ``models`` honours, checked on each one (in the spirit of River's checks).

Expected values come from the construction of each stream, never from the model under test.
"""

from __future__ import annotations

import copy
import json
import pickle
import random
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest

from fusionrec.contracts.events import Event
from fusionrec.models import (
    SOURCES,
    CategoryAffinity,
    CoVisitation,
    ItemCF,
    MatrixFactorization,
    Popularity,
    RecentItems,
    Recommender,
    SessionKNN,
    SnapshotError,
    Successors,
    Trending,
)
from fusionrec.models.base import _MAGIC

T0 = 1_700_000_000_000
MINUTE = 60_000
HOUR = 3_600_000

#: Small, fast instances of every source.
FACTORIES: dict[str, Callable[..., Recommender]] = {
    "cf": lambda **kw: MatrixFactorization(seed=7, batch_size=32, **kw),
    "covisit": lambda **kw: CoVisitation(**kw),
    "popular": lambda **kw: Popularity(half_life_ms=HOUR, **kw),
    "trending": lambda **kw: Trending(**kw),
    "category": lambda **kw: CategoryAffinity(**kw),
    "recent": lambda **kw: RecentItems(**kw),
    "sknn": lambda **kw: SessionKNN(**kw),
    "successor": lambda **kw: Successors(**kw),
    "itemcf": lambda **kw: ItemCF(**kw),
}
NAMES = sorted(FACTORIES)


def stream(
    seed: int, n: int = 400, users: int = 12, items: int = 30, start: int = T0, first_item: int = 0
) -> list[Event]:
    """A seeded shop stream: sessions of a few events, mixed types, every item in a fixed category."""
    rng = random.Random(seed)
    kinds = ["view"] * 10 + ["favourite", "add_to_cart", "add_to_cart", "remove_from_cart", "purchase", "impression"]
    out, ts = [], start
    while len(out) < n:
        user = f"u{rng.randrange(users)}"
        session = f"s{seed}-{len(out)}"
        for _ in range(rng.randint(1, 6)):
            ts += rng.randint(1, 5) * 1000
            item = first_item + rng.randrange(items)
            out.append(
                Event(
                    f"e{seed}-{len(out)}",
                    user,
                    f"i{item}",
                    rng.choice(kinds),
                    ts,
                    session_id=session,
                    category_id=f"c{item % 4}",
                )
            )
    return out[:n]


def test_registry_names_every_source_once():
    assert set(SOURCES) == {"cf", "covisit", "popular", "trending", "category", "recent", "sknn", "successor", "itemcf"}
    assert set(FACTORIES) == set(SOURCES)
    for name, cls in SOURCES.items():
        assert issubclass(cls, Recommender)
        assert cls.source == name


@pytest.mark.parametrize("name", NAMES)
def test_an_untrained_model_has_no_opinion(name):
    model = FACTORIES[name]()
    scores = model.score("u1", ["a", "b", "c"])
    assert scores.dtype in (np.float32, np.float64)
    assert scores.tolist() == [0.0, 0.0, 0.0]
    assert model.candidates("u1", k=5) == []
    assert model.rank("u1", ["c", "a", "b"]) == ["c", "a", "b"]
    assert model.score("u1", []).shape == (0,)
    assert (model.n_users, model.n_items, model.clock_ms) == (0, 0, 0)


@pytest.mark.parametrize("name", NAMES)
def test_impressions_alone_teach_nothing(name):
    # impressions weigh 0 by default: a model fed only impressions holds no users or items
    model = FACTORIES[name]()
    model.learn_many(
        [Event(f"e{n}", f"u{n % 3}", f"i{n % 5}", "impression", T0 + n, category_id="c") for n in range(30)]
    )
    assert (model.n_users, model.n_items) == (0, 0)
    assert model.candidates("u1", k=5) == []
    assert model.clock_ms == T0 + 29


@pytest.mark.parametrize("name", NAMES)
def test_candidates_are_best_first_and_scored_like_score(name):
    model = FACTORIES[name]()
    model.learn_many(stream(1))
    users = [f"u{n}" for n in range(12)]
    assert any(model.candidates(user, k=5) for user in users)
    for user in users:
        candidates = model.candidates(user, k=5)
        assert len(candidates) <= 5
        items = [item for item, _ in candidates]
        values = [value for _, value in candidates]
        assert len(set(items)) == len(items)
        assert values == sorted(values, reverse=True)
        np.testing.assert_allclose(model.score(user, items), values, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_rank_sorts_by_score(name):
    model = FACTORIES[name]()
    model.learn_many(stream(2))
    items = [f"i{n}" for n in range(30)] + ["never-seen"]
    random.Random(3).shuffle(items)
    for user in ("u0", "u3", "u7", "nobody"):
        scores = dict(zip(items, model.score(user, items).tolist(), strict=False))
        expected = sorted(items, key=lambda item: -scores[item])  # stable: ties keep input order
        assert model.rank(user, items) == expected


@pytest.mark.parametrize("name", NAMES)
def test_now_defaults_to_the_latest_event_time(name):
    model = FACTORIES[name]()
    events = stream(4)
    model.learn_many(events)
    assert model.clock_ms == max(e.ts for e in events)
    items = [f"i{n}" for n in range(30)]
    np.testing.assert_array_equal(model.score("u2", items), model.score("u2", items, now_ms=model.clock_ms))
    assert model.candidates("u2", 5) == model.candidates("u2", 5, now_ms=model.clock_ms)


def _outputs(model: Recommender) -> list:
    items = [f"i{n}" for n in range(30)]
    return [(model.candidates(f"u{n}", k=6), model.score(f"u{n}", items).tolist()) for n in range(12)]


@pytest.mark.parametrize("name", NAMES)
def test_snapshot_round_trip_restores_everything(name):
    model = FACTORIES[name](max_idle_ms=5 * MINUTE)
    events = stream(5)
    model.learn_many(events[:300])
    for event in events[300:]:
        model.learn_one(event)
    blob = model.snapshot()
    assert isinstance(blob, bytes)
    for restored in (type(model).restore(blob), Recommender.restore(blob)):
        assert type(restored) is type(model)
        assert restored._get_params() == model._get_params()
        assert restored.clock_ms == model.clock_ms
        assert (restored.n_users, restored.n_items) == (model.n_users, model.n_items)
        assert _outputs(restored) == _outputs(model)
    # the idle clocks came back: forgetting right away drops the same (a deep copy is the reference)
    twin = copy.deepcopy(model)
    assert Recommender.restore(blob).evict(model.clock_ms) == twin.evict(model.clock_ms)
    # learning goes on identically, random draws included, new users and items too
    restored = Recommender.restore(blob)
    more = stream(6, users=20, items=30, first_item=15, start=model.clock_ms)  # i0..i14 go idle
    model.learn_many(more[:200])
    restored.learn_many(more[:200])
    for event in more[200:]:
        model.learn_one(event)
        restored.learn_one(event)
    assert _outputs(restored) == _outputs(model)
    # and so does forgetting
    dropped = model.evict(model.clock_ms)
    assert dropped > 0
    assert restored.evict(restored.clock_ms) == dropped
    assert _outputs(restored) == _outputs(model)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_output(name):
    first, second = FACTORIES[name](), FACTORIES[name]()
    events = stream(8)
    first.learn_many(events[:250])
    second.learn_many(events[:250])
    for event in events[250:]:
        first.learn_one(event)
        second.learn_one(event)
    assert _outputs(first) == _outputs(second)


def test_the_seed_matters_for_cf():
    events = stream(9)
    a, b = MatrixFactorization(seed=1), MatrixFactorization(seed=2)
    a.learn_many(events)
    b.learn_many(events)
    assert _outputs(a) != _outputs(b)


@pytest.mark.parametrize("name", NAMES)
def test_clone_is_untrained_with_the_same_parameters(name):
    model = FACTORIES[name](max_idle_ms=HOUR)
    model.learn_many(stream(10))
    clone = model.clone()
    assert clone._get_params() == model._get_params()
    assert clone.n_items == 0 and clone.candidates("u1", 3) == []


@pytest.mark.parametrize("name", NAMES)
def test_unknown_event_types_in_weights_are_refused(name):
    with pytest.raises(ValueError, match="unknown event types"):
        FACTORIES[name](event_weights={"click": 1.0})


@pytest.mark.parametrize(
    ("name", "params", "wrong"),
    [
        ("cf", {"n_factors": 0}, "n_factors must be >= 1, got 0"),
        ("cf", {"n_negatives": -1}, "n_negatives must be >= 0, got -1"),
        ("covisit", {"half_life_ms": 0}, "half_life_ms must be > 0, got 0"),
        ("popular", {"top_n": 0}, "top_n must be >= 1, got 0"),
        ("category", {"item_half_life_ms": -5}, "item_half_life_ms must be > 0, got -5"),
        ("recent", {"max_users": 0}, "max_users must be >= 1, got 0"),
    ],
)
def test_bad_parameters_are_refused_by_name(name, params, wrong):
    with pytest.raises(ValueError, match=wrong):
        FACTORIES[name](**params)


# --- optional capabilities -------------------------------------------------------------------------------------

#: Which optional capabilities each source overrides (the rest keep the defaults that say nothing).
PROVIDES = {
    "cf": {"candidates_many"},
    "covisit": set(),
    "popular": set(),
    "trending": set(),
    "category": {"category_of"},
    "recent": {"excluded"},
    "sknn": set(),
    "successor": set(),
    "itemcf": set(),
}


@pytest.mark.parametrize("name", NAMES)
def test_capabilities_are_declared_by_overriding(name):
    model = FACTORIES[name]()
    assert {c for c in ("candidates_many", "excluded", "category_of") if model.provides(c)} == PROVIDES[name]
    with pytest.raises(ValueError, match="unknown capability"):
        model.provides("candidates")


@pytest.mark.parametrize("name", NAMES)
def test_candidates_many_is_candidates_for_each_user(name):
    model = FACTORIES[name]()
    model.learn_many(stream(13))
    users = [f"u{n}" for n in range(12)] + ["nobody"]
    many = model.candidates_many(users, 5, device="cpu")
    assert len(many) == len(users)
    assert model.candidates_many([], 5) == []
    for user, pairs in zip(users, many, strict=True):
        reference = model.candidates(user, 5)
        if name != "cf":  # cf scores in float32 there, so near ties may come in another order
            assert [item for item, _ in pairs] == [item for item, _ in reference]
        np.testing.assert_allclose([s for _, s in pairs], [s for _, s in reference], rtol=1e-4, atol=1e-5)


def test_the_defaults_say_nothing_and_the_overrides_answer():
    events = [
        Event("e1", "ann", "tea", "view", T0, category_id="drinks"),
        Event("e2", "ann", "mug", "purchase", T0 + 1, category_id="kitchen"),
    ]
    popular, recent, category = Popularity(), RecentItems(), CategoryAffinity()
    for model in (popular, recent, category):
        model.learn_many(events)
    assert popular.excluded("ann") == frozenset() and popular.category_of("tea") is None
    assert recent.excluded("ann") == {"mug"} and recent.excluded("bob") == frozenset()
    assert category.category_of("mug") == "kitchen" and category.category_of("pot") is None


# --- learns: a toy stream where the right item must rise to the top ---------------------------------------------


def _learns_covisit():
    model = CoVisitation()
    rng = random.Random(0)
    events = []
    for n in range(40):  # A then B in the same session, every time; noise items in between sessions
        session = f"s{n}"
        events.append(Event(f"a{n}", f"u{n}", "A", "view", T0 + n * MINUTE, session_id=session))
        events.append(
            Event(f"n{n}", f"u{n}", f"noise{rng.randrange(20)}", "view", T0 + n * MINUTE + 500, session_id=f"other{n}")
        )
        events.append(Event(f"b{n}", f"u{n}", "B", "view", T0 + n * MINUTE + 1000, session_id=session))
    model.learn_many(events)
    model.learn_one(Event("x", "shopper", "A", "view", T0 + HOUR, session_id="new"))
    return model, "shopper", "B"


def _learns_popular(cls):
    model = cls()
    events = []
    for n in range(60):  # "hit" bought 20 times, "rest{k}" viewed 40 times in all
        kind, item = ("purchase", "hit") if n % 3 == 0 else ("view", f"rest{n % 7}")
        events.append(Event(f"e{n}", f"u{n}", item, kind, T0 + n * 1000))
    model.learn_many(events)
    return model, "anyone", "hit"


def _learns_category():
    model = CategoryAffinity()
    events = []
    for n in range(30):  # a busy catalogue: X-best is the most viewed item of category X
        category = "X" if n % 2 else "Y"
        item = f"{category}-best" if n % 3 == 0 else f"{category}-{n}"
        events.append(Event(f"e{n}", f"other{n}", item, "view", T0 + n, category_id=category))
    events += [
        Event("s1", "shopper", "X-1", "view", T0 + 100, category_id="X"),
        Event("s2", "shopper", "X-3", "view", T0 + 101, category_id="X"),
    ]
    model.learn_many(events)
    return model, "shopper", "X-best"


def _learns_recent():
    model = RecentItems()
    events = [
        Event("e1", "shopper", "socks", "add_to_cart", T0, session_id="s"),
        Event("e2", "shopper", "hat", "add_to_cart", T0 + 1000),
        Event("e3", "shopper", "hat", "purchase", T0 + 2000),
    ]
    events += [Event(f"v{n}", "shopper", f"look{n}", "view", T0 + 3000 + n) for n in range(10)]
    model.learn_many(events)
    return model, "shopper", "socks"


LEARNS = {
    "covisit": _learns_covisit,
    "popular": lambda: _learns_popular(Popularity),
    "trending": lambda: _learns_popular(Trending),
    "category": _learns_category,
    "recent": _learns_recent,
}


@pytest.mark.parametrize("name", sorted(LEARNS))
def test_learns_the_right_item(name):
    model, user, expected = LEARNS[name]()
    assert model.candidates(user, k=1)[0][0] == expected
    others = [item for item, _ in model.candidates(user, k=20) if item != expected]
    assert model.rank(user, others + [expected])[0] == expected


@pytest.mark.parametrize("method", ["learn_one", "learn_many"])
def test_learns_cf_ranks_unseen_items_of_the_users_taste_above_the_other_taste(method):
    # a planted rank-2 structure: two tastes of 12 items each; u1 never sees 4 items of its own taste
    rng = random.Random(0)
    held_out = ["t1-8", "t1-9", "t1-10", "t1-11"]
    events = []
    for _epoch in range(10):
        for user in rng.sample(range(40), 40):
            taste = user % 2
            for item in rng.sample(range(8 if user == 1 else 12), 8):
                events.append(Event(f"e{len(events)}", f"u{user}", f"t{taste}-{item}", "view", T0 + len(events)))
    model = MatrixFactorization(seed=0)
    if method == "learn_one":
        for event in events:
            model.learn_one(event)
    else:
        model.learn_many(events)
    other_taste = [f"t0-{n}" for n in range(12)]
    held, other = model.score("u1", held_out), model.score("u1", other_taste)
    assert held.min() > other.max()


# --- memory ------------------------------------------------------------------------------------------------------

#: Caps for each source and the bounds they imply on (n_users, n_items).
CAPS = {
    "cf": ({"max_users": 32, "max_items": 48}, (32, 48)),
    "covisit": ({"max_users": 32, "max_items": 48}, (32, 48)),
    "popular": ({"max_items": 48}, (0, 48)),
    "trending": ({"max_items": 48}, (0, 48)),
    "category": ({"max_users": 32, "max_items": 48}, (32, 48)),
    # n_items counts (user, item) entries: at most 32 users x (4 recent + 2 purchased)
    "recent": ({"max_users": 32, "max_items_per_user": 4, "max_purchased_per_user": 2}, (32, 32 * 6)),
    "sknn": ({"max_users": 32, "max_items": 48}, (32, 48)),
    "successor": ({"max_users": 32, "max_items": 48}, (32, 48)),
    "itemcf": ({"max_users": 32, "max_items": 48}, (32, 48)),
}


@pytest.mark.parametrize("name", NAMES)
def test_caps_bound_memory_at_all_times(name):
    params, (max_users, max_items) = CAPS[name]
    model = FACTORIES[name](**params)
    events = stream(11, n=2000, users=300, items=400)
    for n in range(0, len(events), 50):
        model.learn_many(events[n : n + 50])
        assert model.n_users <= max_users and model.n_items <= max_items
    assert model.n_items > max_items // 2  # the caps bound memory; they do not empty the model
    assert model.n_users > max_users // 2 or max_users == 0


#: What evicting either half of ``_idle_stream`` drops: one user and two items, as each model counts them
#: (popularity tracks no users; for recent items the "items" are the user's entries).
DROPPED = {
    "cf": 3,
    "covisit": 3,
    "popular": 2,
    "trending": 2,
    "category": 3,
    "recent": 3,
    "sknn": 3,
    "successor": 3,
    "itemcf": 3,
}


def _idle_stream() -> list[Event]:
    old = [
        Event("o1", "old-user", "old-1", "view", T0, session_id="s-old", category_id="c-old"),
        Event("o2", "old-user", "old-2", "add_to_cart", T0 + 1000, session_id="s-old", category_id="c-old"),
    ]
    new = [
        Event("n1", "new-user", "new-1", "view", T0 + 3 * HOUR, session_id="s-new", category_id="c-new"),
        Event("n2", "new-user", "new-2", "add_to_cart", T0 + 3 * HOUR + 1000, session_id="s-new", category_id="c-new"),
    ]
    return old + new


@pytest.mark.parametrize("name", NAMES)
def test_evict_drops_idle_state_only(name):
    model = FACTORIES[name](max_idle_ms=2 * HOUR)
    model.learn_many(_idle_stream())
    before = (model.n_users, model.n_items)
    assert model.evict(T0 + 3 * HOUR + 1000) == DROPPED[name]
    assert model.n_users + model.n_items == sum(before) - DROPPED[name]
    everything = ["old-1", "old-2", "new-1", "new-2"]
    for user in ("old-user", "new-user"):
        assert not {"old-1", "old-2"} & {item for item, _ in model.candidates(user, k=10)}
    if name not in ("covisit", "sknn", "successor", "itemcf"):  # these propose neighbours, not the items just seen
        assert model.candidates("new-user", k=10)
    assert model.evict(T0 + 3 * HOUR + 1000) == 0  # nothing idle is left
    assert model.evict(T0 + 100 * HOUR) == DROPPED[name]  # the new half mirrors the old one
    assert (model.n_users, model.n_items) == (0, 0)
    assert model.score("new-user", everything).tolist() == [0.0] * 4


@pytest.mark.parametrize("name", NAMES)
def test_evict_without_an_idle_policy_keeps_everything(name):
    model = FACTORIES[name]()
    model.learn_many(_idle_stream())
    before = (model.n_users, model.n_items)
    assert model.evict(T0 + 1000 * HOUR) == 0
    assert (model.n_users, model.n_items) == before


# --- snapshots that cannot be restored ---------------------------------------------------------------------------


def _with_header(blob: bytes, **changes) -> bytes:
    end = blob.index(b"\n", len(_MAGIC))
    header = json.loads(blob[len(_MAGIC) : end]) | changes
    return _MAGIC + json.dumps(header).encode() + blob[end:]


@pytest.mark.parametrize("name", NAMES)
def test_a_snapshot_of_another_format_version_is_refused(name):
    model = FACTORIES[name]()
    model.learn_many(stream(12, n=50))
    blob = _with_header(model.snapshot(), version=99)
    for restore in (type(model).restore, Recommender.restore):
        with pytest.raises(SnapshotError, match=r"format version 99.*reads version 1"):
            restore(blob)


def test_a_snapshot_of_another_model_is_refused():
    blob = Popularity().snapshot()
    with pytest.raises(SnapshotError, match="holds a Popularity model, not RecentItems"):
        RecentItems.restore(blob)
    with pytest.raises(SnapshotError, match="not a registered model"):
        Recommender.restore(_with_header(blob, model="Nonexistent"))


@pytest.mark.parametrize("blob", [b"", b"hello", b'{"model": "Popularity"}', _MAGIC + b"not json\n"])
def test_garbage_is_not_a_snapshot(blob):
    with pytest.raises(SnapshotError):
        Recommender.restore(blob)


def test_a_payload_that_would_run_code_is_refused():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    header = json.dumps({"model": "Popularity", "source": "popular", "version": 1}).encode()
    blob = _MAGIC + header + b"\n" + pickle.dumps({"params": {}, "state": Evil()})
    with pytest.raises(SnapshotError, match="builtins.print"):
        Recommender.restore(blob)


def test_a_truncated_snapshot_is_refused_clearly():
    blob = Popularity().snapshot()
    with pytest.raises(SnapshotError, match="corrupt Popularity snapshot"):
        Recommender.restore(blob[:-5])


# --- layering ----------------------------------------------------------------------------------------------------


def test_models_import_no_broker_cache_or_metrics_client():
    code = (
        "import importlib, pkgutil, sys, fusionrec.models as models\n"
        "for m in pkgutil.walk_packages(models.__path__, 'fusionrec.models.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = {'confluent_kafka', 'aiokafka', 'faust', 'redis', 'prometheus_client'}\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in bad)))\n"
        "print(len([m for m in sys.modules if m.startswith('fusionrec.models.')]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == ""
    assert int(out[1]) >= 6  # the walk did import the model modules
