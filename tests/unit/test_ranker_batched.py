"""The batched ranker against the per-candidate reference (``ranker_reference``, the code it replaced) on random
inputs: ties, duplicates across sources, excluded and unavailable items, empty and shared lists, non-positive
scores, both normalisations, category caps. Lists, scores, contributions and tie-breaking must be identical."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fusionrec.contracts.events import Event
from fusionrec.models import CategoryAffinity, CoVisitation, MatrixFactorization, RecentItems, Recommender
from fusionrec.models._state import top_k
from fusionrec.models.ranker import FusionRanker
from fusionrec.models.topk import bounded_top_k, exhaustive_top_k

from .ranker_reference import ReferenceRanker, _category_candidates, _covisit_scored, reference_candidates_many
from .ranker_reference import top_k as reference_top_k


class Fixed(Recommender):
    """Proposes the lists it is given; optionally excludes items per user and knows categories."""

    source = "fixed"

    def __init__(self, lists, banned=None, categories=None):
        super().__init__()
        self.lists, self.banned, self.categories = lists, banned, categories

    def learn_one(self, event):
        pass

    def score(self, user_id, items, now_ms=None):
        return np.zeros(len(items))

    def candidates(self, user_id, k, now_ms=None):
        return self.lists.get(user_id, [])[:k]

    def evict(self, now_ms):
        return 0

    n_users = property(lambda self: len(self.lists))
    n_items = property(lambda self: 0)


class Excluding(Fixed):
    def excluded(self, user_id):
        return frozenset(self.banned.get(user_id, ()))


class Categorised(Fixed):
    def category_of(self, item_id):
        return self.categories.get(item_id)


def random_case(seed: int):
    """Sources, users, gathered lists (some shared by every user), exclusions and per-user weights."""
    rng = random.Random(seed)
    catalogue = [f"i{n}" for n in range(rng.choice([5, 30, 200]))]
    users = [f"u{n}" for n in range(rng.randint(1, 40))]
    n_sources = rng.randint(1, 6)
    names = [f"s{j}" for j in range(n_sources)]
    gathered = {}
    for j, name in enumerate(names):
        if j == 0 and rng.random() < 0.5:  # a user-independent source: one list object for everyone
            shared = random_list(rng, catalogue)
            gathered[name] = [shared] * len(users)
        else:
            gathered[name] = [random_list(rng, catalogue) if rng.random() < 0.85 else [] for _ in users]
    banned = {u: set(rng.sample(catalogue, rng.randint(0, 4))) for u in users if rng.random() < 0.4}
    categories = {item: f"c{rng.randrange(4)}" for item in catalogue if rng.random() < 0.8}
    models = {}
    for j, name in enumerate(names):
        cls = Excluding if j == n_sources - 1 else Categorised if j == 0 else Fixed
        models[name] = cls({}, banned, categories)
    if rng.random() < 0.3:  # a second source that knows categories: the first one that answers wins
        models[names[-1]] = Categorised({}, None, {item: "other" for item in catalogue[::3]})
    unavailable = set(rng.sample(catalogue, rng.randint(0, 3)))
    exclude = [set(rng.sample(catalogue, rng.randint(0, 2))) for _ in users] if rng.random() < 0.5 else None
    shared_weights = {name: rng.choice([0.0, 0.25, 0.5, 1.0]) for name in names}
    weights = [
        shared_weights if rng.random() < 0.5 else {name: rng.choice([0.0, 0.1, 0.3, 1.0]) for name in names[:-1]}
        for _ in users
    ]
    return models, users, gathered, unavailable, exclude, weights


def random_list(rng: random.Random, catalogue: list[str]) -> list[tuple[str, float]]:
    """Best first, with ties (scores from a few values), sometimes zero or negative tails, and now and then an
    item listed twice."""
    items = rng.sample(catalogue, rng.randint(0, min(len(catalogue), 60)))
    if items and rng.random() < 0.1:
        items.insert(rng.randrange(len(items)), items[0])
    scores = sorted((rng.choice([3.0, 2.0, 2.0, 1.0, 0.5, 0.0, -1.0]) for _ in items), reverse=True)
    return list(zip(items, scores, strict=True))


def assert_same_candidates(new, old):
    assert new.users == old.users and new.sources == old.sources
    assert new.unions == old.unions
    assert new.source_lists == old.source_lists
    assert new.dense.dtype == old.dense.dtype and new.dense.shape == old.dense.shape
    np.testing.assert_array_equal(new.dense, old.dense)
    np.testing.assert_array_equal(new.valid, old.valid)


def assert_same_lists(new, old):
    assert len(new) == len(old)
    for a, b in zip(new, old, strict=True):
        assert a.user_id == b.user_id
        assert a.source_lists == b.source_lists
        assert a.items == b.items  # ids, scores, contributions and categories, exactly


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("normalise", ["rank", "max"])
def test_prepare_and_fuse_match_the_reference(seed, normalise):
    models, users, gathered, unavailable, exclude, weights = random_case(seed)
    cap = seed % 3  # 0 (no cap), 1, 2
    k = [1, 3, 5, 20][seed % 4]
    new = FusionRanker(k=k, category_cap=cap, normalise=normalise, device="cpu")
    old = ReferenceRanker(k=k, category_cap=cap, normalise=normalise, device="cpu")
    mine = new.prepare(models, users, unavailable=unavailable, exclude=exclude, gathered=gathered)
    theirs = old.prepare(models, users, unavailable=unavailable, exclude=exclude, gathered=gathered)
    assert_same_candidates(mine, theirs)
    assert_same_lists(new.fuse(mine, weights), old.fuse(theirs, weights))
    # each fuse reads only the candidates: the reference's fuse of the batched candidates agrees too
    assert_same_lists(new.fuse(mine, weights), old.fuse(mine, weights))
    # what is published: the batch's rounded columns are the reference items' rounding, exactly
    for columns, items in zip(new.fuse(mine, weights), old.fuse(theirs, weights), strict=True):
        assert columns.rounded_columns() == items.rounded_columns()


def test_no_candidates_at_all():
    models = {"a": Fixed({}), "b": Fixed({})}
    gathered = {"a": [[], []], "b": [[], []]}
    ranker = FusionRanker(device="cpu")
    prepared = ranker.prepare(models, ["u", "v"], gathered=gathered)
    assert prepared.dense.shape == (2, 0, 2) and prepared.unions == [[], []]
    assert [r.items for r in ranker.fuse(prepared, [{"a": 1.0}] * 2)] == [[], []]
    assert ranker.prepare(models, [], gathered={"a": [], "b": []}).dense.shape == (0, 0, 2)


def test_lists_longer_than_the_precomputed_discounts():
    catalogue = [f"i{n}" for n in range(1500)]
    lists = {"u": [(item, 1.0) for item in catalogue]}
    models = {"long": Fixed(lists)}
    gathered = {"long": [lists["u"]]}
    new = FusionRanker(k=5, candidates=1500, device="cpu").prepare(models, ["u"], gathered=gathered)
    old = ReferenceRanker(k=5, candidates=1500, device="cpu").prepare(models, ["u"], gathered=gathered)
    assert_same_candidates(new, old)


# --- the sources' batched candidates ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_users", [1, 2, 3, 4, 5, 17, 50, 64])
def test_bounded_top_k_is_the_exhaustive_answer(n_users):
    rng = np.random.default_rng(n_users)
    users = rng.normal(0, 0.3, (n_users, 10)).astype(np.float32)
    items = rng.normal(0, 0.3, (20_000, 10)).astype(np.float32)
    bias = rng.normal(0, 0.1, 20_000).astype(np.float32)
    base = rng.normal(0, 0.1, n_users).astype(np.float32)
    for k in (1, 10, 50):
        fast_scores, fast_rows = bounded_top_k(users, items, k, item_bias=bias, user_bias=base, min_users=1)
        full_scores, full_rows = exhaustive_top_k(users, items, k, item_bias=bias, user_bias=base, device="cpu")
        np.testing.assert_array_equal(fast_scores, full_scores)
        assert [set(r) for r in fast_rows.tolist()] == [set(r) for r in full_rows.tolist()]


def test_bounded_top_k_without_bias_with_equal_norms_and_with_non_finite_factors():
    rng = np.random.default_rng(7)
    users = rng.normal(size=(12, 4)).astype(np.float32)
    items = rng.normal(size=(10_000, 4)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)  # every bound alike: the probe must carry the pruning
    for case in (items, np.where(np.arange(10_000)[:, None] == 3, np.nan, items).astype(np.float32)):
        fast_scores, fast_rows = bounded_top_k(users, case, 20)
        full_scores, full_rows = exhaustive_top_k(users, case, 20, device="cpu")
        np.testing.assert_array_equal(fast_scores, full_scores)
        assert [set(r) for r in fast_rows.tolist()] == [set(r) for r in full_rows.tolist()]


def test_cf_candidates_many_match_the_exhaustive_reference_on_a_large_catalogue():
    rng = random.Random(3)
    events = [
        Event(f"e{n}", f"u{rng.randrange(300)}", f"i{rng.randrange(12_000)}", "view", 1_700_000_000_000 + n)
        for n in range(40_000)
    ]
    model = MatrixFactorization(seed=5)
    model.learn_many(events)
    assert model.n_items > 8192  # large enough for the bounded search
    users = [f"u{n}" for n in range(0, 320, 3)] + ["nobody"]
    mine = model.candidates_many(users, 50, device="cpu")
    reference = reference_candidates_many(model, users, 50, device="cpu")
    assert [sorted(pairs) for pairs in mine] == [sorted(pairs) for pairs in reference]
    assert mine[-1] == []


def test_category_candidates_match_the_reference_with_ties():
    rng = random.Random(11)
    model = CategoryAffinity(items_per_category=8)
    t = 1_700_000_000_000
    events = []
    for n in range(3000):
        item = rng.randrange(120)
        # few distinct timestamps and weights: many items share a tally exactly
        events.append(
            Event(
                f"e{n}", f"u{rng.randrange(50)}", f"i{item}", "view", t + 1000 * (n // 500), category_id=f"c{item % 7}"
            )
        )
    model.learn_many(events)
    for user in [f"u{n}" for n in range(50)] + ["nobody"]:
        for k in (0, 1, 5, 50):
            assert model.candidates(user, k) == _category_candidates(model, user, k)


def test_top_k_is_the_heap_it_replaced():
    rng = random.Random(5)
    for _ in range(300):
        pairs = [
            (f"i{rng.randrange(40)}", rng.choice([2.0, 1.0, 1.0, 0.5, 0.0, -1.0])) for _ in range(rng.randrange(60))
        ]
        for k in (0, 1, 7, 100):
            assert top_k(pairs, k) == reference_top_k(pairs, k)


def test_covisit_and_recent_candidates_match_the_reference():
    rng = random.Random(8)
    t = 1_700_000_000_000
    events = [
        Event(f"e{n}", f"u{rng.randrange(40)}", f"i{rng.randrange(80)}", rng.choice(["view", "add_to_cart"]), t + n)
        for n in range(4000)
    ]
    models = [CoVisitation(), RecentItems()]
    for model in models:
        model.learn_many(events)
    users = [f"u{n}" for n in range(40)] + ["nobody"]
    for model in models:
        assert model.candidates_many(users, 50) == reference_candidates_many(model, users, 50)


@pytest.mark.parametrize("seed", range(5))
def test_item_codes_index_the_batch_distinct_items(seed):
    models, users, gathered, unavailable, exclude, _ = random_case(seed)
    prepared = FusionRanker(device="cpu").prepare(models, users, unavailable=unavailable, gathered=gathered)
    index: dict[str, int] = {}  # the straightforward way: setdefault per union item, user by user
    expected = np.zeros(prepared.valid.shape, dtype=np.int64)
    for b, union in enumerate(prepared.unions):
        expected[b, : len(union)] = [index.setdefault(item, len(index)) for item in union]
    codes, items = prepared.item_codes()
    np.testing.assert_array_equal(codes, expected)
    assert items == list(index)
    assert prepared.item_codes()[0] is codes  # kept


def test_covisit_scores_are_the_loop_they_replaced():
    rng = random.Random(9)
    t = 1_700_000_000_000
    model = CoVisitation(max_recent=6)
    model.learn_many(
        Event(f"e{n}", f"u{rng.randrange(30)}", f"i{rng.randrange(60)}", "view", t + 997 * n) for n in range(5000)
    )
    for user in [f"u{n}" for n in range(30)] + ["nobody"]:
        for now in (None, t + 5000 * 997, t + 10**10):
            assert model._scored(user, now) == _covisit_scored(model, user, now)
