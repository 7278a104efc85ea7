"""The fusion ranker on real source models: filters, diversity cap, attribution, cold start, CPU/CUDA agreement."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from fusionrec.contracts.events import Event
from fusionrec.models import SOURCES, Recommender
from fusionrec.models.ranker import FusionRanker

T0 = 1_700_000_000_000


def trained_models(events):
    models = {name: cls() if name != "cf" else cls(seed=1, batch_size=16) for name, cls in SOURCES.items()}
    for model in models.values():
        model.learn_many(events)
    return models


def shop_events(n=3000, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        item = rng.randrange(200)
        out.append(
            Event(
                f"e{i}",
                f"u{rng.randrange(60)}",
                f"i{item}",
                rng.choice(["view"] * 8 + ["add_to_cart"]),
                T0 + i * 1000,
                category_id=f"c{item % 12}",
            )
        )
    return out


EQUAL = dict.fromkeys(SOURCES, 1 / len(SOURCES))


def test_lists_have_k_items_with_attributions_that_add_up():
    models = trained_models(shop_events())
    ranker = FusionRanker(k=10, candidates=50, category_cap=0, device="cpu")
    [result] = ranker.rank(models, ["u1"], [EQUAL])
    assert len(result.items) == 10
    scores = [item.score for item in result.items]
    assert scores == sorted(scores, reverse=True)
    for item in result.items:
        assert sum(item.contributions.values()) == pytest.approx(item.score, rel=1e-5)
        assert set(item.contributions) <= set(SOURCES)
    assert set(result.source_lists) == set(SOURCES)
    assert all(len(ids) <= 10 for ids in result.source_lists.values())


def test_bought_and_unavailable_items_are_removed():
    events = shop_events()
    models = trained_models(events)
    ranker = FusionRanker(k=20, candidates=100, category_cap=0, device="cpu")
    [before] = ranker.rank(models, ["u1"], [EQUAL])
    bought, gone = before.item_ids[0], before.item_ids[1]
    purchase = Event("buy", "u1", bought, "purchase", events[-1].ts + 1, category_id="c0")
    for model in models.values():
        model.learn_one(purchase)
    [after] = ranker.rank(models, ["u1"], [EQUAL], unavailable={gone})
    assert bought not in after.item_ids and gone not in after.item_ids
    for ids in after.source_lists.values():
        assert bought not in ids and gone not in ids
    [other] = ranker.rank(models, ["u2"], [EQUAL])  # another user may still get it
    assert len(other.items) == 20


def test_category_cap_is_honoured():
    models = trained_models(shop_events())
    for cap in (1, 2, 3):
        ranker = FusionRanker(k=12, candidates=100, category_cap=cap, device="cpu")
        for result in ranker.rank(models, ["u1", "u2", "u3"], [EQUAL] * 3):
            categories = [item.category_id for item in result.items]
            assert max(categories.count(c) for c in set(categories)) <= cap
            assert len(result.items) == 12  # 12 categories exist, so the cap never starves the list


def test_weights_decide_the_order():
    models = trained_models(shop_events())
    ranker = FusionRanker(k=10, candidates=100, category_cap=0, device="cpu")
    only_popular = {name: 1.0 if name == "popular" else 0.0 for name in SOURCES}
    [result] = ranker.rank(models, ["u5"], [only_popular])
    assert result.item_ids == result.source_lists["popular"][:10]
    assert all(set(item.contributions) == {"popular"} for item in result.items)


def test_cold_start_new_user_gets_trending_and_category_lists_at_once():
    events = shop_events()
    models = trained_models(events)
    first = Event("first", "newcomer", "i3", "view", events[-1].ts + 1, category_id="c3")
    for model in models.values():
        model.learn_one(first)
    ranker = FusionRanker(k=10, candidates=50, category_cap=0, device="cpu")
    [result] = ranker.rank(models, ["newcomer"], [EQUAL])
    assert len(result.items) == 10
    sources = {s for item in result.items for s in item.contributions}
    assert {"trending", "category"} <= sources


def test_new_item_reaches_lists_through_covisitation_as_soon_as_seen():
    events = shop_events()
    models = trained_models(events)
    ts = events[-1].ts
    fresh = [
        Event("n1", "u7", "niche", "view", ts + 1, category_id="c5"),
        Event("n2", "u7", "brand-new", "view", ts + 2, category_id="c5"),
    ]
    for model in models.values():
        model.learn_many(fresh)
    viewer = Event("n3", "visitor", "niche", "view", ts + 3, category_id="c5")
    for model in models.values():
        model.learn_one(viewer)
    covisit_only = {name: 1.0 if name == "covisit" else 0.0 for name in SOURCES}
    [result] = FusionRanker(k=10, candidates=100, category_cap=0, device="cpu").rank(
        models, ["visitor"], [covisit_only]
    )
    assert "brand-new" in result.item_ids


def test_cf_candidates_match_the_models_own_exhaustive_search():
    models = trained_models(shop_events())
    ranker = FusionRanker(k=10, candidates=20, device="cpu", max_chunk_bytes=4096)  # many small chunks
    [mine] = ranker.gather({"cf": models["cf"]}, ["u3"])["cf"]
    reference = models["cf"].candidates("u3", 20)
    assert [i for i, _ in mine] == [i for i, _ in reference]
    assert [s for _, s in mine] == pytest.approx([s for _, s in reference], rel=1e-4, abs=1e-5)


def test_rank_normalisation_is_supported():
    models = trained_models(shop_events())
    [result] = FusionRanker(k=10, normalise="rank", device="cpu").rank(models, ["u1"], [EQUAL])
    assert len(result.items) == 10
    with pytest.raises(ValueError):
        FusionRanker(normalise="softmax")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cpu_and_cuda_rank_alike():
    models = trained_models(shop_events(6000))
    users = [f"u{n}" for n in range(60)]
    weights = [EQUAL] * len(users)
    cpu = FusionRanker(k=20, device="cpu").rank(models, users, weights)
    cuda = FusionRanker(k=20, device="cuda").rank(models, users, weights)
    for a, b in zip(cpu, cuda, strict=True):
        assert [i.score for i in a.items] == pytest.approx([i.score for i in b.items], rel=1e-4, abs=1e-6)
        assert a.item_ids == b.item_ids or sorted(a.item_ids) == sorted(b.item_ids)


class Listed(Recommender):
    """A source that proposes fixed lists, and may exclude items or know categories (the optional capabilities)."""

    source = "listed"

    def __init__(self, lists, categories=None, banned=None):
        super().__init__()
        self.lists, self.categories, self.banned = lists, categories or {}, banned or {}
        self.asked: list[str] = []

    def learn_one(self, event):
        pass

    def score(self, user_id, items, now_ms=None):
        table = dict(self.lists.get(user_id, []))
        return np.array([table.get(i, 0.0) for i in items])

    def candidates(self, user_id, k, now_ms=None):
        return self.lists.get(user_id, [])[:k]

    def evict(self, now_ms):
        return 0

    n_users = property(lambda self: len(self.lists))
    n_items = property(lambda self: 0)


class Excluding(Listed):
    def excluded(self, user_id):
        self.asked.append(user_id)
        return frozenset(self.banned.get(user_id, ()))


class Categorised(Listed):
    def category_of(self, item_id):
        self.asked.append(item_id)
        return self.categories.get(item_id)


class Batched(Listed):
    def candidates_many(self, users, k, now_ms=None, *, device=None, max_chunk_bytes=None):
        self.asked.append((tuple(users), device.type, max_chunk_bytes))
        return [self.candidates(user, k, now_ms) for user in users]


def test_every_source_that_excludes_is_asked_and_the_exclusions_add_up():
    lists = {"u": [("a", 4.0), ("b", 3.0), ("c", 2.0), ("d", 1.0)]}
    first, second, quiet = Excluding(lists, banned={"u": {"a"}}), Excluding({}, banned={"u": {"c"}}), Listed(lists)
    ranker = FusionRanker(k=4, category_cap=0, device="cpu")
    [result] = ranker.rank({"one": first, "two": second, "quiet": quiet}, ["u"], [{"one": 1.0, "quiet": 1.0}])
    assert result.item_ids == ["b", "d"]
    assert result.source_lists == {"one": ["b", "d"], "two": [], "quiet": ["b", "d"]}
    assert first.asked == second.asked == ["u"]


def test_an_items_category_is_the_first_one_a_source_knows():
    lists = {"u": [("a", 4.0), ("b", 3.0), ("c", 2.0), ("d", 1.0)]}
    first = Categorised(lists, categories={"a": "x", "b": "x"})
    second = Categorised({}, categories={"a": "y", "c": "x", "d": "z"})
    ranker = FusionRanker(k=4, category_cap=1, device="cpu")
    [result] = ranker.rank({"first": first, "second": second}, ["u"], [{"first": 1.0}])
    assert [(item.item_id, item.category_id) for item in result.items] == [("a", "x"), ("d", "z")]
    assert "a" not in second.asked  # the first source answered for it
    # with a single source that knows categories, only the items a list keeps are looked up
    only = Categorised(lists, categories={"a": "x"})
    FusionRanker(k=2, category_cap=0, device="cpu").rank({"only": only}, ["u"], [{"only": 1.0}])
    assert only.asked == ["a", "b"]


def test_gather_asks_each_source_for_the_whole_batch_with_the_rankers_device():
    batched = Batched({"u1": [("a", 1.0)], "u2": [("b", 1.0)]})
    ranker = FusionRanker(k=2, candidates=7, device="cpu", max_chunk_bytes=12_345)
    gathered = ranker.gather({"batched": batched}, ["u1", "u2"])
    assert gathered == {"batched": [[("a", 1.0)], [("b", 1.0)]]}
    assert batched.asked == [(("u1", "u2"), "cpu", 12_345)]
