"""Matrix factorisation: River's BiasedMF as the reference for ratings, hand-derived steps and brute force."""

from __future__ import annotations

import numpy as np
import pytest
from river import optim, reco

from fusionrec.contracts.events import Event
from fusionrec.models import MatrixFactorization
from fusionrec.models._factors import top_indices

T0 = 1_700_000_000_000
HOUR = 3_600_000


def ratings(seed: int, n: int, users: int = 60, items: int = 50, rank: int = 3) -> list[tuple[str, str, float]]:
    """Ratings 1..5 from a planted low-rank model plus noise, in random order."""
    rng = np.random.default_rng(seed)
    p, q = rng.normal(0, 0.8, (users, rank)), rng.normal(0, 0.8, (items, rank))
    bu, bi = rng.normal(0, 0.5, users), rng.normal(0, 0.5, items)
    out = []
    for _ in range(n):
        u, i = int(rng.integers(users)), int(rng.integers(items))
        y = 3.5 + bu[u] + bi[i] + p[u] @ q[i] + rng.normal(0, 0.3)
        out.append((f"u{u}", f"i{i}", float(np.clip(np.round(y), 1, 5))))
    return out


def test_biases_follow_river_exactly():
    # with zero latent vectors both models reduce to mean + biases, so every prediction must match River's
    data = ratings(0, 400)
    ours = MatrixFactorization(bias_lr=0.03, latent_lr=0.05, l2_bias=0.01, init_std=0.0, seed=1)
    river = reco.BiasedMF(
        bias_optimizer=optim.SGD(0.03),
        latent_optimizer=optim.SGD(0.05),
        l2_bias=0.01,
        latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.0, seed=1),
    )
    for user, item, y in data:
        assert ours.predict_rating(user, item) == pytest.approx(river.predict_one(user, item), abs=1e-9)
        ours.learn_rating(user, item, y)
        river.learn_one(user, item, y)
    assert ours.global_mean == pytest.approx(np.mean([y for _, _, y in data]))


def test_one_rating_step_matches_the_biased_mf_update_rule():
    lr_b, lr_l, l2_b, l2_l = 0.1, 0.2, 0.05, 0.03
    model = MatrixFactorization(bias_lr=lr_b, latent_lr=lr_l, l2_bias=l2_b, l2_latent=l2_l, seed=3)
    model.learn_rating("ann", "tea", 4.0)
    row = model.item_ids().index("tea")
    p, q = model.user_vector("ann"), model.item_matrix()[row].copy()
    bu, bi, mean = model.user_bias("ann"), float(model.item_bias()[row]), model.global_mean
    assert mean == 4.0

    model.learn_rating("ann", "tea", 2.0)
    mean = (4.0 + 2.0) / 2  # River updates the mean first, then predicts with it
    g = 2 * (mean + bu + bi + p @ q - 2.0)
    assert model.global_mean == mean
    assert model.user_bias("ann") == pytest.approx(bu - lr_b * (g + l2_b * bu))
    assert model.item_bias()[row] == pytest.approx(bi - lr_b * (g + l2_b * bi))
    np.testing.assert_allclose(model.user_vector("ann"), p - lr_l * (g * q + l2_l * p))
    np.testing.assert_allclose(model.item_matrix()[row], q - lr_l * (g * p + l2_l * q))


def test_rating_error_is_on_par_with_river():
    data = ratings(1, 6000)
    params = dict(n_factors=10, bias_lr=0.025, latent_lr=0.05, init_std=0.1)
    ours = MatrixFactorization(**params, seed=73)
    river = reco.BiasedMF(
        n_factors=10,
        bias_optimizer=optim.SGD(0.025),
        latent_optimizer=optim.SGD(0.05),
        latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=73),
    )
    errors = {"ours": 0.0, "river": 0.0, "mean": 0.0}
    seen = []
    for user, item, y in data:  # progressive validation: predict, then learn
        errors["ours"] += abs(min(max(ours.predict_rating(user, item), 1), 5) - y)
        errors["river"] += abs(min(max(river.predict_one(user, item), 1), 5) - y)
        errors["mean"] += abs((np.mean(seen) if seen else 0.0) - y)
        seen.append(y)
        ours.learn_rating(user, item, y)
        river.learn_one(user, item, y)
    mae = {name: total / len(data) for name, total in errors.items()}
    assert abs(mae["ours"] - mae["river"]) < 0.02, mae
    assert mae["ours"] < mae["mean"] - 0.05, mae


@pytest.mark.parametrize("chunk_rows", [65_536, 97])
def test_candidates_are_the_brute_force_top_k(chunk_rows):
    model = MatrixFactorization(seed=5)
    model.chunk_rows = chunk_rows
    events = [Event(f"e{n}", f"u{n % 30}", f"i{(n * 7) % 1200}", "view", T0 + n) for n in range(3000)]
    model.learn_many(events)
    ids, matrix, bias = model.item_ids(), model.item_matrix(), model.item_bias()
    assert matrix.shape == (1200, 10) and bias.shape == (1200,) and len(ids) == 1200
    for user in ("u0", "u13", "u29"):
        scores = model.global_mean + model.user_bias(user) + bias + matrix @ model.user_vector(user)
        expected = sorted(zip(ids, scores.tolist(), strict=False), key=lambda p: (p[1], p[0]), reverse=True)
        for k in (1, 5, 40):
            got = model.candidates(user, k)
            assert [item for item, _ in got] == [item for item, _ in expected[:k]]
            np.testing.assert_allclose([v for _, v in got], [v for _, v in expected[:k]], rtol=1e-12)
    assert model.candidates("stranger", 5) == []


