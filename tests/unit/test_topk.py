"""Exhaustive top-k: against a float64 brute force (full sort of every score), across chunkings and devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusionrec.models.topk import exhaustive_top_k, numpy_top_k, pick_device, plan_chunks

TOL = 1e-4


def factors(seed: int, users: int, items: int, dim: int = 8):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(users, dim)).astype(np.float32),
        rng.normal(size=(items, dim)).astype(np.float32),
        rng.normal(size=items).astype(np.float32),
        rng.normal(size=users).astype(np.float32),
    )


def brute_force(users, items, k, item_bias=None, user_bias=None, exclude=None):
    """Every score in float64, a full stable sort per user: the slow obvious answer."""
    scores = users.astype(np.float64) @ items.astype(np.float64).T
    if item_bias is not None:
        scores += item_bias[None, :]
    if user_bias is not None:
        scores += user_bias[:, None]
    if exclude is not None:
        for user, rows in enumerate(exclude):
            scores[user, list(rows)] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order, scores


def assert_same_top(got, want, all_scores):
    (got_scores, got_rows), (want_scores, want_rows) = got, want
    assert got_scores.dtype == np.float32 and got_rows.dtype == np.int64
    assert got_scores.shape == want_scores.shape == got_rows.shape
    np.testing.assert_allclose(got_scores, want_scores, atol=TOL)
    for user in range(got_rows.shape[0]):
        assert set(got_rows[user].tolist()) == set(want_rows[user].tolist())
        # each returned score is the score of the returned item
        np.testing.assert_allclose(got_scores[user], all_scores[user, got_rows[user]], atol=TOL)


@pytest.mark.parametrize("k", [1, 5, 40])
def test_matches_brute_force(k):
    users, items, _, _ = factors(0, 37, 200)
    want_scores, want_rows, all_scores = brute_force(users, items, k)
    assert_same_top(exhaustive_top_k(users, items, k, device="cpu"), (want_scores, want_rows), all_scores)
    assert_same_top(numpy_top_k(users, items, k), (want_scores, want_rows), all_scores)
    assert_same_top(numpy_top_k(users, items, k, user_chunk=5), (want_scores, want_rows), all_scores)


def test_best_first():
    users, items, _, _ = factors(1, 20, 150)
    scores, _ = exhaustive_top_k(users, items, 30, device="cpu")
    assert (np.diff(scores, axis=1) <= 0).all()


def test_torch_tensors_are_accepted():
    users, items, item_bias, _ = factors(2, 10, 50)
    want = exhaustive_top_k(users, items, 7, item_bias=item_bias, device="cpu")
    got = exhaustive_top_k(
        torch.from_numpy(users).double(),
        torch.from_numpy(items),
        7,
        item_bias=torch.from_numpy(item_bias),
        device="cpu",
    )
    np.testing.assert_allclose(got[0], want[0], atol=TOL)
    np.testing.assert_array_equal(got[1], want[1])


def test_tiny_budget_forces_many_chunks_and_changes_nothing():
    users, items, item_bias, user_bias = factors(3, 45, 230)
    k, budget = 6, 4 * 60  # 60 scores: a 5 x 12 block
    user_chunk, item_chunk = plan_chunks(45, 230, k, budget)
    assert 45 / user_chunk > 4 and 230 / item_chunk > 10
    one_chunk = exhaustive_top_k(
        users, items, k, item_bias=item_bias, user_bias=user_bias, device="cpu", max_chunk_bytes=2**30
    )
    many = exhaustive_top_k(
        users, items, k, item_bias=item_bias, user_bias=user_bias, device="cpu", max_chunk_bytes=budget
    )
    np.testing.assert_allclose(many[0], one_chunk[0], atol=TOL)
    assert [set(r) for r in many[1].tolist()] == [set(r) for r in one_chunk[1].tolist()]
    want_scores, want_rows, all_scores = brute_force(users, items, k, item_bias, user_bias)
    assert_same_top(many, (want_scores, want_rows), all_scores)


def test_item_chunks_narrower_than_k_merge_correctly():
    users, items, _, _ = factors(4, 9, 100)
    assert plan_chunks(9, 100, 20, 4 * 40)[1] < 20
    got = exhaustive_top_k(users, items, 20, device="cpu", max_chunk_bytes=4 * 40)
    want_scores, want_rows, all_scores = brute_force(users, items, 20)
    assert_same_top(got, (want_scores, want_rows), all_scores)


def test_biases_are_applied():
    users, items, item_bias, user_bias = factors(5, 25, 120)
    want_scores, want_rows, all_scores = brute_force(users, items, 10, item_bias, user_bias)
    got = exhaustive_top_k(users, items, 10, item_bias=item_bias, user_bias=user_bias, device="cpu")
    assert_same_top(got, (want_scores, want_rows), all_scores)
    want_scores, want_rows, all_scores = brute_force(users, items, 10, item_bias)
    assert_same_top(numpy_top_k(users, items, 10, item_bias=item_bias), (want_scores, want_rows), all_scores)
    # a bias that outweighs every product puts its item first for everyone
    boosted = np.zeros(120, dtype=np.float32)
    boosted[77] = 1e3
    assert (exhaustive_top_k(users, items, 3, item_bias=boosted, device="cpu")[1][:, 0] == 77).all()


def test_user_bias_shifts_scores_not_rankings():
    users, items, _, user_bias = factors(6, 15, 90)
    plain = exhaustive_top_k(users, items, 8, device="cpu")
    shifted = exhaustive_top_k(users, items, 8, user_bias=user_bias, device="cpu")
    np.testing.assert_array_equal(shifted[1], plain[1])
    np.testing.assert_allclose(shifted[0], plain[0] + user_bias[:, None], atol=TOL)


@pytest.mark.parametrize("budget", [2**30, 4 * 30])
def test_excluded_items_are_never_returned(budget):
    users, items, _, _ = factors(7, 12, 80)
    rng = np.random.default_rng(8)
    exclude = [rng.choice(80, size=int(rng.integers(0, 40)), replace=False).tolist() for _ in range(12)]
    exclude[0] = []
    exclude[1] = range(0, 80, 2)  # any iterable
    got = exhaustive_top_k(users, items, 10, exclude=exclude, device="cpu", max_chunk_bytes=budget)
    for user, rows in enumerate(exclude):
        assert not set(got[1][user].tolist()) & set(rows)
    want_scores, want_rows, all_scores = brute_force(users, items, 10, exclude=[list(r) for r in exclude])
    assert_same_top(got, (want_scores, want_rows), all_scores)


@pytest.mark.parametrize("budget", [2**30, 4 * 16])
def test_too_few_items_left_pads_with_minus_one(budget):
    users, items, _, _ = factors(9, 3, 20)
    keep = {0: [4, 11], 1: [], 2: list(range(20))}
    exclude = [[i for i in range(20) if i not in keep[user]] for user in range(3)]
    scores, rows = exhaustive_top_k(users, items, 5, exclude=exclude, device="cpu", max_chunk_bytes=budget)
    assert scores.shape == rows.shape == (3, 5)
    assert set(rows[0, :2].tolist()) == {4, 11} and np.isfinite(scores[0, :2]).all()
    assert rows[0, 2:].tolist() == [-1, -1, -1] and np.isneginf(scores[0, 2:]).all()
    assert rows[1].tolist() == [-1] * 5 and np.isneginf(scores[1]).all()
    assert (rows[2] >= 0).all() and np.isfinite(scores[2]).all()


def test_k_larger_than_the_catalogue_returns_every_item_sorted():
    users, items, item_bias, _ = factors(10, 6, 9)
    want_scores, want_rows, all_scores = brute_force(users, items, 9, item_bias)
    for got in (
        exhaustive_top_k(users, items, 50, item_bias=item_bias, device="cpu"),
        exhaustive_top_k(users, items, 50, item_bias=item_bias, device="cpu", max_chunk_bytes=4 * 18),
        numpy_top_k(users, items, 50, item_bias=item_bias),
    ):
        assert got[1].shape == (6, 9)
        assert_same_top(got, (want_scores, want_rows), all_scores)


@pytest.mark.parametrize("function", [exhaustive_top_k, numpy_top_k])
def test_empty_users_or_catalogue(function):
    users, items, _, _ = factors(11, 4, 10)
    for u, v, k, shape in (
        (users[:0], items, 3, (0, 3)),
        (users, items[:0], 3, (4, 0)),
        (users, items, 0, (4, 0)),
        (users[:0], items[:0], 3, (0, 0)),
    ):
        scores, rows = function(u, v, k)
        assert scores.shape == rows.shape == shape
        assert scores.dtype == np.float32 and rows.dtype == np.int64


@pytest.mark.parametrize("n_users", [0, 1, 7, 1000, 100_000])
@pytest.mark.parametrize("n_items", [0, 1, 50, 3000, 1_000_000])
@pytest.mark.parametrize("k", [1, 10, 100])
@pytest.mark.parametrize("budget", [4 * 200, 4 * 1000, 64 * 2**10, 64 * 2**20])
def test_plan_chunks_stays_within_the_byte_budget(n_users, n_items, k, budget):
    user_chunk, item_chunk = plan_chunks(n_users, n_items, k, budget)
    top = min(k, n_items)
    assert user_chunk >= 1 and item_chunk >= 1
    assert user_chunk <= max(n_users, 1) and item_chunk <= max(n_items, 1)
    assert 4 * user_chunk * item_chunk <= budget
    assert 4 * user_chunk * (top + min(top, item_chunk)) <= budget


def test_plan_chunks_keeps_the_catalogue_whole_when_it_fits():
    assert plan_chunks(100_000, 100_000, 100, 64 * 2**20) == (167, 100_000)
    assert plan_chunks(10, 100_000, 100, 64 * 2**20) == (10, 100_000)
    assert plan_chunks(100_000, 10_000_000, 100, 64 * 2**20) == (32, 524_288)


def test_plan_chunks_rejects_a_budget_below_one_merge():
    with pytest.raises(ValueError, match="max_chunk_bytes"):
        plan_chunks(10, 1000, 100, 4 * 199)
    with pytest.raises(ValueError, match=">= 0"):
        plan_chunks(10, 1000, -1, 2**20)


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_pick_device_refuses_cuda_without_one():
    with pytest.raises(ValueError, match="cuda"):
        pick_device("cuda")
    with pytest.raises(ValueError, match="cuda"):
        exhaustive_top_k(np.zeros((1, 2), np.float32), np.zeros((3, 2), np.float32), 1, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_agrees_with_cpu():
    assert pick_device("cuda").type == "cuda"
    users, items, item_bias, user_bias = factors(12, 300, 5000, dim=32)
    rng = np.random.default_rng(13)
    exclude = [rng.choice(5000, size=20, replace=False).tolist() for _ in range(300)]
    for budget in (64 * 2**20, 4 * 64 * 700):
        kwargs = dict(item_bias=item_bias, user_bias=user_bias, exclude=exclude, max_chunk_bytes=budget)
        cpu = exhaustive_top_k(users, items, 50, device="cpu", **kwargs)
        gpu = exhaustive_top_k(users, items, 50, device="cuda", **kwargs)
        np.testing.assert_allclose(gpu[0], cpu[0], atol=TOL)
        same = np.mean([set(a) == set(b) for a, b in zip(gpu[1].tolist(), cpu[1].tolist(), strict=False)])
        assert same >= 0.99  # a near-tie at rank 50 may round differently on the two devices
        want_scores, _, all_scores = brute_force(users, items, 50, item_bias, user_bias, exclude)
        np.testing.assert_allclose(gpu[0], want_scores, atol=TOL)
        np.testing.assert_allclose(np.take_along_axis(all_scores, gpu[1], axis=1), gpu[0], atol=TOL)
