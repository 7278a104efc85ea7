"""The fusion bandit and the fused recommender: credit, exploration, segments, decay, convergence, state."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import orjson
import pytest

from fusionrec.contracts.events import Event
from fusionrec.models.base import Recommender
from fusionrec.models.fused import FusedRecommender
from fusionrec.models.fusion import FixedWeights, FusionBandit, FusionPolicy, Pull, holdout_arm, position_discount
from fusionrec.models.ranker import FusionRanker


class Scripted(Recommender):
    """A source whose proposals the test sets directly (``lists[user]``): (item, score) best first."""

    source = "scripted"

    def __init__(self):
        super().__init__()
        self.lists: dict[str, list[tuple[str, float]]] = {}

    def learn_one(self, event: Event) -> None:
        pass

    def score(self, user_id: str, items: Sequence[str], now_ms: int | None = None) -> np.ndarray:
        table = dict(self.lists.get(user_id, []))
        return np.array([table.get(i, 0.0) for i in items])

    def candidates(self, user_id: str, k: int, now_ms: int | None = None) -> list[tuple[str, float]]:
        return self.lists.get(user_id, [])[:k]

    def evict(self, now_ms: int) -> int:
        return 0

    n_users = property(lambda self: len(self.lists))
    n_items = property(lambda self: 0)


def test_position_discount_is_dcg():
    assert position_discount(0) == 1.0
    assert position_discount(2) == pytest.approx(0.5)


def test_bandit_starts_equal_and_moves_to_the_rewarded_source():
    bandit = FusionBandit(["a", "b", "c"], epsilon=0.0)
    assert bandit.weights("new") == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    for t in range(50):
        bandit.expose("new", {"a": 1.0, "b": 1.0, "c": 1.0}, t)
        bandit.update("new", {"a": 0.3, "b": 0.1}, t)
    weights = bandit.weights("new")
    assert weights["a"] > weights["b"] > weights["c"]
    assert bandit.weights("returning") == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})  # segments apart
    assert bandit.version == 50


def test_exploration_rate_and_propensities():
    bandit = FusionBandit(["a", "b"], epsilon=0.2, boost=0.5, seed=7)
    pulls = [bandit.pull("new") for _ in range(5000)]
    explored = [p for p in pulls if p.action != "exploit"]
    assert 0.17 < len(explored) / len(pulls) < 0.23
    assert {p.action for p in explored} == {"boost:a", "boost:b"}
    assert all(p.propensity == pytest.approx(0.1) for p in explored)
    assert all(p.propensity == pytest.approx(0.8) for p in pulls if p.action == "exploit")
    boosted = next(p for p in explored if p.action == "boost:a")
    assert boosted.weights == pytest.approx({"a": 0.75, "b": 0.25})
    assert sum(boosted.weights.values()) == pytest.approx(1.0)


def test_decay_lets_the_weights_follow_drift():
    hour = 3_600_000
    bandit = FusionBandit(["a", "b"], epsilon=0.0, half_life_ms=hour)
    for t in range(100):
        bandit.expose("returning", {"a": 1.0, "b": 1.0}, t * 60_000)
        bandit.update("returning", {"a": 0.5}, t * 60_000)
    assert bandit.weights("returning")["a"] > 0.8
    start = 100 * 60_000
    for t in range(300):  # five hours in which b is the good one
        bandit.expose("returning", {"a": 1.0, "b": 1.0}, start + t * 60_000)
        bandit.update("returning", {"b": 0.5}, start + t * 60_000)
    assert bandit.weights("returning")["b"] > 0.8


def test_bandit_state_round_trips_through_json():
    bandit = FusionBandit(["a", "b"], epsilon=0.3, seed=1)
    for t in range(10):
        bandit.expose("new", {"a": 1.0}, t)
        bandit.update("new", {"a": 0.2}, t)
    copy = FusionBandit(["a", "b"], epsilon=0.3, seed=1)
    copy.load_state(orjson.loads(orjson.dumps(bandit.to_state())))
    assert copy.weights("new") == bandit.weights("new")
    assert copy.version == bandit.version
    assert [copy.pull("new").action for _ in range(20)] == [bandit.pull("new").action for _ in range(20)]


def test_holdout_split_is_stable_and_proportional():
    users = [f"user-{n}" for n in range(20_000)]
    fixed = [u for u in users if holdout_arm(u, 0.25) == "fixed"]
    assert 0.23 < len(fixed) / len(users) < 0.27
    assert fixed == [u for u in users if holdout_arm(u, 0.25) == "fixed"]
    assert set(u for u in users if holdout_arm(u, 0.1) == "fixed") <= set(fixed)  # a smaller holdout nests


def test_fixed_weights_never_learn():
    fixed = FixedWeights(["a", "b"])
    fixed.update("new", {"a": 100.0}, 1)
    pull = fixed.pull("new")
    assert pull.weights == {"a": 0.5, "b": 0.5} and pull.propensity == 1.0 and pull.arm == "fixed"


def test_both_policies_share_one_interface():
    assert issubclass(FusionBandit, FusionPolicy) and issubclass(FixedWeights, FusionPolicy)
    with pytest.raises(TypeError):
        FusionPolicy(["a"])  # abstract
    for make in (FusionBandit, FixedWeights):
        with pytest.raises(ValueError, match="at least one source"):
            make([])
    bandit, fixed = FusionBandit(["a", "b"], epsilon=0.0), FixedWeights(["a", "b"])
    for policy in (bandit, fixed):
        pull = policy.pull("new")
        assert isinstance(pull, Pull) and pull.arm == policy.arm and pull.version == policy.version == 0
        weights = policy.weights("new")
        weights["a"] = 99.0  # a copy: the policy's own weights are untouched
        assert policy.weights("new") == pytest.approx({"a": 0.5, "b": 0.5})
    assert (bandit.pull("new").action, fixed.pull("new").action) == ("exploit", "fixed")


class Alternating(FusionPolicy):
    """A policy written against the base alone: all weight on one source, the other every second list."""

    arm = "bandit"

    def __init__(self, sources):
        super().__init__(sources)
        self.pulls = 0
        self.rewards: list[dict[str, float]] = []

    def _exploit(self, segment):
        return {s: float(s == self.sources[0]) for s in self.sources}

    def _choose(self, weights):
        self.pulls += 1
        if self.pulls % 2:
            return weights, "first", 0.5
        return {s: 1.0 - w for s, w in weights.items()}, "second", 0.5

    def expose(self, segment, exposure, ts):
        pass

    def update(self, segment, reward, ts):
        self.rewards.append(dict(reward))

    def to_state(self):
        return {"pulls": self.pulls}

    def load_state(self, state):
        self.pulls = state["pulls"]


def test_the_fused_recommender_takes_any_policy():
    good, bad = Scripted(), Scripted()
    good.lists["u"], bad.lists["u"] = [("x", 1.0)], [("y", 1.0)]
    policy = Alternating(["good", "bad"])
    fused = _fused(policy)
    [first] = fused.recommend({"good": good, "bad": bad}, ["u"], now_ms=1)
    [second] = fused.recommend({"good": good, "bad": bad}, ["u"], now_ms=2)
    assert (first.pull.action, first.ranked.item_ids) == ("first", ["x"])
    assert (second.pull.action, second.ranked.item_ids) == ("second", ["y"])
    fused.learn_one(Event("e", "u", "y", "purchase", 3))
    assert policy.rewards == [{"bad": 5.0}]
    assert fused.to_state()["bandit"] == {"pulls": 2}


def _fused(bandit=None, **kwargs) -> FusedRecommender:
    return FusedRecommender(
        ["good", "bad"], FusionRanker(k=5, candidates=10, normalise="max", device="cpu"), bandit, **kwargs
    )


def test_credit_goes_to_the_sources_behind_the_item_by_position_and_type():
    good, bad = Scripted(), Scripted()
    good.lists["u"] = [("x", 1.0), ("y", 0.5)]
    bad.lists["u"] = [("y", 1.0), ("z", 0.9)]
    bandit = FusionBandit(["good", "bad"], epsilon=0.0)
    fused = _fused(bandit, new_user_events=1)
    fused.learn_one(Event("e0", "u", "w", "view", 0))
    [served] = fused.recommend({"good": good, "bad": bad}, ["u"], now_ms=1)
    assert served.segment == "returning"
    # y is first (0.5 + 1.0), then x (1.0 + 0), then z (0 + 0.9)
    assert served.ranked.item_ids == ["y", "x", "z"]
    assert served.ranked.items[0].contributions == pytest.approx({"good": 0.25, "bad": 0.5})
    fused.learn_one(Event("e1", "u", "x", "purchase", 2))  # position 1: 5 × 0.631, all to good
    assert bandit._reward["returning"] == pytest.approx([5 * position_discount(1), 0.0])
    fused.learn_one(Event("e2", "u", "x", "purchase", 3))  # the same item and type again: no second credit
    fused.learn_one(Event("e3", "u", "y", "view", 4))  # position 0, shared 1:2
    assert bandit._reward["returning"] == pytest.approx([5 * position_discount(1) + 1 / 3, 2 / 3])
    fused.learn_one(Event("e4", "u", "q", "purchase", 5))  # not on the list
    assert fused.rewards == 2


def test_weights_converge_to_the_better_source_on_a_seeded_stream():
    """`good` ranks the item each user will touch next among noise; `bad` proposes noise only."""
    rng = random.Random(3)
    good, bad = Scripted(), Scripted()
    bandit = FusionBandit(["good", "bad"], epsilon=0.1, seed=3)
    fused = _fused(bandit, new_user_events=1)
    users = [f"u{n}" for n in range(50)]
    ts = 0
    for _round in range(60):
        for user in users:
            future = f"i{rng.randrange(1000)}"
            noise = [(f"i{rng.randrange(1000)}", rng.random()) for _ in range(6)]
            good.lists[user] = sorted(noise[:3] + [(future, 0.8)], key=lambda p: -p[1])
            bad.lists[user] = sorted(noise[3:], key=lambda p: -p[1])
            ts += 1
            fused.recommend({"good": good, "bad": bad}, [user], now_ms=ts)
            # the user touches the predicted item half of the time, otherwise something else
            item = future if rng.random() < 0.5 else f"j{rng.randrange(1000)}"
            fused.learn_one(Event(f"e{ts}", user, item, "view", ts))
    weights = bandit.weights("returning")
    assert weights["good"] > 0.9, weights
    assert bandit.version > 500


def test_holdout_users_get_fixed_weights_and_do_not_train_the_bandit():
    good = Scripted()
    good.lists = {f"u{n}": [("x", 1.0)] for n in range(200)}
    bandit = FusionBandit(["good", "bad"], epsilon=0.0)
    fused = _fused(bandit, holdout=0.5)
    lists = fused.recommend({"good": good, "bad": Scripted()}, list(good.lists), now_ms=1)
    arms = {fl.user_id: fl.pull.arm for fl in lists}
    assert {u for u, a in arms.items() if a == "fixed"} == {u for u in good.lists if holdout_arm(u, 0.5) == "fixed"}
    for user, arm in arms.items():
        if arm == "fixed":
            fused.learn_one(Event(f"e-{user}", user, "x", "purchase", 2))
    assert bandit.version == 0 and fused.rewards > 0


def test_fused_state_round_trips_and_keeps_crediting():
    good = Scripted()
    good.lists["u"] = [("x", 1.0)]
    fused = _fused(FusionBandit(["good", "bad"], epsilon=0.0))
    fused.recommend({"good": good, "bad": Scripted()}, ["u"], now_ms=1)
    copy = _fused(FusionBandit(["good", "bad"], epsilon=0.0))
    copy.load_state(orjson.loads(orjson.dumps(fused.to_state())))
    copy.learn_one(Event("e", "u", "x", "add_to_cart", 2))
    assert copy.rewards == 1 and copy.bandit._reward["new"][0] == pytest.approx(3.0)


def test_evict_forgets_idle_users():
    fused = _fused(None, max_idle_ms=10)
    fused.learn_one(Event("a", "old", "x", "view", 0))
    fused.learn_one(Event("b", "new", "x", "view", 100))
    assert fused.evict(100) == 1 and fused.n_users == 1
