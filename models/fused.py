"""The fused recommender: the ranker plus the bandit, with the memory of what was served to whom.

One :class:`FusedRecommender` sits beside a set of source models (a worker keeps one per partition; the offline
evaluation one per run). It learns from the same events as the sources, but what it learns is *which sources to
trust*: an event on an item of the list last served to that user rewards the sources that put the item there
(:mod:`fusionrec.models.fusion`). :meth:`FusedRecommender.recommend` chooses each user's segment and weights (bandit,
or fixed weights for users in the holdout), ranks, and remembers the served lists and their exposure.

Pure: no I/O. The worker publishes what :meth:`~FusedRecommender.recommend` returns; the evaluation scores it.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusionrec.contracts.events import Event

from ._state import evict_idle, touch
from .base import DEFAULT_EVENT_WEIGHTS, Recommender, event_weight
from .fusion import SEGMENTS, FixedWeights, FusionPolicy, Pull, holdout_arm, position_discount
from .learned import LearnedRanker, UserContext, pool_order, scores
from .ranker import Candidates, FusionRanker, Kept, RankedList, fused_parts
from .targets import TargetFilter

__all__ = ["FusedList", "FusedRecommender"]


@functools.cache
def _discounts(n: int) -> np.ndarray:
    """The position discounts of positions ``0 .. n - 1`` (read-only, shared)."""
    out = np.array([position_discount(p) for p in range(n)])
    out.flags.writeable = False
    return out


@dataclass(slots=True)
class FusedList:
    """What :meth:`FusedRecommender.recommend` made for one user: the list to serve, the segment and the pull.

    ``ranked`` is the learned ranker's list once it is ready (``ranker == "learned"``), else bandit fusion's;
    ``bandit`` is bandit fusion's list (the bandit learns from it, the evaluation scores it); while the learned
    ranker serves it is only built when asked for (``recommend(bandit_lists=True)``), else ``None``."""

    ranked: RankedList
    segment: str
    pull: Pull
    bandit: RankedList | None = None
    ranker: str = "bandit"

    @property
    def user_id(self) -> str:
        return self.ranked.user_id


class _Served:
    """The bandit's list last made for a user: item → position, each position's per-source contributions (the
    shares of a reward are computed from them when an item is hit, which is rare, not for every list made), and
    which (item, type) were credited."""

    __slots__ = ("positions", "parts", "sources", "segment", "arm", "credited")

    def __init__(
        self,
        positions: dict[str, int],
        parts: Sequence[Sequence[float]] | np.ndarray,
        sources: Sequence[str],
        segment: str,
        arm: str,
        credited: set[tuple[str, str]] | None = None,
    ):
        self.positions = positions
        self.parts = parts
        self.sources = sources
        self.segment = segment
        self.arm = arm
        self.credited = credited if credited is not None else set()

    def shares(self, position: int) -> dict[str, float]:
        """Each source's share of the item at ``position`` (the sources that contributed to it)."""
        part = [float(c) for c in self.parts[position]]
        total = sum(c for c in part if c > 0.0)
        if total <= 0.0:
            return {}
        return {s: c / total for s, c in zip(self.sources, part, strict=True) if c > 0.0}

    def to_state(self) -> list[Any]:
        items = {item: [p, self.shares(p)] for item, p in self.positions.items()}
        return [self.segment, self.arm, items, [list(c) for c in self.credited]]

    @classmethod
    def from_state(cls, state: Sequence[Any], sources: Sequence[str]) -> _Served:
        segment, arm, items, credited = state
        positions = {item: int(p) for item, (p, _) in items.items()}
        parts: list[list[float]] = [[] for _ in positions]
        for p, shares in items.values():
            parts[int(p)] = [float(shares.get(s, 0.0)) for s in sources]
        return cls(positions, parts, sources, segment, arm, {(c[0], c[1]) for c in credited})