@pytest.mark.parametrize("size", [1, 50, 2000, 50_000])
def test_top_indices_finds_the_largest_values_even_with_ties(size):
    rng = np.random.default_rng(size)
    for values in (rng.normal(size=size), rng.integers(0, 5, size).astype(float), np.sort(rng.normal(size=size))):
        for k in (1, 7, 300):
            got = np.sort(values[top_indices(values, k)])
            np.testing.assert_array_equal(got, np.sort(values)[-k:] if k < size else np.sort(values))


def test_eviction_keeps_the_rows_of_survivors_intact():
    model = MatrixFactorization(seed=2, max_idle_ms=HOUR)
    early = [Event(f"a{n}", f"u{n % 5}", f"old{n % 40}", "view", T0 + n) for n in range(200)]
    late = [Event(f"b{n}", f"u{n % 5}", f"new{n % 40}", "purchase", T0 + 2 * HOUR + n) for n in range(200)]
    model.learn_many(early + late)
    items = [f"old{n}" for n in range(40)] + [f"new{n}" for n in range(40)]
    before = model.score("u1", items)
    assert model.evict(T0 + 2 * HOUR) == 40  # the old items; every user was active late
    after = model.score("u1", items)
    np.testing.assert_array_equal(after[40:], before[40:])
    assert after[:40].tolist() == [0.0] * 40
    assert sorted(model.item_ids()) == sorted(items[40:])
    for row, item in enumerate(model.item_ids()):
        expected = model.global_mean + model.user_bias("u1") + model.item_bias()[row]
        expected += model.item_matrix()[row] @ model.user_vector("u1")
        assert model.predict_rating("u1", item) == pytest.approx(expected)


def test_a_hot_item_in_one_batch_does_not_blow_up():
    # 1000 purchases of one item inside a single mini-batch: summed steps would diverge; averaged ones do not
    events = [Event(f"e{n}", f"u{n % 300}", "hot" if n % 2 else f"i{n % 50}", "purchase", T0 + n) for n in range(2000)]
    model = MatrixFactorization(seed=0, batch_size=2000)
    model.learn_many(events)
    model.learn_many(events)
    assert np.isfinite(model.item_matrix()).all()
    assert 0.5 < model.score("u1", ["hot"])[0] < 1.5


def test_a_negative_weight_pushes_the_item_down():
    events = [Event(f"e{n}", f"u{n % 10}", f"i{n % 8}", "view", T0 + n) for n in range(400)]
    plain = MatrixFactorization(seed=4, event_weights={"remove_from_cart": -3.0})
    plain.learn_many(events)
    removed = MatrixFactorization.restore(plain.snapshot())
    removed.learn_one(Event("r", "u1", "i1", "remove_from_cart", T0 + 500))
    plain.learn_one(Event("r", "u1", "i1", "impression", T0 + 500))
    assert removed.score("u1", ["i1"])[0] < plain.score("u1", ["i1"])[0]


def test_catalogue_accessors():
    model = MatrixFactorization(n_factors=4, seed=0)
    assert model.user_vector("nobody") is None and model.user_bias("nobody") == 0.0
    model.learn_one(Event("e", "ann", "tea", "view", T0))
    assert model.item_ids() == ["tea"] and model.item_matrix().shape == (1, 4)
    with pytest.raises(ValueError):
        model.item_matrix()[0, 0] = 1.0
    assert model.predict_rating("nobody", "nothing") == model.global_mean


def test_ratings_with_a_time_are_kept_by_idle_eviction():
    model = MatrixFactorization(seed=0, max_idle_ms=HOUR)
    model.learn_rating("old", "a", 3.0, ts=T0)
    model.learn_rating("new", "b", 4.0, ts=T0 + 2 * HOUR)
    assert model.clock_ms == T0 + 2 * HOUR
    assert model.evict(model.clock_ms) == 2
    assert (model.n_users, model.n_items, model.item_ids()) == (1, 1, ["b"])


def test_candidates_many_is_candidates_for_every_user_up_to_float32():
    model = MatrixFactorization(seed=5, batch_size=16)
    model.learn_many([Event(f"e{n}", f"u{n % 7}", f"i{(n * 5) % 40}", "view", T0 + n) for n in range(400)])
    users = ["u0", "nobody", "u3", "u6"]
    many = model.candidates_many(users, 8, device="cpu", max_chunk_bytes=4096)
    assert len(many) == len(users) and many[1] == []
    for user, pairs in zip(users, many, strict=True):
        reference = model.candidates(user, 8)
        assert [s for _, s in pairs] == pytest.approx([s for _, s in reference], rel=1e-4, abs=1e-5)
        assert set(pairs and [i for i, _ in pairs]) == set(reference and [i for i, _ in reference])
    assert MatrixFactorization.provides("candidates_many")


def test_batches_of_one_event_without_negatives_are_sequential_sgd():
    # a round of one sample is one sequential step (the same rule, vectorised), so learn_many in batches of one
    # event must land where learn_one lands, up to rounding
    rng = np.random.default_rng(4)
    events = [Event(f"e{n}", f"u{rng.integers(6)}", f"i{rng.integers(9)}", "purchase", T0 + n) for n in range(200)]
    batched = MatrixFactorization(n_negatives=0, batch_size=1, seed=2)
    sequential = MatrixFactorization(n_negatives=0, seed=2)
    batched.learn_many(events)
    for event in events:
        sequential.learn_one(event)
    np.testing.assert_allclose(batched.item_matrix(), sequential.item_matrix(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(batched.item_bias(), sequential.item_bias(), rtol=1e-12, atol=1e-15)
    assert batched.global_mean == pytest.approx(sequential.global_mean)