class FusedRecommender:
    """Bandit-weighted fusion of several sources, with attribution and a fixed-weight holdout.

    Parameters
    ----------
    sources
        The source names fused, in order (the keys of the models passed to :meth:`recommend`).
    ranker
        The :class:`~fusionrec.models.ranker.FusionRanker` that builds the lists.
    bandit
        Learns the weights: a :class:`~fusionrec.models.fusion.FusionBandit`, or any other
        :class:`~fusionrec.models.fusion.FusionPolicy` (its lists are credited to it by its ``arm``); ``None`` for
        fixed equal weights for everyone (equal-weight fusion).
    holdout
        Fraction of users (by :func:`~fusionrec.models.fusion.holdout_arm`) served with fixed equal weights even when a
        bandit is given: the control arm of a live A/B test.
    new_user_events
        Users with fewer events than this are in the ``new`` segment, the others ``returning``.
    reward_weights
        Reward of each event type on a served item (purchase > cart > view by default).
    max_users
        Most users whose served list and activity are remembered (least recently active dropped first).
    max_idle_ms
        :meth:`evict` forgets users idle longer than this.
    learned
        A :class:`~fusionrec.models.learned.LearnedRanker` that stacks the sources; once it is ready its lists are
        the ones served (``FusedList.ranked``), bandit fusion's stay beside them (``FusedList.bandit``) and the bandit
        keeps learning from those. ``None``: bandit fusion only.

    Examples
    --------

    >>> from fusionrec.contracts.events import Event
    >>> from fusionrec.models import Popularity
    >>> from fusionrec.models.ranker import FusionRanker
    >>> popular = Popularity()
    >>> popular.learn_many([Event("e1", "ann", "tea", "view", 1), Event("e2", "bob", "mug", "purchase", 2)])
    >>> fused = FusedRecommender(["popular"], FusionRanker(k=2, device="cpu"))
    >>> [served] = fused.recommend({"popular": popular}, ["cat"], now_ms=3)
    >>> served.ranked.item_ids, served.segment, served.pull.arm
    (['mug', 'tea'], 'new', 'fixed')

    Cat buys the mug that was first on her list: with a bandit, ``popular`` would be rewarded.

    >>> fused.learn_one(Event("e3", "cat", "mug", "purchase", 4))
    >>> fused.rewards
    1

    """

    def __init__(
        self,
        sources: Sequence[str],
        ranker: FusionRanker,
        bandit: FusionPolicy | None = None,
        holdout: float = 0.0,
        new_user_events: int = 5,
        reward_weights: Mapping[str, float] = DEFAULT_EVENT_WEIGHTS,
        max_users: int = 500_000,
        max_idle_ms: int | None = None,
        learned: LearnedRanker | None = None,
    ):
        self.sources = tuple(sources)
        #: Remembers this partition's pools and labels them; it also ranks and learns unless :meth:`share` gave a
        #: ranker shared by every partition (then its labels are handed out by :meth:`take_labels`).
        self.learned = learned
        self._scorer = learned
        self._shared = False
        self.ranker = ranker
        self.bandit = bandit
        self.fixed = FixedWeights(self.sources)
        self.holdout = holdout
        self.new_user_events = new_user_events
        self.reward_weights = dict(reward_weights)
        self.max_users = max_users
        self.max_idle_ms = max_idle_ms
        self._activity: dict[str, int] = {}
        self._last: dict[str, int] = {}
        self._served: dict[str, _Served] = {}
        self._targets = TargetFilter(max_items_per_user=100, max_users=max_users)
        self.rewards = 0  # rewarded interactions, for metrics

    # --- learning ----------------------------------------------------------------------------------------------

    def policy(self, user_id: str) -> FusionPolicy:
        """The policy that chooses ``user_id``'s weights: the bandit, or the fixed weights for the holdout."""
        if self.bandit is None or holdout_arm(user_id, self.holdout) == "fixed":
            return self.fixed
        return self.bandit

    def segment(self, user_id: str) -> str:
        return SEGMENTS[0] if self._activity.get(user_id, 0) < self.new_user_events else SEGMENTS[1]

    def learn_one(self, event: Event) -> None:
        """Count the user's activity and reward the sources if ``event`` is on an item of the served list.

        Only events that are recommendation targets (:class:`~fusionrec.models.targets.TargetFilter`: a first
        interaction with an item, or a cart/purchase) earn a reward: a second look at an item the user already knew
        is no evidence that the list helped, and rewarding it would teach the bandit to recommend what users have
        seen.
        """
        user = event.user_id
        touch(self._last, user, event.ts, self.max_users, self._forget)
        self._activity[user] = self._activity.get(user, 0) + 1
        kind = self._targets.classify(event)
        if kind is None:
            return
        weight = event_weight(self.reward_weights, event)
        if self.learned is not None and weight > 0.0:
            self.learned.label(user, event.item_id, weight)
        served = self._served.get(user)
        if served is None:
            return
        position = served.positions.get(event.item_id)
        if position is None:
            return
        key = (event.item_id, event.type)
        if weight <= 0.0 or key in served.credited:
            return
        served.credited.add(key)
        shares = served.shares(position)
        reward = weight * position_discount(position)
        policy = self.bandit if self.bandit is not None and served.arm == self.bandit.arm else self.fixed
        policy.update(served.segment, {s: reward * share for s, share in shares.items()}, event.ts)
        self.rewards += 1

    def learn_many(self, events: Iterable[Event]) -> None:
        for event in events:
            self.learn_one(event)

    def share(self, ranker: LearnedRanker) -> None:
        """Rank with ``ranker``, a learned ranker shared by every partition (the item side's, trained on every
        partition's labels in an order that depends on the events alone), and hand this partition's labels out
        (:meth:`take_labels`) instead of learning them here."""
        if self.learned is None:
            raise ValueError("share needs a fused recommender built with a learned ranker")
        self._scorer = ranker
        self._shared = True

    def take_labels(self) -> list[list[Any]]:
        """The labelled pools of the events learned since the last call, for the shared ranker (JSON-able)."""
        if not self._shared or self.learned is None:
            return []
        return self.learned.take_labelled()

    @property
    def serving_ranker(self) -> LearnedRanker | None:
        """The learned ranker that orders this partition's lists (its own, or the shared one)."""
        return self._scorer

    # --- serving -----------------------------------------------------------------------------------------------

    def recommend(
        self,
        models: Mapping[str, Recommender],
        users: Sequence[str],
        now_ms: int,
        unavailable: Collection[str] = (),
        prepared: Candidates | None = None,
        bandit_lists: bool = False,
    ) -> list[FusedList]:
        """Rank ``users``' lists with their segment's weights, remember them as served, and expose the sources.

        ``prepared``: the ranker's candidates for exactly ``users``, when already prepared
        (:meth:`FusionRanker.prepare <fusionrec.models.ranker.FusionRanker.prepare>`), to fuse them under several
        policies. The bandit learns from its own lists, but while the learned ranker serves they are only kept as
        positions and contributions: ``bandit_lists`` builds them as :class:`RankedList` too (``FusedList.bandit``,
        for the evaluation to score them)."""
        if not users:
            return []
        segments = [self.segment(user) for user in users]
        pulls = [self.policy(user).pull(segment) for user, segment in zip(users, segments, strict=True)]
        if prepared is None:
            prepared = self.ranker.prepare(models, users, now_ms, unavailable)
        if prepared.dense.shape[1] == 0:
            empty = self.ranker.lists(prepared, None, None)
            return [FusedList(r, seg, pull, r, "bandit") for r, seg, pull in zip(empty, segments, pulls, strict=True)]
        w, fused, order = self.ranker.order(prepared, [p.weights for p in pulls])
        kept = self.ranker.keep(prepared, fused, order)
        parts = fused_parts(prepared, w, kept)
        self._remember_served(prepared, kept, parts, segments, pulls, now_ms)
        served = self._learned_lists(models, prepared, segments, pulls, now_ms) if self.learned is not None else None
        fixed = self.fixed.arm
        if served is None or bandit_lists:
            ranked = self.ranker.lists(prepared, kept, parts)
        else:  # the holdout is the control: fixed-weight fusion is served to it
            ranked = self.ranker.lists(prepared, kept, parts, [b for b, p in enumerate(pulls) if p.arm == fixed])
        out = []
        for n, (result, segment, pull) in enumerate(zip(ranked, segments, pulls, strict=True)):
            if served is None or pull.arm == fixed:
                out.append(FusedList(result, segment, pull, result, "bandit"))
            else:
                out.append(FusedList(served[n], segment, pull, result if bandit_lists else None, "learned"))
        return out

    def _remember_served(
        self, prepared: Candidates, kept: Kept, parts: np.ndarray, segments: list[str], pulls: list[Pull], now_ms: int
    ) -> None:
        """Remember the bandit's lists (:class:`_Served`: each keeps a copy of its rows of ``parts``, 720 bytes for
        20 items and 9 sources, not a view that would keep the whole batch alive) and expose each policy's sources
        by their position-discounted shares, summed over the batch per policy and segment (one ``expose`` each)."""
        sources = prepared.sources
        top, counts = kept.top, kept.counts
        totals = parts.sum(axis=2, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = np.where(totals[:, :, None] > 0.0, parts / totals[:, :, None], 0.0)
        exposure = (shares * _discounts(top.shape[1])[None, :, None]).sum(axis=1)  # [B, S]
        grouped: dict[tuple[int, str], tuple[FusionPolicy, np.ndarray]] = {}
        served, tops = self._served, top.tolist()
        for b, (user, n) in enumerate(zip(prepared.users, counts.tolist(), strict=True)):
            if not n:
                continue
            union = prepared.unions[b]
            positions = dict(zip(map(union.__getitem__, tops[b][:n]), range(n), strict=False))
            served[user] = _Served(positions, parts[b, :n].copy(), sources, segments[b], pulls[b].arm)
            policy = self.policy(user)
            key = (id(policy), segments[b])
            if key in grouped:
                grouped[key][1][:] += exposure[b]
            else:
                grouped[key] = (policy, exposure[b].copy())
        for (_, segment), (policy, total) in grouped.items():
            policy.expose(segment, {s: float(e) for s, e in zip(sources, total, strict=True) if e > 0.0}, now_ms)

    def _learned_lists(
        self,
        models: Mapping[str, Recommender],
        prepared: Candidates,
        segments: list[str],
        pulls: list[Pull],
        now_ms: int,
    ) -> list[RankedList] | None:
        """Train the learned ranker on what was labelled since the last call, score ``prepared``, remember the
        pools for labelling, and return its lists, or None while it is not ready (bandit fusion is served)."""
        learned, scorer = self.learned, self._scorer
        assert learned is not None and scorer is not None
        if not self._shared:
            learned.learn_pending()
        if prepared.dense.shape[1] == 0:
            return None
        context = [
            UserContext(segment == SEGMENTS[1], self._activity.get(user, 0), pull.weights)
            for user, segment, pull in zip(prepared.users, segments, pulls, strict=True)
        ]
        ctx = learned.context(context)
        signals = self._signals(models, prepared, now_ms)
        learned.remember(
            prepared.users, prepared.unions, prepared.dense, ctx, signals, pool_order(prepared.dense, prepared.valid)
        )
        if not scorer.ready:
            return None
        contributions = scorer.contributions(scorer.features(prepared.dense, prepared.valid, ctx, signals))
        order_by = scores(contributions, prepared.valid)
        return self.ranker.select(prepared, contributions, order_by)

    def _signals(self, models: Mapping[str, Recommender], prepared: Candidates, now_ms: int) -> np.ndarray | None:
        """The learned ranker's item signals ``[B, M, G]``: each signal source's score of every candidate, scaled by
        its best over the batch (one ``score`` call over the batch's distinct items: these sources ignore the user)."""
        learned = self.learned
        if learned is None or not learned.item_signals:
            return None
        codes, items = prepared.item_codes()
        out = np.zeros((*codes.shape, len(learned.item_signals)), dtype=np.float32)
        for g, name in enumerate(learned.item_signals):
            model = models.get(name)
            if model is None or not items:
                continue
            values = np.asarray(model.score(prepared.users[0], items, now_ms), dtype=np.float32)
            top = float(values.max()) if values.size else 0.0
            if top > 0.0:
                out[..., g] = np.where(prepared.valid, values[codes] / top, 0.0)
        return out

    def weights(self) -> dict[str, dict[str, float]]:
        """The bandit's current exploit weights per segment (the fixed weights without a bandit)."""
        policy: FusionPolicy = self.bandit if self.bandit is not None else self.fixed
        return {segment: policy.weights(segment) for segment in SEGMENTS}

    # --- memory ------------------------------------------------------------------------------------------------

    def _forget(self, user: str) -> None:
        if self.learned is not None:
            self.learned.forget(user)
        self._targets.forget(user)
        self._last.pop(user, None)
        self._activity.pop(user, None)
        self._served.pop(user, None)

    def evict(self, now_ms: int) -> int:
        """Forget the users idle since ``now_ms - max_idle_ms``; how many."""
        return evict_idle(now_ms, self.max_idle_ms, (self._last, self._forget))

    @property
    def n_users(self) -> int:
        return len(self._last)

    def to_state(self) -> dict[str, Any]:
        """Everything learned, as JSON-able values (served lists, activity, the bandit's statistics)."""
        return {
            "bandit": None if self.bandit is None else self.bandit.to_state(),
            "activity": self._activity,
            "last": self._last,
            "served": {u: s.to_state() for u, s in self._served.items()},
            "rewards": self.rewards,
            "targets": self._targets.to_state(),
            "learned": None if self.learned is None else self.learned.to_state(),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        if self.bandit is not None and state.get("bandit"):
            self.bandit.load_state(state["bandit"])
        self._activity = {u: int(n) for u, n in state["activity"].items()}
        self._last = {u: int(t) for u, t in state["last"].items()}
        self._served = {u: _Served.from_state(served, self.sources) for u, served in state["served"].items()}
        self.rewards = int(state.get("rewards", 0))
        self._targets.load_state(state.get("targets", {}))
        if self.learned is not None and state.get("learned"):
            self.learned.load_state(state["learned"])
